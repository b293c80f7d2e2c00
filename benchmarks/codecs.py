"""What a codec costs next to the socket work: raw bytes, Struct and Json, one run.

    python benchmarks/codecs.py [--seconds S] [--pipelined N]

Three echo servers on the select engine, each in its own process (pinned to
CPU 0 when there are two CPUs; this client on CPU 1): raw 64-byte messages,
a ``Struct("!IId")`` record, and a small JSON object. For each: request/response
round trips per second on one connection, pipelined messages per second, and
the server's CPU time per message. Ratios are against raw bytes in the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

from connecteur import Server, connect
from connecteur.codecs import Codec, Json, Struct

KINDS: dict[str, tuple[Codec | None, Any]] = {
    "raw bytes": (None, b"x" * 64),
    "Struct('!IId')": (Struct("!IId"), (7, 42, 3.25)),
    "Json()": (Json(), {"id": 7, "name": "sensor-42", "value": 3.25, "ok": True}),
}


def serve(kind: str) -> None:
    """Run one echo server until stdin closes (in the child process)."""
    codec, _ = KINDS[kind]
    with Server(lambda value: value, "127.0.0.1:0", codec=codec, engine="select") as server:
        print(server.address[1], flush=True)
        sys.stdin.read()


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as file:
        fields = file.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(port: int, pid: int, kind: str, seconds: float, pipelined: int) -> dict[str, float]:
    codec, value = KINDS[kind]
    with connect(("127.0.0.1", port), codec=codec, timeout=30) as conn:
        before, count, started = cpu_seconds(pid), 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            conn.request(value)
            count += 1
        rr = count / (time.perf_counter() - started)
        rr_cpu = (cpu_seconds(pid) - before) / count * 1e6
        before, started = cpu_seconds(pid), time.perf_counter()
        sender = threading.Thread(target=conn.send_many, args=([value] * pipelined,))
        sender.start()
        for _ in range(pipelined):
            conn.recv()
        sender.join()
        pipe = pipelined / (time.perf_counter() - started)
        pipe_cpu = (cpu_seconds(pid) - before) / pipelined * 1e6
    return {"rr": rr, "rr_cpu_us": rr_cpu, "pipeline": pipe, "pipeline_cpu_us": pipe_cpu}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="request/response time per round")
    parser.add_argument("--pipelined", type=int, default=100_000, help="messages per pipelined round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return 0
    two_cpus = hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2
    servers = {}
    for kind in KINDS:
        process = subprocess.Popen(
            [sys.executable, __file__, "--serve", kind], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        if two_cpus:
            os.sched_setaffinity(process.pid, {0})
        assert process.stdout is not None
        servers[kind] = (process, int(process.stdout.readline()))
    if two_cpus:
        os.sched_setaffinity(0, {1})
    results: dict[str, list[dict[str, float]]] = {kind: [] for kind in KINDS}
    try:
        for round_ in range(args.rounds):
            for kind in KINDS if round_ % 2 == 0 else reversed(KINDS):
                process, port = servers[kind]
                results[kind].append(measure(port, process.pid, kind, args.seconds, args.pipelined))
    finally:
        for process, _ in servers.values():
            assert process.stdin is not None
            process.stdin.close()
            process.wait(10)
            if process.stdout is not None:
                process.stdout.close()
    median = {k: {f: statistics.median(r[f] for r in rs) for f in rs[0]} for k, rs in results.items()}
    raw = median["raw bytes"]
    print(f"select engine, {args.rounds} rounds, medians; server on CPU 0, client on CPU 1: {two_cpus}")
    print(f"{'':16}{'rr/s':>9}{'ratio':>7}{'srv µs':>8}{'pipelined/s':>13}{'ratio':>7}{'srv µs':>8}")
    for kind, figures in median.items():
        print(
            f"{kind:16}{figures['rr']:>9,.0f}{figures['rr'] / raw['rr']:>7.2f}{figures['rr_cpu_us']:>8.1f}"
            f"{figures['pipeline']:>13,.0f}{figures['pipeline'] / raw['pipeline']:>7.2f}"
            f"{figures['pipeline_cpu_us']:>8.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
