#!/usr/bin/env python3
"""Plot several `connecteur bench --json` runs side by side: the pure-Python and the compiled build.

``python benchmarks/plot_builds.py RUN.json... --out builds.png [--baseline uvloop-protocol] [--headline]``

One panel per workload: for each target, a bar per run (blue shades for the
compiled build, grays for pure Python, from the JSON's ``machine.compiled``;
each run labelled with its build and load average): the server's CPU per
message (per connection's memory for ``idle``), its steadiest figure; with
``--headline``, each workload's headline figure (round trips/s, MB/s...).
Each bar is also given as a ratio to the baseline target *of the same run*
(select where the baseline did not run that workload): runs are minutes
apart on a shared machine, so only ratios within a run compare; the bar
lengths are indicative. Needs matplotlib.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

TIMES = "\N{MULTIPLICATION SIGN}"
# A family of colors per build, a shade per run of it: the builds read apart, their runs together.
COLORS = {False: ("tab:gray", "silver", "dimgray"), True: ("tab:blue", "lightskyblue", "navy")}


def figure_of(run: dict[str, Any], workload: str, *, headline: bool) -> tuple[str, str]:
    """The key plotted for `workload`, and its unit with its direction."""
    spec = run["workloads"][workload]
    if headline or workload == "idle":
        better = "higher" if spec["higher_is_better"] else "lower"
        return spec["headline"], f"{spec['unit']} ({better} is better)"
    return "server_cpu_us_per_message", "server CPU µs per message (lower is better)"


def label_of(run: dict[str, Any], path: Path) -> str:
    machine = run["machine"]
    build = "compiled (mypyc)" if machine.get("compiled") else "pure Python"
    return f"{build}, load {machine['load_average']:.1f} ({path.name})"


def colors_of(runs: list[dict[str, Any]]) -> list[str]:
    """A color per run: its build's family, the next shade for each earlier run of the same build."""
    seen = {False: 0, True: 0}
    colors = []
    for run in runs:
        compiled = bool(run["machine"].get("compiled"))
        family = COLORS[compiled]
        colors.append(family[seen[compiled] % len(family)])
        seen[compiled] += 1
    return colors


def names_of(run: dict[str, Any]) -> list[str]:
    return [target["name"] for target in run["targets"]]


def has(run: dict[str, Any], target: str, workload: str, key: str) -> bool:
    return key in run["results"].get(target, {}).get(workload, {})


def panel(ax: Any, runs: list[dict[str, Any]], labels: list[str], workload: str, args: argparse.Namespace) -> None:
    key, unit = figure_of(runs[0], workload, headline=args.headline)
    targets = [t for t in names_of(runs[0]) if any(has(run, t, workload, key) for run in runs)]
    # Where the baseline did not run that workload (bulk in a --check run), select stands in.
    baseline = args.baseline if any(has(run, args.baseline, workload, key) for run in runs) else "select"
    height = 0.8 / len(runs)
    values: list[float] = []
    shades = colors_of(runs)
    for index, (run, label) in enumerate(zip(runs, labels, strict=True)):
        base = run["results"].get(baseline, {}).get(workload, {}).get(key)
        for row, target in enumerate(targets[::-1]):  # barh draws upward: the first target on top
            value = run["results"].get(target, {}).get(workload, {}).get(key)
            if value is None:
                continue
            values.append(value)
            y = row + (len(runs) - 1 - index - (len(runs) - 1) / 2) * height
            ax.barh(y, value, height=height, color=shades[index], label=label if row == 0 else None)
            text = f" {value:,.2f}" if value < 100 else f" {value:,.0f}"
            if base and target != baseline:
                text += f" ({value / base:.2f}{TIMES})"
            ax.text(value, y, text, va="center", fontsize=7)
    if values and min(values) > 0 and max(values) / min(values) > 50:
        ax.set_xscale("log")  # a process per connection costs a thousand times an event loop's
        unit += ", log scale"
    ax.set_yticks(range(len(targets)), targets[::-1], fontsize=8)
    ax.tick_params(axis="x", labelsize=8)
    ax.set_title(f"{workload}: {unit}; ({TIMES}): / {baseline}'s, same run", fontsize=9, loc="left")
    ax.margins(x=0.35)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN.json")
    parser.add_argument("--out", type=Path, required=True, metavar="FILE.png")
    parser.add_argument("--baseline", default="uvloop-protocol", help="the target each ratio divides by")
    parser.add_argument("--headline", action="store_true", help="each workload's headline figure, not server CPU")
    args = parser.parse_args(argv)
    import matplotlib  # optional, as for connecteur bench --plot

    matplotlib.use("Agg")
    from matplotlib import pyplot

    runs = [json.loads(path.read_text()) for path in args.runs]
    labels = [label_of(run, path) for run, path in zip(runs, args.runs, strict=True)]
    workloads = [
        w
        for w in runs[0]["workloads"]
        if all(w in run["workloads"] for run in runs)
        and any(has(runs[0], t, w, figure_of(runs[0], w, headline=args.headline)[0]) for t in names_of(runs[0]))
    ]
    columns = 2 if len(workloads) > 1 else 1
    rows = -(-len(workloads) // columns)
    height = 0.25 * len(runs) * len(runs[0]["targets"]) + 1.2
    figure, axes = pyplot.subplots(rows, columns, figsize=(7.5 * columns, height * rows), squeeze=False)
    for ax, workload in zip(axes.flat, workloads, strict=False):
        panel(ax, runs, labels, workload, args)
    for ax in list(axes.flat)[len(workloads) :]:
        ax.set_axis_off()
    figure.legend(*axes.flat[0].get_legend_handles_labels(), loc="upper right", fontsize=8, frameon=False)
    figure.suptitle("connecteur bench, one run per build", fontsize=10, x=0.01, ha="left")
    figure.tight_layout(rect=(0, 0, 1, 0.96))
    figure.savefig(args.out, dpi=100)
    print(f"plot written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
