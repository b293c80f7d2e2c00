#!/usr/bin/env python3
"""Compare three asyncio echo-server designs in one run, on asyncio's loop and on uvloop.

The designs, each a minimal length-prefixed echo server (4-byte big-endian
header, `LengthPrefixed` from connecteur):

* ``buffered``: an ``asyncio.BufferedProtocol`` whose ``get_buffer`` returns a
  reusable memoryview of one preallocated bytearray (256 KiB, shared by the
  connections of the server, as in connecteur's asyncio engine);
  ``buffer_updated`` feeds a ``LengthPrefixed().decoder()`` and the encoded
  replies of one read leave in one ``transport.write``;
* ``protocol``: a plain ``asyncio.Protocol``; ``data_received(data)`` feeds the
  same decoder, with the same write policy;
* ``streams``: ``asyncio.start_server``; per message ``readexactly(4)``,
  ``readexactly(n)``, ``writer.write`` and ``await writer.drain()``.

All three give their transports the engine's write-buffer limits (1 MiB high,
256 KiB low); the two protocols pause reading while the transport's buffer is
above them, as the engine does, and streams wait in ``drain()``. The streams'
``StreamReader`` keeps its default limit (64 KiB).

Each design runs on asyncio's default loop and, when it is installed, on
uvloop: one server process each (``python benchmarks/asyncio_protocols.py
--serve DESIGN --loop LOOP`` prints its port on its first stdout line), all
started once and side by side, pinned to one CPU while this script (the
client) is pinned to another. They take turns, workload by workload and round
by round (in reverse order every other round). Workloads, over loopback:

* pipelined: 200,000 messages of 64 bytes on one connection, a sender thread
  writing them all while the main thread reads the echoes;
* bulk: 200 messages of 1 MiB on one connection, the same way;
* many: 200 connections, each doing request/response round trips (one
  64-byte message in flight) for 2 s, driven by one selector-based thread.

Every echoed byte is checked against what was sent. Reported: messages per
second (MiB of payload per second for bulk) and the server's CPU time per
message, each the median of the rounds; the ratios of ``protocol`` and
``streams`` to ``buffered`` on the same loop; then uvloop's figures over
asyncio's, design by design; and how far apart the rounds were. Server CPU is
the on-CPU time of ``/proc/PID/task/*/schedstat`` (nanoseconds): the 10 ms
ticks of ``/proc/PID/stat``'s user + system time are too coarse for a 0.1 s
workload (they are kept in ``--json``, and used where there are no schedstats).

Linux only (``/proc``). Usage:
``python benchmarks/asyncio_protocols.py [--quick] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import select
import selectors
import signal
import socket
import stat
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, cast

import connecteur
from connecteur.errors import FramingError
from connecteur.framing import LengthPrefixed

DESIGNS = {
    "buffered": "asyncio.BufferedProtocol, get_buffer() returns one reusable 256 KiB buffer",
    "protocol": "asyncio.Protocol, data_received(data)",
    "streams": "asyncio.start_server, readexactly(4) + readexactly(n), write + drain per message",
}
REFERENCE = "buffered"
HOST = "127.0.0.1"
BACKLOG = 1024
"""Above the 200 connections the many workload opens at once."""
HIGH_WATER = 2**20
LOW_WATER = 256 * 2**10
"""The transports' write-buffer limits: those of connecteur's asyncio engine."""
RECV_SIZE = 256 * 2**10
"""The buffered design's one read buffer: the size of the engine's, and of the loops' own reads."""
IO_TIMEOUT = 30.0
"""Seconds any single wait may take before the benchmark gives up."""
MANY_CLIENTS = 200
MESSAGE_BYTES = 64
BULK_BYTES = 2**20
CLIENT_RECV = 256 * 2**10
"""The client's read size; at most one bulk message, so a read spans two messages at most."""

FRAMING = LengthPrefixed("!I")
HEADER = struct.Struct("!I")


@dataclass(frozen=True)
class Settings:
    rounds: int
    pipelined_messages: int
    bulk_messages: int
    many_seconds: float


FULL = Settings(rounds=3, pipelined_messages=200_000, bulk_messages=200, many_seconds=2.0)
QUICK = Settings(rounds=1, pipelined_messages=50_000, bulk_messages=50, many_seconds=0.5)


# --- the servers (run in their own processes) -----------------------------------


def set_nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


_BUFFER = bytearray(RECV_SIZE)
_VIEW = memoryview(_BUFFER)


class BufferedEcho(asyncio.BufferedProtocol):
    """Design (a): the loop reads into one preallocated buffer the decoder is fed from."""

    def __init__(self) -> None:
        self.transport = cast(asyncio.Transport, None)
        self.feed = FRAMING.decoder().feed

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)
        transport.set_write_buffer_limits(high=HIGH_WATER, low=LOW_WATER)
        set_nodelay(transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        return _VIEW

    def buffer_updated(self, nbytes: int) -> None:
        try:
            messages = self.feed(_VIEW[:nbytes])
        except FramingError:
            self.transport.abort()
            return
        if messages:
            encode = FRAMING.encode
            if len(messages) == 1:
                self.transport.write(encode(messages[0]))
            else:
                self.transport.write(b"".join([encode(message) for message in messages]))

    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()

    def eof_received(self) -> bool:
        return False  # close once the replies still queued are sent


class PlainEcho(asyncio.Protocol):
    """Design (b): the loop hands each read over as a new bytes object."""

    def __init__(self) -> None:
        self.transport = cast(asyncio.Transport, None)
        self.feed = FRAMING.decoder().feed

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)
        transport.set_write_buffer_limits(high=HIGH_WATER, low=LOW_WATER)
        set_nodelay(transport)

    def data_received(self, data: bytes) -> None:
        try:
            messages = self.feed(data)
        except FramingError:
            self.transport.abort()
            return
        if messages:
            encode = FRAMING.encode
            if len(messages) == 1:
                self.transport.write(encode(messages[0]))
            else:
                self.transport.write(b"".join([encode(message) for message in messages]))

    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()

    def eof_received(self) -> bool:
        return False


async def stream_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Design (c): one message at a time, awaiting each read and each drain."""
    transport = writer.transport
    transport.set_write_buffer_limits(high=HIGH_WATER, low=LOW_WATER)
    set_nodelay(transport)
    readexactly, write, drain, encode = reader.readexactly, writer.write, writer.drain, FRAMING.encode
    header_size, unpack, max_size = HEADER.size, HEADER.unpack, FRAMING.max_size
    try:
        while True:
            (size,) = unpack(await readexactly(header_size))
            if size > max_size:
                break
            write(encode(await readexactly(size)))
            await drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass  # the client closed: between messages, or by aborting
    finally:
        writer.close()


async def serve_forever(design: str) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if stat.S_ISFIFO(os.fstat(0).st_mode):  # started by the benchmark: stop when it goes away

        def stdin_readable() -> None:
            if not os.read(0, 4096):
                loop.remove_reader(0)
                stop.set()

        loop.add_reader(0, stdin_readable)
    server: asyncio.Server
    if design == "streams":
        server = await asyncio.start_server(stream_echo, HOST, 0, backlog=BACKLOG)
    else:
        protocol = BufferedEcho if design == "buffered" else PlainEcho
        server = await loop.create_server(protocol, HOST, 0, backlog=BACKLOG)
    print(server.sockets[0].getsockname()[1], flush=True)
    await stop.wait()
    server.close()


def serve(design: str, loop: str, cpu: int | None) -> int:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    new_loop = asyncio.new_event_loop
    if loop == "uvloop":
        import uvloop

        new_loop = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=new_loop) as runner:
        runner.run(serve_forever(design))
    return 0


# --- the client side ---------------------------------------------------------------


def read_stat(pid: int) -> list[str]:
    """/proc/PID/stat's fields from field 3 on (after the command name)."""
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()


class ServerProcess:
    """One design on one loop, in its own process."""

    def __init__(self, design: str, loop: str, cpu: int | None, stderr: IO[bytes]) -> None:
        self.design = design
        self.loop = loop
        self.label = f"{design}@{loop}"
        self._stderr = stderr
        package_root = str(Path(connecteur.__file__).resolve().parent.parent)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        command = [sys.executable, str(Path(__file__).resolve()), "--serve", design, "--loop", loop]
        if cpu is not None:
            command += ["--cpu", str(cpu)]
        self.proc = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, env=env, text=True
        )
        self.pid = self.proc.pid
        try:
            self.address = (HOST, self._read_port())
            self.idle_fds = 0
            # Warm up twice: a loop may keep descriptors opened on its first connection (uvloop does).
            for _ in range(2):
                with socket.create_connection(self.address, timeout=IO_TIMEOUT) as sock:
                    round_trip(sock)
            self.idle_fds = self._steady_fds()
        except BaseException:
            self.stop()
            raise

    def _read_port(self) -> int:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], IO_TIMEOUT)
        line = self.proc.stdout.readline() if ready else ""
        if not line.strip().isdigit():
            raise RuntimeError(f"the {self.label} server did not start: {line!r} {self.error_output()}")
        return int(line)

    def error_output(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace").strip()

    def cpu_seconds(self) -> tuple[float, float]:
        """CPU time of the server process so far: (on-CPU nanoseconds as seconds, user + system ticks as seconds).

        The first is the sum of ``/proc/PID/task/*/schedstat``'s first field
        (nanoseconds; a thread that has exited drops out, and the servers start
        none while measured); ``nan`` without schedstats. The second is fields
        14 and 15 of ``/proc/PID/stat`` (utime, stime), in clock ticks (10 ms):
        too coarse for the 0.1 s a workload may last.
        """
        fields = read_stat(self.pid)
        ticks = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        nanoseconds = 0
        try:
            for task in os.scandir(f"/proc/{self.pid}/task"):
                with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # the thread ended meanwhile
                    nanoseconds += int(Path(task.path, "schedstat").read_text().split()[0])
        except OSError:
            return math.nan, ticks
        return nanoseconds / 1e9, ticks

    def open_fds(self) -> int:
        size = os.stat(f"/proc/{self.pid}/fd").st_size  # Linux >= 6.2 counts them here
        return size if size > 0 else len(os.listdir(f"/proc/{self.pid}/fd"))

    def _steady_fds(self) -> int:
        """Poll the descriptor count until it holds still for 0.3 s; return it."""
        count, since = self.open_fds(), time.monotonic()
        deadline = since + IO_TIMEOUT
        while (now := time.monotonic()) - since < 0.3:
            if now > deadline:
                raise TimeoutError(f"the {self.label} server's descriptor count did not settle")
            time.sleep(0.01)
            if (latest := self.open_fds()) != count:
                count, since = latest, time.monotonic()
        return count

    def wait_idle(self) -> None:
        """Wait until the server has closed the connections of the last workload."""
        deadline = time.monotonic() + IO_TIMEOUT
        while self.open_fds() > self.idle_fds:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the {self.label} server kept its connections open")
            time.sleep(0.002)

    def stop(self) -> str:
        """Close its stdin (it stops), wait, and return what it wrote on stderr."""
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(IO_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()
        output = self.error_output()
        if self.proc.returncode != 0:
            output = f"exit status {self.proc.returncode}\n{output}".strip()
        return output


@contextlib.contextmanager
def running(design: str, loop: str, cpu: int | None, problems: list[str]) -> Iterator[ServerProcess]:
    with tempfile.TemporaryFile() as stderr:
        server = ServerProcess(design, loop, cpu, stderr)
        try:
            yield server
        finally:
            if errors := server.stop():
                problems.append(f"server {server.label} said:\n{errors}")


@dataclass
class Round:
    messages: int
    payload_bytes: int
    seconds: float
    server_cpu_seconds: float
    """From schedstat (ns), or from /proc/PID/stat's ticks where there are no schedstats."""
    server_cpu_seconds_stat: float
    """From /proc/PID/stat (utime + stime, 10 ms ticks)."""
    client_cpu_seconds: float

    @property
    def per_second(self) -> float:
        return self.messages / self.seconds

    @property
    def mib_per_second(self) -> float:
        return self.payload_bytes / 2**20 / self.seconds

    @property
    def cpu_us_per_message(self) -> float:
        return 1e6 * self.server_cpu_seconds / self.messages


class Meter:
    """Wall-clock time, server CPU and client CPU from now until `stop`."""

    def __init__(self, server: ServerProcess) -> None:
        self._server = server
        self._cpu, self._ticks = server.cpu_seconds()
        self._client = time.process_time()
        self._start = time.perf_counter()

    def stop(self, messages: int, payload_bytes: int) -> Round:
        seconds = time.perf_counter() - self._start
        client = time.process_time() - self._client
        cpu, ticks = self._server.cpu_seconds()
        precise = cpu - self._cpu
        ticks -= self._ticks
        return Round(messages, payload_bytes, seconds, ticks if math.isnan(precise) else precise, ticks, client)


PING = FRAMING.encode(bytes(range(MESSAGE_BYTES)))


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the server closed the connection")
        data += chunk
    return bytes(data)


def round_trip(sock: socket.socket) -> None:
    sock.sendall(PING)
    if recv_exactly(sock, len(PING)) != PING:
        raise AssertionError("the server did not echo the message sent")


def client_socket(server: ServerProcess) -> socket.socket:
    sock = socket.create_connection(server.address, timeout=IO_TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def streamed(server: ServerProcess, period: bytes, repetitions: int, messages: int, payload: int) -> Round:
    """Send `period` `repetitions` times from a thread while this one reads and checks the echo.

    An echo server sends back exactly the bytes it received, so every read is
    compared (``bytes.startswith`` at an offset: a memcmp, no copy) with the
    bytes sent at the same place in the stream.
    """
    total = len(period) * repetitions
    expected = period * 2 if repetitions > 1 else period  # any read at any offset is a slice of it
    assert repetitions == 1 or len(period) >= CLIENT_RECV
    with client_socket(server) as sock:
        round_trip(sock)  # the connection is accepted and set up before the clock starts
        failures: list[BaseException] = []

        def send() -> None:
            try:
                for _ in range(repetitions):
                    sock.sendall(period)
            except BaseException as exc:
                failures.append(exc)

        sender = threading.Thread(target=send, name="sender")
        buffer = memoryview(bytearray(CLIENT_RECV))
        received = 0
        meter = Meter(server)
        sender.start()
        try:
            while received < total:
                n = sock.recv_into(buffer, min(CLIENT_RECV, total - received))
                if not n:
                    raise ConnectionError("the server closed the connection")
                if not expected.startswith(buffer[:n], received % len(period)):
                    raise AssertionError(f"the echo differs from the bytes sent in bytes {received}-{received + n}")
                received += n
        except BaseException:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # unblock the sender
            raise
        finally:
            sender.join(IO_TIMEOUT)
        result = meter.stop(messages, payload)
    if failures:
        raise failures[0]
    return result


def pipelined_stream(count: int) -> bytes:
    """`count` distinct 64-byte messages (each starts with its number), framed, back to back."""
    filler = bytes(range(MESSAGE_BYTES - 8))
    return b"".join([FRAMING.encode(index.to_bytes(8, "big") + filler) for index in range(count)])


def bulk_message() -> bytes:
    return FRAMING.encode(bytes(range(256)) * (BULK_BYTES // 256))


def many(server: ServerProcess, clients: int, seconds: float) -> Round:
    """Round trips over `clients` connections, one message in flight on each, from one selector thread."""
    wire = PING
    size = len(wire)
    with contextlib.ExitStack() as stack:
        selector = stack.enter_context(selectors.DefaultSelector())
        socks = [stack.enter_context(client_socket(server)) for _ in range(clients)]
        for sock in socks:  # every connection accepted and set up before the clock starts
            round_trip(sock)
        for sock in socks:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ, bytearray())
        count = 0
        outstanding = clients
        meter = Meter(server)
        end = time.perf_counter() + seconds
        for sock in socks:
            sock.send(wire)  # 68 bytes into an empty buffer: sent whole
        while outstanding:
            events = selector.select(IO_TIMEOUT)
            if not events:
                raise TimeoutError("no reply from the server")
            again = time.perf_counter() < end
            for key, _ in events:
                sock = cast(socket.socket, key.fileobj)
                pending: bytearray = key.data
                data = sock.recv(4096)
                if not data:
                    raise ConnectionError("the server closed a connection")
                pending += data
                if len(pending) < size:
                    continue
                if pending != wire:
                    raise AssertionError(f"the server replied {bytes(pending[:80])!r}, not the message sent")
                pending.clear()
                count += 1
                if again:
                    sock.send(wire)
                else:
                    outstanding -= 1
        return meter.stop(count, count * MESSAGE_BYTES)


# --- setup and report ----------------------------------------------------------------


def cpu_times() -> dict[str, list[int]]:
    """/proc/stat's per-CPU lines: user, nice, system, idle, iowait, irq, softirq, steal, ... (ticks)."""
    lines = Path("/proc/stat").read_text().splitlines()
    return {line.split()[0]: [int(v) for v in line.split()[1:]] for line in lines if line.startswith("cpu")}


def machine_note(before: dict[str, list[int]], after: dict[str, list[int]], cpus: list[int]) -> str:
    """The share of each CPU's time the hypervisor took (steal) and softirqs used during the run."""
    parts = []
    for cpu in cpus:
        name = f"cpu{cpu}"
        if name not in before or name not in after:
            continue
        delta = [b - a for a, b in zip(before[name], after[name], strict=False)]
        total = sum(delta[:8]) or 1
        steal = delta[7] if len(delta) > 7 else 0
        parts.append(f"CPU {cpu} {steal / total:.0%} steal, {delta[6] / total:.0%} softirq")
    return "during the run: " + "; ".join(parts) if parts else ""


def pin_cpus() -> tuple[int | None, str]:
    """Pin this process to one CPU and choose another for the servers, when possible."""
    if not hasattr(os, "sched_setaffinity"):
        return None, "not pinned: os.sched_setaffinity is not available"
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, f"not pinned: only {len(cpus)} CPU available"
    server_cpu, client_cpu = (0, 1) if {0, 1} <= set(cpus) else (cpus[0], cpus[1])
    os.sched_setaffinity(0, {client_cpu})
    return server_cpu, f"server processes pinned to CPU {server_cpu}, client (this script) to CPU {client_cpu}"


def ratio(a: float | None, b: float | None) -> str:
    if a is None or not b:
        return "-"
    value = a / b
    return f"{value:.2f}" if value >= 0.0995 else f"{value:.2g}"


Results = dict[str, dict[str, dict[str, list[Round]]]]
"""loop -> design -> workload -> rounds."""


def median(rounds: list[Round], figure: Callable[[Round], float]) -> float:
    return statistics.median(figure(r) for r in rounds)


def rows(settings: Settings) -> list[tuple[str, str, Callable[[Round], float], str]]:
    """(label, workload, figure, format) for each line of a table."""
    cpu = ("  server CPU per message (µs)", lambda r: r.cpu_us_per_message, ".2f")
    return [
        (f"pipelined, {settings.pipelined_messages:,} x 64 B (msg/s)", "pipelined", lambda r: r.per_second, ",.0f"),
        (cpu[0], "pipelined", cpu[1], cpu[2]),
        (f"bulk, {settings.bulk_messages} x 1 MiB (MiB/s)", "bulk", lambda r: r.mib_per_second, ",.0f"),
        (cpu[0], "bulk", cpu[1], ",.0f"),
        (f"many, {MANY_CLIENTS} conns x {settings.many_seconds:g} s (msg/s)", "many", lambda r: r.per_second, ",.0f"),
        (cpu[0], "many", cpu[1], cpu[2]),
    ]


def table(headers: list[str], lines: list[tuple[str, list[str]]], title: str) -> list[str]:
    widths = [max(9, len(header)) for header in headers]
    width = max(len(title), *(len(label) for label, _ in lines))
    out = [f"{title:{width}}" + "".join(f"  {h:>{w}}" for h, w in zip(headers, widths, strict=True))]
    for label, cells in lines:
        out.append(f"{label:{width}}" + "".join(f"  {c:>{w}}" for c, w in zip(cells, widths, strict=True)))
    return out


def report(loops: list[str], results: Results, settings: Settings) -> list[str]:
    others = [design for design in DESIGNS if design != REFERENCE]
    headers = [*DESIGNS, *(f"{design}/{REFERENCE}" for design in others)]
    out: list[str] = []
    for loop in loops:
        lines = []
        for label, workload, figure, spec in rows(settings):
            values = {design: median(results[loop][design][workload], figure) for design in DESIGNS}
            cells = [format(values[design], spec) for design in DESIGNS]
            cells += [ratio(values[design], values[REFERENCE]) for design in others]
            lines.append((label, cells))
        out += [*table(headers, lines, f"loop: {loop}"), ""]
    if "uvloop" in loops and "asyncio" in loops:
        lines = []
        for label, workload, figure, _ in rows(settings):
            cells = [
                ratio(median(results["uvloop"][d][workload], figure), median(results["asyncio"][d][workload], figure))
                for d in DESIGNS
            ]
            lines.append((label, cells))
        out += [*table(list(DESIGNS), lines, "uvloop/asyncio, same design"), ""]
    if settings.rounds > 1:
        out.append(spread(loops, results))
    return out


def spread(loops: list[str], results: Results) -> str:
    """How far apart the rounds of each figure are: largest over smallest, minus one."""
    figures: dict[str, Callable[[Round], float]] = {
        "throughput": lambda r: r.per_second,
        "CPU": lambda r: r.cpu_us_per_message,
    }
    spreads: list[tuple[float, str]] = []
    for loop in loops:
        for design in DESIGNS:
            for workload, rounds in results[loop][design].items():
                for name, figure in figures.items():
                    values = [figure(r) for r in rounds]
                    if min(values) > 0:
                        spreads.append((max(values) / min(values) - 1, f"{workload} {name}, {design}@{loop}"))
    if not spreads:
        return ""
    typical = statistics.median(value for value, _ in spreads)
    worst, where = max(spreads)
    return f"spread between rounds (largest/smallest - 1): median {typical:.0%}, largest {worst:.0%} ({where})"


def to_json(value: Any) -> Any:
    if isinstance(value, Round):
        return {
            **asdict(value),
            "per_second": value.per_second,
            "mib_per_second": value.mib_per_second,
            "cpu_us_per_message": value.cpu_us_per_message,
        }
    if isinstance(value, dict):
        return {key: to_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [to_json(item) for item in value]
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Compare asyncio echo-server designs (BufferedProtocol, Protocol, streams) "
        "on asyncio's loop and uvloop (Linux, loopback only)."
    )
    parser.add_argument("--quick", action="store_true", help="1 round, fewer messages, 0.5 s of round trips")
    parser.add_argument("--json", metavar="FILE", type=Path, help="also write the raw figures to FILE")
    parser.add_argument("--serve", choices=list(DESIGNS), help=argparse.SUPPRESS)  # internal: run one server
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio", help=argparse.SUPPRESS)
    parser.add_argument("--cpu", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve is not None:
        return serve(args.serve, args.loop, args.cpu)
    if not Path("/proc/self/stat").exists():
        parser.error("this benchmark reads /proc: Linux only")

    settings = QUICK if args.quick else FULL
    began = time.perf_counter()
    loops = ["asyncio"]
    if importlib.util.find_spec("uvloop") is not None:
        loops.append("uvloop")
        loop_note = f"loops: asyncio's default, uvloop {importlib.metadata.version('uvloop')}"
    else:
        loop_note = "loops: asyncio's default only (uvloop is not installed)"
    server_cpu, pinning = pin_cpus()
    times_before = cpu_times()

    print(f"asyncio protocol designs benchmark ({'quick' if args.quick else 'full'} run)")
    print(f"Python {platform.python_version()}, {platform.system()} {platform.release()}, {os.cpu_count()} CPUs")
    print(pinning)
    print(loop_note)
    for design, text in DESIGNS.items():
        print(f"  {design}: {text}")
    print("echo servers, 4-byte big-endian length header, loopback TCP")
    if Path("/proc/self/schedstat").exists():
        print("server CPU: on-CPU time from /proc/PID/task/*/schedstat (ns); --json adds /proc/PID/stat's ticks")
    else:
        print("server CPU: utime + stime from /proc/PID/stat (10 ms ticks: coarse for short workloads)")
    if settings.rounds > 1:
        print(f"{settings.rounds} rounds, servers taking turns; each figure is the median of its rounds")
    print()

    pipelined_wire = pipelined_stream(settings.pipelined_messages)
    bulk_wire = bulk_message()
    workloads: dict[str, Callable[[ServerProcess], Round]] = {
        "pipelined": lambda server: streamed(
            server, pipelined_wire, 1, settings.pipelined_messages, settings.pipelined_messages * MESSAGE_BYTES
        ),
        "bulk": lambda server: streamed(
            server, bulk_wire, settings.bulk_messages, settings.bulk_messages, settings.bulk_messages * BULK_BYTES
        ),
        "many": lambda server: many(server, MANY_CLIENTS, settings.many_seconds),
    }
    results: Results = {loop: {design: {} for design in DESIGNS} for loop in loops}
    problems: list[str] = []
    with contextlib.ExitStack() as stack:
        servers = [
            stack.enter_context(running(design, loop, server_cpu, problems)) for loop in loops for design in DESIGNS
        ]
        for round_number in range(settings.rounds):
            order = servers if round_number % 2 == 0 else servers[::-1]
            for key, workload in workloads.items():
                for server in order:
                    results[server.loop][server.design].setdefault(key, []).append(workload(server))
                    server.wait_idle()

    for line in report(loops, results, settings):
        print(line)
    print("msg/s and MiB/s (payload echoed): higher is better; CPU: lower is better. Compare ratios within one run.")
    if note := machine_note(times_before, cpu_times(), sorted(os.sched_getaffinity(0) | {server_cpu or 0})):
        print(note)
    for problem in problems:
        print(problem, file=sys.stderr)
    elapsed = time.perf_counter() - began
    print(f"total time {elapsed:.1f} s")

    if args.json is not None:
        document = {
            "quick": args.quick,
            "settings": asdict(settings),
            "designs": DESIGNS,
            "loops": loops,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "pinning": pinning,
            "message_bytes": MESSAGE_BYTES,
            "bulk_bytes": BULK_BYTES,
            "many_clients": MANY_CLIENTS,
            "results": to_json(results),
            "seconds": elapsed,
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
