"""Exports the policy of an ``examples/rldt_gym.py`` run as a flow-policy checkpoint, measured.

The fine-tuned actor is written with :func:`torchrl_rldt.checkpoint.save_flow_policy`, so
:func:`~torchrl_rldt.checkpoint.load_flow_policy` (and ``base_checkpoint=`` of every example) loads
it as it loads a shipped base. Before writing, the base and the fine-tuned policy are evaluated in
both sampling modes on paired episodes (the same fresh initial states for both policies, from envs
reseeded before each evaluation); the figures go into the checkpoint's metadata and under
``"fine_tuned"`` in the manifest beside the bases.

    python examples/export_policy.py outputs/rldt_metaworld/<run>/checkpoint.pt \\
        --out checkpoints/metaworld-assembly-v3-rldt.pt --episodes 100
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from torchrl_rldt.checkpoint import save_flow_policy
from torchrl_rldt.envs import returns_by_sampling_mode

import rldt_utils
import utils

# evaluation envs of their own, apart from the seeds of the run's envs (torchrl_rldt.trainers.env_seed's ranges)
EXPORT_EVAL_SEED_OFFSET = 30_000


def run_command(checkpoint: Path) -> str | None:
    """The command of the run that wrote ``checkpoint``, from its ``summary.json`` when it has one."""
    summary = checkpoint.parent / "summary.json"
    return json.loads(summary.read_text()).get("command") if summary.is_file() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="the run's checkpoint.pt")
    parser.add_argument("--out", type=Path, required=True, help="the flow-policy file to write")
    parser.add_argument("--episodes", type=int, default=100, help="per policy and sampling mode")
    parser.add_argument("--manifest", type=Path, default=utils.repo_path("checkpoints/manifest.json"),
                        help="where to record the export (its 'fine_tuned' entry); 'none' to skip")
    args = parser.parse_args()
    if args.episodes < 1:
        raise SystemExit(f"--episodes must be >= 1, got {args.episodes}")
    if args.out.suffix != ".pt":
        raise SystemExit(f"--out must be a .pt file, got {args.out}")
    torch.manual_seed(0)

    if str(args.manifest) != "none":
        utils.read_manifest(args.manifest)  # refused before the evaluation, not after
    device = torch.device("cpu")
    cfg, base, fine_tuned, _, checkpoint = rldt_utils.load_rldt_run(args.checkpoint, device)
    if cfg.method == "swfp":
        raise SystemExit(f"{args.checkpoint} is an SWFP run: its policy is the base with a cascade of flow "
                         "blocks, which a flow-policy file cannot hold (docs/swfp.md); load it with "
                         "rldt_utils.load_rldt_run instead")
    seed = cfg.seed + EXPORT_EVAL_SEED_OFFSET
    env = utils.make_policy_chunk_env(base, cfg, args.episodes, seed, device)
    returns = {name: returns_by_sampling_mode(env, policy.actor, seed=seed, max_env_steps=cfg.env.max_episode_steps,
                                              chunk_len=policy.actor.model.chunk_len)
               for name, policy in (("base", base), ("fine_tuned", fine_tuned))}
    command = "python examples/export_policy.py " + " ".join(sys.argv[1:])
    metadata = {
        "method": "rldt",
        "source": str(args.checkpoint),
        "run_command": run_command(args.checkpoint),
        "counters": checkpoint["counters"],
        "returns": returns,
        "command": command,
    }
    save_flow_policy(args.out, fine_tuned.actor, task=cfg.task, observation_stats=fine_tuned.observation_stats,
                     action_stats=fine_tuned.action_stats, metadata=metadata)
    if str(args.manifest) != "none":
        utils.update_manifest(args.manifest, {"task": cfg.task, **metadata}, "fine_tuned", args.out.name)

    metric = "success rate" if utils.is_metaworld(cfg.task) else "return"
    print(f"{cfg.task}: {metric} over {args.episodes} episodes, base -> fine-tuned")
    for mode in returns["base"]:
        print(f"  {mode:13s} {returns['base'][mode]['mean']:.3f} -> {returns['fine_tuned'][mode]['mean']:.3f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
