"""Env steps per second with random actions: raw envpool vs EnvPoolEnv vs Collector.

Measured for each ``num_envs`` (default 8 and 32) on Hopper-v5:

- ``raw_autoreset``: ``pool.step`` in a loop, envpool resetting finished envs itself
  (its NEXT_STEP auto-reset: the step after an episode end is a reset that ignores
  the action, counted here as a step). The upper limit of this machine.
- ``raw_explicit_reset``: ``pool.step`` plus ``pool.reset(finished ids)``: the
  correct transitions that ``EnvPoolEnv`` delivers, with no TorchRL around them.
- ``envpool_env``: ``EnvPoolEnv.step_and_maybe_reset`` in a loop.
- ``envpool_env_collector``: ``EnvPoolEnv`` under ``torchrl.collectors.Collector``
  with a uniform random policy module (TorchRL's default ``RandomPolicy`` samples
  through ``spec.rand()``, which costs more than the env step here).

Each figure is the median of ``--repeats`` timed windows of ``--seconds`` each.

    python benchmarks/env_throughput.py --out benchmarks/results/env_throughput.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import envpool
import numpy as np
import tensordict
import torch
import torchrl
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.collectors import Collector

from torchrl_rldt.envs import EnvPoolEnv

TASK = "Hopper-v5"


def _timed(step_fn, seconds: float, repeats: int, steps_per_call: int) -> float:
    """Median env steps per second of ``step_fn`` over ``repeats`` windows."""
    for _ in range(20):
        step_fn()
    rates = []
    for _ in range(repeats):
        calls, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            step_fn()
            calls += 1
        rates.append(calls * steps_per_call / (time.perf_counter() - start))
    return statistics.median(rates)


def _action_bank(num_envs: int, size: int = 1024) -> np.ndarray:
    return np.random.default_rng(0).uniform(-1, 1, (size, num_envs, 3)).astype(np.float32)


def raw_autoreset(num_envs: int, seconds: float, repeats: int) -> float:
    pool = envpool.make(TASK, env_type="gymnasium", num_envs=num_envs, seed=0)
    pool.reset()
    bank, i = _action_bank(num_envs), [0]

    def step():
        pool.step(bank[i[0] % len(bank)])
        i[0] += 1

    return _timed(step, seconds, repeats, num_envs)


def raw_explicit_reset(num_envs: int, seconds: float, repeats: int) -> float:
    pool = envpool.make(TASK, env_type="gymnasium", num_envs=num_envs, seed=0)
    pool.reset()
    bank, i = _action_bank(num_envs), [0]

    def step():
        _, _, terminated, truncated, _ = pool.step(bank[i[0] % len(bank)])
        finished = np.nonzero(terminated | truncated)[0]
        if len(finished):
            pool.reset(finished)
        i[0] += 1

    return _timed(step, seconds, repeats, num_envs)


def envpool_env(num_envs: int, seconds: float, repeats: int) -> float:
    env = EnvPoolEnv(TASK, num_envs, seed=0)
    bank = torch.from_numpy(_action_bank(num_envs))
    state = {"td": env.reset(), "i": 0}

    def step():
        td = state["td"].set("action", bank[state["i"] % len(bank)])
        _, state["td"] = env.step_and_maybe_reset(td)
        state["i"] += 1

    return _timed(step, seconds, repeats, num_envs)


class _UniformAction(nn.Module):
    def __init__(self, num_envs: int, action_dim: int) -> None:
        super().__init__()
        self.shape = (num_envs, action_dim)

    def forward(self, observation: torch.Tensor) -> torch.Tensor:
        return torch.rand(self.shape) * 2 - 1


def envpool_env_collector(num_envs: int, seconds: float, repeats: int) -> float:
    env = EnvPoolEnv(TASK, num_envs, seed=0)
    frames_per_batch = num_envs * 64
    policy = TensorDictModule(
        _UniformAction(num_envs, env.action_spec.shape[-1]), ["observation"], ["action"]
    )
    collector = Collector(env, policy, frames_per_batch=frames_per_batch, total_frames=-1)
    iterator = iter(collector)

    def batch():
        next(iterator)

    rate = _timed(batch, seconds, repeats, frames_per_batch)
    collector.shutdown()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-envs", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.torch_threads)

    results = []
    for num_envs in args.num_envs:
        row = {"num_envs": num_envs}
        for name, fn in [
            ("raw_autoreset", raw_autoreset),
            ("raw_explicit_reset", raw_explicit_reset),
            ("envpool_env", envpool_env),
            ("envpool_env_collector", envpool_env_collector),
        ]:
            row[name] = round(fn(num_envs, args.seconds, args.repeats))
        for name in ("envpool_env", "envpool_env_collector"):
            row[f"{name}_vs_raw_autoreset"] = round(row[name] / row["raw_autoreset"], 3)
            row[f"{name}_vs_raw_explicit_reset"] = round(
                row[name] / row["raw_explicit_reset"], 3
            )
        results.append(row)
        print(json.dumps(row))

    report = {
        "task": TASK,
        "unit": "env steps per second, random actions, median of repeats",
        "command": "python benchmarks/env_throughput.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
                   if k not in ("out", "num_envs"))
        + " --num-envs " + " ".join(map(str, args.num_envs)),
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "versions": {
            "envpool": envpool.__version__,
            "torch": torch.__version__,
            "torchrl": torchrl.__version__,
            "tensordict": tensordict.__version__,
        },
        "settings": {"seconds": args.seconds, "repeats": args.repeats,
                     "torch_threads": args.torch_threads,
                     "envpool_threads": "envpool default"},
        "results": results,
    }
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
