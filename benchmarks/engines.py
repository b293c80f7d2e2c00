#!/usr/bin/env python3
"""Compare connecteur's server engines in one run: throughput, CPU and memory.

The engines compared are those of ``--engines`` (default ``select,threads``):
names among select, threads, processes and asyncio, each optionally followed
by ``@LOOP`` (``asyncio@uvloop``: the asyncio engine on uvloop). For each, a
server runs in its own process (``python -m connecteur serve ... --app
echo``), so client and server do not share one GIL; when the machine has two
CPUs or more, the servers are pinned to one and this script to another.
Measured:

* echo throughput over loopback, 64-byte messages: request/response over one
  connection, pipelined messages over one connection (``send_many`` while a
  reader thread receives the echoes), and request/response over 50
  concurrent connections;
* the server's CPU time per message (user + system, from ``/proc/PID/stat``,
  its child processes included): fair even when the client is the bottleneck;
* the server's resident memory per idle connection (``VmRSS`` before and
  after opening thousands of connections), on a fresh server per engine. For
  a server with child processes (the processes engine forks one per
  connection), each child's private memory is added to the parent's RSS: its
  shared pages are already in the parent's.

The table has a column per engine, then a ratio column per engine against the
first one listed. The processes engine skips the idle-memory workload when a
process per idle connection would not fit in memory or in the process limits
(the output says so).

Linux only (``/proc``). Usage:
``python benchmarks/engines.py [--engines LIST] [--quick] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import re
import resource
import select
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import connecteur
from connecteur import connect
from connecteur.framing import LengthPrefixed
from connecteur.server import ENGINES
from connecteur.server.asyncio import LOOPS

DEFAULT_ENGINES = "select,threads"
PAYLOAD = bytes(range(64))
"""Every message: 64 bytes, 68 on the wire with the 4-byte length header."""
IO_TIMEOUT = 30.0
"""Seconds any single wait may take before the benchmark gives up."""
CONCURRENT_CLIENTS = 50
ACCEPT_BATCH = 100
"""Idle connections opened before waiting for the server to accept them:
below the CLI server's backlog (128), so no handshake is dropped."""
RR_CHECK_EVERY = 100
"""Round trips between two looks at the clock."""
CHILD_KIB_ESTIMATE = 2560
"""Memory a processes-engine child takes (KiB), a little above the ~2 MiB of
private pages measured on CPython 3.11: to decide whether thousands fit."""


@dataclass(frozen=True)
class Settings:
    """How long or how much each workload runs, and how many times."""

    rounds: int
    rr_seconds: float
    pipelined_messages: int
    concurrent_seconds: float
    idle_connections: int


FULL = Settings(rounds=3, rr_seconds=2.0, pipelined_messages=200_000, concurrent_seconds=2.0, idle_connections=10_000)
QUICK = Settings(rounds=1, rr_seconds=1.0, pipelined_messages=200_000, concurrent_seconds=1.0, idle_connections=2_000)
WORKLOADS = {
    "rr": "request/response, 1 connection",
    "pipelined": "pipelined, 1 connection",
    "rr50": f"request/response, {CONCURRENT_CLIENTS} connections",
}


@dataclass(frozen=True)
class EngineSpec:
    """One item of ``--engines``: an engine and, for asyncio, its event loop."""

    label: str
    """As listed (``asyncio@uvloop``): the name of its column."""
    engine: str
    loop: str | None

    def serve_options(self) -> list[str]:
        options = ["--engine", self.engine]
        if self.loop is not None:
            options += ["--loop", self.loop]
        return options


def engine_list(text: str) -> list[EngineSpec]:
    """Parse ``--engines``: comma-separated ``ENGINE`` or ``ENGINE@LOOP`` items."""
    specs: list[EngineSpec] = []
    seen: dict[tuple[str, str | None], str] = {}
    for raw in text.split(","):
        item = raw.strip()
        name, at, loop = item.partition("@")
        if not name:
            raise argparse.ArgumentTypeError(f"an empty engine name in {text!r}")
        if name not in ENGINES:
            raise argparse.ArgumentTypeError(
                f"unknown engine {name!r}; choose from {', '.join(ENGINES)} (asyncio optionally @{'|'.join(LOOPS)})"
            )
        if at and loop not in LOOPS:
            raise argparse.ArgumentTypeError(f"unknown loop {loop!r} in {item!r}; choose from {', '.join(LOOPS)}")
        if at and name != "asyncio":
            raise argparse.ArgumentTypeError(f"{item!r}: only the asyncio engine takes an @LOOP")
        key = (name, loop or ("asyncio" if name == "asyncio" else None))
        if key in seen:
            same = "is listed twice" if seen[key] == item else f"is the same server as {seen[key]!r}"
            raise argparse.ArgumentTypeError(f"{item!r} {same}: list it once")
        seen[key] = item
        specs.append(EngineSpec(item, name, loop or None))
    return specs


# --- the server process ---------------------------------------------------------


def read_proc(pid: int, name: str) -> str:
    return Path(f"/proc/{pid}/{name}").read_text()


def process_tree(root: int) -> list[tuple[int, list[str]]]:
    """`root` and its live descendants, each with its /proc/PID/stat fields from field 3 on."""
    stats: dict[int, list[str]] = {}
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            fields = read_proc(pid, "stat").rpartition(")")[2].split()
        except OSError:  # gone meanwhile
            continue
        stats[pid] = fields
        children.setdefault(int(fields[1]), []).append(pid)
    tree: list[tuple[int, list[str]]] = []
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            tree.append((pid, stats[pid]))
            todo.extend(children.get(pid, ()))
    return tree


def private_kib(pid: int) -> int:
    """Private_Clean + Private_Dirty of a process (0 if it is gone)."""
    try:
        text = read_proc(pid, "smaps_rollup")
    except OSError:
        return 0
    return sum(
        int(line.split()[1]) for line in text.splitlines() if line.startswith(("Private_Clean:", "Private_Dirty:"))
    )


class ServerProcess:
    """``python -m connecteur serve`` for one engine, and what /proc says about it."""

    def __init__(self, spec: EngineSpec, cpu: int | None, stderr: IO[bytes]) -> None:
        self.engine = spec.label
        self._stderr = stderr
        package_root = str(Path(connecteur.__file__).resolve().parent.parent)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        command = [sys.executable, "-m", "connecteur", "serve", "127.0.0.1:0"]
        command += [*spec.serve_options(), "--app", "echo", "--max-connections", "20000"]
        pin = None if cpu is None else (lambda: os.sched_setaffinity(0, {cpu}))
        # The descriptor limit was raised in this process; the child inherits it.
        self.proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=self._stderr, env=env, text=True, preexec_fn=pin
        )
        self.pid = self.proc.pid
        try:
            self.address = self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> tuple[str, int]:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], IO_TIMEOUT)
        line = self.proc.stdout.readline() if ready else ""
        match = re.fullmatch(r"serving echo on (\S+):(\d+)", line.strip())
        if match is None:
            raise RuntimeError(f"the {self.engine} server did not start: {line!r} {self._error_output()}")
        return match[1], int(match[2])

    def _error_output(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace").strip()

    def cpu_seconds(self) -> float:
        """User + system CPU time of every thread of the server and its child processes so far.

        Live children count by their own figures, reaped ones in their
        parent's cutime and cstime. A child reaped between the two reads of a
        measurement would be missed: none is, since every measurement starts
        and ends while its connections (hence their children) are open.
        """
        ticks = 0
        for _, fields in process_tree(self.pid):
            # Fields 14 to 17 (utime, stime, cutime, cstime) of proc(5); `fields` starts at field 3.
            ticks += sum(int(value) for value in fields[11:15])
        return ticks / os.sysconf("SC_CLK_TCK")

    def status(self, key: str) -> int:
        for line in read_proc(self.pid, "status").splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        raise KeyError(key)

    def rss_kib(self) -> int:
        """VmRSS, plus each child process's private memory: its shared pages are in the parent's RSS."""
        return self.status("VmRSS") + sum(private_kib(pid) for pid, _ in process_tree(self.pid)[1:])

    def threads(self) -> int:
        """Threads of the server and its child processes."""
        return sum(int(fields[17]) for _, fields in process_tree(self.pid))  # field 20, num_threads

    def open_fds(self) -> int:
        size = os.stat(f"/proc/{self.pid}/fd").st_size  # Linux >= 6.2 counts them here
        return size if size > 0 else len(os.listdir(f"/proc/{self.pid}/fd"))

    def stop(self) -> str:
        """SIGTERM, wait, and return what the server wrote on stderr."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(IO_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        output = self._error_output()
        if self.proc.returncode != 0:
            output = f"exit status {self.proc.returncode}\n{output}".strip()
        return output


def wait_for(condition: Callable[[], bool], what: str, timeout: float = IO_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.002)


def steady_fds(server: ServerProcess) -> int:
    """Poll the server's descriptor count until it holds still for 0.5 s; return it."""
    count, since = server.open_fds(), time.monotonic()
    deadline = since + IO_TIMEOUT
    while (now := time.monotonic()) - since < 0.5:
        if now > deadline:
            raise TimeoutError(f"the {server.engine} server's descriptor count did not settle in {IO_TIMEOUT} s")
        time.sleep(0.01)
        if (latest := server.open_fds()) != count:
            count, since = latest, time.monotonic()
    return count


def stable_rss(server: ServerProcess) -> tuple[int, bool]:
    """Poll RSS until the last 5 samples (0.4 s or more) agree within 0.2%; return it and whether it settled."""
    samples: list[int] = []
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        samples.append(server.rss_kib())
        last = samples[-5:]
        if len(last) == 5 and max(last) - min(last) <= max(64, max(last) // 500):
            return last[-1], True
        time.sleep(0.1)
    return samples[-1], False


# --- workloads -------------------------------------------------------------------


@dataclass
class Throughput:
    messages: int
    seconds: float
    server_cpu_seconds: float

    @property
    def per_second(self) -> float:
        return self.messages / self.seconds

    @property
    def cpu_us_per_message(self) -> float:
        return 1e6 * self.server_cpu_seconds / self.messages


def expect_echo(reply: bytes) -> None:
    if reply != PAYLOAD:
        raise AssertionError(f"the server replied {reply[:80]!r}, not the message sent")


def request_response(server: ServerProcess, seconds: float) -> Throughput:
    """Round trips over one connection, one message in flight."""
    with connect(server.address, timeout=IO_TIMEOUT) as conn:
        for _ in range(RR_CHECK_EVERY):  # warm-up
            expect_echo(conn.request(PAYLOAD))
        request = conn.request
        count = 0
        cpu = server.cpu_seconds()
        start = time.perf_counter()
        end = start + seconds
        while True:
            for _ in range(RR_CHECK_EVERY):
                if request(PAYLOAD) != PAYLOAD:
                    raise AssertionError("the server replied something else than the message sent")
            count += RR_CHECK_EVERY
            if (now := time.perf_counter()) >= end:
                break
        return Throughput(count, now - start, server.cpu_seconds() - cpu)


def pipelined(server: ServerProcess, count: int) -> Throughput:
    """`send_many` of `count` messages while a reader thread receives the echoes."""
    messages = [PAYLOAD] * count
    with connect(server.address, timeout=IO_TIMEOUT) as conn:
        expect_echo(conn.request(PAYLOAD))
        failures: list[BaseException] = []

        def read_all() -> None:
            try:
                recv = conn.recv
                for _ in range(count):
                    if recv() != PAYLOAD:
                        raise AssertionError("the server replied something else than the message sent")
            except BaseException as exc:
                failures.append(exc)

        reader = threading.Thread(target=read_all, name="reader")
        cpu = server.cpu_seconds()
        start = time.perf_counter()
        reader.start()
        try:
            conn.send_many(messages)
        finally:
            reader.join(IO_TIMEOUT)
        elapsed = time.perf_counter() - start
        if reader.is_alive():
            raise TimeoutError("the echoes of the pipelined messages did not all arrive")
        if failures:
            raise failures[0]
        return Throughput(count, elapsed, server.cpu_seconds() - cpu)


def concurrent_request_response(server: ServerProcess, clients: int, seconds: float) -> Throughput:
    """Round trips over `clients` connections, one message in flight on each.

    One thread drives every connection with a selector: 50 client threads
    would mostly measure the client's GIL.
    """
    framing = LengthPrefixed()
    wire = framing.encode(PAYLOAD)
    with contextlib.ExitStack() as stack:
        selector = stack.enter_context(selectors.DefaultSelector())
        for _ in range(clients):
            sock = stack.enter_context(socket.create_connection(server.address, timeout=IO_TIMEOUT))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ, framing.decoder())

        count = 0
        outstanding = clients
        cpu = server.cpu_seconds()
        start = time.perf_counter()
        end = start + seconds
        for key in selector.get_map().values():
            key.fileobj.send(wire)  # type: ignore[union-attr]  # 68 bytes into an empty buffer: sent whole
        while outstanding:
            events = selector.select(IO_TIMEOUT)
            if not events:
                raise TimeoutError("no reply from the server")
            again = time.perf_counter() < end
            for key, _ in events:
                sock = key.fileobj
                data = sock.recv(65536)  # type: ignore[union-attr]
                if not data:
                    raise ConnectionError("the server closed a connection")
                for reply in key.data.feed(data):
                    expect_echo(reply)
                    count += 1
                    if again:
                        sock.send(wire)  # type: ignore[union-attr]
                    else:
                        outstanding -= 1
        return Throughput(count, time.perf_counter() - start, server.cpu_seconds() - cpu)


@dataclass
class IdleMemory:
    connections: int
    rss_before_kib: int
    rss_after_kib: int
    settled: bool
    threads_after: int
    open_seconds: float

    @property
    def kib_per_connection(self) -> float:
        return (self.rss_after_kib - self.rss_before_kib) / self.connections


def idle_memory(server: ServerProcess, count: int) -> IdleMemory:
    """Open `count` idle connections to a fresh server; measure its RSS growth."""
    socks: list[socket.socket] = []
    try:
        # Warm the paths a connection takes, twice: some servers keep
        # descriptors opened on their first connection (uvloop does).
        with connect(server.address, timeout=IO_TIMEOUT) as conn:
            expect_echo(conn.request(PAYLOAD))
        base_fds = steady_fds(server)
        with connect(server.address, timeout=IO_TIMEOUT) as conn:
            expect_echo(conn.request(PAYLOAD))
        wait_for(lambda: server.open_fds() <= base_fds, "the warm-up connection to close")
        before, settled_before = stable_rss(server)
        start = time.perf_counter()
        while len(socks) < count:
            for _ in range(min(ACCEPT_BATCH, count - len(socks))):
                socks.append(socket.create_connection(server.address, timeout=IO_TIMEOUT))
            expected = base_fds + len(socks)
            wait_for(lambda n=expected: server.open_fds() >= n, f"the server to accept {len(socks)} connections")
        open_seconds = time.perf_counter() - start
        after, settled_after = stable_rss(server)
        result = IdleMemory(
            connections=count,
            rss_before_kib=before,
            rss_after_kib=after,
            settled=settled_before and settled_after,
            threads_after=server.threads(),
            open_seconds=open_seconds,
        )
        while socks:
            socks.pop().close()
        wait_for(lambda: server.open_fds() <= base_fds, "every idle connection to close")
        return result
    finally:
        for sock in socks:
            sock.close()


# --- setup and report ------------------------------------------------------------


def raise_fd_limit(needed: int) -> int:
    """Raise the soft descriptor limit as far as allowed; return how many descriptors we may use."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


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


def mem_available_kib() -> int | None:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1])
    return None


def processes_idle_problem(connections: int) -> str | None:
    """Why the processes engine cannot hold `connections` idle connections here (a process each), if so."""
    needed = connections * CHILD_KIB_ESTIMATE
    available = mem_available_kib()
    if available is not None and needed > available // 2:
        return (
            f"{connections:,} idle connections would fork {connections:,} server processes, "
            f"~{needed / 2**20:.1f} GiB at ~{CHILD_KIB_ESTIMATE / 1024:.1f} MiB each: more than half "
            f"of the {available / 2**20:.1f} GiB available"
        )
    soft, _ = resource.getrlimit(resource.RLIMIT_NPROC)
    if soft != resource.RLIM_INFINITY and connections + 1000 > soft:
        return f"{connections:,} idle connections need as many processes: RLIMIT_NPROC is {soft:,}"
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    if connections + 1000 > pid_max:
        return f"{connections:,} idle connections need as many processes: kernel.pid_max is {pid_max:,}"
    return None


def ratio(a: float | None, b: float | None) -> str:
    if a is None or not b:
        return "-"
    value = a / b
    return f"{value:.2f}" if value >= 0.0995 else f"{value:.2g}"


Getter = Callable[[dict[str, Any]], float | None]


def throughput_getter(key: str, figure: Callable[[Throughput], float]) -> Getter:
    return lambda result: figure(median_round(result[key])) if key in result else None


def idle_getter(figure: Callable[[IdleMemory], float]) -> Getter:
    return lambda result: figure(result["idle"]) if "idle" in result else None


def report(specs: list[EngineSpec], results: dict[str, dict[str, Any]], settings: Settings) -> list[str]:
    """The table: a column per engine, then each other engine's figure over the first engine's."""
    rows: list[tuple[str, Getter | None, str]] = []
    for key, label in WORKLOADS.items():
        rows.append((f"{label} (msg/s)", throughput_getter(key, lambda t: t.per_second), ",.0f"))
        rows.append(("  server CPU per message (µs)", throughput_getter(key, lambda t: t.cpu_us_per_message), ".2f"))
    rows.append((f"{settings.idle_connections:,} idle connections", None, ""))
    rows.append(("  server RSS before (MiB)", idle_getter(lambda m: m.rss_before_kib / 1024), ".1f"))
    rows.append(("  server RSS after (MiB)", idle_getter(lambda m: m.rss_after_kib / 1024), ".1f"))
    rows.append(("  memory per connection (KiB)", idle_getter(lambda m: m.kib_per_connection), ".1f"))
    rows.append(("  server threads", idle_getter(lambda m: m.threads_after), ",.0f"))

    labels = [spec.label for spec in specs]
    headers = labels + [f"{label}/{labels[0]}" for label in labels[1:]]
    widths = [max(12, len(header)) for header in headers]
    width = max(len(label) for label, _, _ in rows)
    lines = [f"{'':{width}}" + "".join(f"  {header:>{w}}" for header, w in zip(headers, widths, strict=True))]
    for label, get, spec in rows:
        if get is None:
            lines.append(label)
            continue
        values = [get(results[engine]) for engine in labels]
        cells = ["skipped" if value is None else format(value, spec) for value in values]
        cells += [ratio(value, values[0]) for value in values[1:]]
        lines.append(f"{label:{width}}" + "".join(f"  {cell:>{w}}" for cell, w in zip(cells, widths, strict=True)))
    return lines


def median_round(rounds: list[Throughput]) -> Throughput:
    """The round of median throughput (the lower middle one for an even count)."""
    return sorted(rounds, key=lambda r: r.per_second)[(len(rounds) - 1) // 2]


def to_json(value: Any) -> Any:
    if isinstance(value, Throughput):
        return {**asdict(value), "per_second": value.per_second, "cpu_us_per_message": value.cpu_us_per_message}
    if isinstance(value, IdleMemory):
        return {**asdict(value), "kib_per_connection": value.kib_per_connection}
    if isinstance(value, dict):
        return {key: to_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [to_json(item) for item in value]
    return value


@contextlib.contextmanager
def running(spec: EngineSpec, cpu: int | None, problems: list[str]) -> Iterator[ServerProcess]:
    with tempfile.TemporaryFile() as stderr:
        server = ServerProcess(spec, cpu, stderr)
        try:
            yield server
        finally:
            if errors := server.stop():
                problems.append(f"server ({spec.label}) said:\n{errors}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Compare connecteur's server engines (Linux, loopback only).")
    parser.add_argument(
        "--engines",
        metavar="LIST",
        type=engine_list,
        default=engine_list(DEFAULT_ENGINES),
        help=f"comma-separated engines to compare, the first one being the ratios' reference: "
        f"{', '.join(ENGINES)}; asyncio@LOOP picks the event loop ({', '.join(LOOPS)}) "
        f"(default: {DEFAULT_ENGINES})",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="shorter runs and 2,000 idle connections (~5 s per engine, ~25 s for processes)",
    )
    parser.add_argument("--json", metavar="FILE", type=Path, help="also write the raw figures to FILE")
    args = parser.parse_args(argv)
    specs: list[EngineSpec] = args.engines
    settings = QUICK if args.quick else FULL
    if not Path("/proc/self/stat").exists():
        parser.error("this benchmark reads /proc: Linux only")
    if any(spec.loop == "uvloop" for spec in specs) and importlib.util.find_spec("uvloop") is None:
        parser.error("uvloop is not installed: pip install 'connecteur[uvloop]'")

    began = time.perf_counter()
    notes: list[str] = []
    allowed = raise_fd_limit(settings.idle_connections + 256)
    if allowed < settings.idle_connections + 256:
        settings = Settings(**{**asdict(settings), "idle_connections": max(100, allowed - 256)})
        notes.append(f"RLIMIT_NOFILE allows {allowed} descriptors: {settings.idle_connections} idle connections")
    server_cpu, pinning = pin_cpus()

    # What an engine cannot practically run, by engine label and workload key.
    skipped: dict[str, dict[str, str]] = {spec.label: {} for spec in specs}
    for spec in specs:
        if spec.engine == "processes" and (problem := processes_idle_problem(settings.idle_connections)):
            skipped[spec.label]["idle"] = problem
    multiprocess = [spec.label for spec in specs if spec.engine == "processes" and "idle" not in skipped[spec.label]]

    print(f"connecteur engines benchmark ({'quick' if args.quick else 'full'} run)")
    print(f"Python {platform.python_version()}, {platform.system()} {platform.release()}, {os.cpu_count()} CPUs")
    print(pinning)
    print(f"engines: {', '.join(spec.label for spec in specs)}")
    print(f"echo app, {len(PAYLOAD)}-byte messages with a 4-byte length header, loopback TCP")
    print(
        f"request/response for {settings.rr_seconds} s; {settings.pipelined_messages:,} pipelined messages; "
        f"{CONCURRENT_CLIENTS} connections for {settings.concurrent_seconds} s"
    )
    if settings.rounds > 1:
        print(f"{settings.rounds} rounds, engines taking turns; the table shows each figure's median round")
    for note in notes:
        print(note)
    for label, reasons in skipped.items():
        for key, reason in reasons.items():
            print(f"skipped: {label}, {'idle connections' if key == 'idle' else WORKLOADS[key]}: {reason}")
    print()

    results: dict[str, dict[str, Any]] = {spec.label: {} for spec in specs}
    problems: list[str] = []
    # Every server runs side by side and they take turns, workload by
    # workload, so a slow spell of a shared machine hits every engine alike.
    workloads: dict[str, Callable[[ServerProcess], Throughput]] = {
        "rr": lambda server: request_response(server, settings.rr_seconds),
        "pipelined": lambda server: pipelined(server, settings.pipelined_messages),
        "rr50": lambda server: concurrent_request_response(server, CONCURRENT_CLIENTS, settings.concurrent_seconds),
    }
    with contextlib.ExitStack() as stack:
        servers = [(spec.label, stack.enter_context(running(spec, server_cpu, problems))) for spec in specs]
        for round_number in range(settings.rounds):
            order = servers if round_number % 2 == 0 else servers[::-1]
            for key, workload in workloads.items():
                for label, server in order:
                    if key not in skipped[label]:
                        results[label].setdefault(key, []).append(workload(server))
    for spec in specs:  # a fresh server each: nothing left over from the throughput runs
        if "idle" not in skipped[spec.label]:
            with running(spec, server_cpu, problems) as server:
                results[spec.label]["idle"] = idle_memory(server, settings.idle_connections)

    for line in report(specs, results, settings):
        print(line)
    print()
    print("msg/s: higher is better; CPU and memory: lower is better. Compare ratios within one run.")
    if multiprocess:
        print(
            f"{', '.join(multiprocess)}: RSS is the parent's plus each child process's private memory; "
            "threads, those of every process"
        )
    unsettled = [label for label, result in results.items() if "idle" in result and not result["idle"].settled]
    if unsettled:
        print(f"warning: RSS did not settle within 10 s for {', '.join(unsettled)}")
    for problem in problems:
        print(problem, file=sys.stderr)
    elapsed = time.perf_counter() - began
    print(f"total time {elapsed:.1f} s")

    if args.json is not None:
        document = {
            "quick": args.quick,
            "settings": asdict(settings),
            "engines": [asdict(spec) for spec in specs],
            "skipped": {label: reasons for label, reasons in skipped.items() if reasons},
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "pinning": pinning,
            "payload_bytes": len(PAYLOAD),
            "concurrent_clients": CONCURRENT_CLIENTS,
            "results": to_json(results),
            "seconds": elapsed,
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
