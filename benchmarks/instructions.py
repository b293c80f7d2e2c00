#!/usr/bin/env python3
"""User-space instructions per message of each server, counted by callgrind: a figure noise cannot move.

``python benchmarks/instructions.py [--targets LIST] [--workloads LIST] [--json FILE]``

On a shared VM, ``connecteur bench`` figures move by tens of percent between
rounds, which hides a change worth 5%. Instructions executed in user space
do not move: each server (the same ones ``connecteur bench`` runs) is started
under ``valgrind --tool=callgrind`` twice, once to serve a few messages and
once many more, and the difference of the two totals, divided by the
difference in messages, is what one more message costs it; start-up and
shutdown cancel out. Repeated runs agree within 0.5%.

What it does not see: the kernel (system calls, wake-ups, copies), and time
itself: an instruction that misses the cache costs more than one that does
not. So it tells how much Python a server runs per message, not its speed;
``connecteur bench`` remains the judge of that.

Workloads, 64 B messages with connecteur's 4-byte length header:

- ``many``: 100 connections, one request in flight on each (``connecteur
  bench`` uses 1,000; under valgrind a server is about 50 times slower);
- ``rr``: one connection, one request at a time;
- ``pipeline``: one connection, a thread sending 500 messages per write;
- ``mux-rr`` and ``mux-pipeline``: ``rr`` and ``pipeline`` on a multiplexed
  connection (the server started with ``--multiplexed``; engines only), each
  request in its envelope (64 B of payload, 5 B of kind and id): what the
  envelope costs the server per message, against the plain figures.

Needs valgrind (``apt-get install valgrind``). About 10 s per figure. The
legend (and the JSON's ``build``) says which build ran: the servers run this
interpreter's connecteur, so run it with a compiled install's Python to count
the compiled build.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from connecteur.bench.servers import ENGINES

TIMES = "\N{MULTIPLICATION SIGN}"
HEADER = struct.Struct("!I")
MESSAGE = HEADER.pack(64) + b"x" * 64
MUX_MESSAGE = HEADER.pack(69) + struct.pack("!BI", 1, 1) + b"x" * 64  # a REQUEST; its REPLY is as long
COUNTS = {"many": (2_000, 12_000), "rr": (1_000, 6_000), "pipeline": (20_000, 220_000)}
COUNTS |= {"mux-rr": COUNTS["rr"], "mux-pipeline": COUNTS["pipeline"]}
"""Messages of the short and the long run of each workload."""
MANY_CONNECTIONS = 100
BATCH = 500  # pipeline: messages per write
START_TIMEOUT = 600.0  # seconds for a server under valgrind to start listening: 120 failed at loads above 10
IO_TIMEOUT = 60.0


def _many(port: int, total: int, connections: int = MANY_CONNECTIONS, message: bytes = MESSAGE) -> None:
    socks = [socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT) for _ in range(connections)]
    try:
        poller = select.epoll()
        by_fd = {sock.fileno(): sock for sock in socks}
        unread = dict.fromkeys(by_fd, 0)  # bytes of replies received and not yet counted
        for sock in socks:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            poller.register(sock.fileno(), select.EPOLLIN)
        sent = done = 0
        for sock in socks[:total]:
            sock.send(message)
            sent += 1
        while done < total:
            ready = poller.poll(IO_TIMEOUT)
            if not ready:
                raise TimeoutError(f"no reply within {IO_TIMEOUT} s")
            for fd, _ in ready:
                data = by_fd[fd].recv(65536)
                if not data:
                    raise ConnectionError("the server closed a connection")
                unread[fd] += len(data)
                while unread[fd] >= len(message):
                    unread[fd] -= len(message)
                    done += 1
                    if sent < total:
                        by_fd[fd].send(message)
                        sent += 1
        poller.close()
    finally:
        for sock in socks:
            sock.close()


def _rr(port: int, total: int) -> None:
    _many(port, total, connections=1)


def _pipeline(port: int, total: int, message: bytes = MESSAGE) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        batches = total // BATCH
        errors: list[BaseException] = []

        def send() -> None:
            try:
                for _ in range(batches):
                    sock.sendall(message * BATCH)
            except OSError as exc:
                errors.append(exc)

        sender = threading.Thread(target=send)
        sender.start()
        try:
            want, got = batches * BATCH * len(message), 0
            while got < want:
                data = sock.recv(262144)
                if not data:
                    raise ConnectionError("the server closed the connection")
                got += len(data)
        finally:
            sender.join()
        if errors:
            raise errors[0]


def _mux_rr(port: int, total: int) -> None:
    _many(port, total, connections=1, message=MUX_MESSAGE)


def _mux_pipeline(port: int, total: int) -> None:
    _pipeline(port, total, message=MUX_MESSAGE)


CLIENTS: dict[str, Callable[[int, int], None]] = {
    "many": _many,
    "rr": _rr,
    "pipeline": _pipeline,
    "mux-rr": _mux_rr,
    "mux-pipeline": _mux_pipeline,
}


def _instructions(target: str, workload: str, count: int, scratch: Path) -> int:
    """Total user-space instructions of `target` serving `count` messages of `workload`, start to exit."""
    out = scratch / f"{target}-{workload}-{count}.callgrind"
    command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable]
    command += ["-m", "connecteur.bench.servers", target, "--cpu", "0"]
    if workload.startswith("mux"):
        command.append("--multiplexed")
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert server.stdout is not None
        line = _read_line(server.stdout.fileno(), START_TIMEOUT)
        match = re.search(r":(\d+)\s*$", line)
        if match is None:
            raise RuntimeError(f"{target} did not say its port: {line!r}")
        CLIENTS[workload](int(match.group(1)), count)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(IO_TIMEOUT)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    for text in out.read_text().splitlines():
        if text.startswith(("summary:", "totals:")):
            return int(text.split()[1])
    raise RuntimeError(f"no instruction total in {out}")


def _read_line(fd: int, timeout: float) -> str:
    data, deadline = b"", time.monotonic() + timeout
    while not data.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            raise TimeoutError(f"the server did not start within {timeout} s")
        chunk = os.read(fd, 4096)
        if not chunk:
            raise RuntimeError("the server exited before listening")
        data += chunk
    return data.decode()


def per_message(target: str, workload: str, scratch: Path) -> float:
    """Instructions one more message of `workload` costs `target`."""
    short, long = COUNTS[workload]
    return (_instructions(target, workload, long, scratch) - _instructions(target, workload, short, scratch)) / (
        long - short
    )


def _build() -> str:
    """Which connecteur build the servers ran (they run this interpreter): compiled or pure Python."""
    command = [sys.executable, "-c", "import connecteur; print(connecteur.BUILD)"]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()


def main(argv: list[str] | None = None) -> int:
    """Measure, print the table, write the JSON; return the exit status."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--targets", default="select,threads,asyncio,epoll-loop,uvloop-protocol", metavar="LIST")
    parser.add_argument("--workloads", default="many,rr,pipeline", metavar="LIST")
    parser.add_argument("--reference", default="uvloop-protocol", help="the target the others are divided by")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE")
    args = parser.parse_args(argv)
    targets, workloads = args.targets.split(","), args.workloads.split(",")
    if shutil.which("valgrind") is None:
        print("instructions.py: valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    if unknown := [w for w in workloads if w not in CLIENTS]:
        print(f"instructions.py: unknown workload {unknown[0]!r}; choose among {', '.join(CLIENTS)}", file=sys.stderr)
        return 2
    figures: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for workload in workloads:
            for target in targets:
                if workload.startswith("mux") and target not in ENGINES:  # a peer: it speaks no envelope
                    continue
                figure = per_message(target, workload, Path(scratch))
                figures.setdefault(workload, {})[target] = figure
                print(f"{workload:9s} {target:18s} {figure:9,.0f} instructions per message", flush=True)
    print(f"\n{'':18s}" + "".join(f"{w:>22s}" for w in workloads))
    for target in targets:
        cells = []
        for workload in workloads:
            value, reference = figures[workload].get(target), figures[workload].get(args.reference)
            if value is None:
                cells.append("-")
                continue
            ratio = f" ({value / reference:.2f}{TIMES})" if reference and target != args.reference else ""
            cells.append(f"{value:,.0f}{ratio}")
        print(f"{target:18s}" + "".join(f"{c:>22s}" for c in cells))
    legend = f"; (n{TIMES}): divided by {args.reference}'s" if args.reference in targets else ""
    build = _build()
    print(f"\nUser-space instructions per message (callgrind){legend}; connecteur {build}.")
    if args.json:
        document = {"build": build, "instructions_per_message": figures}
        Path(args.json).write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
