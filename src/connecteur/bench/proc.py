"""What Linux's /proc says about a benchmark server: CPU time, memory, threads.

A server is a process tree: the processes engine forks a child per
connection, so every figure here covers the root and its live descendants.
Also the machine's description for ``connecteur bench --json``.
"""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import time
from pathlib import Path
from typing import Final

from .. import COMPILED
from ..framing.length import SPEEDUPS

__all__ = [
    "cpu_model",
    "cpu_seconds",
    "machine",
    "mem_available_kib",
    "process_count",
    "pss_kib",
    "raise_fd_limit",
    "rss_kib",
    "stable_rss_kib",
    "task_counts",
    "thread_count",
]

_PROC: Final = Path("/proc")
_CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_HAS_SCHEDSTAT: Final = (_PROC / "self" / "schedstat").exists()


def _stat_fields(pid: int) -> list[str]:
    """Fields of /proc/PID/stat from field 3 (state) on: the name, in parentheses, may hold spaces."""
    return (_PROC / str(pid) / "stat").read_text().rpartition(")")[2].split()


def _tree(root: int) -> list[tuple[int, list[str]]]:
    """`root` and its live descendants, each with its stat fields (see `_stat_fields`)."""
    stats: dict[int, list[str]] = {}
    children: dict[int, list[int]] = {}
    for entry in os.scandir(_PROC):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            fields = _stat_fields(pid)
        except OSError:  # gone meanwhile
            continue
        stats[pid] = fields
        children.setdefault(int(fields[1]), []).append(pid)  # field 4: the parent's pid
    tree: list[tuple[int, list[str]]] = []
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            tree.append((pid, stats[pid]))
            todo.extend(children.get(pid, ()))
    return tree


def cpu_seconds(root: int) -> float:
    """CPU time (user + system) so far of every live thread of `root` and its descendants.

    From each thread's /proc/PID/task/TID/schedstat, in nanoseconds: the
    per-process utime and stime of /proc/PID/stat are whole clock ticks
    (10 ms), truncated per process, so a thousand processes-engine children
    would each lose up to a tick and a difference could be off by seconds.
    Threads that exit take their time with them, and a child reaped adds
    its whole life to its parent's cutime and cstime: a measurement must
    start and end while the same threads and processes live (the client
    waits after each workload until the server is back to those it had).
    """
    total = 0.0
    for pid, fields in _tree(root):
        total += sum(int(value) for value in fields[13:15]) / _CLOCK_TICKS  # fields 16-17: cutime, cstime
        total += _threads_seconds(pid, fields)
    return total


def _threads_seconds(pid: int, fields: list[str]) -> float:
    """Run time of the live threads of a process (its utime + stime where schedstat is missing)."""
    if not _HAS_SCHEDSTAT:  # CONFIG_SCHED_INFO off
        return sum(int(value) for value in fields[11:13]) / _CLOCK_TICKS  # fields 14-15: utime, stime
    nanoseconds = 0
    try:
        tasks = list(os.scandir(_PROC / str(pid) / "task"))
    except FileNotFoundError:  # the process is gone
        return 0.0
    for task in tasks:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # the thread is gone
            nanoseconds += int((Path(task.path) / "schedstat").read_text().split()[0])
    return nanoseconds / 1e9


def _private_kib(pid: int) -> int:
    """Private_Clean + Private_Dirty of a process (0 if it is gone)."""
    try:
        text = (_PROC / str(pid) / "smaps_rollup").read_text()
    except OSError:
        return 0
    return sum(
        int(line.split()[1]) for line in text.splitlines() if line.startswith(("Private_Clean:", "Private_Dirty:"))
    )


def _status_kib(pid: int, key: str) -> int:
    for line in (_PROC / str(pid) / "status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def rss_kib(root: int) -> int:
    """Resident memory of a server: VmRSS of `root`, plus each descendant's private pages.

    A forked child's shared pages are in the parent's RSS already; counting
    only its private ones gives what each extra process really costs.
    """
    return _status_kib(root, "VmRSS") + sum(_private_kib(pid) for pid, _ in _tree(root)[1:])


def pss_kib(root: int) -> int:
    """Proportional set size of `root` and its live descendants, summed: from each one's smaps_rollup.

    Each page counts once over the whole tree, split among the processes
    that share it, so a forked child adds what it really costs, and pages it
    dirties after the fork (copied on write) count as its own. Linux 4.14+.
    """
    total = 0
    for pid, _ in _tree(root):
        try:
            text = (_PROC / str(pid) / "smaps_rollup").read_text()
        except OSError:  # gone meanwhile
            continue
        total += sum(int(line.split()[1]) for line in text.splitlines() if line.startswith("Pss:"))
    return total


def stable_rss_kib(root: int, *, samples: int, interval: float, timeout: float = 10.0) -> tuple[int, bool]:
    """Poll `rss_kib` until the last `samples` agree within 0.2% (or 64 KiB).

    Returns the last value, and whether it settled before `timeout` seconds.
    """
    seen: list[int] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen.append(rss_kib(root))
        last = seen[-samples:]
        if len(last) == samples and max(last) - min(last) <= max(64, max(last) // 500):
            return last[-1], True
        time.sleep(interval)
    return seen[-1], False


def thread_count(root: int) -> int:
    """Threads of `root` and its descendants."""
    return sum(int(fields[17]) for _, fields in _tree(root))  # field 20: num_threads


def process_count(root: int) -> int:
    """`root` and its live descendants."""
    return len(_tree(root))


def task_counts(root: int) -> tuple[int, int]:
    """The processes and the threads of `root` and its descendants; zombies included."""
    tree = _tree(root)
    return len(tree), sum(int(fields[17]) for _, fields in tree)


def mem_available_kib() -> int | None:
    """MemAvailable from /proc/meminfo, if the kernel tells."""
    for line in (_PROC / "meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1])
    return None


def raise_fd_limit(needed: int) -> int:
    """Raise the soft RLIMIT_NOFILE toward `needed`, as far as the hard limit allows; return the new soft limit.

    Processes started afterwards inherit it.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, or what `platform` says."""
    try:
        text = (_PROC / "cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        if line.startswith(("model name", "Model", "Hardware")):
            return line.partition(":")[2].strip()
    return platform.processor() or platform.machine()


def machine() -> dict[str, object]:
    """The machine a run happened on: CPU, cores, memory, Python, OS, and how busy it was before."""
    with (_PROC / "meminfo").open() as meminfo:
        total = next((int(line.split()[1]) for line in meminfo if line.startswith("MemTotal:")), None)
    return {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "memory_mib": None if total is None else total // 1024,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "compiled": COMPILED,  # the build measured: mypyc or pure Python
        "speedups": SPEEDUPS,  # length-prefixed reads split in C (framing/_speedups.c)
        "os": platform.platform(),
        "load_average": os.getloadavg()[0],  # over the last minute: others' work skews every figure
    }
