"""What `connecteur bench` shows: progress, the table of ratios, the JSON file, the plot.

rich and matplotlib are optional: without rich, progress is a plain line per
measurement and the table plain text; matplotlib is needed for the plot only.
They are imported by name (`importlib`), so this module type-checks whether
they are installed or not; their objects are then `Any`.
"""

from __future__ import annotations

import importlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Final, Self, TextIO

from .job import CLIENT_BOUND_SHARE
from .orchestrator import TARGETS, WORKLOADS, Figures, Progress, Results

__all__ = [
    "COLUMNS",
    "PlainProgress",
    "RichProgress",
    "has_rich",
    "plot",
    "print_table",
    "skip_lines",
    "table",
    "write_json",
]


@dataclass(frozen=True)
class Column:
    """A figure of the table."""

    workload: str
    key: str
    header: str
    format: str
    higher_is_better: bool

    @property
    def is_headline(self) -> bool:
        return self.key == WORKLOADS[self.workload].headline


COLUMNS: Final = (
    Column("rr", "per_second", "rt/s", ",.0f", True),
    Column("rr", "p50_us", "p50 µs", ",.1f", False),
    Column("rr", "p99_us", "p99 µs", ",.1f", False),
    Column("rr", "server_cpu_us_per_message", "cpu µs", ",.1f", False),
    Column("pipeline", "per_second", "msg/s", ",.0f", True),
    Column("pipeline", "server_cpu_us_per_message", "cpu µs", ",.2f", False),
    Column("bulk", "mb_per_second", "MB/s", ",.0f", True),
    Column("bulk", "server_cpu_us_per_message", "cpu µs", ",.0f", False),
    Column("many", "per_second", "rt/s", ",.0f", True),
    Column("many", "server_cpu_us_per_message", "cpu µs", ",.1f", False),
    Column("idle", "kib_per_connection", "KiB/conn", ",.1f", False),  # KiB per connection
    Column("scale", "per_second", "msg/s", ",.0f", True),
    Column("scale", "server_cpu_us_per_message", "cpu µs", ",.2f", False),
    Column("mux", "per_second", "req/s", ",.0f", True),
    Column("mux", "server_cpu_us_per_message", "cpu µs", ",.1f", False),
    Column("mux", "lockstep_per_second", "1 conn each", ",.0f", True),
    Column("mux", "lockstep_server_cpu_us_per_message", "cpu µs", ",.1f", False),
    Column("client", "per_second", "rt/s", ",.0f", True),
    Column("client", "ratio", "vs socket", ",.2f", True),
    Column("fanout", "per_second", "del/s", ",.0f", True),
    Column("fanout", "server_cpu_us_per_message", "cpu µs", ",.2f", False),
)
"""Every column of the table, by workload; "cpu µs" is the server's CPU per message."""


TIMES: Final = "\N{MULTIPLICATION SIGN}"
"""The sign after a ratio (named: ruff's RUF001 takes it for a look-alike of x in literals)."""


def has_rich() -> bool:
    """Whether rich is importable."""
    return find_spec("rich") is not None


# --- the table ------------------------------------------------------------------------


def _cell(results: Results, target: str, column: Column) -> str:
    if column.workload in results.skipped.get(target, {}):
        return "skipped"
    if column.workload in results.failures.get(target, {}):
        return "failed"
    figures = results.figure(target, column.workload)
    if figures is None:
        return "-"
    value = float(figures[column.key])
    mark = "*" if column.is_headline and figures.get("client_bound") else ""
    if target == results.reference:
        return format(value, column.format) + mark
    reference = results.figure(results.reference, column.workload)
    if reference is None or not float(reference[column.key]):
        return "-" + mark
    ratio = value / float(reference[column.key])
    return (f"{ratio:.2f}{TIMES}" if ratio >= 0.0995 else f"{ratio:.2g}{TIMES}") + mark


def _columns(results: Results, workloads: list[str] | None = None) -> list[Column]:
    chosen = results.workloads if workloads is None else workloads
    return [column for column in COLUMNS if column.workload in chosen]


def table(results: Results, workloads: list[str] | None = None) -> tuple[list[str], list[str], list[list[str]]]:
    """The table: the workload of each column, its header, and a row of cells per target.

    The reference target's row holds its figures; every other row, each
    figure divided by the reference's. `workloads`, if given, chooses the
    columns (one table per workload on a narrow terminal).
    """
    columns = _columns(results, workloads)
    groups = ["", *(column.workload if column.is_headline else "" for column in columns)]
    headers = ["target", *(column.header for column in columns)]
    rows = [[target, *(_cell(results, target, column) for column in columns)] for target in results.targets]
    return groups, headers, rows


def legend(results: Results) -> list[str]:
    """What the table's figures mean, what it skipped and what failed."""
    settings, reference = results.settings, results.reference
    columns = _columns(results)
    higher = dict.fromkeys(column.header for column in columns if column.higher_is_better)
    lower = dict.fromkeys(column.header for column in columns if not column.higher_is_better)
    counts = {"many": f": {settings.many_connections:,}", "idle": f": {settings.idle_connections:,}"}
    lines = [
        *conditions(results),
        f"Reference: {reference}. Its row holds its figures; every other row, each figure divided by "
        f"{reference}'s (2.00{TIMES} is twice {reference}'s figure).",
        f"Higher is better: {', '.join(higher)}. Lower is better: {', '.join(lower)}.",
        *_units(results.workloads),
        *(f"{name}: {WORKLOADS[name].description}{counts.get(name, '')}" for name in results.workloads),
        *(f"{name}: {TARGETS[name].description}" for name in results.targets),
    ]
    if any(figures.get("client_bound") for figures in _all_figures(results)):
        lines.append(
            f"*: the client process was busy {CLIENT_BOUND_SHARE:.0%} of the time or more (of one core): "
            "the server may be faster than shown; its CPU per message compares fairly anyway."
        )
    if settings.rounds > 1:
        lines.append(f"Each figure is its median over {settings.rounds} rounds, the targets taking turns.")
    lines += skip_lines(results)
    for target, reasons in results.failures.items():
        lines += [f"failed: {workload} on {target}: {reason}" for workload, reason in reasons.items()]
    lines += [f"note: {note}" for note in results.notes]
    return lines


def conditions(results: Results) -> list[str]:
    """How far to trust the figures: the load average before the run, and whether it was quick."""
    machine = results.machine
    lines = [
        f"Load average (1 min) before the run: {float(str(machine['load_average'])):.2f} "
        f"on {machine['cpus']} CPUs: other work skews every figure."
    ]
    if results.settings.is_quick:
        settings = results.settings
        lines.append(
            f"Indicative figures: a quick run, {settings.rounds} round of {settings.seconds} s per figure; "
            "run without --quick to compare."
        )
    return lines


def skip_lines(results: Results) -> list[str]:
    """A line per skipped workload and target; one line for a reason shared by several (--check skips dozens)."""
    pairs: dict[str, list[str]] = {}
    for target, reasons in results.skipped.items():
        for workload, reason in reasons.items():
            pairs.setdefault(reason, []).append(f"{workload} on {target}")
    return [
        f"skipped: {where[0]}: {reason}" if len(where) == 1 else f"skipped: {len(where)} pairs: {reason}"
        for reason, where in pairs.items()
    ]


def _units(workloads: list[str]) -> list[str]:
    units = {
        "rt/s: round trips per second": {"rr", "many", "client"},
        "MB: 10**6 bytes of messages echoed": {"bulk"},
        "cpu µs: the server's CPU time per message (user + system, its whole process tree)": {
            "rr",
            "pipeline",
            "bulk",
            "many",
            "scale",
            "mux",
        },
        "req/s: requests per second from threads sharing one multiplexed connection; "
        "1 conn each: the same threads with a plain connection each, taking turns": {"mux"},
        "vs socket: connecteur's round trips/s over a hand-written socket client's, taking turns": {"client"},
        "del/s: copies delivered per second, all subscribers together; cpu µs per copy delivered": {"fanout"},
    }
    explained = [unit for unit, where in units.items() if where & set(workloads)]
    return ["; ".join(explained) + "."] if explained else []


def _all_figures(results: Results) -> list[Figures]:
    return [
        figures
        for target in results.targets
        for workload in results.workloads
        if (figures := results.figure(target, workload)) is not None
    ]


def print_table(results: Results, out: TextIO, *, fancy: bool, width: int | None = None) -> None:
    """Print the table and its legend: with rich when `fancy`, plain text otherwise.

    When the whole table is wider than `width` (by default the terminal's,
    or 80 columns), it is split into tables of whole workloads, as many in
    each as fit: a cut figure would lie.
    """
    width = width or shutil.get_terminal_size().columns
    if fancy:
        console: Any = importlib.import_module("rich.console").Console(file=out, width=width)
        for grid in _fitting(results, width, lambda grid: _rich_width(console, _rich_grid(grid))):
            console.print(_rich_grid(grid))
    else:
        for i, (groups, headers, rows) in enumerate(_fitting(results, width, _plain_width)):
            for text in [""] * (i > 0) + _plain_table([groups, headers, *rows]):
                print(text, file=out)
    print(file=out)
    for text in legend(results):
        print(text, file=out)


Table = tuple[list[str], list[str], list[list[str]]]


def _fitting(results: Results, width: int, width_of: Callable[[Table], int]) -> list[Table]:
    """The tables to print: workloads in order, as many in each table as fit in `width` (one at least)."""
    groups: list[list[str]] = []
    for workload in results.workloads:
        if groups and width_of(table(results, [*groups[-1], workload])) <= width:
            groups[-1].append(workload)
        else:
            groups.append([workload])
    return [table(results, group) for group in groups]


def _plain_width(grid: Table) -> int:
    groups, headers, rows = grid
    return max(len(line) for line in _plain_table([groups, headers, *rows]))


def _plain_table(lines: list[list[str]]) -> list[str]:
    """Columns two spaces apart: the first left-aligned, the others right-aligned."""
    widths = [max(len(cells[i]) for cells in lines) for i in range(len(lines[0]))]
    return ["  ".join([cells[0].ljust(widths[0]), *map(str.rjust, cells[1:], widths[1:])]).rstrip() for cells in lines]


def _rich_grid(grid: Table) -> Any:
    rich_table: Any = importlib.import_module("rich.table")
    groups, headers, rows = grid
    rendered = rich_table.Table(show_edge=False)
    for i, (group, header) in enumerate(zip(groups, headers, strict=True)):
        # Folded rather than cut with an ellipsis, should even one workload not fit.
        rendered.add_column(f"{group}\n{header}", justify="right" if i else "left", overflow="fold")
    for row in rows:
        rendered.add_row(*row)
    return rendered


def _rich_width(console: Any, rendered: Any) -> int:
    unbounded = console.options.update_width(10**6)  # rich clamps a measure to the width it is given
    return int(console.measure(rendered, options=unbounded).maximum)


# --- progress ------------------------------------------------------------------------


def _summary(workload: str, figures: Figures) -> str:
    spec = WORKLOADS[workload]
    text = f"{float(figures[spec.headline]):,.1f} {spec.unit}"
    if "server_cpu_us_per_message" in figures:
        text += f", server CPU {float(figures['server_cpu_us_per_message']):,.2f} µs/message"
        text += f", client busy {float(figures['client_cpu_share']):.0%}"
    if "ratio" in figures:
        text += f", {float(figures['ratio']):.2f}{TIMES} a hand-written socket client's"
    if "shared_over_lockstep" in figures:
        text += (
            f"; {float(figures['shared_over_lockstep']):.2f}{TIMES} the requests/s and "
            f"{float(figures['server_cpu_ratio']):.2f}{TIMES} the server CPU of a connection per thread"
        )
    return text


class PlainProgress(Progress):
    """A line per measurement, with its headline figure and CPU times."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._steps = 0
        self._done = 0

    def begin(self, steps: int, rounds: int) -> None:
        self._steps = steps

    def done(self, target: str, workload: str, figures: Figures | None, error: str) -> None:
        self._done += 1
        width = len(str(self._steps))
        outcome = _summary(workload, figures) if figures is not None else f"failed: {error}"
        print(f"[{self._done:{width}}/{self._steps}] {workload} on {target}: {outcome}", file=self._out, flush=True)


class RichProgress(Progress):
    """rich's progress bar while in its context; failures printed above it."""

    def __init__(self, out: TextIO) -> None:
        progress: Any = importlib.import_module("rich.progress")
        console = importlib.import_module("rich.console").Console(file=out)
        self._bar: Any = progress.Progress(
            progress.TextColumn("{task.description:<36}"),
            progress.BarColumn(),
            progress.MofNCompleteColumn(),
            progress.TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self._task: Any = None
        self._rounds = 1

    def __enter__(self) -> Self:
        self._bar.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._bar.stop()

    def begin(self, steps: int, rounds: int) -> None:
        self._task = self._bar.add_task("starting the servers", total=steps)
        self._rounds = rounds

    def step(self, target: str, workload: str, round_number: int) -> None:
        where = f", round {round_number}/{self._rounds}" if self._rounds > 1 and workload != "idle" else ""
        self._bar.update(self._task, description=f"{workload} on {target}{where}")

    def done(self, target: str, workload: str, figures: Figures | None, error: str) -> None:
        if figures is None:
            self._bar.console.print(f"{workload} on {target} failed: {error}", markup=False, highlight=False)
        self._bar.advance(self._task)


# --- files ------------------------------------------------------------------------------


def write_json(results: Results, path: Path) -> None:
    """Write every raw figure and the machine's description to `path`."""
    path.write_text(json.dumps(results.to_json(), indent=2) + "\n")


_COLORS: Final = {"reference": "tab:orange", "engine": "tab:blue", "peer": "tab:gray"}


def plot(results: Results, path: Path) -> None:
    """Draw a panel per workload, a bar per target, into a PNG file (needs matplotlib).

    Panels go two by two; the last free cell holds the legend and the machine.

    Raises:
        ModuleNotFoundError: matplotlib is not installed.
        OSError: the file cannot be written.
    """
    matplotlib: Any = importlib.import_module("matplotlib")
    matplotlib.use("Agg")  # files only: no display needed
    pyplot: Any = importlib.import_module("matplotlib.pyplot")
    columns = 2 if len(results.workloads) > 1 else 1
    rows = -(-(len(results.workloads) + 1) // columns)  # rounded up: a cell per workload, and the legend
    height = 0.32 * len(results.targets) + 1.2
    figure, axes = pyplot.subplots(rows, columns, figsize=(7.5 * columns, height * rows), squeeze=False)
    cells = list(axes.flat)
    for ax, workload in zip(cells, results.workloads, strict=False):
        _plot_panel(ax, results, workload)
    _plot_legend(cells[len(results.workloads)], results)
    for ax in cells[len(results.workloads) + 1 :]:
        ax.set_axis_off()
    # Above every panel: a quick run's bars, or a busy machine's, are not to be compared as they are.
    figure.suptitle("\n".join(conditions(results)), fontsize=9, x=0.01, ha="left")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)


def _plot_panel(ax: Any, results: Results, workload: str) -> None:
    spec = WORKLOADS[workload]
    reference = results.figure(results.reference, workload)
    base = float(reference[spec.headline]) if reference is not None else 0.0
    targets = results.targets[::-1]  # barh draws upward: the first target on top
    values: list[float] = []
    for y, target in enumerate(targets):
        figures = results.figure(target, workload)
        if figures is None:
            ax.text(0, y, " skipped" if workload in results.skipped.get(target, {}) else " failed", va="center")
            continue
        value = float(figures[spec.headline])
        values.append(value)
        kind = "reference" if target == results.reference else TARGETS[target].kind
        ax.barh(y, value, color=_COLORS[kind], hatch="//" if figures.get("client_bound") else None)
        label = f" {value:,.1f}" if value < 100 else f" {value:,.0f}"
        if base and target != results.reference:
            label += f" ({value / base:.2f}{TIMES})"
        ax.text(value, y, label, va="center", fontsize=8)
    ax.set_yticks(range(len(targets)), targets, fontsize=8)
    ax.tick_params(axis="x", labelsize=8)
    scale = ""
    if values and min(values) > 0 and max(values) / min(values) > 50:
        ax.set_xscale("log")  # a process per connection costs a thousand times an event loop's
        scale = ", log scale"
    better = "higher" if spec.higher_is_better else "lower"
    ax.set_title(f"{workload}: {spec.unit} ({better} is better{scale})\n{spec.description}", fontsize=9, loc="left")
    ax.margins(x=0.3)


def _plot_legend(ax: Any, results: Results) -> None:
    patches: Any = importlib.import_module("matplotlib.patches")
    handles = [
        patches.Patch(color=_COLORS["reference"], label=f"reference: {results.reference}"),
        patches.Patch(color=_COLORS["engine"], label="connecteur engines"),
        patches.Patch(color=_COLORS["peer"], label="standard-library peers (and uvloop)"),
        patches.Patch(facecolor="white", edgecolor="black", hatch="//", label="client-bound: may understate"),
    ]
    ax.set_axis_off()
    ax.legend(handles=handles, loc="upper left", fontsize=8, frameon=False)
    machine = results.machine
    lines = [
        *(f"{name}: {TARGETS[name].description}" for name in results.targets),
        "",
        f"connecteur bench, {results.settings.name} run",
        f"{machine['cpu']}, {machine['cpus']} CPUs",
        f"{machine['python']}, connecteur {'compiled with mypyc' if machine.get('compiled') else 'pure Python'}",
        f"{machine['os']}",
        results.pinning,
    ]
    ax.text(0.0, 0.0, "\n".join(lines), fontsize=7, va="bottom", transform=ax.transAxes)
