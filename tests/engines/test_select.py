"""What only the select engine promises: bounded queues and an idle loop that sleeps."""

from __future__ import annotations

import os
import re
import select as select_module
import signal
import socket
import subprocess
import sys
import threading
import time
import tracemalloc

import pytest

from connecteur import Peer, Server, connect
from connecteur.framing import LengthPrefixed
from connecteur.server._poller import Poller
from connecteur.server.select import HARD_CAP, HIGH_WATER, RECV_SIZE, SelectEngine
from connecteur.tools.apps import echo
from tests.support import TIMEOUT, recv_until_closed, wait_until


def queued_bytes(server: Server) -> int:
    """The bytes the engine holds for its peers: white-box, to measure the queue itself."""
    engine = server._engine
    assert isinstance(engine, SelectEngine)
    return sum(link._queued for link in list(engine._links.values()))


def test_a_client_that_never_reads_cannot_grow_the_queue() -> None:
    message = b"x" * 65536
    framing = LengthPrefixed()
    with Server(echo, "127.0.0.1:0", engine="select") as server:
        sock = socket.create_connection(server.address, timeout=TIMEOUT)
        sent = 0
        peak = 0
        stop = threading.Event()

        def watch() -> None:
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, queued_bytes(server))
                time.sleep(0.001)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            sock.settimeout(0.5)
            wire = framing.encode(message)
            try:
                while sent < 256 * 2**20:  # far more than any buffer on the way
                    sock.sendall(wire)
                    sent += 1
            except TimeoutError:
                pass  # the server stopped reading us: backpressure reached the client
            peak = max(peak, queued_bytes(server))
            assert sent * len(wire) < 64 * 2**20
            # Reading stops past HIGH_WATER; one more read's replies may land on top.
            assert HIGH_WATER < peak <= HIGH_WATER + RECV_SIZE + 65536
            # Nothing lost: once the client reads, every reply arrives.
            sock.settimeout(TIMEOUT)
            sock.shutdown(socket.SHUT_WR)
            received = len(recv_until_closed(sock))
        finally:
            stop.set()
            watcher.join(TIMEOUT)
            sock.close()
        assert received >= sent * len(wire)  # replies to the partial last message aside
        assert server.stats.errors == 0


def test_peer_send_past_the_hard_cap_disconnects_that_peer() -> None:
    peers: list[Peer] = []
    connected = threading.Event()

    class Pusher:
        def connected(self, peer: Peer) -> None:
            peers.append(peer)
            connected.set()

    with Server(Pusher(), "127.0.0.1:0", engine="select") as server:
        sock = socket.create_connection(server.address, timeout=TIMEOUT)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            assert connected.wait(TIMEOUT)
            chunk = b"y" * 2**20
            sent = 0
            try:
                for _ in range(HARD_CAP // len(chunk) + 32):
                    peers[0].send(chunk)
                    sent += 1
            except ConnectionError:
                pass
            wait_until(lambda: server.stats.errors == 1, what="the peer disconnected")
            assert server.stats.active == 0
            assert queued_bytes(server) == 0
        finally:
            sock.close()


def test_many_replies_of_one_read_leave_in_one_write() -> None:
    with Server(echo, "127.0.0.1:0", engine="select") as server, connect(server.address, timeout=TIMEOUT) as conn:
        conn.send_many([b"%d" % i for i in range(1000)])
        assert [conn.recv() for _ in range(1000)] == [b"%d" % i for i in range(1000)]
        conn.close()
        wait_until(lambda: server.stats.active == 0, what="closed")
    stats = server.stats
    assert stats.messages_out == 1000


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs /proc to read a process's CPU time")
def test_an_idle_server_uses_no_measurable_cpu() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "connecteur", "serve", "127.0.0.1:0", "--engine", "select", "--idle-timeout", "600"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    clients: list[socket.socket] = []
    try:
        assert process.stdout is not None
        match = re.fullmatch(
            r"serving echo on (\S+):(\d+) \(framing: [^;]+; codec: [^)]+\)\n", process.stdout.readline()
        )
        assert match
        address = (match.group(1), int(match.group(2)))
        for _ in range(20):  # idle connections, each with an idle timer armed
            clients.append(socket.create_connection(address, timeout=TIMEOUT))
        with connect(address, timeout=TIMEOUT) as conn:
            assert conn.request(b"warm") == b"warm"
        time.sleep(0.2)
        before = _cpu_seconds(process.pid)
        time.sleep(2.0)
        used = _cpu_seconds(process.pid) - before
        assert used < 0.05, f"idle server used {used:.3f} s of CPU in 2 s"
    finally:
        for client in clients:
            client.close()
        process.send_signal(signal.SIGTERM)
        try:
            assert process.wait(TIMEOUT) == 0
        finally:
            if process.poll() is None:
                process.kill()
            process.communicate(timeout=TIMEOUT)


def test_without_epoll_the_engine_runs_on_selectors(monkeypatch: pytest.MonkeyPatch) -> None:
    """The portable path of `Poller` (kqueue, poll or select where epoll is missing) serves the same way."""
    monkeypatch.delattr(select_module, "epoll")
    assert Poller()._epoll is None
    big = bytes(range(256)) * 4096  # 1 MiB: partial writes, so writability is watched too
    with Server(echo, "127.0.0.1:0", engine="select") as server, connect(server.address, timeout=TIMEOUT) as conn:
        assert conn.request(b"ping") == b"ping"
        conn.send_many([b"%d" % i for i in range(1000)] + [big, big])
        time.sleep(0.2)  # the replies fill the socket buffers before anything is read
        assert [conn.recv() for _ in range(1000)] == [b"%d" % i for i in range(1000)]
        assert conn.recv() == big and conn.recv() == big


def test_an_idle_connection_holds_under_2_kib_of_python_objects() -> None:
    """Issue 19's idle target (2 KiB per connection, RSS, in `connecteur bench`): what the engine allocates for one.

    Counted with tracemalloc over 50 connections after a round trip each,
    only allocations made from connecteur's files (the clients' sockets are in
    this process too). An empty deque is 0.7 KiB, a third of the rest: the
    queue of bytes waiting for a slow reader is made when bytes first wait.
    """
    connections = 50
    with Server(echo, "127.0.0.1:0", engine="select") as server:
        socks: list[socket.socket] = []
        try:
            warm = socket.create_connection(server.address, timeout=TIMEOUT)  # the engine's first-time allocations
            socks.append(warm)
            warm.sendall(LengthPrefixed().encode(b"x" * 64))
            warm.recv(68)
            wait_until(lambda: server.stats.active == 1)
            tracemalloc.start()
            try:
                before = tracemalloc.take_snapshot()
                for _ in range(connections):
                    sock = socket.create_connection(server.address, timeout=TIMEOUT)
                    socks.append(sock)
                    sock.sendall(LengthPrefixed().encode(b"x" * 64))
                    got = b""
                    while len(got) < 68:
                        got += sock.recv(68 - len(got))
                wait_until(lambda: server.stats.active == connections + 1)
                after = tracemalloc.take_snapshot()
            finally:
                tracemalloc.stop()
        finally:
            for sock in socks:
                sock.close()
    ours = [tracemalloc.Filter(True, "*/connecteur/*")]
    grown = sum(stat.size_diff for stat in after.filter_traces(ours).compare_to(before.filter_traces(ours), "filename"))
    assert grown / connections < 2048
