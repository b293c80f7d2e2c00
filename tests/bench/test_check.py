"""`connecteur bench --check`'s judging, on hand-made results: no process, no socket."""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

import pytest

from connecteur.bench import check
from connecteur.bench.job import Figures
from connecteur.bench.orchestrator import QUICK, TARGETS, WORKLOADS, Results

CPU_KEY = "server_cpu_us_per_message"

# Figures under which every check holds: select leads wherever a check says it should.
GOOD: dict[tuple[str, str], Figures] = {
    ("select", "many"): {"per_second": 80_000.0, "server_cpu_us_per_message": 12.0, "client_bound": False},
    ("uvloop-protocol", "many"): {"per_second": 75_000.0, "server_cpu_us_per_message": 13.0, "client_bound": False},
    ("threads", "many"): {"per_second": 40_000.0, "server_cpu_us_per_message": 17.0, "client_bound": False},
    ("asyncio", "many"): {"per_second": 60_000.0, "server_cpu_us_per_message": 15.0, "client_bound": False},
    ("select", "pipeline"): {"per_second": 2e6, "server_cpu_us_per_message": 0.5, "client_bound": False},
    ("uvloop-protocol", "pipeline"): {"per_second": 1.5e6, "server_cpu_us_per_message": 1.0, "client_bound": False},
    ("asyncio-streams", "pipeline"): {"per_second": 1e5, "server_cpu_us_per_message": 8.0, "client_bound": False},
    ("threads", "pipeline"): {"per_second": 1.5e6, "server_cpu_us_per_message": 0.7, "client_bound": False},
    ("asyncio", "pipeline"): {"per_second": 1.5e6, "server_cpu_us_per_message": 0.7, "client_bound": False},
    ("select", "rr"): {"per_second": 10_000.0, "server_cpu_us_per_message": 30.0, "client_bound": False},
    ("uvloop-protocol", "rr"): {"per_second": 10_000.0, "server_cpu_us_per_message": 30.0, "client_bound": False},
    ("select", "bulk"): {"mb_per_second": 900.0, "per_second": 858.0, "client_bound": False},
    ("recv-into", "bulk"): {"mb_per_second": 1000.0, "per_second": 954.0, "client_bound": False},
    ("select", "idle"): {"kib_per_connection": 1.5},
    ("select", "scale"): {"per_second": 2e6, "server_cpu_us_per_message": 0.5, "client_bound": False},
    ("select*2", "scale"): {"per_second": 3.4e6, "server_cpu_us_per_message": 0.5, "client_bound": False},
    ("select", "client"): {"per_second": 9_500.0, "socket_per_second": 10_000.0, "ratio": 0.95},
}


def results_with(changes: dict[tuple[str, str], Figures] | None = None) -> Results:
    """A --check run's results holding `GOOD`, each figure updated by `changes`."""
    results = Results(list(check.TARGETS), list(WORKLOADS), QUICK, "select", {}, (None, None), "not pinned")
    for (target, workload), figures in GOOD.items():
        merged = {**figures, **(changes or {}).get((target, workload), {})}
        results.rounds.setdefault(target, {})[workload] = [merged]
    return results


def verdict(results: Results, check_id: str) -> check.Verdict:
    (found,) = [verdict for verdict in check.evaluate(results) if verdict.check.id == check_id]
    return found


def test_the_checks_are_issue_8s_table_and_name_real_targets_and_workloads() -> None:
    """Thirteen rows, unique ids; every target and workload exists, and every target is in --check's plan."""
    assert [c.id for c in check.CHECKS] == [
        "many-cpu",
        "many-rate",
        "pipeline-uvloop",
        "pipeline-streams",
        "rr",
        "bulk",
        "idle",
        "scale",
        "threads-many",
        "threads-pipeline",
        "asyncio-many",
        "asyncio-pipeline",
        "client",
    ]
    for c in check.CHECKS:
        assert c.workload in WORKLOADS
        assert {c.target, c.baseline or c.target} <= set(check.TARGETS) <= set(TARGETS)
    assert check.SETTINGS.idle_connections == 10_000 and check.QUICK_SETTINGS.idle_connections == 1_000


def test_every_check_holds_on_good_figures() -> None:
    """Ratios on the right side of every limit: HOLDS throughout, with the ratio as the value."""
    verdicts = check.evaluate(results_with())
    assert [v.outcome for v in verdicts] == ["HOLDS"] * len(check.CHECKS)
    assert verdict(results_with(), "scale").value == pytest.approx(1.7)
    assert verdict(results_with(), "idle").value == 1.5  # absolute: KiB, not a ratio
    assert verdict(results_with(), "client").value == 0.95


@pytest.mark.parametrize(
    ("check_id", "changes"),
    [
        ("many-cpu", {("select", "many"): {"server_cpu_us_per_message": 14.0}}),  # above 1.0x: lower is better
        ("many-rate", {("select", "many"): {"per_second": 70_000.0}}),  # below 1.0x: higher is better
        ("pipeline-streams", {("asyncio-streams", "pipeline"): {"server_cpu_us_per_message": 4.0}}),
        ("bulk", {("select", "bulk"): {"mb_per_second": 700.0}}),
        ("idle", {("select", "idle"): {"kib_per_connection": 4.5}}),
        ("threads-pipeline", {("threads", "pipeline"): {"server_cpu_us_per_message": 7.0}}),
        ("client", {("select", "client"): {"ratio": 0.85}}),
    ],
)
def test_a_figure_past_its_limit_is_missed(check_id: str, changes: dict[tuple[str, str], Figures]) -> None:
    """Only that check misses, and its line says MISSED."""
    results = results_with(changes)
    verdicts = check.evaluate(results)
    assert [v.check.id for v in verdicts if not v.holds] == [check_id]
    (line,) = [line for line in check.lines(verdicts, quick=False) if line.startswith(check_id + " ")]
    assert line.endswith("MISSED")


def test_a_ratio_exactly_at_its_limit_holds() -> None:
    """The limits are inclusive: 1.6x for scale, 1.0x for many-rate."""
    results = results_with({("select*2", "scale"): {"per_second": 3.2e6}, ("select", "many"): {"per_second": 75e3}})
    assert verdict(results, "scale").holds and verdict(results, "many-rate").holds


def test_a_throughput_comparison_with_a_busy_client_says_so() -> None:
    """Either side client-bound marks a throughput check, never a CPU one (which compares fairly anyway)."""
    results = results_with({("uvloop-protocol", "many"): {"client_bound": True}})
    assert verdict(results, "many-rate").is_client_bound
    assert not verdict(results, "many-cpu").is_client_bound
    line = next(line for line in check.lines(check.evaluate(results), quick=False) if line.startswith("many-rate "))
    assert line.endswith("HOLDS (client-bound)")


def test_a_missing_figure_fails_the_check_and_says_why() -> None:
    """A failed measurement, a baseline never measured, or a baseline of zero: failed, with the reason."""
    results = results_with({("asyncio-streams", "pipeline"): {CPU_KEY: 0.0}})
    del results.rounds["recv-into"]
    del results.rounds["select"]["idle"]
    results.failures["select"] = {"idle": "no result within 90 s"}
    failed = {v.check.id: v for v in check.evaluate(results) if v.value is None}
    assert set(failed) == {"idle", "bulk", "pipeline-streams"}
    assert failed["idle"].error == "idle on select: no result within 90 s"
    assert failed["bulk"].error == "bulk on recv-into was not measured"
    assert "is 0" in failed["pipeline-streams"].error
    lines = check.lines(check.evaluate(results), quick=True)
    assert lines[0].startswith("Performance targets, indicative only")
    (bulk,) = [line for line in lines if line.startswith("bulk ")]
    assert bulk.endswith("failed: bulk on recv-into was not measured")


def test_the_json_verdict_names_the_check_and_its_outcome() -> None:
    """What --json adds under "checks", one per check."""
    document = verdict(results_with({("select", "rr"): {"per_second": 9_000.0}}), "rr").to_json()
    assert document["id"] == "rr" and document["outcome"] == "MISSED"
    assert document["value"] == pytest.approx(0.9) and document["limit"] == 0.95 and document["at_most"] is False
    assert document["compared"] == "rr: select's throughput / uvloop-protocol's"


@pytest.mark.skipif(
    not Path("/proc/self/stat").exists() or find_spec("uvloop") is None, reason="--check needs Linux and uvloop"
)
def test_the_plan_runs_only_the_pairs_the_checks_read() -> None:
    """Every other pair of the plan's targets and workloads is skipped, all with one reason; nothing runs yet."""
    results = check.plan(quick=True)
    assert results.targets == list(check.TARGETS) and results.reference == "select"
    assert results.workloads == ["rr", "pipeline", "bulk", "many", "idle", "scale", "client"]
    assert results.settings == check.QUICK_SETTINGS
    ran = {(t, w) for t in results.targets for w in results.workloads if not results.is_skipped(t, w)}
    baselines = {(c.baseline, c.workload) for c in check.CHECKS if c.baseline is not None}
    assert ran == {(c.target, c.workload) for c in check.CHECKS} | baselines
    assert {r for reasons in results.skipped.values() for r in reasons.values()} == {check.NOT_NEEDED}
    assert ("select*2", "scale") in ran and ("select*2", "rr") not in ran and ("recv-into", "bulk") in ran
