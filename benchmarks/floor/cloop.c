/* A measurement prototype, not connecteur's code: echo_floor.c's epoll loop as a CPython extension that
 * calls a Python handler (bytes -> bytes) per message, to see what a C I/O loop would leave of the kernel's
 * floor. The GIL is held except around epoll_wait, as uvloop does. It handles the bench's many workload
 * only: each read must bring whole messages (a partial frame is dropped), each write must be taken whole.
 * Build by hand (cloop_server.py imports it from $CLOOP_DIR, default /tmp/floor/cext):
 *   gcc -O2 -shared -fPIC $(python3-config --includes) -o /tmp/floor/cext/cloop$(python3-config --extension-suffix) cloop.c
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define READ_SIZE (256 * 1024)
static unsigned char buf[READ_SIZE];
static unsigned char out[READ_SIZE + 65536];

static PyObject *serve(PyObject *self, PyObject *args) {
    PyObject *handler;
    if (!PyArg_ParseTuple(args, "O", &handler)) return NULL;
    int one = 1;
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(lfd, 128) < 0) return PyErr_SetFromErrno(PyExc_OSError);
    socklen_t len = sizeof addr;
    getsockname(lfd, (struct sockaddr *)&addr, &len);
    printf("serving echo on 127.0.0.1:%d\n", ntohs(addr.sin_port));
    fflush(stdout);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    struct epoll_event events[1024];
    for (;;) {
        int ready;
        Py_BEGIN_ALLOW_THREADS
        ready = epoll_wait(ep, events, 1024, -1);
        Py_END_ALLOW_THREADS
        if (ready < 0) { if (errno == EINTR) { if (PyErr_CheckSignals()) return NULL; continue; } return PyErr_SetFromErrno(PyExc_OSError); }
        for (int i = 0; i < ready; i++) {
            int fd = events[i].data.fd;
            if (fd == lfd) {
                int cfd;
                while ((cfd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct epoll_event cev = {.events = EPOLLIN, .data.fd = cfd};
                    epoll_ctl(ep, EPOLL_CTL_ADD, cfd, &cev);
                }
                continue;
            }
            ssize_t n = read(fd, buf, sizeof buf);
            if (n < 0 && errno == EAGAIN) continue;
            if (n <= 0) { epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL); close(fd); continue; }
            /* the bench's many workload: whole 68-byte messages per read; partial frames are not handled here */
            size_t at = 0, w = 0;
            while ((size_t)n - at >= 4) {
                uint32_t size; memcpy(&size, buf + at, 4); size = ntohl(size);
                if ((size_t)n - at - 4 < size) break;
                PyObject *message = PyBytes_FromStringAndSize((char *)buf + at + 4, size);
                PyObject *reply = message ? PyObject_CallOneArg(handler, message) : NULL;
                Py_XDECREF(message);
                if (!reply) return NULL;
                char *data; Py_ssize_t rlen;
                if (PyBytes_AsStringAndSize(reply, &data, &rlen) < 0) { Py_DECREF(reply); return NULL; }
                uint32_t header = htonl((uint32_t)rlen);
                memcpy(out + w, &header, 4); memcpy(out + w + 4, data, rlen); w += 4 + rlen;
                Py_DECREF(reply);
                at += 4 + size;
            }
            if (w && write(fd, out, w) != (ssize_t)w) { epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL); close(fd); }
        }
    }
}

static PyMethodDef methods[] = {{"serve", serve, METH_VARARGS, NULL}, {NULL, NULL, 0, NULL}};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "cloop", NULL, -1, methods};
PyMODINIT_FUNC PyInit_cloop(void) { return PyModule_Create(&module); }
