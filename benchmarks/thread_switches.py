"""Context switches, futex calls and CPU per round trip of a server on the `many` workload.

Why the threads engine costs more CPU per round trip than the select engine
on `many` (issue 19): a thread per connection hands the GIL from thread to
thread. This counts what that costs, per round trip, with the switch interval
(`sys.setswitchinterval`) set in the server before it starts:

- voluntary and involuntary context switches, summed over the server's
  threads (``/proc/PID/task/*/status``);
- server CPU (``/proc/PID/task/*/schedstat``, nanoseconds);
- with ``--syscalls futex,recvfrom,...`` (needs ``perf`` and the ``syscalls``
  tracepoints), the server's calls of each, from ``perf stat -e
  syscalls:sys_enter_NAME -p PID`` over the same window (which starts 0.3 s
  earlier, while perf attaches: a few idle calls more).

Each server is ``python -m connecteur.bench.servers TARGET`` (the same
servers `connecteur bench` runs), started through this script so that the
switch interval is set first, pinned to CPU 0; the client is this process,
pinned to CPU 1: ``--connections`` connections (1,000, as `connecteur bench`'s
`many`), one 64 B request in flight on each, driven by one epoll loop. The
counters are read once every connection has made a round trip (so every
server thread exists) and again after ``--seconds`` of round trips, before any
connection closes. Each (target, interval) pair runs ``--rounds`` times, taking
turns; the table gives the median round.

    python benchmarks/thread_switches.py [--targets threads,select] [--intervals 0.005,0.0005,0.05]
                                         [--connections 1000] [--seconds 2] [--rounds 3] [--syscalls LIST] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import runpy
import select
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

HEADER_SIZE = 4
MESSAGE = b"x" * 64
FRAME = len(MESSAGE).to_bytes(HEADER_SIZE, "big") + MESSAGE
READY = re.compile(r"serving echo on (\S+):(\d+)")
TIMEOUT = 60.0


def serve(interval: float, argv: list[str]) -> None:
    """Run the bench server `argv` with the switch interval set first (the child side of `start_server`)."""
    sys.setswitchinterval(interval)
    sys.argv = ["connecteur.bench.servers", *argv]
    runpy.run_module("connecteur.bench.servers", run_name="__main__")


def start_server(target: str, interval: float) -> tuple[subprocess.Popen[str], tuple[str, int]]:
    command = [sys.executable, __file__, "--serve", str(interval), "--", target, "--cpu", "0"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], TIMEOUT)
    match = READY.fullmatch(proc.stdout.readline().strip()) if ready else None
    if match is None:
        stop(proc)
        raise RuntimeError(f"the {target} server did not start")
    return proc, (match[1], int(match[2]))


def stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def counters(pid: int) -> dict[str, int]:
    """Context switches and CPU nanoseconds, summed over the process's threads."""
    total = {"voluntary": 0, "involuntary": 0, "cpu_ns": 0}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = (task / "status").read_text()
            schedstat = (task / "schedstat").read_text()
        except FileNotFoundError:  # a thread that ended meanwhile
            continue
        for line in status.splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                total["voluntary"] += int(line.split()[1])
            elif line.startswith("nonvoluntary_ctxt_switches:"):
                total["involuntary"] += int(line.split()[1])
        total["cpu_ns"] += int(schedstat.split()[0])
    return total


def round_trips(socks: list[socket.socket], seconds: float) -> int:
    """One request in flight per connection, for `seconds`; the number of requests the server answered.

    That is the replies read whole in time, and one more per connection: the
    request in flight at the end, whose reply is read before returning.
    """
    poller = select.epoll()
    pending = {sock.fileno(): 0 for sock in socks}
    by_fd = {sock.fileno(): sock for sock in socks}
    for sock in socks:
        poller.register(sock, select.EPOLLIN)
        sock.send(FRAME)
    done, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        for fd, _ in poller.poll(1.0):
            got = pending[fd] + len(by_fd[fd].recv(len(FRAME)))
            if got == len(FRAME):
                done += 1
                got = 0
                by_fd[fd].send(FRAME)
            pending[fd] = got
    for fd, sock in by_fd.items():  # drain the replies in flight, so the next measurement starts clean
        sock.settimeout(TIMEOUT)
        got = pending[fd]
        while got < len(FRAME):
            got += len(sock.recv(len(FRAME) - got))
    poller.close()
    return done + len(socks)


def measure(target: str, interval: float, args: argparse.Namespace) -> dict[str, float]:
    proc, address = start_server(target, interval)
    socks: list[socket.socket] = []
    try:
        for _ in range(args.connections):
            sock = socket.create_connection(address, timeout=TIMEOUT)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            socks.append(sock)
        for sock in socks:  # every server thread exists before the first reading
            sock.sendall(FRAME)
            got = 0
            while got < len(FRAME):
                got += len(sock.recv(len(FRAME) - got))
        perf = None
        if args.syscalls:
            events = ",".join(f"syscalls:sys_enter_{name}" for name in args.syscalls)
            perf = subprocess.Popen(
                ["perf", "stat", "-x,", "-e", events, "-p", str(proc.pid)], stderr=subprocess.PIPE, text=True
            )
            time.sleep(0.3)  # perf attaches to every thread
        before = counters(proc.pid)
        count = round_trips(socks, args.seconds)
        after = counters(proc.pid)
        calls: dict[str, int] = {}
        if perf is not None:
            perf.send_signal(signal.SIGINT)
            _, said = perf.communicate(timeout=TIMEOUT)
            for line in said.splitlines():
                if "sys_enter_" in line:
                    calls[line.split("sys_enter_")[1].split(",")[0]] = int(line.split(",")[0])
    finally:
        for sock in socks:
            sock.close()
        stop(proc)
    figures = {key: (after[key] - before[key]) / count for key in before}
    figures["cpu_us"] = figures.pop("cpu_ns") / 1000
    figures["round_trips_per_second"] = count / args.seconds
    for name, number in calls.items():
        figures[name] = number / count  # over perf's window, a little longer than the round trips'
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--targets", default="threads,select")
    parser.add_argument("--intervals", default="0.005,0.0005,0.05")
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--syscalls", type=lambda text: text.split(","), default=[], help="count these with perf")
    parser.add_argument("--json", type=Path)
    args, rest = parser.parse_known_args()
    if args.serve is not None:
        serve(args.serve, [arg for arg in rest if arg != "--"])
        return 0
    os.sched_setaffinity(0, {1})
    pairs = [(t, float(i)) for t in args.targets.split(",") for i in args.intervals.split(",")]
    rounds: dict[tuple[str, float], list[dict[str, float]]] = {pair: [] for pair in pairs}
    for number in range(args.rounds):
        for target, interval in pairs if number % 2 == 0 else pairs[::-1]:
            rounds[target, interval].append(measure(target, interval, args))
            print(f"round {number + 1}: {target} at {interval}: done", file=sys.stderr)
    load = os.getloadavg()[0]
    keys = ["cpu_us", "voluntary", "involuntary", *args.syscalls, "round_trips_per_second"]
    print(f"load average (1 min) after the run: {load:.2f}; {args.connections} connections, median of {args.rounds}")
    print(f"{'target':<10} {'interval s':>10} " + " ".join(f"{key[:12]:>12}" for key in keys))
    medians = {}
    for (target, interval), figures in rounds.items():
        median = {key: statistics.median(f[key] for f in figures) for key in keys}
        medians[f"{target}@{interval}"] = {"rounds": figures, "median": median}
        print(f"{target:<10} {interval:>10} " + " ".join(f"{median[key]:>12,.3f}" for key in keys))
    print("per round trip (round trips/s: the median round's rate)")
    if args.json is not None:
        args.json.write_text(json.dumps({"load_average": load, "results": medians}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
