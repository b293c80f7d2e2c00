"""Medians and ranges of rounds.sh's JSON lines, and each target's ratio to a base target in the same round.

    python benchmarks/floor/summary.py FILE... [--base uvloop-protocol] [--keys user,sys,sched]

A ratio is taken within a round (the runs were minutes apart at most), then the median over rounds: the
machine's load moves every figure by tens of percent between rounds, much less within one.
"""

import argparse
import collections
import json
import statistics


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("files", nargs="+")
    parser.add_argument("--base", default="uvloop-protocol")
    parser.add_argument("--keys", default="user,sys,sched")
    args = parser.parse_args()
    keys = args.keys.split(",")
    values: dict[str, dict[str, list[float]]] = collections.defaultdict(lambda: collections.defaultdict(list))
    ratios: dict[str, dict[str, list[float]]] = collections.defaultdict(lambda: collections.defaultdict(list))
    loads = []
    for name in args.files:
        rounds: dict[int, dict[str, dict]] = collections.defaultdict(dict)
        with open(name) as lines:
            runs_of_file = [json.loads(line) for line in lines]
        for row in runs_of_file:
            rounds[row["round"]][row["target"]] = row
            loads.append(float(row["load"]))
        for runs in rounds.values():
            base = runs.get(args.base)
            for target, row in runs.items():
                for key in keys:
                    values[target][key].append(row[key])
                    if base is not None and base[key]:
                        ratios[target][key].append(row[key] / base[key])

    def spread(v: list[float]) -> str:
        return f"{statistics.median(v):.2f} ({min(v):.2f}-{max(v):.2f})"

    for target in values:
        print(f"{target:18s} n={len(values[target][keys[0]]):<3d}", *(f"{k} {spread(values[target][k])}" for k in keys))
    for target in ratios:
        if target != args.base:
            print(f"{target:18s} / {args.base}:", *(f"{k} {spread(ratios[target][k])}" for k in keys))
    print(f"1-minute load at the start of each run: median {statistics.median(loads):.2f}, {min(loads)}-{max(loads)}")


if __name__ == "__main__":
    main()
