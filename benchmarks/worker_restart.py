#!/usr/bin/env python3
"""How soon a pre-forked worker killed with SIGKILL is replaced, and serving again.

``python benchmarks/worker_restart.py [--kills N] [--engine select|asyncio]``

Runs ``connecteur serve 127.0.0.1:0 --workers 2`` (a handler that replies
with its process id), then N times: SIGKILL one worker and measure

- *forked*: until the parent's new child shows in ``/proc`` (the end of file on
  the dead worker's report pipe wakes the parent at once);
- *serving*: until a request is answered by that new worker. Connections are
  opened one after another until the kernel hands one to its socket; the ones
  it hashes to the dead worker's socket meanwhile wait in that socket's queue,
  which the parent keeps open, and are answered by the replacement.

The kills are `DEATH_WINDOW` + 1 s apart, so that each is a slot's first death
(replaced at once, no back-off) and never adds up to `MAX_DEATHS`.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

from connecteur import connect
from connecteur.server.workers import DEATH_WINDOW

PID_APP = "import os; app = lambda message: str(os.getpid()).encode()"


def child_pids(pid: int) -> set[int]:
    """The live children of `pid`, forked by any of its threads."""
    children: set[int] = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as file:
            children.update(int(child) for child in file.read().split())
    return children


def wait_for(condition: Callable[[], bool], seconds: float = 30.0) -> float:
    """Poll `condition` until true; return when, by `time.monotonic()`."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit("timed out")
        time.sleep(0.0005)
    return time.monotonic()


def one_kill(server: subprocess.Popen[str], address: tuple[str, int]) -> tuple[float, float]:
    """Kill a worker; return the seconds until its replacement is forked, then serving."""
    victim, survivor = sorted(child_pids(server.pid))
    killed = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    forked = wait_for(lambda: len(child_pids(server.pid) - {victim, survivor}) == 1)
    (replacement,) = child_pids(server.pid) - {victim, survivor}
    while True:
        with connect(address, timeout=30) as conn:
            if int(conn.request(b"pid")) == replacement:
                return forked - killed, time.monotonic() - killed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--engine", choices=("select", "asyncio"), default="select")
    args = parser.parse_args()
    serve = (
        f"server = connecteur.Server(app, '127.0.0.1:0', engine={args.engine!r}, workers=2); "
        "server.serve_forever(ready=lambda: print(server.address[1], flush=True))"
    )
    server = subprocess.Popen(
        [sys.executable, "-c", f"{PID_APP}; import connecteur; {serve}"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        wait_for(lambda: len(child_pids(server.pid)) == 2)
        figures = []
        for round_ in range(args.kills):
            if round_:
                time.sleep(DEATH_WINDOW + 1)
            figures.append(one_kill(server, ("127.0.0.1", port)))
            print(f"kill {round_ + 1}: forked after {figures[-1][0] * 1000:.1f} ms, serving after "
                  f"{figures[-1][1] * 1000:.1f} ms", flush=True)  # fmt: skip
        for name, column in (("forked", 0), ("serving", 1)):
            values = [figure[column] * 1000 for figure in figures]
            print(f"{name}: median {statistics.median(values):.1f} ms, max {max(values):.1f} ms")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)


if __name__ == "__main__":
    main()
