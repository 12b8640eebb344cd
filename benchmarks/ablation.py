"""One method, several variants of its config, the same task, seeds and budget: an ablation table.

Each ``--variant NAME=OVERRIDES`` is a set of Hydra overrides of the method's example (``--method``,
a method of ``compare_gym.py``), added to ``--common`` (overrides every variant shares). Every
variant runs on every seed through ``compare_gym.run`` (so a run is reused, resumed or extended as
there), in ``<runs>/<name>/<variant>-seed<seed>``. The table reports, per variant, the return of
the starting policy, the final return (mean over the seeds, and each seed), the change, each
seed's best evaluation along the way (with its env steps), and the learner diagnostics of the
run's last logged values when the run logs them (CSV logger):
``action_abs_mean`` (executed actions, normalised), ``q_mean``, ``q_member_gap``, ``transport_norm``.

    python benchmarks/ablation.py --task HalfCheetah-v5 --seeds 1 1000 --env-steps 150000 \\
        --common learner_precision=bf16 schedule.target_action_reuse=4 \\
        --variant base= --variant bootstrap=critic.bootstrap=true \\
        --name ablation_halfcheetah-v5 --jobs 2

Outputs ``<out>/<name>.md`` and ``<out>/<name>.json``.
"""
from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


from compare_gym import METHODS, ROOT, last_logged, run

DIAGNOSTICS = ("action_abs_mean", "q_mean", "q_member_gap", "transport_norm")


def best_evaluation(summary: dict) -> dict:
    """The evaluation of the run's history with the highest mean return, and when it happened."""
    best = max(summary["history"], key=lambda entry: entry["mean"])
    return {"mean": best["mean"], "env_steps": best["env_steps"]}


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``NAME=KEY=VALUE KEY=VALUE`` -> (name, overrides); ``NAME=`` has no overrides."""
    name, sep, overrides = text.partition("=")
    if not sep or not name:
        raise SystemExit(f"--variant {text!r}: expected NAME=OVERRIDES (OVERRIDES may be empty)")
    overrides = overrides.split()
    for override in overrides:
        if "=" not in override:
            raise SystemExit(f"--variant {text!r}: {override!r} is not a KEY=VALUE override")
    return name, overrides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="HalfCheetah-v5")
    parser.add_argument("--method", default="rldt", choices=list(METHODS))
    parser.add_argument("--variant", dest="variants", action="append", required=True,
                        metavar="NAME=OVERRIDES")
    parser.add_argument("--common", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--env-steps", type=int, default=150_000)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--name", required=True)
    parser.add_argument("--runs", type=Path, default=ROOT / "outputs" / "benchmarks" / "ablation")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    variants = dict(parse_variant(text) for text in args.variants)
    if len(variants) != len(args.variants):
        raise SystemExit("--variant names must differ")

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {
            (variant, seed): pool.submit(run, args.method, args.task, seed, args.env_steps,
                                         args.runs / args.name / f"{variant}-seed{seed}",
                                         [*args.common, *overrides])
            for variant, overrides in variants.items() for seed in args.seeds
        }
        summaries = {key: future.result() for key, future in futures.items()}

    report, rows = {}, []
    for variant, overrides in variants.items():
        runs = [summaries[(variant, seed)] for seed in args.seeds]
        start = statistics.mean(summary["base"]["mean"] for summary in runs)
        finals = [summary["final"]["mean"] for summary in runs]
        bests = [best_evaluation(summary) for summary in runs]
        diagnostics = {key: [last_logged(args.runs / args.name / f"{variant}-seed{seed}", key)
                             for seed in args.seeds] for key in DIAGNOSTICS}
        report[variant] = {
            "overrides": overrides, "start_mean": start, "final_mean": statistics.mean(finals),
            "final_per_seed": dict(zip(args.seeds, finals)),
            "best_per_seed": dict(zip(args.seeds, bests)),
            "minutes_per_seed": [summary["history"][-1]["wall_seconds"] / 60 for summary in runs],
            "last_logged": diagnostics,
        }
        shown = " / ".join(
            "n/a" if None in values else f"{statistics.mean(values):.3g}" for values in diagnostics.values()
        )
        best_text = [f"{best['mean']:.0f} ({best['env_steps'] / 1000:.0f}k)" for best in bests]
        rows.append(f"| {variant} | `{' '.join(overrides) or '-'}` | {start:.0f} | "
                    f"{statistics.mean(finals):.0f} ({', '.join(f'{value:.0f}' for value in finals)}) | "
                    f"{statistics.mean(finals) - start:+.0f} | "
                    f"{', '.join(best_text)} | "
                    f"{shown} |")
    command = "python benchmarks/ablation.py " + shlex.join(sys.argv[1:])
    table = "\n".join([
        f"{args.task}, {METHODS[args.method][2]}, seeds {args.seeds}, {args.env_steps} env steps per "
        f"run, final return over the final evaluation's episodes (mean over seeds; each seed in "
        f"brackets). Every variant adds its overrides to `{' '.join(args.common) or '-'}`. Last "
        f"logged values (mean over seeds): {' / '.join(DIAGNOSTICS)}.",
        "",
        "| variant | overrides | start | final (per seed) | change | best evaluation (env steps) | "
        + " / ".join(DIAGNOSTICS) + " |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
        f"Made by `{command}`.",
        "",
    ])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.md").write_text(table)
    (args.out / f"{args.name}.json").write_text(json.dumps(
        {"task": args.task, "method": args.method, "seeds": args.seeds, "env_steps": args.env_steps,
         "common": args.common, "variants": report, "command": command}, indent=2) + "\n")
    print(table)


if __name__ == "__main__":
    main()
