"""What `connecteur bench` prints, from made-up figures: tables that fit, a legend that explains, too few messages."""

from __future__ import annotations

import importlib.util
import io
from dataclasses import replace
from typing import Any

import pytest

from connecteur.bench import orchestrator, report
from connecteur.bench.job import Figures
from connecteur.bench.orchestrator import DEFAULT_WORKLOADS, FULL, MIN_MESSAGES, QUICK, TARGETS, Results, Settings

HAS_RICH = importlib.util.find_spec("rich") is not None
MACHINE = {"cpu": "a CPU", "cpus": 2, "python": "CPython 3.11", "os": "Linux", "load_average": 12.4}


def figures(scale: float) -> Figures:
    """Figures as wide as a real run's widest: six-digit rates, four-digit latencies, a thousandfold ratio."""
    return {
        "messages": 100_000,
        "seconds": 1.0,
        "per_second": 654_321.0 * scale,
        "p50_us": 1_234.5 * scale,
        "p99_us": 12_345.6 * scale,
        "server_cpu_us_per_message": 1_234.5 * scale,
        "mb_per_second": 1_234.0 * scale,
        "kib_per_connection": 1.4 * scale,
        "client_bound": True,
    }


def made_up_results(settings: Settings = QUICK) -> Results:
    """Every target and default workload; the others' figures up to 1,698 times the reference's."""
    targets = list(TARGETS)
    results = Results(targets, list(DEFAULT_WORKLOADS), settings, "select", dict(MACHINE), (0, 1), "pinned")
    for i, target in enumerate(targets):
        scale = 1.0 if target == "select" else 1698.76 / (i + 1)
        results.rounds[target] = {workload: [figures(scale)] for workload in DEFAULT_WORKLOADS}
    return results


def printed_tables(results: Results, *, fancy: bool, width: int) -> str:
    """What print_table prints before its legend (which starts with the load average)."""
    out = io.StringIO()
    report.print_table(results, out, fancy=fancy, width=width)
    tables, legend, _ = out.getvalue().partition("\nLoad average")
    assert legend
    return tables


def every_cell(results: Results) -> list[str]:
    _, _, rows = report.table(results)
    return [cell for row in rows for cell in row]


@pytest.mark.parametrize("width", [80, 100])
@pytest.mark.parametrize("fancy", [pytest.param(True, id="rich"), pytest.param(False, id="plain")])
def test_below_120_columns_no_number_is_cut(fancy: bool, width: int) -> None:
    """rich cut every cell of the whole table to `sel… │ 3,4…` at 80 columns; a table per workload fits."""
    if fancy and not HAS_RICH:
        pytest.skip("rich is not installed (the optional extra 'rich')")
    results = made_up_results()
    table = printed_tables(results, fancy=fancy, width=width)
    assert "\N{HORIZONTAL ELLIPSIS}" not in table
    assert max(len(line) for line in table.splitlines()) <= width, table
    words = set(table.replace("\N{BOX DRAWINGS LIGHT VERTICAL}", " ").split())
    assert set(every_cell(results)) <= words, table
    for workload in DEFAULT_WORKLOADS:
        assert workload in words


@pytest.mark.parametrize("fancy", [pytest.param(True, id="rich"), pytest.param(False, id="plain")])
def test_a_wide_terminal_gets_one_table(fancy: bool) -> None:
    if fancy and not HAS_RICH:
        pytest.skip("rich is not installed (the optional extra 'rich')")
    table = printed_tables(made_up_results(), fancy=fancy, width=200)
    assert sum(line.split()[:1] == ["select"] for line in table.splitlines()) == 1, table


def test_the_legend_names_every_target_the_load_and_a_quick_runs_worth() -> None:
    lines = report.legend(made_up_results())
    for name, target in TARGETS.items():
        assert f"{name}: {target.description}" in lines
    assert any(line.startswith("Load average (1 min) before the run: 12.40 on 2 CPUs") for line in lines), lines
    assert any(line.startswith("Indicative figures: a quick run") for line in lines), lines
    assert not any("Indicative" in line for line in report.legend(made_up_results(FULL)))


class FakeClient:
    def __init__(self, answer: Figures) -> None:
        self.answer = answer

    def run(self, job: Any, timeout: float) -> tuple[Figures | None, str]:
        return self.answer, ""


class FakeServer:
    target = "select"
    address = ("127.0.0.1", 9)
    pid = 1

    def has_exited(self) -> bool:
        return False


@pytest.mark.parametrize(("messages", "shown"), [(1, False), (MIN_MESSAGES - 1, False), (MIN_MESSAGES, True)])
def test_a_figure_from_too_few_messages_is_a_failure_not_a_bar(messages: int, shown: bool) -> None:
    """A busy run once gave the reference's bulk figure from 1 message, and every other bar read 17-260 times."""
    results = made_up_results()
    del results.rounds["select"]["bulk"]
    answer = {**figures(1.0), "messages": messages}
    client: Any = FakeClient(answer)
    server: Any = FakeServer()
    orchestrator._measure(client, server, "bulk", results, orchestrator.Progress(), 1)
    assert (results.figure("select", "bulk") is not None) is shown
    if not shown:
        reason = results.failures["select"]["bulk"]
        assert f"only {messages} messages" in reason and f"fewer than the {MIN_MESSAGES}" in reason
        assert "failed" in every_cell(results)


def test_the_idle_workload_counts_no_messages_and_is_shown() -> None:
    results = made_up_results(replace(QUICK))
    del results.rounds["select"]["idle"]
    client: Any = FakeClient({"kib_per_connection": 1.5, "settled": True})
    server: Any = FakeServer()
    orchestrator._measure(client, server, "idle", results, orchestrator.Progress(), 1)
    assert results.figure("select", "idle") == {"kib_per_connection": 1.5, "settled": True}
