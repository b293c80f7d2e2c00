/* A reference floor for `connecteur bench`'s many workload: the least a server can do per round trip.
 *
 * Echo with connecteur's default framing (a 4-byte big-endian length, then the message), one thread,
 * level-triggered epoll, non-blocking sockets with TCP_NODELAY, one read and (when whole messages came)
 * one write per readable event. Not part of the package: build it by hand,
 *   gcc -O2 -o echo_floor benchmarks/floor/echo_floor.c
 * and run `echo_floor [CPU [SPIN [TOUCH_KIB]]]`: it prints "serving echo on 127.0.0.1:PORT" as the bench's
 * servers do. SPIN and TOUCH_KIB (default 0) add user-space work per read, to see what it does to the kernel's
 * share: SPIN iterations of an arithmetic loop that touches no memory, and a read of TOUCH_KIB KiB of a 64 MiB
 * array, a different slice each time (as an interpreter's objects and code evict the kernel's cache lines).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_FD 65536
#define READ_SIZE (256 * 1024)
#define MAX_MESSAGE (16u << 20)

struct conn {
    unsigned char *pending; /* bytes of a message not whole yet */
    size_t used, cap;
};

static struct conn conns[MAX_FD];
static unsigned char buf[READ_SIZE];
static long spin, touch;
static unsigned char *arena;
#define ARENA_SIZE (64u << 20)

/* The optional user-space work per read (see the top): its result goes nowhere but must not be optimised out. */
static void work(void) {
    static size_t at;
    volatile unsigned long sink = 0;
    unsigned long x = 1;
    for (long i = 0; i < spin; i++) x = x * 6364136223846793005ul + 1442695040888963407ul;
    for (long i = 0; i < touch * 1024; i += 64, at = (at + 64) % ARENA_SIZE) x += arena[at];
    sink = x;
    (void)sink;
}

static void drop(int ep, int fd) {
    epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
    close(fd);
    free(conns[fd].pending);
    memset(&conns[fd], 0, sizeof conns[fd]);
}

static int append(struct conn *c, const unsigned char *data, size_t n) {
    if (c->used + n > c->cap) {
        size_t cap = c->cap ? c->cap : 4096;
        while (cap < c->used + n) cap *= 2;
        unsigned char *p = realloc(c->pending, cap);
        if (!p) return -1;
        c->pending = p, c->cap = cap;
    }
    memcpy(c->pending + c->used, data, n);
    c->used += n;
    return 0;
}

/* The whole messages at the head of data: their length (an echo writes them back as they are). */
static size_t whole(const unsigned char *data, size_t n, int *bad) {
    size_t at = 0;
    while (n - at >= 4) {
        uint32_t size;
        memcpy(&size, data + at, 4);
        size = ntohl(size);
        if (size > MAX_MESSAGE) { *bad = 1; break; }
        if (n - at - 4 < size) break;
        at += 4 + size;
    }
    return at;
}

/* Write it all (a blocking-style fallback for the rare partial write: the bench's replies are 68 bytes). */
static int send_all(int fd, const unsigned char *data, size_t n) {
    while (n) {
        ssize_t sent = write(fd, data, n);
        if (sent < 0) {
            if (errno == EAGAIN || errno == EINTR) continue;
            return -1;
        }
        data += sent, n -= (size_t)sent;
    }
    return 0;
}

static void on_readable(int ep, int fd) {
    struct conn *c = &conns[fd];
    ssize_t n = read(fd, buf, sizeof buf);
    if (spin || touch) work();
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (n <= 0) { drop(ep, fd); return; }
    int bad = 0;
    if (c->used == 0) { /* the usual case: whole messages straight from the read buffer */
        size_t done = whole(buf, (size_t)n, &bad);
        if (bad || (done && send_all(fd, buf, done) < 0)) { drop(ep, fd); return; }
        if (done < (size_t)n && append(c, buf + done, (size_t)n - done) < 0) drop(ep, fd);
        return;
    }
    if (append(c, buf, (size_t)n) < 0) { drop(ep, fd); return; }
    size_t done = whole(c->pending, c->used, &bad);
    if (bad || (done && send_all(fd, c->pending, done) < 0)) { drop(ep, fd); return; }
    memmove(c->pending, c->pending + done, c->used - done);
    c->used -= done;
}

int main(int argc, char **argv) {
    if (argc > 1) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(atoi(argv[1]), &set);
        sched_setaffinity(0, sizeof set, &set);
    }
    if (argc > 2) spin = atol(argv[2]);
    if (argc > 3) touch = atol(argv[3]);
    if (touch) {
        arena = malloc(ARENA_SIZE);
        if (!arena) return 1;
        memset(arena, 1, ARENA_SIZE);
    }
    int one = 1;
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(lfd, 128) < 0) { perror("listen"); return 1; }
    socklen_t len = sizeof addr;
    getsockname(lfd, (struct sockaddr *)&addr, &len);
    printf("serving echo on 127.0.0.1:%d\n", ntohs(addr.sin_port));
    fflush(stdout);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    struct epoll_event events[1024];
    for (;;) {
        int ready = epoll_wait(ep, events, 1024, -1);
        if (ready < 0 && errno != EINTR) { perror("epoll_wait"); return 1; }
        for (int i = 0; i < ready; i++) {
            int fd = events[i].data.fd;
            if (fd != lfd) { on_readable(ep, fd); continue; }
            int cfd;
            while ((cfd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                if (cfd >= MAX_FD) { close(cfd); continue; }
                setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                struct epoll_event cev = {.events = EPOLLIN, .data.fd = cfd};
                epoll_ctl(ep, EPOLL_CTL_ADD, cfd, &cev);
            }
        }
    }
}
