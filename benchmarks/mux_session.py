#!/usr/bin/env python3
"""Microseconds per message of one server connection's `Session`, plain against multiplexed, in-process.

``python benchmarks/mux_session.py [--seconds S] [--batch N] [--instructions]``

No socket, no thread: a `Session` made as an engine makes it, fed the wire
bytes of 64 B requests, its replies taken after each read. So it shows what
the session and the handler cost a message, and nothing of the kernel: the
difference between the two rows is what the multiplexing envelope costs the
server. Two shapes of read: ``rr``, one request per read (a client waiting
for each reply), and ``batch``, `--batch` requests per read (many requests
in flight, as on a connection that threads share). The handler is a plain
function returning its message, the fast path of both.

``--instructions`` counts instead the user-space instructions one more message
costs, under ``valgrind --tool=callgrind`` (a short and a long run of each, the
difference divided by the difference in messages, as ``instructions.py``
does): a figure a busy machine cannot move, which timings on a shared VM are not.
"""

from __future__ import annotations

import argparse
import re
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

from connecteur.framing import Buffer, LengthPrefixed
from connecteur.server import engine_config
from connecteur.server._budget import Budget
from connecteur.server._session import Session

PAYLOAD = b"x" * 64
FRAMING = LengthPrefixed()


class _Link:
    """What the `Peer` calls; never called here (the handler sends nothing)."""

    def send(self, message: Buffer, policy: str | None = None) -> None:
        raise AssertionError("unused")

    def close(self) -> None:
        raise AssertionError("unused")


class _Holder:
    def pause_reading_for_budget(self, paused: bool) -> None:
        pass

    def evict(self, error: BaseException) -> None:
        pass


def _session(multiplexed: bool) -> Session:
    config = engine_config(
        lambda message: message,
        framing=FRAMING,
        max_connections=10,
        idle_timeout=None,
        message_timeout=None,
        multiplexed=multiplexed,
    )
    budget = Budget(config.max_buffered, config.counters, lambda seconds, action: None)
    session = Session(
        config, ("127.0.0.1", 1), _Link(), traffic=config.counters.traffic(), budget=budget, holder=_Holder()
    )
    session.start()
    return session


def _read(multiplexed: bool, count: int) -> bytes:
    """The wire bytes of `count` requests, as one read."""
    if not multiplexed:
        return FRAMING.encode(PAYLOAD) * count
    return b"".join(FRAMING.encode(struct.pack("!BI", 1, n + 1) + PAYLOAD) for n in range(count))


def per_message(multiplexed: bool, batch: int, seconds: float) -> float:
    """Microseconds per message, the best of 5 rounds of about `seconds` / 5 each."""
    session, data = _session(multiplexed), _read(multiplexed, batch)
    receive, take = session.receive_data, session.data_to_send
    best = float("inf")
    reads = _calibrate(lambda: (receive(data), take()), seconds / 5)
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(reads):
            receive(data)
            take()
        best = min(best, (time.perf_counter() - start) / (reads * batch))
    assert session.error is None, session.error
    return best * 1e6


def _calibrate(step: Callable[[], object], seconds: float) -> int:
    reads, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        reads += 1
    return max(reads, 1)


def _serve(multiplexed: bool, batch: int, reads: int) -> None:
    """Feed `reads` reads of `batch` requests: what callgrind counts."""
    session, data = _session(multiplexed), _read(multiplexed, batch)
    for _ in range(reads):
        session.receive_data(data)
        session.data_to_send()
    assert session.error is None, session.error


def instructions(multiplexed: bool, batch: int) -> float:
    """Instructions one more message costs, counted by callgrind."""
    reads = (2_000, 12_000) if batch == 1 else (200, 1_200)
    totals = []
    with tempfile.TemporaryDirectory() as scratch:
        for count in reads:
            out = f"{scratch}/{count}.callgrind"
            command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, __file__]
            command += ["--serve", f"{int(multiplexed)},{batch},{count}"]
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            with open(out) as data:
                totals.append(int(re.findall(r"^(?:summary|totals): (\d+)", data.read(), re.MULTILINE)[0]))
    return (totals[1] - totals[0]) / ((reads[1] - reads[0]) * batch)


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per figure (default 2)")
    parser.add_argument("--batch", type=int, default=100, help="requests per read in the batch shape (default 100)")
    parser.add_argument("--instructions", action="store_true", help="count instructions under callgrind instead")
    parser.add_argument("--serve", help=argparse.SUPPRESS)  # MULTIPLEXED,BATCH,READS: one run under callgrind
    args = parser.parse_args()
    if args.serve:
        multiplexed, batch, reads = map(int, args.serve.split(","))
        _serve(bool(multiplexed), batch, reads)
        return
    unit = "instructions per message (callgrind)" if args.instructions else "µs per message, best of 5"
    print(f"{'':12s}{'rr':>12s}{'batch':>12s}   ({unit})")
    for multiplexed in (False, True):
        if args.instructions:
            rr, batch = instructions(multiplexed, 1), instructions(multiplexed, args.batch)
            print(f"{'multiplexed' if multiplexed else 'plain':12s}{rr:12,.0f}{batch:12,.0f}", flush=True)
        else:
            rr, batch = per_message(multiplexed, 1, args.seconds), per_message(multiplexed, args.batch, args.seconds)
            print(f"{'multiplexed' if multiplexed else 'plain':12s}{rr:12.2f}{batch:12.2f}", flush=True)


if __name__ == "__main__":
    main()
