"""One table of a comparison across tasks, from the outputs of ``benchmarks/compare_gym.py``.

Reads ``<results>/compare_gym_<task><suffix>.json`` for each task (written by ``compare_gym.py``,
which runs the methods) and writes ``<results>/gym_table<suffix>.md``: for every method and task
the start, the final result (mean over seeds +- their spread) and how many seeds ended above their
start. Gym tasks report the deterministic return; Meta-World tasks the success rate in both
sampling modes (stochastic and deterministic, start and final on the same initial states). A
method missing on a task shows as ``-``; tasks whose runs differ in budget or seeds are refused,
since their rows could not be read side by side, and so are Gym and Meta-World tasks in one table.

    python benchmarks/gym_table.py
    python benchmarks/gym_table.py --tasks Hopper-v5 Walker2d-v5 HalfCheetah-v5 --out benchmarks/results/gym_table.md
    python benchmarks/gym_table.py --tasks MetaWorld/Assembly-v3 MetaWorld/PickPlace-v3 --suffix _heldout
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


from compare_gym import METHODS, ROOT, is_metaworld

LABELS = {method: label for method, (_, _, label) in METHODS.items()}


def both_modes(run: dict) -> bool:
    """Whether a run measured its start and final policy in both sampling modes (paired)."""
    return run.get("start_by_mode") is not None and run.get("final_by_mode") is not None


def cell(report: dict, mode: str | None = None, digits: int = 0) -> str:
    """``start -> final +- spread (k/n)`` of one method on one task: of its headline result, or
    of the success rate in sampling ``mode`` (``"stochastic"``, ``"deterministic"``)."""
    runs = list(report["per_seed"].values())
    if mode is None:
        starts = [run["start"]["mean"] for run in runs]
        finals = [run["final"]["mean"] for run in runs]
    elif not all(both_modes(run) for run in runs):
        if mode != "stochastic":  # runs made before both modes were measured
            return "-"
        # a Meta-World run's headline result is its stochastic success rate (start not paired)
        starts = [run["start"]["mean"] for run in runs]
        finals = [run["final"]["mean"] for run in runs]
    else:
        starts = [run["start_by_mode"][mode]["mean"] for run in runs]
        finals = [run["final_by_mode"][mode]["mean"] for run in runs]
    above = sum(final > start for start, final in zip(starts, finals))
    spread = statistics.stdev(finals) if len(finals) > 1 else 0.0
    return (f"{statistics.mean(starts):.{digits}f} -> {statistics.mean(finals):.{digits}f} +- "
            f"{spread:.{digits}f} ({above}/{len(runs)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["Hopper-v5", "Walker2d-v5", "HalfCheetah-v5"])
    parser.add_argument("--methods", nargs="+", default=list(LABELS), choices=list(LABELS))
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--suffix", default="",
                        help="reads compare_gym_<task><suffix>.json, writes gym_table<suffix>.md")
    parser.add_argument("--out", type=Path, default=None, help="default: <results>/gym_table<suffix>.md")
    args = parser.parse_args()
    metaworld = {is_metaworld(task) for task in args.tasks}
    if len(metaworld) != 1:
        raise SystemExit("Gym tasks (return) and Meta-World tasks (success rate) go in separate tables")
    metaworld, = metaworld

    reports = {}
    for task in args.tasks:
        path = args.results / f"compare_gym_{task.lower().replace('/', '-')}{args.suffix}.json"
        if not path.is_file():
            raise SystemExit(f"no {path}: run python benchmarks/compare_gym.py --task {task} "
                             f"--name compare_gym_{task.lower().replace('/', '-')}{args.suffix} first")
        reports[task] = json.loads(path.read_text())
    budgets = {(tuple(report["seeds"]), report["env_steps"]) for report in reports.values()}
    if len(budgets) != 1:
        raise SystemExit("the tasks' comparisons differ in seeds or env steps: "
                         + ", ".join(f"{task}: seeds {r['seeds']}, {r['env_steps']} env steps"
                                     for task, r in reports.items()))
    (seeds, env_steps), = budgets
    methods = [m for m in args.methods if any(m in report["methods"] for report in reports.values())]

    if metaworld:
        runs = [run for report in reports.values() for method_report in report["methods"].values()
                for run in method_report["per_seed"].values()]
        paired = all(both_modes(run) for run in runs)
        lines = [
            f"Success rate of the final policy ({runs[0]['final']['episodes']} episodes), mean over "
            f"seeds {list(seeds)} +- the standard deviation of the seeds' means, and (in brackets) "
            f"how many seeds ended above their start; {env_steps} env steps per run. Start: the "
            f"shipped flow base (DPPO: the DDPM base; SAC: its random initialisation). "
            + ("Stochastic (x0 ~ N(0, I)) and deterministic (x0 = 0; DPPO: its evaluation sampler), "
               "start and final on the same initial states." if paired else
               "Stochastic sampling; where a run did not measure both modes, its start and final "
               "are on different episodes and its deterministic cell is '-'."),
            "",
        ]
        modes = ("stochastic", "deterministic") if any(both_modes(run) for run in runs) else ("stochastic",)
        for mode in modes:
            lines += [f"{mode.capitalize()}:", "", "| method | " + " | ".join(args.tasks) + " |",
                      "| --- |" + " --- |" * len(args.tasks)]
            for method in methods:
                cells = [cell(reports[task]["methods"][method], mode, digits=2)
                         if method in reports[task]["methods"] else "-" for task in args.tasks]
                lines.append(f"| {LABELS[method]} | " + " | ".join(cells) + " |")
            lines.append("")
        lines += ["Wall-clock per run (minutes, mean over seeds):", "",
                  "| method | " + " | ".join(args.tasks) + " |", "| --- |" + " --- |" * len(args.tasks)]
        for method in methods:
            cells = [f"{statistics.mean(run['wall_seconds'] for run in reports[task]['methods'][method]['per_seed'].values()) / 60:.1f}"
                     if method in reports[task]["methods"] else "-" for task in args.tasks]
            lines.append(f"| {LABELS[method]} | " + " | ".join(cells) + " |")
    else:
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
    out = args.out or args.results / f"gym_table{args.suffix}.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
