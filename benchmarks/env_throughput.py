"""Env steps per second with random actions: raw envpool vs EnvPoolEnv vs Collector.

Measured for each ``num_envs`` (default 8 and 32) on Hopper-v5:

- ``raw_autoreset``: ``pool.step`` in a loop, envpool resetting finished envs itself
  (its NEXT_STEP auto-reset: the step after an episode end is a reset that ignores
  the action, counted here as a step). The upper limit of this machine.
- ``raw_autoreset_real``: the same loop, counting only the real transitions (not the
  auto-reset steps): envpool's own rate of transitions a learner can use.
- ``raw_explicit_reset``: ``pool.step`` plus ``pool.reset(finished ids)``: the
  correct transitions that ``EnvPoolEnv`` delivers, with no TorchRL around them.
- ``envpool_env``: ``EnvPoolEnv.step_and_maybe_reset`` in a loop.
- ``envpool_env_rollout``: ``EnvPoolEnv.rollout(256, policy, break_when_any_done=False)``.
- ``envpool_env_collector``: ``EnvPoolEnv`` under ``torchrl.collectors.Collector``.

Every method takes its actions from the same fixed bank of uniform random actions, so
that the policy costs nothing and only the env layer is compared (TorchRL's default
``RandomPolicy`` samples through ``spec.rand()``, which costs more than the env step).

The timed windows of the methods are interleaved (one window of each method per round),
so that a change of the machine's load hits them all alike; each figure is the median
over ``--repeats`` rounds of windows of ``--seconds`` each. The load average is recorded.
``--revision REV`` adds ``EnvPoolEnv`` as it was at a git revision to the same rounds (a
before/after of a change, measured alike).

    python benchmarks/env_throughput.py --revision 7354260 --out benchmarks/results/env_throughput.json
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Callable

import envpool
import numpy as np
import tensordict
import torch
import torchrl
from tensordict import TensorDictBase
from torchrl.collectors import Collector

from torchrl_rldt.envs import EnvPoolEnv

TASK = "Hopper-v5"


ROLLOUT_STEPS = 256


def _window(step_fn: Callable[[], int], seconds: float) -> float:
    """Env steps per second of ``step_fn`` (which returns its env steps) over one window."""
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        steps += step_fn()
    return steps / (time.perf_counter() - start)


def _action_bank(num_envs: int, size: int = 1024) -> np.ndarray:
    return np.random.default_rng(0).uniform(-1, 1, (size, num_envs, 3)).astype(np.float32)


def raw_autoreset(num_envs: int) -> dict[str, Callable[[], int]]:
    """Two counts of one loop: every ``pool.step`` row, and the real transitions only."""
    pool = envpool.make(TASK, env_type="gymnasium", num_envs=num_envs, seed=0)
    pool.reset()
    bank = _action_bank(num_envs)
    state = {"i": 0, "finished": np.zeros(num_envs, dtype=bool)}

    def step_all() -> int:
        pool.step(bank[state["i"] % len(bank)])
        state["i"] += 1
        return num_envs

    def step_real() -> int:
        _, _, terminated, truncated, _ = pool.step(bank[state["i"] % len(bank)])
        state["i"] += 1
        # an env that finished at the previous step was reset by this one: not a transition
        real = num_envs - int(state["finished"].sum())
        state["finished"] = terminated | truncated
        return real

    return {"raw_autoreset": step_all, "raw_autoreset_real": step_real}


def raw_explicit_reset(num_envs: int) -> Callable[[], int]:
    pool = envpool.make(TASK, env_type="gymnasium", num_envs=num_envs, seed=0)
    pool.reset()
    bank, i = _action_bank(num_envs), [0]

    def step() -> int:
        _, _, terminated, truncated, _ = pool.step(bank[i[0] % len(bank)])
        finished = np.nonzero(terminated | truncated)[0]
        if len(finished):
            pool.reset(finished)
        i[0] += 1
        return num_envs

    return step


def envpool_env(num_envs: int, env_class: type = EnvPoolEnv) -> Callable[[], int]:
    env = env_class(TASK, num_envs, seed=0)
    bank = torch.from_numpy(_action_bank(num_envs))
    state = {"td": env.reset(), "i": 0}

    def step() -> int:
        td = state["td"].set("action", bank[state["i"] % len(bank)])
        _, state["td"] = env.step_and_maybe_reset(td)
        state["i"] += 1
        return num_envs

    return step


class _ActionBankPolicy:
    """Writes the next action of a fixed bank, as the raw loops do: no policy cost is timed.

    (A ``TensorDictModule`` would add ~0.05 ms per call here: tensordict 0.14's
    ``TensorDict.from_any`` looks up ``pandas`` with ``importlib.util.find_spec`` on every
    output it writes.)
    """

    def __init__(self, num_envs: int) -> None:
        self.bank = torch.from_numpy(_action_bank(num_envs))
        self.calls = 0

    def __call__(self, tensordict: TensorDictBase) -> TensorDictBase:
        self.calls += 1
        return tensordict.set("action", self.bank[self.calls % len(self.bank)])


def envpool_env_rollout(num_envs: int) -> Callable[[], int]:
    env = EnvPoolEnv(TASK, num_envs, seed=0)
    policy = _ActionBankPolicy(num_envs)
    state = {"td": env.reset()}

    def rollout() -> int:
        data = env.rollout(ROLLOUT_STEPS, policy, auto_reset=False, tensordict=state["td"],
                           break_when_any_done=False)
        state["td"] = env.step_mdp(data[..., -1])
        state["td"] = env.maybe_reset(state["td"])
        return num_envs * ROLLOUT_STEPS

    return rollout


def envpool_env_collector(num_envs: int) -> tuple[Callable[[], int], Callable[[], None]]:
    env = EnvPoolEnv(TASK, num_envs, seed=0)
    frames_per_batch = num_envs * 64
    # devices as the examples give them: without them the collector copies every step's data
    # to the env's device (a TensorDict.to per step, ~10% of this rate)
    collector = Collector(env, _ActionBankPolicy(num_envs), frames_per_batch=frames_per_batch,
                          total_frames=-1, trust_policy=True, device="cpu", storing_device="cpu")
    iterator = iter(collector)

    def batch() -> int:
        next(iterator)
        return frames_per_batch

    return batch, collector.shutdown


def envpool_env_class_at(revision: str) -> type:
    """``EnvPoolEnv`` as the file ``torchrl_rldt/envs/libs/envpool.py`` was at a git revision."""
    source = subprocess.run(["git", "show", f"{revision}:torchrl_rldt/envs/libs/envpool.py"],
                            cwd=Path(__file__).resolve().parents[1], check=True,
                            capture_output=True, text=True).stdout
    module = types.ModuleType(f"envpool_at_{revision}")
    exec(compile(source, f"envpool.py@{revision}", "exec"), module.__dict__)
    return module.EnvPoolEnv


def measure(num_envs: int, seconds: float, repeats: int, revision: str | None = None) -> dict[str, float]:
    """Median env steps per second of each method, over interleaved windows."""
    collector_batch, shutdown = envpool_env_collector(num_envs)
    methods = {
        **raw_autoreset(num_envs),
        "raw_explicit_reset": raw_explicit_reset(num_envs),
        "envpool_env": envpool_env(num_envs),
        "envpool_env_rollout": envpool_env_rollout(num_envs),
        "envpool_env_collector": collector_batch,
    }
    if revision is not None:
        methods[f"envpool_env_at_{revision}"] = envpool_env(num_envs, envpool_env_class_at(revision))
    for step_fn in methods.values():  # warm-up
        _window(step_fn, 0.2)
    rates: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeats):
        for name, step_fn in methods.items():
            rates[name].append(_window(step_fn, seconds))
    shutdown()
    return {name: statistics.median(values) for name, values in rates.items()}


def write_profile(path: Path, num_envs: int, seconds: float) -> None:
    """cProfile of ``envpool_env`` and ``envpool_env_collector`` (``seconds`` each), by own time."""
    sections = []
    for name, step_fn in (("envpool_env", envpool_env(num_envs)),
                          ("envpool_env_collector", envpool_env_collector(num_envs)[0])):
        _window(step_fn, 0.5)
        profile = cProfile.Profile()
        profile.enable()
        steps = _window(step_fn, seconds) * seconds
        profile.disable()
        text = io.StringIO()
        pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(25)
        sections.append(f"=== {name}, {num_envs} envs, ~{steps:.0f} env steps under the profiler\n"
                        + text.getvalue())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(sections))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-envs", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--revision", default=None,
                        help="also time EnvPoolEnv as it was at this git revision (a before/after)")
    parser.add_argument("--profile", type=Path, default=None,
                        help="also write a cProfile of envpool_env and envpool_env_collector at the "
                             "first --num-envs to this text file")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.torch_threads)

    results = []
    load_before = os.getloadavg()
    for num_envs in args.num_envs:
        row = {"num_envs": num_envs}
        row.update({name: round(rate) for name, rate in
                    measure(num_envs, args.seconds, args.repeats, args.revision).items()})
        timed = ["envpool_env", "envpool_env_rollout", "envpool_env_collector"]
        for name in timed + ([f"envpool_env_at_{args.revision}"] if args.revision else []):
            for baseline in ("raw_autoreset", "raw_autoreset_real", "raw_explicit_reset"):
                row[f"{name}_vs_{baseline}"] = round(row[name] / row[baseline], 3)
        results.append(row)
        print(json.dumps(row))

    if args.profile is not None:
        write_profile(args.profile, args.num_envs[0], args.seconds)

    report = {
        "task": TASK,
        "unit": "env steps per second, random actions, median of repeats",
        "command": "python benchmarks/env_throughput.py " + " ".join(sys.argv[1:]),
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
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
