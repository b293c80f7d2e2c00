"""``connecteur bench --check``: connecteur's performance targets, measured in one run and judged.

Each `Check` is data: a figure of one target, divided by the same figure of
another target in the same run (or taken as it is), against a limit. Each
build has its limits: the pure-Python build's are `PURE_CHECKS`, the
mypyc-compiled build's `COMPILED_CHECKS` (the same checks, some limits
tighter: issue 19); a run is judged by the limits of the build it measured.
`plan` prepares a run of only the targets and workloads the checks need;
`evaluate` turns its results into a `Verdict` per check; `lines` says them,
one line each, under a heading naming the build. A throughput comparison is marked client-bound when the client was
busy enough to have limited either figure (then the server may be faster than
measured); a missing figure makes the check fail, saying why.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Final

from .. import COMPILED
from . import orchestrator
from .orchestrator import FULL, QUICK, WORKLOADS, Results

__all__ = [
    "CHECKS",
    "COMPILED_CHECKS",
    "COMPILED_LIMITS",
    "NOT_NEEDED",
    "PURE_CHECKS",
    "QUICK_SETTINGS",
    "SETTINGS",
    "TARGETS",
    "Check",
    "Verdict",
    "checks_for",
    "evaluate",
    "judge",
    "lines",
    "plan",
]

TIMES: Final = "\N{MULTIPLICATION SIGN}"
AT_MOST: Final = "\N{LESS-THAN OR EQUAL TO}"
AT_LEAST: Final = "\N{GREATER-THAN OR EQUAL TO}"
CPU: Final = "server_cpu_us_per_message"
RATE: Final = "per_second"


_FIGURES: Final = {
    RATE: "throughput",
    CPU: "server CPU per message",
    "mb_per_second": "MB/s",
    "kib_per_connection": "KiB per idle connection",
    "ratio": "Connection's round trips/s / a socket client's",
}
"""The words for each figure a check reads."""


@dataclass(frozen=True)
class Check:
    """One performance target: figure `key` of `target` on `workload`, over `baseline`'s, `at_most` or at least `limit`.

    Without a baseline, the figure itself is held to the limit.
    """

    id: str
    workload: str
    target: str
    key: str
    limit: float
    at_most: bool
    baseline: str | None = None
    build: str = "pure"
    """The build whose limit this is: "pure" or "compiled"."""

    @property
    def is_throughput(self) -> bool:
        """Whether it compares rates, which a busy client may hold down."""
        return self.key in (RATE, "mb_per_second") and self.baseline is not None

    def describe(self) -> str:
        """What is compared, in words."""
        what = _FIGURES[self.key]
        if self.baseline is None:
            return f"{self.workload} on {self.target}: {what}"
        return f"{self.workload}: {_possessive(self.target)} {what} / {_possessive(self.baseline)}"


def _possessive(name: str) -> str:
    return f"{name}'" if name.endswith("s") else f"{name}'s"


PURE_CHECKS: Final = (
    Check("many-cpu", "many", "select", CPU, 1.0, at_most=True, baseline="uvloop-protocol"),
    Check("many-rate", "many", "select", RATE, 1.0, at_most=False, baseline="uvloop-protocol"),
    Check("pipeline-uvloop", "pipeline", "select", CPU, 0.6, at_most=True, baseline="uvloop-protocol"),
    Check("pipeline-streams", "pipeline", "select", CPU, 0.1, at_most=True, baseline="asyncio-streams"),
    Check("rr", "rr", "select", RATE, 0.95, at_most=False, baseline="uvloop-protocol"),
    Check("bulk", "bulk", "select", "mb_per_second", 0.8, at_most=False, baseline="recv-into"),
    Check("idle", "idle", "select", "kib_per_connection", 2.0, at_most=True),
    Check("scale", "scale", "select*2", RATE, 1.6, at_most=False, baseline="select"),
    Check("threads-many", "many", "threads", CPU, 1.5, at_most=True, baseline="select"),
    Check("threads-pipeline", "pipeline", "threads", CPU, 1.5, at_most=True, baseline="select"),
    Check("asyncio-many", "many", "asyncio", CPU, 1.5, at_most=True, baseline="select"),
    Check("asyncio-pipeline", "pipeline", "asyncio", CPU, 1.5, at_most=True, baseline="select"),
    Check("client", "client", "select", "ratio", 0.9, at_most=False),
)
"""The pure-Python build's performance targets (benchmarks/README.md): 64 B messages, the default
framing; "select" is the select engine."""

COMPILED_LIMITS: Final = {"many-cpu": 0.85, "pipeline-uvloop": 0.4, "rr": 1.0, "bulk": 1.0, "threads-many": 2.0}
"""The limits the compiled build is held to where they differ from the pure build's (issue 19)."""
COMPILED_CHECKS: Final = tuple(
    replace(check, limit=COMPILED_LIMITS.get(check.id, check.limit), build="compiled") for check in PURE_CHECKS
)
"""The compiled build's performance targets: the pure build's checks, with `COMPILED_LIMITS`."""


def checks_for(*, compiled: bool) -> tuple[Check, ...]:
    """The checks of one build: `COMPILED_CHECKS` or `PURE_CHECKS`."""
    return COMPILED_CHECKS if compiled else PURE_CHECKS


CHECKS: Final = checks_for(compiled=COMPILED)
"""The checks of the build this process runs (and so the bench's servers, started from the same install)."""

TARGETS: Final = ("select", "threads", "asyncio", "uvloop-protocol", "asyncio-streams", "recv-into", "select*2")
"""The targets of a --check run, in the table's order."""
SETTINGS: Final = replace(FULL, name="check", rounds=5, idle_connections=10_000)
"""A full run's, with the idle connections of the idle check and five rounds:
one round on a shared machine moves by tens of percent, and a verdict rests
on the median."""
QUICK_SETTINGS: Final = replace(QUICK, name="quick check", idle_connections=1_000)
"""A quick run's, with more idle connections: indicative only."""
NOT_NEEDED: Final = "not needed by --check"


def _needed() -> set[tuple[str, str]]:
    """Every (target, workload) a check reads."""
    pairs = {(check.target, check.workload) for check in CHECKS}
    return pairs | {(check.baseline, check.workload) for check in CHECKS if check.baseline is not None}


def plan(*, quick: bool) -> Results:
    """Prepare the --check run: `TARGETS` and the checks' workloads, every pair no check reads skipped.

    Raises:
        BenchError: not Linux, or uvloop missing.
    """
    needed = _needed()
    workloads = [name for name in WORKLOADS if name in {workload for _, workload in needed}]
    results = orchestrator.prepare(TARGETS, workloads, QUICK_SETTINGS if quick else SETTINGS, reference="select")
    for target in TARGETS:
        for workload in workloads:
            if (target, workload) not in needed:
                results.skipped.setdefault(target, {})[workload] = NOT_NEEDED
    return results


@dataclass(frozen=True)
class Verdict:
    """A check's outcome: the measured value (a ratio, or the figure itself), or why there is none."""

    check: Check
    value: float | None
    is_client_bound: bool = False
    error: str = ""

    @property
    def holds(self) -> bool:
        """Whether the value is on the right side of the limit (the limit included); False without a value."""
        if self.value is None:
            return False
        return self.value <= self.check.limit if self.check.at_most else self.value >= self.check.limit

    @property
    def outcome(self) -> str:
        """HOLDS, MISSED or failed."""
        return "failed" if self.value is None else "HOLDS" if self.holds else "MISSED"

    def to_json(self) -> dict[str, object]:
        """The check and its outcome, for ``--json``."""
        return {
            **asdict(self.check),
            "compared": self.check.describe(),
            "value": self.value,
            "outcome": self.outcome,
            "client_bound": self.is_client_bound,
            "error": self.error,
        }


def _why_missing(results: Results, target: str, workload: str) -> str:
    for problems in (results.failures, results.skipped):
        if reason := problems.get(target, {}).get(workload):
            return f"{workload} on {target}: {reason}"
    return f"{workload} on {target} was not measured"


def judge(check: Check, results: Results) -> Verdict:
    """The verdict on one check, from the medians of `results`."""
    figures = results.figure(check.target, check.workload)
    if figures is None or check.key not in figures:
        return Verdict(check, None, error=_why_missing(results, check.target, check.workload))
    value = float(figures[check.key])
    if check.baseline is None:
        return Verdict(check, value)
    base = results.figure(check.baseline, check.workload)
    if base is None or check.key not in base:
        return Verdict(check, None, error=_why_missing(results, check.baseline, check.workload))
    if not float(base[check.key]):
        return Verdict(check, None, error=f"{check.workload} on {check.baseline}: {check.key} is 0")
    bound = check.is_throughput and bool(figures.get("client_bound") or base.get("client_bound"))
    return Verdict(check, value / float(base[check.key]), is_client_bound=bound)


def evaluate(results: Results) -> list[Verdict]:
    """A verdict per check of the build `results` measured (its machine's "compiled"), in table order."""
    return [judge(check, results) for check in checks_for(compiled=bool(results.machine.get("compiled")))]


def _show(check: Check, value: float, digits: int) -> str:
    """A value or limit of `check` in its unit: KiB for memory, a ratio otherwise."""
    return f"{value:,.{digits}f} KiB" if check.key == "kib_per_connection" else f"{value:.{digits}f}{TIMES}"


def lines(verdicts: list[Verdict], *, quick: bool) -> list[str]:
    """A heading naming the build, then a line per verdict: id, what is compared, value, limit, outcome."""
    build = "compiled build (mypyc)" if verdicts and verdicts[0].check.build == "compiled" else "pure-Python build"
    heading = (
        f"Performance targets of the {build}, indicative only: a quick run is too short to decide them"
        if quick
        else f"Performance targets of the {build}, every ratio from this run"
    )
    width = max(len(verdict.check.describe()) for verdict in verdicts)
    said = [heading]
    for verdict in verdicts:
        check = verdict.check
        # A digit more for the value than for the limit: 0.6 and 0.598 read apart, 0.60 and 0.60 would not.
        value = "-" if verdict.value is None else _show(check, verdict.value, 3)
        limit = f"{AT_MOST if check.at_most else AT_LEAST} {_show(check, check.limit, 2)}"
        text = f"{check.id:<16}  {check.describe():<{width}}  {value:>10}  {limit:<9}  {verdict.outcome}"
        if verdict.value is None:
            text += f": {verdict.error}"
        elif verdict.is_client_bound:
            text += " (client-bound)"
        said.append(text)
    return said
