"""The mux workload of `connecteur bench`: threads sharing one multiplexed connection, against a connection each.

`MUX_THREADS` threads make 64 B requests, each waiting for its reply before
the next, in two ways taking turns in `MUX_SLICES` slices each (so a slow
spell of a shared machine hits both alike):

- **lock-step**: each thread has a connection of its own to the job's server
  (connecteur's plain `Connection.request`), as a program does today;
- **shared**: all threads call `request` on one `MultiplexedConnection` to a
  multiplexed twin of the job's server (``servers TARGET --multiplexed``: the
  same engine, pinned to the same CPU), started for the job and stopped after.

Both use connecteur's client, so the difference is one connection and its
envelope against many. Each side gets its requests/s, its server's CPU per
request (the server process tree's, from /proc) and the client's CPU;
`shared_over_lockstep` is shared over lock-step requests/s and `server_cpu_ratio` shared over
lock-step server CPU per request. Every reply is checked whole.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Final

from .. import connect
from .job import SMALL, Figures, Job, Meter, wrong_echo
from .processes import Server

__all__ = ["MUX_SLICES", "MUX_THREADS", "mux"]

MUX_THREADS: Final = 8
"""Threads making requests, on either side."""
MUX_SLICES: Final = 4
"""Slices of each side, taking turns: `job.seconds` of each side in all."""

Ask = Callable[[bytes], bytes]
"""One request and its reply."""


def _threads_for(seconds: float, asks: list[Ask]) -> int:
    """Run one thread per `ask`, each making requests for `seconds`; the requests made by all."""
    counts = [0] * len(asks)
    failures: list[BaseException] = []
    start = threading.Barrier(len(asks) + 1)

    def work(index: int, ask: Ask) -> None:
        start.wait()
        end = time.perf_counter() + seconds
        try:
            while time.perf_counter() < end:
                for _ in range(16):  # between two looks at the clock
                    reply = ask(SMALL)
                    if reply != SMALL:
                        raise wrong_echo(reply)
                counts[index] += 16
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(index, ask)) for index, ask in enumerate(asks)]
    for thread in threads:
        thread.start()
    start.wait()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]
    return sum(counts)


@contextmanager
def _multiplexed_twin(job: Job) -> Iterator[Server]:
    """The job's target, multiplexed, on the job's server's CPU if it is pinned to one."""
    cpus = os.sched_getaffinity(job.server_pid)
    cpu = next(iter(cpus)) if len(cpus) == 1 else None
    with tempfile.TemporaryFile() as stderr:
        server = Server(job.target, cpu, stderr, "--multiplexed")
        try:
            server.wait_ready()
            yield server
        finally:
            if problem := server.stop():
                raise RuntimeError(f"the multiplexed {job.target} server: {problem}")


class _Side:
    """One side's requests, wall time, server CPU and client CPU, over its slices."""

    def __init__(self, server_pid: int, asks: list[Ask]) -> None:
        self.server_pid = server_pid
        self.asks = asks
        self.totals: dict[str, float] = {"messages": 0, "seconds": 0.0, "server_cpu": 0.0, "client_cpu": 0.0}

    def run_slice(self, seconds: float) -> None:
        meter = Meter(self.server_pid)
        messages = _threads_for(seconds, self.asks)
        figures = meter.figures(time.perf_counter(), max(messages, 1))
        self.totals["messages"] += messages
        self.totals["seconds"] += float(figures["seconds"])
        self.totals["server_cpu"] += float(figures["server_cpu_seconds"])
        self.totals["client_cpu"] += float(figures["client_cpu_seconds"])

    def figures(self, prefix: str) -> Figures:
        messages, seconds = int(self.totals["messages"]), self.totals["seconds"]
        return {
            f"{prefix}messages": messages,
            f"{prefix}seconds": seconds,
            f"{prefix}per_second": messages / seconds,
            f"{prefix}server_cpu_us_per_message": 1e6 * self.totals["server_cpu"] / max(messages, 1),
            f"{prefix}client_cpu_share": self.totals["client_cpu"] / seconds,
        }


def mux(job: Job) -> Figures:
    """`MUX_THREADS` threads on one multiplexed connection, then on a connection each, taking turns.

    `per_second` and `server_cpu_us_per_message` are the shared connection's;
    the ``lockstep_`` figures the connections' each; `shared_over_lockstep`
    and `server_cpu_ratio` the first over the second.
    """
    plain = [connect(f"{job.host}:{job.port}") for _ in range(MUX_THREADS)]
    try:
        with (
            _multiplexed_twin(job) as twin,
            connect(f"{twin.address[0]}:{twin.address[1]}", multiplexed=True) as shared,
        ):
            sides = (
                ("", _Side(twin.pid, [shared.request] * MUX_THREADS)),
                ("lockstep_", _Side(job.server_pid, [conn.request for conn in plain])),
            )
            for _, side in sides:  # warm-up
                _threads_for(0.05, side.asks)
            for _ in range(MUX_SLICES):
                for _, side in sides:
                    side.run_slice(job.seconds / MUX_SLICES)
    finally:
        for conn in plain:
            conn.close()
    figures = {key: value for prefix, side in sides for key, value in side.figures(prefix).items()}
    figures["shared_over_lockstep"] = float(figures["per_second"]) / float(figures["lockstep_per_second"])
    figures["server_cpu_ratio"] = float(figures["server_cpu_us_per_message"]) / float(
        figures["lockstep_server_cpu_us_per_message"]
    )
    return figures
