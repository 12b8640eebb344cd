"""The longer CPU protocol of RLDT fine-tuning: learning curves over seeds.

Runs ``examples/rldt_gym.py`` once per seed (in sequence, each in its own run directory under
``--runs``, through ``compare_gym.run``: a finished run of the same options and budget is not run
again, a run with a checkpoint is resumed, the run's output goes to ``<run directory>.log``), then
gathers the deterministic evaluation returns against env steps and wall-clock into ``<out>/rldt_gym_<task>.csv``, a plot ``<out>/rldt_gym_<task>.png`` and a
summary ``<out>/rldt_gym_<task>.json``.

    python benchmarks/rldt_gym.py --task Hopper-v5 --seeds 0 1 2 --env-steps 1000000
    python benchmarks/rldt_gym.py --task Hopper-v5 --seeds 0 --env-steps 200000 -- rldt.kernel=delta

Arguments after ``--`` are passed to every run as Hydra overrides.
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from compare_gym import ROOT, run  # noqa: E402


def main() -> None:
    argv = sys.argv[1:]
    overrides = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="Hopper-v5")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--env-steps", type=int, default=1_000_000)
    parser.add_argument("--runs", type=Path, default=ROOT / "outputs" / "benchmarks" / "rldt_gym")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    summaries = {}
    for seed in args.seeds:
        run_dir = args.runs / f"{args.task}-{args.env_steps}-seed{seed}"
        summaries[seed] = run("rldt", args.task, seed, args.env_steps, run_dir, overrides)

    name = f"rldt_gym_{args.task.lower()}"
    with open(args.out / f"{name}.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["seed", "env_steps", "wall_seconds", "return_mean", "return_std", "episodes"])
        for seed, summary in summaries.items():
            for point in summary["history"]:
                writer.writerow([seed, point["env_steps"], round(point["wall_seconds"], 1),
                                 round(point["mean"], 2), round(point["std"], 2), point["episodes"]])

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for seed, summary in summaries.items():
        history = summary["history"]
        returns = [point["mean"] for point in history]
        axes[0].plot([point["env_steps"] for point in history], returns, marker="o", label=f"seed {seed}")
        axes[1].plot([point["wall_seconds"] / 60 for point in history], returns, marker="o",
                     label=f"seed {seed}")
    axes[0].set_xlabel("env steps")
    axes[1].set_xlabel("wall-clock minutes (2 CPU cores)")
    for ax in axes:
        ax.set_ylabel("deterministic return")
        ax.legend()
    fig.suptitle(f"RLDT on {args.task} from the shipped base policy")
    fig.tight_layout()
    fig.savefig(args.out / f"{name}.png", dpi=100)
    plt.close(fig)

    base = [summary["base"]["mean"] for summary in summaries.values()]
    final = [summary["final"]["mean"] for summary in summaries.values()]
    report = {
        "task": args.task,
        "env_steps": args.env_steps,
        "seeds": args.seeds,
        "overrides": overrides,
        "base_mean_over_seeds": statistics.mean(base),
        "final_mean_over_seeds": statistics.mean(final),
        "per_seed": {
            seed: {"base": summary["base"], "final": summary["final"], "counters": summary["counters"]}
            for seed, summary in summaries.items()
        },
        "command": "python benchmarks/rldt_gym.py " + " ".join(sys.argv[1:]),
    }
    (args.out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("base_mean_over_seeds", "final_mean_over_seeds")}))


if __name__ == "__main__":
    main()
