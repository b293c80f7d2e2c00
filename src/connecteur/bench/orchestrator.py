"""`connecteur bench`: connecteur's engines and standard-library peers, measured in one run.

`prepare` checks what can run here and plans it; `run` measures. Every
server runs in a process of its own (`servers`), the client in another
(`client`), and this process only orchestrates: it starts them, hands
the client one job at a time, and collects the figures. With two CPUs or
more, the servers are pinned to one and the client to another, so a figure is
one server against one client, neither sharing a core or a GIL; a target with
several workers (``select*2``) is not pinned, since each worker needs a CPU.

The throughput servers are started together and take turns, workload by
workload and round by round (in reverse order every other round), so a slow
spell of a shared machine hits every target alike; each figure is the median
round. The idle workload gets a fresh server per target, so its memory is not
what earlier workloads left behind. A pair of target and workload the plan
skips does not run, and a server with nothing to run is not started (``--check``,
in the `check` module, skips most pairs). Linux only: figures come from /proc.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from importlib.util import find_spec
from pathlib import Path
from typing import Final, Literal, Self

from . import proc
from .client import BULK_WINDOW, PIPELINE_WINDOW
from .fanout import SUBSCRIBERS
from .job import IO_TIMEOUT, Figures, Job
from .mux import MUX_THREADS
from .processes import Client, Server, ServerFailed, running_client, running_servers
from .scale import SCALE_CONNECTIONS, SCALE_WINDOW

__all__ = [
    "DEFAULT_WORKLOADS",
    "FULL",
    "MIN_MESSAGES",
    "QUICK",
    "TARGETS",
    "WORKLOADS",
    "BenchError",
    "Figures",
    "Progress",
    "Results",
    "Settings",
    "Target",
    "Workload",
    "available_targets",
    "prepare",
    "run",
]


@dataclass(frozen=True)
class Target:
    """A server the benchmark measures."""

    name: str
    kind: Literal["engine", "peer"]
    description: str
    workers: int = 1
    """Processes serving the port: a target with several needs as many CPUs, so it is not pinned."""

    @property
    def needs_uvloop(self) -> bool:
        return "uvloop" in self.name


TARGETS: Final = {
    target.name: target
    for target in (
        Target("select", "engine", "connecteur, select engine (one thread, epoll)"),
        Target("select*2", "engine", "connecteur, select engine, 2 worker processes (not pinned)", workers=2),
        Target("threads", "engine", "connecteur, threads engine (a thread per connection)"),
        Target("processes", "engine", "connecteur, processes engine (a process per connection)"),
        Target("asyncio", "engine", "connecteur, asyncio engine"),
        Target("asyncio@uvloop", "engine", "connecteur, asyncio engine on uvloop"),
        Target("asyncio-streams", "peer", "stdlib: asyncio streams, readexactly"),
        Target("asyncio-protocol", "peer", "stdlib: an asyncio Protocol"),
        Target("socketserver", "peer", "stdlib: socketserver.ThreadingTCPServer"),
        Target("multiprocessing", "peer", "stdlib: multiprocessing.connection, a thread per connection"),
        Target("uvloop-protocol", "peer", "an asyncio Protocol on uvloop"),
        Target("recv-into", "peer", "a bare recv_into loop, no framing (a thread per connection)"),
        Target("epoll-loop", "peer", "stdlib: a hand-written select.epoll loop, the HOWTO's third design"),
        Target("selectors-broadcast", "peer", "stdlib: a hand-written selectors broadcaster (fanout only)"),
    )
}
"""Every target, in the order of the table."""

FANOUT_BASELINE: Final = "selectors-broadcast"
"""The fanout workload's hand-written server: it serves that workload only, and every run of it has it."""
FANOUT_TARGETS: Final = ("select", "asyncio", "asyncio@uvloop", "threads", FANOUT_BASELINE)
"""The targets with a broadcast: the engines that hold every connection in one process, and the baseline."""


@dataclass(frozen=True)
class Workload:
    """What a workload measures, and its headline figure."""

    name: str
    description: str
    headline: str
    """The key of its main figure in each result."""
    unit: str
    higher_is_better: bool
    is_default: bool = True
    """Whether a run without --workload has it."""


WORKLOADS: Final = {
    workload.name: workload
    for workload in (
        Workload("rr", "64 B request/response, 1 connection", "per_second", "round trips/s", True),
        Workload(
            "pipeline",
            f"64 B messages, up to {PIPELINE_WINDOW:,} in flight on 1 connection",
            "per_second",
            "messages/s",
            True,
        ),
        Workload(
            "bulk", f"1 MiB messages, up to {BULK_WINDOW} in flight on 1 connection", "mb_per_second", "MB/s", True
        ),
        Workload("many", "64 B request/response, many connections", "per_second", "round trips/s", True),
        Workload(
            "idle",
            "server memory (RSS) per connection, idle connections",
            "kib_per_connection",
            "KiB/connection",
            False,
        ),
        Workload(
            "scale",
            f"64 B messages, up to {SCALE_WINDOW:,} in flight on each of {SCALE_CONNECTIONS} connections",
            "per_second",
            "messages/s",
            True,
            is_default=False,
        ),
        Workload(
            "mux",
            f"64 B requests from {MUX_THREADS} threads: one multiplexed connection, against one connection each",
            "per_second",
            "requests/s",
            True,
            is_default=False,
        ),
        Workload(
            "client",
            "connecteur's blocking Connection doing rr, against a hand-written socket client",
            "per_second",
            "round trips/s",
            True,
            is_default=False,
        ),
        Workload(
            "fanout",
            f"64 B messages from 1 connection broadcast to {SUBSCRIBERS} others",
            "per_second",
            "deliveries/s",
            True,
            is_default=False,
        ),
    )
}
"""Every workload, in the order they run. scale, mux, client and fanout only run when asked for
(``--workload``, ``--check``): scale is for servers with several workers, mux
for connecteur's engines only (the peers speak no envelope), client
measures connecteur's client rather than the server, and fanout needs
a server that broadcasts (its own, started for it, beside `FANOUT_BASELINE`)."""
DEFAULT_WORKLOADS: Final = [name for name, workload in WORKLOADS.items() if workload.is_default]
"""The workloads of a run that does not choose."""


@dataclass(frozen=True)
class Settings:
    """How long and how much each workload runs."""

    name: str
    rounds: int
    seconds: float
    """How long each throughput figure sends, per round."""
    many_connections: int
    idle_connections: int
    rss_samples: int
    """Consecutive RSS readings, 50 ms apart, that must agree before and after opening the idle connections."""

    @property
    def is_quick(self) -> bool:
        """Whether this is a quick run (``--quick``), whose figures are indicative only."""
        return "quick" in self.name.split()


FULL: Final = Settings("full", rounds=3, seconds=1.0, many_connections=1000, idle_connections=2000, rss_samples=6)
QUICK: Final = Settings("quick", rounds=1, seconds=0.2, many_connections=200, idle_connections=200, rss_samples=3)
"""Every target and workload, once and shorter: 33 s and 37 s on 2 cores (AMD EPYC,
load averages 2 and 4 before the run), hence "about 35 s" in `--quick`'s help; a
busier machine takes longer (38-42 s were seen)."""

MIN_MESSAGES: Final = 10
"""Messages a throughput figure needs, or it is reported as failed rather than shown.

A figure counts whole messages in its window, so one message more or less
moves it by 1/n: 10 keeps that under 10 %, the noise of a quick run anyway.
A busy machine can let a 0.2 s window echo a single 1 MiB message; that
figure would make every other target's bar read many times faster."""

CHILD_KIB_ESTIMATE: Final = 2560
"""Memory a processes-engine child takes (KiB), a little above the ~2 MiB of
private pages measured on CPython 3.11: to decide whether a workload's
connections, a process each, fit in memory."""
SPARE_FDS: Final = 256
"""Descriptors a process needs besides a workload's connections."""


class BenchError(Exception):
    """The benchmark cannot run here (not Linux, uvloop missing, a server that does not start)."""


def available_targets() -> list[str]:
    """The targets this machine can run: all of them, minus uvloop's when it is not installed."""
    has_uvloop = find_spec("uvloop") is not None
    return [
        name for name, target in TARGETS.items() if (has_uvloop or not target.needs_uvloop) and name != FANOUT_BASELINE
    ]


@dataclass
class Results:
    """A run's plan, then every figure it gave."""

    targets: list[str]
    workloads: list[str]
    settings: Settings
    reference: str
    machine: dict[str, object]
    cpus: tuple[int | None, int | None]
    """The servers' CPU and the client's, or None when not pinned."""
    pinning: str
    """The same, in a sentence."""
    rounds: dict[str, dict[str, list[Figures]]] = field(default_factory=dict)
    """target -> workload -> the figures of each round."""
    skipped: dict[str, dict[str, str]] = field(default_factory=dict)
    """target -> workload -> why it did not run."""
    failures: dict[str, dict[str, str]] = field(default_factory=dict)
    """target -> workload -> what went wrong."""
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    checks: list[dict[str, object]] = field(default_factory=list)
    """The verdicts of ``--check``, when it ran (see the `check` module)."""

    def is_skipped(self, target: str, workload: str) -> bool:
        """Whether the plan leaves this workload out for this target."""
        return workload in self.skipped.get(target, {})

    def figure(self, target: str, workload: str) -> Figures | None:
        """Each figure's median over the rounds (the lower middle one for an even count), if any ran.

        Figure by figure: on a noisy machine the round of median throughput
        may hold an outlying p99. A flag is thus true in most rounds.
        """
        rounds = self.rounds.get(target, {}).get(workload)
        if not rounds:
            return None
        return {key: statistics.median_low(figures[key] for figures in rounds) for key in rounds[0]}

    def to_json(self) -> dict[str, object]:
        """Every round's figures, their medians, and the machine's description."""
        results = {
            target: {
                workload: {**(self.figure(target, workload) or {}), "rounds": rounds}
                for workload, rounds in self.rounds.get(target, {}).items()
            }
            for target in self.targets
        }
        return {
            "reference": self.reference,
            "machine": {**self.machine, "pinning": self.pinning},
            "settings": asdict(self.settings),
            "targets": [asdict(TARGETS[name]) for name in self.targets],
            "workloads": {name: asdict(WORKLOADS[name]) for name in self.workloads},
            "results": results,
            "skipped": self.skipped,
            "failures": self.failures,
            "notes": self.notes,
            "seconds": self.seconds,
            **({"checks": self.checks} if self.checks else {}),
        }


class Progress:
    """What `run` reports as it goes; this one says nothing. Its context spans the run."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        """The run is over."""

    def begin(self, steps: int, rounds: int) -> None:
        """`steps` measurements are to come, in `rounds` rounds."""

    def step(self, target: str, workload: str, round_number: int) -> None:
        """A measurement begins (`round_number` counts from 1)."""

    def done(self, target: str, workload: str, figures: Figures | None, error: str) -> None:
        """A measurement ended, with figures or an error."""


def prepare(targets: Sequence[str], workloads: Sequence[str], settings: Settings, *, reference: str) -> Results:
    """Check that the run can happen here and plan it; `run` then measures.

    Raises RLIMIT_NOFILE for the connections (processes started later
    inherit it), or plans fewer connections when the hard limit is lower;
    chooses the CPUs; skips what a process per connection could not hold.

    Raises:
        BenchError: not Linux, or uvloop missing for a uvloop target.
    """
    if not Path("/proc/self/stat").exists() or not hasattr(os, "sched_setaffinity"):
        raise BenchError("the benchmark reads /proc and pins processes to CPUs: Linux only")
    missing = [name for name in targets if TARGETS[name].needs_uvloop]
    if missing and find_spec("uvloop") is None:
        raise BenchError(f"{', '.join(missing)} need uvloop: pip install 'connecteur[uvloop]'")
    if "fanout" in workloads and FANOUT_BASELINE not in targets:
        targets = [*targets, FANOUT_BASELINE]  # what the fanout figures are read against
    notes: list[str] = []
    settings = _fit_fd_limit(settings, notes)
    server_cpu, client_cpu, pinning = _choose_cpus()
    unpinned = [name for name in targets if TARGETS[name].workers > 1]
    if unpinned and server_cpu is not None:
        pinning += f"; {', '.join(unpinned)} not pinned: each of its workers needs a CPU"
    results = Results(
        list(targets), list(workloads), settings, reference, proc.machine(), (server_cpu, client_cpu), pinning
    )
    results.notes += notes
    _skip_what_cannot_fit(results)
    _skip_what_cannot_fan_out(results)
    return results


def run(results: Results, *, progress: Progress | None = None) -> Results:
    """Measure what `results` plans, filling it in; return it.

    Starts every process it needs and stops them all before returning.

    Raises:
        BenchError: a server did not start.
    """
    began = time.perf_counter()
    progress = progress or Progress()
    targets, settings = results.targets, results.settings
    server_cpu, client_cpu = results.cpus
    throughput = [workload for workload in results.workloads if workload != "idle"]
    echoing = [workload for workload in throughput if workload != "fanout"]
    # Only the servers with something to do: --check skips most pairs.
    busy_targets = [name for name in targets if any(not results.is_skipped(name, w) for w in echoing)]
    fresh_targets = [name for name in targets if "idle" in results.workloads and not results.is_skipped(name, "idle")]
    fan_targets = [name for name in targets if "fanout" in throughput and not results.is_skipped(name, "fanout")]
    pairs = sum(not results.is_skipped(name, workload) for name in busy_targets for workload in echoing)
    progress.begin((pairs + len(fan_targets)) * settings.rounds + len(fresh_targets), settings.rounds)
    unpinned = {name for name in targets if TARGETS[name].workers > 1}
    try:
        # The idle workload's fresh servers and the fanout servers start with the others, in parallel.
        started = running_servers(
            busy_targets + fresh_targets + [f"fanout:{name}" for name in fan_targets],
            server_cpu,
            results.notes,
            unpinned=unpinned,
        )
        with started as servers, running_client(client_cpu) as client:  # the client stops first
            busy = dict(zip(busy_targets, servers, strict=False))
            fresh = dict(zip(fresh_targets, servers[len(busy_targets) :], strict=False))
            fan = dict(zip(fan_targets, servers[len(busy_targets) + len(fresh_targets) :], strict=True))
            for round_number in range(1, settings.rounds + 1):
                for workload in throughput:
                    serving = fan if workload == "fanout" else busy
                    order = list(serving) if round_number % 2 else list(serving)[::-1]
                    for target in order:
                        _measure(client, serving[target], workload, results, progress, round_number, target)
            for target in fresh:
                _measure(client, fresh[target], "idle", results, progress, 1)
                fresh[target].terminate()  # now: a processes engine holds a process per connection
    except ServerFailed as exc:
        raise BenchError(str(exc)) from None
    results.seconds = time.perf_counter() - began
    return results


def _fit_fd_limit(settings: Settings, notes: list[str]) -> Settings:
    """Raise RLIMIT_NOFILE for the workloads' connections, or plan fewer."""
    wanted = max(settings.many_connections, settings.idle_connections)
    allowed = proc.raise_fd_limit(wanted + SPARE_FDS) - SPARE_FDS
    if allowed >= wanted:
        return settings
    notes.append(f"RLIMIT_NOFILE allows {allowed + SPARE_FDS} descriptors: at most {allowed} connections")
    return replace(
        settings,
        many_connections=min(settings.many_connections, allowed),
        idle_connections=min(settings.idle_connections, allowed),
    )


def _choose_cpus() -> tuple[int | None, int | None, str]:
    """A CPU for the servers and another for the client, when there are two; and a sentence saying so."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None, f"not pinned: only {len(cpus)} CPU available"
    server, client = (0, 1) if {0, 1} <= set(cpus) else (cpus[0], cpus[1])
    return server, client, f"servers pinned to CPU {server}, client to CPU {client}"


def _skip_what_cannot_fit(results: Results) -> None:
    """Skip the workloads that would need a process per connection beyond the machine's means, and mux for peers."""
    if "mux" in results.workloads:
        for target in results.targets:
            if TARGETS[target].kind != "engine":
                results.skipped.setdefault(target, {})["mux"] = "a standard-library peer speaks no envelope"
    if "processes" not in results.targets:
        return
    settings = results.settings
    for workload, count in (("many", settings.many_connections), ("idle", settings.idle_connections)):
        if workload in results.workloads and (problem := _processes_problem(count)):
            results.skipped.setdefault("processes", {})[workload] = problem


def _skip_what_cannot_fan_out(results: Results) -> None:
    """Skip fanout on the targets without a broadcast, and everything but fanout on its baseline."""
    for target in results.targets:
        for workload in results.workloads:
            if workload == "fanout" and target not in FANOUT_TARGETS:
                results.skipped.setdefault(target, {})[workload] = "no broadcast: it holds no live peers to send to"
            elif workload != "fanout" and target == FANOUT_BASELINE:
                results.skipped.setdefault(target, {})[workload] = "it serves the fanout workload only"


def _processes_problem(connections: int) -> str | None:
    """Why a process per connection would not fit here, if so."""
    needed = connections * CHILD_KIB_ESTIMATE
    available = proc.mem_available_kib()
    if available is not None and needed > available // 2:
        return (
            f"{connections:,} connections fork as many processes, ~{needed / 2**20:.1f} GiB: "
            f"more than half of the {available / 2**20:.1f} GiB available"
        )
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    if connections + 1000 > pid_max:
        return f"{connections:,} connections fork as many processes: kernel.pid_max is {pid_max:,}"
    return None


def _measure(
    client: Client,
    server: Server,
    workload: str,
    results: Results,
    progress: Progress,
    round_number: int,
    target: str = "",
) -> None:
    """Run one workload against one server (of `target`, by default its own); file its figures, or what went wrong."""
    target = target or server.target
    if results.is_skipped(target, workload) or workload in results.failures.get(target, {}):
        return
    progress.step(target, workload, round_number)
    settings = results.settings
    connections = settings.idle_connections if workload == "idle" else settings.many_connections
    job = Job(
        workload=workload,
        host=server.address[0],
        port=server.address[1],
        server_pid=server.pid,
        seconds=settings.seconds,
        connections=connections,
        rss_samples=settings.rss_samples,
        target=target,
    )
    # Generous: opening and closing connections (a fork each, on the processes engine) takes time too.
    figures, error = client.run(job, timeout=settings.seconds + connections / 50 + IO_TIMEOUT * 2)
    if figures is None and server.has_exited():
        error = f"{error}; the server exited: {server.stop()}"
    if figures is not None and (too_few := _too_few_messages(figures)):
        figures, error = None, too_few
    if figures is None:
        results.failures.setdefault(target, {})[workload] = error
    else:
        results.rounds.setdefault(target, {}).setdefault(workload, []).append(figures)
    progress.done(target, workload, figures, error)


def _too_few_messages(figures: Figures) -> str:
    """Why a figure counts too few messages to be shown (see `MIN_MESSAGES`), or ""."""
    messages = figures.get("messages")
    if messages is None or int(messages) >= MIN_MESSAGES:  # the idle workload counts no messages
        return ""
    return (
        f"only {int(messages)} messages in {float(figures['seconds']):.2f} s, fewer than the {MIN_MESSAGES} "
        "a figure needs: is the machine busy?"
    )
