"""A server in a subprocess, its memory read from /proc, and the clients that attack it.

Shared by tests/engines/test_memory.py and benchmarks/memory.py (which puts
the repository on ``sys.path`` to import it; tests never import benchmarks).
Standard library and connecteur only, so the benchmark runs without the
test dependencies.

The server runs in a process of its own so that what is measured is the
server's memory alone, from outside, as an operator would see it: VmRSS for
one process; for the processes engine and ``workers``, the PSS summed over
the process tree (`connecteur.bench.proc.pss_kib`), since forked
children share pages and their RSS would count those pages once per child.

The subprocess (this file run as a script) prints one JSON line, ``{"port":
..., "max_buffered": ...}``, then answers each ``stats`` line on its stdin
with the server's `Stats` as a JSON line; at the end of its stdin it stops.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, Final

from connecteur.bench.proc import pss_kib, rss_kib

HEADER: Final = struct.Struct("!I")
MAX_SIZE: Final = 16 * 2**20
"""The default framing's default `max_size`: the largest body one header may announce."""
KIB: Final = 1024
SAMPLE_INTERVAL: Final = 0.05
"""Seconds between readings of the server's memory while waiting for it to settle."""
SETTLED_SAMPLES: Final = 5
"""Consecutive readings within `SETTLED_SPREAD_KIB` (or 0.5%) that make memory settled."""
SETTLED_SPREAD_KIB: Final = 256
TREE_VARIANTS: Final = ("processes", "select*2")
"""Variants served by several processes: measured by PSS over the tree."""


def has_max_buffered() -> bool:
    """Whether this connecteur's `Server` takes a `max_buffered` budget."""
    import inspect

    from connecteur import Server

    return "max_buffered" in inspect.signature(Server).parameters


def server_options(variant: str) -> dict[str, Any]:
    """The `Server` keyword arguments for a variant name: ``"select*2"``, ``"asyncio@uvloop"``."""
    rest, _, loop = variant.partition("@")
    name, _, workers = rest.partition("*")
    return {"engine": name, "workers": int(workers or 1), "loop": loop or "asyncio"}


class ServerProcess:
    """An echo `Server` on 127.0.0.1 in a subprocess; use it as a context manager.

    Args:
        variant: the engine variant (``"select"``, ``"select*2"``, ``"asyncio@uvloop"``...).
        timeout: the bound of every wait, in seconds.
        options: more `Server` keyword arguments, as JSON values.
    """

    def __init__(self, variant: str, *, timeout: float, **options: Any) -> None:
        self.variant = variant
        self.timeout = timeout
        self.tree = variant in TREE_VARIANTS
        config = {"max_connections": 100_000, **server_options(variant), **options}
        self._process = subprocess.Popen(
            [sys.executable, "-P", __file__, json.dumps(config)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,  # -P: not tests/ on sys.path
            start_new_session=True,  # its own process group: the processes engine's children go with it
        )  # fmt: skip
        try:
            hello = json.loads(self._line())
        except BaseException:
            self.close()
            raise
        self.pid = self._process.pid
        self.address = ("127.0.0.1", int(hello["port"]))

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _line(self) -> bytes:
        """The subprocess's next line of output, within `timeout`."""
        assert self._process.stdout is not None
        fd, data, deadline = self._process.stdout.fileno(), b"", time.monotonic() + self.timeout
        while not data.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                raise TimeoutError(f"the {self.variant} server said nothing within {self.timeout} s")
            chunk = os.read(fd, 1)  # one byte at a time: nothing past the line is taken from the pipe
            if not chunk:
                raise RuntimeError(f"the {self.variant} server exited (status {self._process.poll()})")
            data += chunk
        return data

    def stats(self) -> dict[str, int]:
        """The server's `Stats` now, as a dict."""
        assert self._process.stdin is not None
        self._process.stdin.write(b"stats\n")
        self._process.stdin.flush()
        return dict(json.loads(self._line()))

    def collect(self) -> None:
        """Run the cyclic garbage collector in the server's (parent) process."""
        assert self._process.stdin is not None
        self._process.stdin.write(b"gc\n")
        self._process.stdin.flush()
        self._line()

    def memory_kib(self) -> int:
        """The server's memory now: PSS over its process tree for tree variants, else its VmRSS."""
        return pss_kib(self.pid) if self.tree else rss_kib(self.pid)

    def settled_memory_kib(self, *, at_least: float = 0.0) -> int:
        """`memory_kib` once it holds still (or when `timeout` runs out), after `at_least` seconds."""
        time.sleep(at_least)
        seen: list[int] = []
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            seen.append(self.memory_kib())
            last = seen[-SETTLED_SAMPLES:]
            if len(last) == SETTLED_SAMPLES and max(last) - min(last) <= max(SETTLED_SPREAD_KIB, max(last) // 200):
                break
            time.sleep(SAMPLE_INTERVAL)
        return seen[-1]

    def wait_stats(self, condition: Callable[[dict[str, int]], bool], what: str) -> None:
        """Poll `stats` until `condition` holds; TimeoutError after `timeout`."""
        deadline = time.monotonic() + self.timeout
        while not condition(self.stats()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the {self.variant} server: no {what} within {self.timeout} s")
            time.sleep(0.01)

    def close(self) -> None:
        """Stop the server: end of its stdin, then SIGTERM, then SIGKILL, to its whole process group."""
        process = self._process
        with contextlib.suppress(OSError):
            if process.stdin is not None:
                process.stdin.close()
        try:
            process.wait(2.0)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(2.0)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        with contextlib.suppress(ProcessLookupError):  # children left by a killed parent
            os.killpg(process.pid, signal.SIGKILL)
        if process.stdout is not None:
            process.stdout.close()


@contextlib.contextmanager
def connections(address: tuple[str, int], count: int, timeout: float) -> Iterator[list[socket.socket]]:
    """`count` client sockets to `address`, each after one echo round trip (served, its process or thread up)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.create_connection(address, timeout=timeout)
            socks.append(sock)
            if echo(sock, b"up") != b"up":
                raise ConnectionError("wrong echo")
        yield socks
    finally:
        for sock in socks:
            sock.close()


def echo(sock: socket.socket, message: bytes) -> bytes:
    """Send one framed message and return the framed reply's body."""
    sock.sendall(HEADER.pack(len(message)) + message)
    reply = b""
    while len(reply) < HEADER.size or len(reply) < HEADER.size + HEADER.unpack_from(reply)[0]:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        reply += chunk
    return reply[HEADER.size :]


def header_flood(server: ServerProcess, count: int, size: int = MAX_SIZE) -> dict[str, float]:
    """`count` connections each send one header announcing `size` bytes, and nothing more.

    Returns, in KiB per connection: ``idle`` (an open connection after one
    round trip, what the server costs anyway) and ``header`` (what the header
    adds on top: the figure an attacker controls).
    """
    base = server.settled_memory_kib()
    with connections(server.address, count, server.timeout) as socks:
        idle = server.settled_memory_kib()
        before = server.stats()  # after the settling: a worker's report of the round trips is in
        for sock in socks:
            sock.sendall(HEADER.pack(size))
        if server.variant != "processes":  # a child reports its bytes only when it ends
            server.wait_stats(lambda s: s["bytes_in"] >= before["bytes_in"] + count * HEADER.size, "headers read")
        flooded = server.settled_memory_kib(at_least=0.25)
    return {"idle": (idle - base) / count, "header": (flooded - idle) / count}


def churn(
    server: ServerProcess, cycles: int, *, cap_kib: int, size: int = MAX_SIZE, collect: bool = False
) -> dict[str, Any]:
    """`cycles` times, one at a time: connect, send a header announcing `size`, close.

    Each cycle waits for the server to close its end, so the server has read
    the header (and then the end of file) before the next one starts. Stops
    early once the server has grown by more than `cap_kib`, so that a leak
    cannot take a shared machine's memory. Returns the cycles done, whether
    it stopped early, the peak growth and the growth once the server has no
    connection left and its memory holds still, in KiB; with `collect`, but
    for ``workers`` (whose workers the parent cannot reach), the growth after
    a ``gc.collect()`` in the server too: what only the cyclic collector
    gives back, told from what the allocator keeps.
    """
    with connections(server.address, 1, server.timeout):
        pass  # a first connection: what any server allocates once is in the baseline
    server.wait_stats(lambda s: s["active"] == 0, "connection left")
    base = server.settled_memory_kib()
    peak, done, stopped = base, 0, False
    while done < cycles and not stopped:
        with socket.create_connection(server.address, timeout=server.timeout) as sock:
            sock.sendall(HEADER.pack(size))
            sock.shutdown(socket.SHUT_WR)
            with contextlib.suppress(ConnectionResetError):
                sock.recv(1)  # b"" once the server has closed its end
        done += 1
        if done % 10 == 0 or done == cycles:
            peak = max(peak, server.memory_kib())
            stopped = peak - base > cap_kib
    server.wait_stats(lambda s: s["active"] == 0, "connection left")
    after = server.settled_memory_kib()
    gc_growth = None
    if collect and "*" not in server.variant:
        server.collect()
        gc_growth = server.settled_memory_kib() - base
    return {
        "cycles": done,
        "stopped_early": stopped,
        "peak": peak - base,
        "growth": after - base,
        "after_gc": gc_growth,
    }


def budget_flood(
    server: ServerProcess, count: int, *, body: int, chunk: int = 32 * KIB, pause: float = 0.01
) -> dict[str, Any]:
    """`count` connections each send a max-size header, then `body` bytes of it, `chunk` at a time, slowly.

    A round sends one chunk on each connection still open (without waiting
    when the server no longer reads), then waits `pause` seconds and reads
    the server's memory. Then another client makes a request. Returns the
    peak growth in KiB, the connections the server closed, and whether the
    other client got its reply.
    """
    base = server.settled_memory_kib()
    peak = base
    payload = b"\xa5" * chunk
    with connections(server.address, count, server.timeout) as socks:
        for sock in socks:
            sock.sendall(HEADER.pack(MAX_SIZE))
            sock.setblocking(False)
        open_socks = list(socks)
        for _ in range(-(-body // chunk)):
            open_socks = [sock for sock in open_socks if _send_some(sock, payload)]
            time.sleep(pause)
            peak = max(peak, server.memory_kib())
        settle = time.monotonic() + 0.5
        while time.monotonic() < settle:
            peak = max(peak, server.memory_kib())
            time.sleep(SAMPLE_INTERVAL)
        served = _probe(server.address, server.timeout)
        closed = sum(_closed_by_peer(sock) for sock in socks)
    return {"peak": peak - base, "closed": closed, "served": served}


def _send_some(sock: socket.socket, data: bytes) -> bool:
    """Send what the socket takes now; False once the server has closed the connection."""
    try:
        sock.send(data)
    except BlockingIOError:
        pass  # the server stopped reading: the kernel's buffers are full
    except OSError:
        return False
    return True


def _closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:  # reset
        return True


def _probe(address: tuple[str, int], timeout: float) -> bool:
    """Whether a new client gets the echo of one request within `timeout`."""
    try:
        with socket.create_connection(address, timeout=timeout) as sock:
            return echo(sock, b"still served?") == b"still served?"
    except OSError:
        return False


def _serve(config: dict[str, Any]) -> None:
    """The subprocess: serve echo, say the port, answer ``stats`` lines until stdin ends."""
    from connecteur import Server
    from connecteur.tools.apps import echo as echo_app

    with Server(echo_app, ("127.0.0.1", 0), **config) as server:
        print(json.dumps({"port": server.address[1], "max_buffered": has_max_buffered()}), flush=True)
        for line in sys.stdin:
            if line.strip() == "stats":
                print(json.dumps(dataclasses.asdict(server.stats)), flush=True)
            elif line.strip() == "gc":
                print(json.dumps({"collected": gc.collect()}), flush=True)


if __name__ == "__main__":
    _serve(json.loads(sys.argv[1]))
