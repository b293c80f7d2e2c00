"""The client side of `connecteur bench`: the workloads, run in a process of their own.

``python -m connecteur.bench.client [--cpu N]`` pins itself to CPU N,
then reads one job per line on stdin (JSON: a `Job`) and writes one JSON line
per job on stdout: ``{"result": {...}}`` or ``{"error": "..."}``.

rr, pipeline, bulk, many and idle are here; scale is in the `scale` module,
client in `connection`, mux in `mux`, and what they all share in `job`.

The client must not be the bottleneck (except in the client workload, which
measures connecteur's own client), so it works on raw sockets and knows
the messages it expects instead of decoding them: every message of a run is
the same, so the echoed stream is that message's wire bytes repeated. It
checks each reply of the request/response workloads whole, and the streams of
the others at every read (64 bytes at the read's offset in the repeated wire
bytes, which catches any byte lost, added or reordered) and by their length.
Each figure comes with the server's CPU time (its process tree, from /proc)
and the client's own (`time.process_time`) over the measured interval; a
client busy for most of it may be what limits the figure.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from typing import Final

from . import proc
from .connection import client
from .fanout import fanout
from .job import (
    IO_TIMEOUT,
    PIPELINE_BATCH,
    RECV_SIZE,
    SMALL,
    Figures,
    Job,
    Meter,
    WrongEcho,
    connect,
    framed,
    recv_exactly,
    wrong_echo,
)
from .mux import mux
from .scale import scale

__all__ = ["BULK_WINDOW", "PIPELINE_WINDOW", "WORKLOADS", "main", "run"]

SMALL_RECV_SIZE: Final = 256
"""Bytes asked of each recv of one 68-byte reply: recv(n) allocates n bytes
first, and Python's small-object allocator serves up to 512 (above 128 KiB,
malloc would even map and unmap them on every call)."""
BULK: Final = bytes(range(256)) * 4096
"""The bulk workload's message: 1 MiB."""
PIPELINE_WINDOW: Final = 16 * 1024
"""Pipelined messages in flight at most (1.1 MB). Measured on 2 cores: with
1,024 in flight, the wake-ups between client and server bound the figure
(neither process is busy half the time); from 16,384 on, the server is busy
all the time, so the figure is its cost per message, as intended. A bound all
the same, so that no server has to buffer without limit."""
BULK_WINDOW: Final = 8
"""1 MiB messages in flight at most: the server busy all the time, as above."""
CONNECT_BATCH: Final = 100
"""Connections opened before their first round trips: below the servers' backlog (128)."""
CHECK_EVERY: Final = 64
"""Round trips between two looks at the clock in rr."""


# --- the workloads ----------------------------------------------------------------


def rr(job: Job) -> Figures:
    """One connection, one 64-byte message in flight: round trips/s and latency."""
    wire = framed(SMALL)
    reply = bytearray(len(wire))
    view = memoryview(reply)
    with connect(job) as sock:
        send, recv_into, now = sock.sendall, sock.recv_into, time.perf_counter_ns
        for _ in range(CHECK_EVERY):  # warm-up
            send(wire)
            recv_exactly(sock, view)
        latencies: list[int] = []
        meter = Meter(job.server_pid)
        end = meter.start + job.seconds
        while True:
            for _ in range(CHECK_EVERY):
                began = now()
                send(wire)
                got = recv_into(view)
                if got < len(wire):
                    recv_exactly(sock, view, got)
                latencies.append(now() - began)
                if reply != wire:
                    raise wrong_echo(reply)
            if (stop := time.perf_counter()) >= end:
                break
        figures = meter.figures(stop, len(latencies))  # before the close ends the server's thread or process
    latencies.sort()
    figures["p50_us"] = latencies[len(latencies) // 2] / 1000
    figures["p99_us"] = latencies[len(latencies) * 99 // 100] / 1000
    return figures


def _stream(job: Job, message: bytes, *, batch: int, window: int) -> Figures:
    """Send batches of `message` on one connection while reading the echoes, `window` messages in flight at most.

    One thread, non-blocking: no GIL handoffs between a writer and a reader.
    After `job.seconds`, stops sending and waits for every echo.
    """
    wire = framed(message)
    chunk = wire * batch
    limit = len(wire) * window - len(chunk)  # bytes in flight before the next batch may go
    expected = wire * (RECV_SIZE // len(wire) + 2)  # any read fits at any offset within one wire
    buffer = bytearray(RECV_SIZE)
    view = memoryview(buffer)
    with connect(job) as sock:
        sock.sendall(wire)
        recv_exactly(sock, memoryview(bytearray(len(wire))))
        sock.setblocking(False)
        sent = received = 0
        pending = memoryview(b"")
        meter = Meter(job.server_pid)
        end = meter.start + job.seconds
        sending = True
        while True:
            if sending and not pending:
                if time.perf_counter() >= end:
                    sending = False
                elif sent - received <= limit:
                    pending = memoryview(chunk)
            if not sending and received == sent:
                break
            if pending:
                try:
                    n = sock.send(pending)
                except BlockingIOError:
                    n = 0
                pending, sent = pending[n:], sent + n
            readable, _, _ = select.select([sock], [sock] if pending else [], [], IO_TIMEOUT)
            if not readable:
                if not pending:
                    raise TimeoutError(f"no echo for {IO_TIMEOUT} s; {sent:,} bytes sent, {received:,} echoed")
                continue
            n = sock.recv_into(buffer)
            if not n:
                raise ConnectionError("the server closed the connection")
            offset = received % len(wire)
            if view[: min(n, 64)] != expected[offset : offset + min(n, 64)]:
                raise WrongEcho(f"the echoed stream differs from the stream sent after {received:,} bytes")
            received += n
        return meter.figures(time.perf_counter(), received // len(wire))


def pipeline(job: Job) -> Figures:
    """One connection, many 64-byte messages in flight: messages/s."""
    return _stream(job, SMALL, batch=PIPELINE_BATCH, window=PIPELINE_WINDOW)


def bulk(job: Job) -> Figures:
    """One connection, 1 MiB messages: MB/s (payload bytes echoed per second, 10**6 bytes a MB)."""
    figures = _stream(job, BULK, batch=1, window=BULK_WINDOW)
    figures["message_bytes"] = len(BULK)
    figures["mb_per_second"] = float(figures["per_second"]) * len(BULK) / 1e6
    return figures


@contextmanager
def _connections(job: Job) -> Iterator[list[socket.socket]]:
    """`job.connections` connections, each after one round trip: accepted and served."""
    wire = framed(SMALL)
    reply = memoryview(bytearray(len(wire)))
    with ExitStack() as stack:
        socks: list[socket.socket] = []
        while len(socks) < job.connections:
            batch = [stack.enter_context(connect(job)) for _ in range(min(CONNECT_BATCH, job.connections - len(socks)))]
            for sock in batch:
                sock.sendall(wire)
            for sock in batch:
                recv_exactly(sock, reply)
                if reply != wire:
                    raise wrong_echo(reply.tobytes())
            socks += batch
        yield socks


def many(job: Job) -> Figures:
    """`job.connections` connections, one 64-byte request in flight on each: round trips/s.

    One thread drives them all with epoll (Linux, like the rest of the
    benchmark): a thread per connection would measure the client's GIL.
    """
    wire = framed(SMALL)
    with _connections(job) as socks, select.epoll() as poller:
        for sock in socks:
            sock.setblocking(False)
            poller.register(sock, select.EPOLLIN)
        # The hot loop, per reply: one recv, one comparison, one send (whole:
        # 68 bytes into an empty buffer), with the bound methods at hand.
        recvs = {sock.fileno(): sock.recv for sock in socks}
        sends = {sock.fileno(): sock.send for sock in socks}
        partial: dict[int, bytearray] = {}
        count, outstanding = 0, len(socks)
        meter = Meter(job.server_pid)
        end = meter.start + job.seconds
        for send in sends.values():
            send(wire)
        while outstanding:
            events = poller.poll(IO_TIMEOUT)
            if not events:
                raise TimeoutError(f"no reply for {IO_TIMEOUT} s")
            again = time.perf_counter() < end
            for fd, _ in events:
                data = recvs[fd](SMALL_RECV_SIZE)
                if data != wire and not _try_complete(partial, fd, data, wire):
                    continue
                count += 1
                if again:
                    sends[fd](wire)
                else:
                    outstanding -= 1
                    poller.unregister(fd)
        figures = meter.figures(time.perf_counter(), count)
    figures["connections"] = len(socks)
    return figures


def _try_complete(partial: dict[int, bytearray], fd: int, data: bytes, wire: bytes) -> bool:
    """Add a piece of a reply; return True once the reply is whole (and correct)."""
    if not data:
        raise ConnectionError("the server closed a connection")
    pending = partial.setdefault(fd, bytearray())
    pending += data
    if len(pending) < len(wire):
        return False
    if pending != wire:
        raise wrong_echo(pending)
    del partial[fd]
    return True


def idle(job: Job) -> Figures:
    """`job.connections` idle connections (after one round trip each): server memory per connection."""
    # Warm the paths a connection takes: some servers keep descriptors or
    # buffers from their first connection on (uvloop does).
    with _connections(replace(job, connections=2)):
        pass
    samples, interval = job.rss_samples, 0.05
    before, settled_before = proc.stable_rss_kib(job.server_pid, samples=samples, interval=interval)
    began = time.perf_counter()
    with _connections(job) as socks:
        opened = time.perf_counter() - began
        after, settled_after = proc.stable_rss_kib(job.server_pid, samples=samples, interval=interval)
        threads = proc.thread_count(job.server_pid)
        processes = proc.process_count(job.server_pid)
    return {
        "connections": len(socks),
        "rss_before_kib": before,
        "rss_after_kib": after,
        "kib_per_connection": (after - before) / len(socks),
        "settled": settled_before and settled_after,
        "threads": threads,
        "processes": processes,
        "open_seconds": opened,
    }


WORKLOADS: Final[dict[str, Callable[[Job], Figures]]] = {
    "rr": rr,
    "pipeline": pipeline,
    "bulk": bulk,
    "many": many,
    "idle": idle,
    "scale": scale,
    "client": client,
    "mux": mux,
    "fanout": fanout,
}


def run(job: Job) -> Figures:
    """Run a job; return once the server is back to the processes and threads it had before.

    So no thread or process of this job's connections ends during the next
    job's measurement: its CPU time would leave the live threads the
    measurement adds up (or, for a reaped child, land whole in the parent's).
    The idle workload's server serves no other job: no wait.
    """
    before = proc.task_counts(job.server_pid)
    result = WORKLOADS[job.workload](job)
    if job.workload == "idle":
        return result
    deadline = time.monotonic() + IO_TIMEOUT
    while True:
        processes, threads = proc.task_counts(job.server_pid)
        if processes <= before[0] and threads <= before[1]:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"the server still has {processes} processes and {threads} threads, "
                f"{before[0]} and {before[1]} before the workload"
            )
        time.sleep(0.01)


def main(argv: list[str] | None = None) -> int:
    """Run the jobs of stdin until it closes."""
    parser = argparse.ArgumentParser(prog="python -m connecteur.bench.client")
    parser.add_argument("--cpu", type=int, help="the CPU to run on")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C reaches the whole group: `connecteur bench` stops us
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    for line in sys.stdin:
        job = Job(**json.loads(line))
        try:
            reply: dict[str, object] = {"result": run(job)}
        except (OSError, WrongEcho) as exc:  # TimeoutError and ConnectionError included
            reply = {"error": str(exc) or type(exc).__name__}
        print(json.dumps(reply), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
