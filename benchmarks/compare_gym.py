"""RLDT against the baselines in one harness: the same task, base policy, env-step budget and seeds.

Runs, for every method and seed, its example with its default config (``rldt``:
``examples/rldt_gym.py``, ``rldt_delta`` the same with the delta kernel, ``qam`` the same with
``method=qam``, ``qam_n16`` QAM at inverse temperature 30 with 16 Euler steps, ``swfp`` the same with
``method=swfp``, SWFP as we read its abstract (``docs/swfp.md``); ``reinflow``,
``fpo`` (FPO++) and ``dppo``: ``examples/ppo_gym.py``;
``sac``, from scratch: ``examples/sac_gym.py``). For a ``MetaWorld/<Task>-v3`` task each example
runs with its sparse-reward config (``--config-name rldt_metaworld``, ``ppo_metaworld``,
``sac_metaworld``) and the table reports the stochastic success rate. The fine-tuning methods
start from the task's shipped base policy (DPPO from the DDPM base pretrained on the same data);
all are evaluated the same way (deterministic policy, 10 episodes every 20k env steps, 20
episodes at the start and the end, the same evaluation seeds). Each run has its own directory under
``--runs``: a run whose ``summary.json`` reached the budget is not run again, a run with a
checkpoint is resumed (also to extend a finished run to a larger budget). Then gathers the
evaluation returns against env steps and wall-clock into ``<out>/<name>.csv``, a plot
``<out>/<name>.png``, a markdown table ``<out>/<name>.md`` and ``<out>/<name>.json``.

    python benchmarks/compare_gym.py --task Hopper-v5 --seeds 1 2 --env-steps 100000 --jobs 2
    python benchmarks/compare_gym.py --task MetaWorld/Assembly-v3 --methods rldt rldt_delta reinflow \\
        fpo sac --seeds 1 1000 2000 --env-steps 300000 --jobs 2
    python benchmarks/compare_gym.py --methods reinflow fpo --seeds 0 --set ppo.actor_lr=1e-4 \\
        --name ppo_lr_1e-4

``--set [METHOD:]KEY=VALUE`` adds a Hydra override to every run (or to METHOD's runs). With
``--jobs 2`` two runs share the machine's cores, so their wall-clock is longer than alone: compare
wall-clock only between runs made with the same ``--jobs``.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# method -> (example, overrides that select it, label)
METHODS = {
    # with its replay buffer, so that a killed or extended run resumes exactly
    "rldt": ("rldt_gym.py", ["checkpoint.save_replay_buffer=true"], "RLDT"),
    "rldt_delta": ("rldt_gym.py", ["checkpoint.save_replay_buffer=true", "rldt.kernel=delta"],
                   "RLDT-Delta"),
    "qam": ("rldt_gym.py", ["checkpoint.save_replay_buffer=true", "method=qam"], "QAM"),
    # QAM where it learns on Hopper-v5 (benchmarks/results/ablation_qam_hopper-v5.md): a stronger
    # tilt, and 16 Euler steps so that its adjoint keeps the critic's direction
    "qam_n16": ("rldt_gym.py", ["checkpoint.save_replay_buffer=true", "method=qam", "qam.inverse_temperature=30",
                                "rldt.num_steps=16", "rldt.min_step=12"], "QAM (inverse temperature 30, 16 steps)"),
    # our reading of the SWFP abstract (arXiv 2510.15388, docs/swfp.md), in the RLDT loop
    "swfp": ("rldt_gym.py", ["checkpoint.save_replay_buffer=true", "method=swfp"], "SWFP (our reading)"),
    "reinflow": ("ppo_gym.py", ["method=reinflow"], "ReinFlow"),
    "fpo": ("ppo_gym.py", ["method=fpo"], "FPO++"),
    # from the task's DDPM base, pretrained on the same data as the flow base
    "dppo": ("ppo_gym.py", ["method=dppo"], "DPPO"),
    "sac": ("sac_gym.py", [], "SAC (from scratch)"),
}


def parse_overrides(settings: list[str], methods: list[str]) -> dict[str, list[str]]:
    """The Hydra overrides of each of ``methods`` from ``[METHOD:]KEY=VALUE`` strings.

    Args:
        settings: the ``--set`` values; without ``METHOD:`` one applies to every method.
        methods: the methods being run.
    """
    overrides = {method: [] for method in methods}
    for setting in settings:
        target, _, override = setting.partition(":") if ":" in setting.split("=")[0] else ("", "", setting)
        if "=" not in override:
            raise SystemExit(f"--set {setting!r}: expected [METHOD:]KEY=VALUE")
        if target and target not in METHODS:
            raise SystemExit(f"--set {setting!r}: unknown method {target!r} (one of {list(METHODS)})")
        for method in methods if not target else [target] if target in methods else []:
            overrides[method].append(override)
    return overrides


# the order in which runs start: the longest first, so that parallel jobs end together
# (SWFP's update costs about RLDT's: benchmarks/loss_cost.py)
LONGEST_FIRST = ["sac", "qam_n16", "rldt", "swfp", "rldt_delta", "qam", "dppo", "fpo", "reinflow"]
# the paper's Gym comparison (the default): RLDT and its five baselines; rldt_delta is its ablation
GYM_METHODS = ["rldt", "reinflow", "fpo", "dppo", "qam", "sac"]
# Meta-World tasks run each example with its sparse-reward config (a sibling of the Gym one)
METAWORLD_CONFIGS = {"rldt_gym.py": "rldt_metaworld", "ppo_gym.py": "ppo_metaworld",
                     "sac_gym.py": "sac_metaworld"}


def is_metaworld(task: str) -> bool:
    """Meta-World tasks are measured by their stochastic success rate, Gym ones by deterministic return."""
    return task.startswith("MetaWorld/")


# Options that change neither what a run learns nor how it is evaluated: a finished run whose
# command differs from the requested one only in these is the requested run.
NEUTRAL_OPTIONS = ("resume", "collector.total_env_steps", "checkpoint.", "logger.", "hydra.")


def run_options(command: list[str]) -> set[str]:
    """The options of a run's command that define its result (see ``NEUTRAL_OPTIONS``)."""
    return {token for token in command if "=" in token and not token.startswith(NEUTRAL_OPTIONS)}


def run(method: str, task: str, seed: int, env_steps: int, run_dir: Path, overrides: list[str]) -> dict:
    """Runs, resumes or reuses one method on one seed and returns its ``summary.json``.

    Args:
        method: a key of ``METHODS``.
        task: the EnvPool task id.
        seed: the run's seed.
        env_steps: the env-step budget.
        run_dir: the run's directory (its log goes to ``<run_dir>.log``).
        overrides: Hydra overrides of this run.

    A finished run is reused only if its command had the same options (up to ``NEUTRAL_OPTIONS``)
    and the budget ``env_steps``; a run to a smaller budget is extended through ``resume=``.
    """
    example, selector, _ = METHODS[method]
    config = ["--config-name", METAWORLD_CONFIGS[example]] if is_metaworld(task) else []
    options = [*config, *selector, f"task={task}", f"seed={seed}", *overrides]
    summary_path = run_dir / "summary.json"
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        done = summary["command"].split()
        if Path(done[1]).name != example or run_options(done) != run_options(options):
            raise SystemExit(
                f"{run_dir} holds a run of `{summary['command']}`, not of the options asked for "
                f"({' '.join(sorted(run_options(options)))}); use another --runs or --name."
            )
        # a run ends on its own rule (RLDT a few hundred env steps short of its budget, the PPO
        # methods up to an iteration past it): finished means run to the same budget
        budget = next((int(token.split("=")[1]) for token in done
                       if token.startswith("collector.total_env_steps=")), None)
        if budget is None:  # run with its config's budget: the checkpoint has the config
            import torch

            checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=True, map_location="cpu")
            budget = checkpoint["config"]["collector"]["total_env_steps"]
        if budget > env_steps:
            raise SystemExit(f"{run_dir} ran for {budget} env steps, more than --env-steps {env_steps}.")
        if budget == env_steps:
            return summary
    command = [
        sys.executable, str(ROOT / "examples" / example), *options,
        f"collector.total_env_steps={env_steps}", f"hydra.run.dir={run_dir}", "logger.progress_bar=false",
    ]
    if (run_dir / "checkpoint.pt").exists():
        command.append(f"resume={run_dir / 'checkpoint.pt'}")
    run_dir.mkdir(parents=True, exist_ok=True)
    log_path = run_dir.parent / f"{run_dir.name}.log"
    with open(log_path, "a") as log:
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        sys.stdout.write(f"{started} {method} seed {seed}: {' '.join(command)}\n")  # one write per line:
        sys.stdout.flush()  # runs start from several threads
        if subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode != 0:
            raise SystemExit(f"{method} seed {seed} failed; its output is in {log_path}")
    return json.loads(summary_path.read_text())


def last_value(csv_path: Path) -> float | None:
    """The value of the last row of one scalar file of the CSV logger (``None`` if it is empty)."""
    with open(csv_path) as handle:
        rows = [row for row in csv.reader(handle) if row]
    return float(rows[-1][-1]) if rows else None


def last_logged(run_dir: Path, key: str) -> float | None:
    """The last value of ``key`` written by the run's CSV logger (``None`` if it logged none)."""
    files = sorted(run_dir.rglob(f"scalars/{key}.csv"))
    return last_value(files[-1]) if files else None


def last_logged_scalars(run_dir: Path) -> dict[str, float]:
    """Every scalar the run's CSV logger wrote, at its last logged value (its learner diagnostics)."""
    # the last file of each name, as last_logged picks it
    files = {path.stem: path for path in sorted(run_dir.rglob("scalars/*.csv"))}
    values = {key: last_value(path) for key, path in sorted(files.items())}
    return {key: value for key, value in values.items() if value is not None}


def steps_to_threshold(history: list[dict], threshold: float) -> int | None:
    """The env steps of the first evaluation in ``history`` whose mean is >= ``threshold``."""
    return next((point["env_steps"] for point in history if point["mean"] >= threshold), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="Hopper-v5")
    parser.add_argument("--methods", nargs="+", default=GYM_METHODS, choices=list(METHODS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--env-steps", type=int, default=100_000)
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="[METHOD:]KEY=VALUE")
    parser.add_argument("--name", default=None, help="output file stem (default: compare_gym_<task>)")
    parser.add_argument("--runs", type=Path, default=ROOT / "outputs" / "benchmarks" / "compare_gym")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--threshold", type=float, default=None,
                        help="also report the env steps of each run's first evaluation at or above this")
    args = parser.parse_args()
    if args.jobs < 1 or args.env_steps < 1:
        raise SystemExit("--jobs and --env-steps must be positive")
    args.methods, args.seeds = list(dict.fromkeys(args.methods)), list(dict.fromkeys(args.seeds))
    cores = len(os.sched_getaffinity(0))
    overrides = parse_overrides(args.settings, args.methods)
    name = args.name or f"compare_gym_{args.task.lower().replace('/', '-')}"
    # what the table reports: success rate (Meta-World, stochastic) or deterministic return
    metric, digits = (("success rate (stochastic)", 2) if is_metaworld(args.task)
                      else ("deterministic return", 0))
    args.out.mkdir(parents=True, exist_ok=True)

    # the longest runs first, so that parallel jobs end together
    order = sorted(((method, seed) for seed in args.seeds for method in args.methods),
                   key=lambda item: LONGEST_FIRST.index(item[0]))
    run_root = args.runs / name
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {
            (method, seed): pool.submit(run, method, args.task, seed, args.env_steps,
                                        run_root / f"{method}-seed{seed}", overrides[method])
            for method, seed in order
        }
        summaries = {key: future.result() for key, future in futures.items()}

    with open(args.out / f"{name}.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", "seed", "env_steps", "wall_seconds", "return_mean", "return_std", "episodes"])
        for (method, seed), summary in sorted(summaries.items()):
            for point in summary["history"]:
                writer.writerow([method, seed, point["env_steps"], round(point["wall_seconds"], 1),
                                 round(point["mean"], 2), round(point["std"], 2), point["episodes"]])

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    colors = dict(zip(METHODS, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for (method, seed), summary in sorted(summaries.items()):
        history = summary["history"]
        returns = [point["mean"] for point in history]
        label = METHODS[method][2] if seed == min(args.seeds) else None
        axes[0].plot([p["env_steps"] for p in history], returns, marker="o", color=colors[method], label=label)
        axes[1].plot([p["wall_seconds"] / 60 for p in history], returns, marker="o", color=colors[method])
    axes[0].set_xlabel("env steps")
    axes[1].set_xlabel(f"wall-clock minutes ({cores} CPU cores, {args.jobs} run(s) at a time)")
    axes[0].set_ylabel(metric)
    axes[0].legend()
    fig.suptitle(f"{args.task}: seeds {args.seeds}, {args.env_steps} env steps")
    fig.tight_layout()
    fig.savefig(args.out / f"{name}.png", dpi=100)
    plt.close(fig)

    def spread(values: list[float]) -> float:
        return statistics.stdev(values) if len(values) > 1 else 0.0

    rows, report = [], {}
    for method in args.methods:
        runs = [summaries[(method, seed)] for seed in args.seeds]
        start = statistics.mean(run_summary["base"]["mean"] for run_summary in runs)
        final_per_seed = [run_summary["final"]["mean"] for run_summary in runs]
        final = statistics.mean(final_per_seed)
        minutes = statistics.mean(run_summary["history"][-1]["wall_seconds"] / 60 for run_summary in runs)
        steps = statistics.mean(run_summary["counters"]["env_steps"] for run_summary in runs)
        report[method] = {
            "start_mean": start, "final_mean": final,
            "final_std_over_seeds": spread(final_per_seed), "per_seed": {
                seed: {"start": s["base"], "final": s["final"],
                       # both sampling modes, start and final on the same initial states (runs
                       # made before the harness measured them have none)
                       "start_by_mode": s.get("base_by_mode"), "final_by_mode": s.get("final_by_mode"),
                       "counters": s["counters"],
                       "wall_seconds": s["history"][-1]["wall_seconds"],
                       "load_average": s.get("load_average"), "command": s["command"],
                       "last_logged": last_logged_scalars(run_root / f"{method}-seed{seed}")}
                for seed, s in zip(args.seeds, runs)},
        }
        # one seed: the spread over its 20 final episodes; several: over the seeds' means
        final_spread = runs[0]["final"]["std"] if len(runs) == 1 else spread(final_per_seed)
        improved = sum(s["final"]["mean"] > s["base"]["mean"] for s in runs)
        row = (f"| {METHODS[method][2]} | {start:.{digits}f} | {final:.{digits}f} +- "
               f"{final_spread:.{digits}f} | {final - start:+.{digits}f} | {improved}/{len(runs)} | "
               f"{steps:.0f} | {minutes:.1f} |")
        if args.threshold is not None:
            reached = [steps_to_threshold(s["history"], args.threshold) for s in runs]
            report[method]["env_steps_to_threshold"] = reached
            hits = [value for value in reached if value is not None]
            row += (f" {statistics.mean(hits):.0f} +- {spread(hits):.0f} ({len(hits)}/{len(runs)}) |"
                    if hits else f" not reached (0/{len(runs)}) |")
        rows.append(row)
    # both sampling modes, where every run measured them (paired start and final episodes)
    mode_rows = []
    if all(summary.get("base_by_mode") and summary.get("final_by_mode") for summary in summaries.values()):
        for method in args.methods:
            runs = [summaries[(method, seed)] for seed in args.seeds]
            cells = []
            for mode in ("stochastic", "deterministic"):
                start = statistics.mean(run_summary["base_by_mode"][mode]["mean"] for run_summary in runs)
                finals = [run_summary["final_by_mode"][mode]["mean"] for run_summary in runs]
                cells.append(f"{start:.{digits}f} -> {statistics.mean(finals):.{digits}f} +- "
                             f"{spread(finals):.{digits}f} ({', '.join(f'{v:.{digits}f}' for v in finals)})")
            mode_rows.append(f"| {METHODS[method][2]} | {cells[0]} | {cells[1]} |")
    episodes = summaries[(args.methods[0], args.seeds[0])]["final"]["episodes"]
    spread_note = (f"+- the standard deviation over the {episodes} final episodes" if len(args.seeds) == 1
                   else "+- the standard deviation of the seeds' means")
    command = "python benchmarks/compare_gym.py " + " ".join(sys.argv[1:])
    # runs record the machine's load when they ran (those of older versions did not)
    loads = [value for summary in summaries.values() for value in summary.get("load_average") or []]
    load_note = (f" The 1-minute load average at the runs' starts and ends ranged from {min(loads):.1f} "
                 f"to {max(loads):.1f}." if loads else "")
    table = "\n".join([
        f"{args.task}, seeds {args.seeds}, {args.env_steps} env steps per run, {metric} "
        f"of the final policy over {episodes} episodes ({spread_note}); start: the policy before "
        f"training (the shipped base: the flow policy, DPPO's DDPM policy; or SAC's random "
        f"initialisation). Wall-clock on {cores} CPU "
        f"cores with {args.jobs} run(s) at a time.{load_note}",
        "",
        "| method | start | final | change | seeds above start | env steps | wall-clock (min) |"
        + (f" env steps to {args.threshold:g} |" if args.threshold is not None else ""),
        "| --- | --- | --- | --- | --- | --- | --- |" + (" --- |" if args.threshold is not None else ""),
        *rows,
        *(["", f"Env steps to {args.threshold:g}: the first evaluation (the periodic ones and the "
           f"final one) whose mean reaches it, mean +- spread over the seeds that reached it "
           f"within the budget."] if args.threshold is not None else []),
        *(["", "Both sampling modes, start -> final (mean +- spread over the seeds; per seed), the start "
               "and the final policy on the same initial states:", "",
               "| method | stochastic | deterministic |", "| --- | --- | --- |", *mode_rows]
          if mode_rows else []),
        "",
        f"Made by `{command}`.",
        "",
    ])
    (args.out / f"{name}.md").write_text(table)
    (args.out / f"{name}.json").write_text(json.dumps(
        {"task": args.task, "seeds": args.seeds, "env_steps": args.env_steps, "jobs": args.jobs,
         "threshold": args.threshold,
         "settings": args.settings, "methods": report, "command": command}, indent=2) + "\n")
    print(table)


if __name__ == "__main__":
    main()
