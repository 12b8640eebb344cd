"""How far fine-tuning moved a flow policy's weights, against what its optimiser steps allow.

For each training checkpoint (``examples/rldt_gym.py`` or ``examples/ppo_gym.py``), finds the
velocity network's weights in the loss's state and sets them against the run's base policy:
the RMS and largest change per weight, and two yardsticks for Adam, whose step moves each weight
by about ``lr``: ``lr x steps`` (every step in the same direction) and ``lr x sqrt(steps)`` (a
random walk). Writes a JSON file.

    python benchmarks/parameter_change.py outputs/benchmarks/compare_gym/<name>/*/checkpoint.pt \\
        --out benchmarks/results/<name>_parameter_change.json
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

from torchrl_rldt.checkpoint import load_flow_policy

ROOT = Path(__file__).resolve().parents[1]
# the actor's learning rate and its update counter, per example
LEARNING_RATE = {"torchrl_rldt.rldt_gym": ("optim", "actor_lr"), "torchrl_rldt.ppo_gym": ("ppo", "actor_lr")}
UPDATES = {"torchrl_rldt.rldt_gym": "actor_updates", "torchrl_rldt.ppo_gym": "updates"}


def parameter_change(path: Path) -> dict:
    """The weight change of one run's flow policy against its base (see the module docstring)."""
    checkpoint = torch.load(path, weights_only=True, map_location="cpu")
    kind, config = checkpoint["format"], checkpoint["config"]
    if kind not in LEARNING_RATE:
        raise SystemExit(f"{path}: a {kind} checkpoint; expected one of {sorted(LEARNING_RATE)}")
    slug = config["task"].lower().replace("/", "-")
    base_path = ROOT / (config["base_checkpoint"] or f"checkpoints/{slug}-flow-base.pt")
    base = dict(load_flow_policy(base_path, task=config["task"]).actor.model.velocity_network.named_parameters())
    state = checkpoint["loss"]
    # the actor's velocity network under the loss's functional parameters (nested differently
    # per loss, e.g. ReinFlow's noisy actor wraps the flow actor)
    prefixes = {key[: -len(name)] for key in state for name in base
                if key.endswith("velocity_network." + name) and "reference" not in key and "target" not in key}
    if len(prefixes) != 1:
        raise SystemExit(f"{path}: expected one set of actor weights in the loss state, found {sorted(prefixes)}")
    prefix = prefixes.pop()
    change = torch.cat([(state[prefix + name] - weight).flatten() for name, weight in base.items()])
    section, key = LEARNING_RATE[kind]
    lr, steps = config[section][key], checkpoint["counters"][UPDATES[kind]]
    return {
        "checkpoint": str(path), "format": kind, "task": config["task"],
        "method": config.get("method", "rldt" if kind.endswith("rldt_gym") else None),
        "actor_lr": lr, "actor_updates": steps,
        "rms_change": change.pow(2).mean().sqrt().item(), "max_change": change.abs().max().item(),
        "rms_weight": torch.cat([w.flatten() for w in base.values()]).pow(2).mean().sqrt().item(),
        "lr_x_steps": lr * steps, "lr_x_sqrt_steps": lr * math.sqrt(steps),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", type=Path, nargs="+")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rows = [parameter_change(path) for path in args.checkpoints]
    report = {"runs": rows, "command": "python benchmarks/parameter_change.py " + " ".join(sys.argv[1:])}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for row in rows:
        sys.stdout.write(f"{row['checkpoint']}: rms {row['rms_change']:.5f} (lr x sqrt(steps) "
                         f"{row['lr_x_sqrt_steps']:.5f}, lr x steps {row['lr_x_steps']:.4f})\n")


if __name__ == "__main__":
    main()
