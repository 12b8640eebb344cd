"""One table of the Gym comparison across tasks, from the outputs of ``benchmarks/compare_gym.py``.

Reads ``<results>/compare_gym_<task>.json`` for each task (written by ``compare_gym.py``, which
runs the methods) and writes ``<results>/gym_table.md``: for every method and task the start, the
final deterministic return (mean over seeds +- their spread), and how many seeds ended above their
start. A method missing on a task shows as ``-``; tasks whose runs differ in budget or seeds are
refused, since their rows could not be read side by side.

    python benchmarks/gym_table.py
    python benchmarks/gym_table.py --tasks Hopper-v5 Walker2d-v5 HalfCheetah-v5 --out benchmarks/results/gym_table.md
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


from compare_gym import METHODS, ROOT

LABELS = {method: label for method, (_, _, label) in METHODS.items()}


def cell(report: dict) -> str:
    """``start -> final +- spread (k/n)`` of one method on one task."""
    runs = list(report["per_seed"].values())
    above = sum(run["final"]["mean"] > run["start"]["mean"] for run in runs)
    spread = statistics.stdev([run["final"]["mean"] for run in runs]) if len(runs) > 1 else 0.0
    return (f"{report['start_mean']:.0f} -> {report['final_mean']:.0f} +- {spread:.0f} "
            f"({above}/{len(runs)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["Hopper-v5", "Walker2d-v5", "HalfCheetah-v5"])
    parser.add_argument("--methods", nargs="+", default=list(LABELS), choices=list(LABELS))
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--out", type=Path, default=None, help="default: <results>/gym_table.md")
    args = parser.parse_args()

    reports = {}
    for task in args.tasks:
        if task.startswith("MetaWorld/"):
            raise SystemExit(f"{task} is compared by success rate: read its compare_gym table")
        path = args.results / f"compare_gym_{task.lower().replace('/', '-')}.json"
        if not path.is_file():
            raise SystemExit(f"no {path}: run python benchmarks/compare_gym.py --task {task} first")
        reports[task] = json.loads(path.read_text())
    budgets = {(tuple(report["seeds"]), report["env_steps"]) for report in reports.values()}
    if len(budgets) != 1:
        raise SystemExit("the tasks' comparisons differ in seeds or env steps: "
                         + ", ".join(f"{task}: seeds {r['seeds']}, {r['env_steps']} env steps"
                                     for task, r in reports.items()))
    (seeds, env_steps), = budgets
    methods = [m for m in args.methods if any(m in report["methods"] for report in reports.values())]

    lines = [
        f"Deterministic return of the final policy (20 episodes), start -> final, mean over seeds "
        f"{list(seeds)} +- the standard deviation of the seeds' means, and (in brackets) how many "
        f"seeds ended above their start; {env_steps} env steps per run. Start: the shipped flow "
        f"base (DPPO: the DDPM base; SAC: its random initialisation).",
        "",
        "| method | " + " | ".join(args.tasks) + " |",
        "| --- |" + " --- |" * len(args.tasks),
    ]
    for method in methods:
        cells = [cell(reports[task]["methods"][method]) if method in reports[task]["methods"] else "-"
                 for task in args.tasks]
        lines.append(f"| {LABELS[method]} | " + " | ".join(cells) + " |")
    lines += ["", "Made by `python benchmarks/gym_table.py " + " ".join(sys.argv[1:])
              + "` from the outputs of:", ""]
    lines += [f"- `{report['command']}`" for report in reports.values()]
    out = args.out or args.results / "gym_table.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
