"""Diagnostics of an ``examples/rldt_gym.py`` checkpoint against its base policy.

Re-evaluates the base and the fine-tuned policy on fresh episodes in both sampling modes, and
probes the critic on data states: mean Q, the gap between ensemble members, and the cosine
between the members' action-gradients at policy samples. Writes a JSON file.

    python examples/rldt_diagnostics.py outputs/rldt_gym/<run>/checkpoint.pt \
        --data data/halfcheetah-v5-medium.npz --out benchmarks/results/rldt_diagnostics.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf
from tensordict import TensorDict
from torchrl.envs import ExplorationType

from torchrl_rldt.data import load_offline_dataset
from torchrl_rldt.harness import episode_returns, read_checkpoint

import utils

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data", type=Path, required=True, help="a data set of the same task")
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--states", type=int, default=1000, help="data states for the critic probe")
    parser.add_argument("--seed", type=int, default=12345, help="seed of the evaluation envs")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.manual_seed(0)

    checkpoint = read_checkpoint(args.checkpoint, "rldt_gym")
    # checkpoints written before a config value existed take its current default
    cfg = OmegaConf.merge(OmegaConf.load(ROOT / "examples" / "config" / "rldt_gym.yaml"), checkpoint["config"])
    base = utils.load_base_policy(cfg, torch.device("cpu"), cfg.rldt.num_steps)
    env = utils.make_policy_chunk_env(base, cfg, args.episodes, args.seed, torch.device("cpu"))
    modes = {"deterministic": ExplorationType.DETERMINISTIC, "stochastic": ExplorationType.RANDOM}
    report = {"checkpoint": str(args.checkpoint), "counters": checkpoint["counters"], "returns": {}}

    def returns(name: str) -> None:
        report["returns"][name] = {
            mode: episode_returns(env, base.actor, max_env_steps=cfg.env.max_episode_steps,
                                  chunk_len=base.actor.model.chunk_len, exploration_type=exploration)
            for mode, exploration in modes.items()
        }

    returns("base")
    loss, _ = utils.make_rldt_loss(base.actor, utils.make_rldt_critic(base, cfg, "cpu"), cfg)
    loss.load_state_dict(checkpoint["loss"])  # the actor now holds the fine-tuned weights
    returns("fine_tuned")

    data = load_offline_dataset(str(args.data))
    stride = max(1, data.shape[0] // args.states)
    observation = base.observation_stats.normalize(data["observation"][::stride][: args.states])
    with torch.no_grad():
        action = base.actor.model.sample(observation)  # x0 ~ N(0, I)
    action.requires_grad_(True)
    state = TensorDict(observation=observation, batch_size=observation.shape[:-1])
    q = loss._q_values(state, action, loss.qvalue_network_params.detach())  # [E, B]
    gradients = [torch.autograd.grad(q[e].sum(), action, retain_graph=True)[0].flatten(-2)
                 for e in range(q.shape[0])]
    cosine = torch.nn.functional.cosine_similarity(gradients[0], gradients[1], dim=-1)
    report["critic"] = {
        "states": observation.shape[0],
        "mean_q": q.mean().item(),
        "mean_member_gap": (q[0] - q[1]).abs().mean().item(),
        "gradient_norms": [g.norm(dim=-1).mean().item() for g in gradients],
        "member_gradient_cosine_mean": cosine.mean().item(),
        "member_gradient_cosine_median": cosine.median().item(),
        "share_negative_cosine": (cosine < 0).float().mean().item(),
        "reward_abs_mean": checkpoint["extra"].get("reward_abs_mean"),
        "gamma": cfg.optim.gamma,
    }
    report["command"] = "python examples/rldt_diagnostics.py " + " ".join(sys.argv[1:])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({"returns": report["returns"], "critic": report["critic"]}, indent=1))


if __name__ == "__main__":
    main()
