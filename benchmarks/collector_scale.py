"""Env steps per second of RLDT's collection path against the collector kind and its workers,
and the learner's share of the default job's wall-clock.

Collection: the job's own collector (``examples/rldt_utils.make_rldt_collector``: the shipped base
policy with RLDT's landing-point exploration, one chunk of ``H`` env steps per policy call), built
for each ``collector.kind`` and worker count in ``--configs``, iterated for ``--batches`` batches
after ``--warmup`` ones, with ``update_policy_weights_()`` after every batch as the training loop
does after its actor update. No learner runs, so the figure is what collection alone gives on this
machine.

Learner share: ``examples/rldt_gym.py`` run to ``--job-env-steps`` with ``--job-overrides`` (one
run per entry), its ``summary.json``'s ``phase_seconds`` (collection, critic, actor, evaluation)
as shares of the loop's wall-clock, and its env steps per second. The default entries name both
learners explicitly (fp32 with fresh target samples, and the fast learner: bf16 with target
samples reused 4x, the shipped default), so that a change of the config's defaults does not
change what a row measures; each row also records the learner settings the run resolved.

    python benchmarks/collector_scale.py --out benchmarks/results/collector_scale.json

Every collector kind starts its workers on this machine (Ray: a local instance on loopback). The
core count and the load average before and after are recorded beside the figures.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]


def load_example_module(name: str) -> ModuleType:
    """``examples/<name>.py`` imported under its own name, where the example scripts find it.

    The job's factories live beside the example scripts, which import them as top-level
    neighbours (``rldt_utils.py`` runs ``from utils import ...``): the module is registered in
    ``sys.modules`` before it runs, so that a neighbour loaded after it finds it there.

    Args:
        name: the module's file name in ``examples/``, without ``.py``.

    Returns:
        The executed module.
    """
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


utils = load_example_module("utils")
rldt_utils = load_example_module("rldt_utils")  # after utils, which it imports

# kind:workers[:num_envs] entries; num_envs defaults to the job's 8
DEFAULT_CONFIGS = ["single:1", "multi_sync:1", "multi_sync:2", "multi_async:2", "ray:2"]


def _config(task: str, kind: str, workers: int, num_envs: int):
    with initialize_config_dir(config_dir=str(ROOT / "examples" / "config"), version_base="1.3"):
        return compose(config_name="rldt_gym", overrides=[
            f"task={task}", f"collector.kind={kind}", f"collector.num_workers={workers}",
            f"env.num_envs={num_envs}",
        ])


def collection_rate(task: str, kind: str, workers: int, num_envs: int, batches: int,
                    warmup: int) -> dict:
    """Env steps per second of ``batches`` collector batches of one collector kind."""
    cfg = _config(task, kind, workers, num_envs)
    base = utils.load_base_policy(cfg, torch.device(cfg.device), cfg.rldt.num_steps)
    chunk_len = base.actor.model.chunk_len
    frames_per_batch = cfg.env.num_envs * cfg.collector.chunks_per_env
    collector = rldt_utils.make_rldt_collector(base, cfg, seed=0,
                                               total_chunks=frames_per_batch * (batches + warmup))
    try:
        iterator = iter(collector)
        for _ in range(warmup):
            next(iterator)
            collector.update_policy_weights_()
        start, chunks = time.perf_counter(), 0
        for _ in range(batches):
            chunks += utils.collected_chunks(next(iterator)).numel()
            collector.update_policy_weights_()
        seconds = time.perf_counter() - start
    finally:
        collector.shutdown()
    return {"kind": kind, "workers": workers, "num_envs": num_envs, "batches": batches,
            "env_steps": chunks * chunk_len, "seconds": round(seconds, 2),
            "env_steps_per_second": round(chunks * chunk_len / seconds)}


def job_phases(task: str, env_steps: int, overrides: str) -> dict:
    """The default job (plus ``overrides``) run to ``env_steps``: phase shares and env steps/s."""
    with tempfile.TemporaryDirectory() as run_dir:
        command = [sys.executable, str(ROOT / "examples" / "rldt_gym.py"), f"task={task}",
                   f"collector.total_env_steps={env_steps}", f"hydra.run.dir={run_dir}",
                   "logger.progress_bar=false", *overrides.split()]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        summary = json.loads((Path(run_dir) / "summary.json").read_text())
        resolved = OmegaConf.load(Path(run_dir) / ".hydra" / "config.yaml")
    phases = summary["phase_seconds"]
    wall = sum(phases.values())  # the phases ("other" included) add up to the loop's wall-clock
    env_steps = summary["counters"]["env_steps"]
    return {
        "overrides": overrides,
        "learner": {"learner_precision": resolved.learner_precision,
                    "target_action_reuse": resolved.schedule.target_action_reuse},
        "env_steps": env_steps, "wall_seconds": round(wall, 1),
        "env_steps_per_second": round(env_steps / wall, 1),
        "phase_seconds": {name: round(value, 1) for name, value in phases.items()},
        "phase_shares": {name: round(value / wall, 3) for name, value in phases.items()},
        "learner_share": round((phases.get("critic", 0.0) + phases.get("actor", 0.0)) / wall, 3),
        "load_average": summary.get("load_average"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="Hopper-v5")
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS,
                        help="kind:workers[:num_envs] entries (num_envs defaults to 8)")
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--job-env-steps", type=int, default=40_000)
    parser.add_argument("--job-overrides", nargs="*",
                        default=["learner_precision=fp32 schedule.target_action_reuse=1",
                                 "learner_precision=bf16 schedule.target_action_reuse=4"],
                        help="one job run per entry ('' is the config's defaults; none: no job run)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)

    load_before = os.getloadavg()
    collection = []
    for entry in args.configs:
        kind, workers, *num_envs = entry.split(":")
        row = collection_rate(args.task, kind, int(workers), int(num_envs[0]) if num_envs else 8,
                              args.batches, args.warmup)
        collection.append(row)
        print(json.dumps(row), flush=True)
    jobs = []
    for overrides in args.job_overrides:
        row = job_phases(args.task, args.job_env_steps, overrides)
        jobs.append(row)
        print(json.dumps(row), flush=True)

    report = {
        "task": args.task,
        "command": "python benchmarks/collector_scale.py " + " ".join(sys.argv[1:]),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "load_average_before": load_before,
                    "load_average_after": os.getloadavg()},
        "settings": {"batches": args.batches, "warmup": args.warmup, "torch_threads": 1,
                     "chunks_per_env_per_batch": 8},
        "collection": collection,
        "jobs": jobs,
    }
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
