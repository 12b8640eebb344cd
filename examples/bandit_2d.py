"""RLDT on a two-dimensional, two-peak bandit.

A base flow policy is pretrained on a wide Gaussian, then fine-tuned with ``RLDTLoss`` through a
TorchRL ``Collector`` and replay buffer. Run with the RBF transport (particles repel each other:
the policy should keep mass on both peaks) and the delta variant (gradient ascent at each landing
point, no repulsion) from the same base. Writes ``bandit_2d.json`` (mean reward and the share
of samples near each peak, before and after) and ``bandit_2d.png`` (the samples).

    python examples/bandit_2d.py
    python examples/bandit_2d.py kernels=[rbf] rldt.iterations=10
"""
from __future__ import annotations

import copy
import json
import logging
import sys
from pathlib import Path

import hydra
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from omegaconf import DictConfig  # noqa: E402
from tensordict import TensorDict  # noqa: E402
from torchrl.collectors import Collector  # noqa: E402
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer  # noqa: E402
from torchrl.modules import ValueOperator  # noqa: E402
from torchrl.objectives import SoftUpdate  # noqa: E402

from torchrl_rldt.envs import PeaksBanditEnv  # noqa: E402
from torchrl_rldt.modules import (  # noqa: E402
    ChunkQValueMLP,
    FlowActor,
    FlowModel,
    LandingPointExploration,
    SVGDTransport,
    VelocityMLP,
)
from torchrl_rldt.objectives import FlowMatchingBCLoss, ReferenceUpdater, RLDTLoss  # noqa: E402
from torchrl_rldt.trainers import refuse_renamed_keys  # noqa: E402


log = logging.getLogger("bandit_2d")
ROOT = Path(__file__).resolve().parents[1]


@torch.no_grad()
def evaluate(actor: FlowActor, env: PeaksBanditEnv, cfg: DictConfig) -> tuple[dict, torch.Tensor]:
    """Mean reward and share of policy samples near each peak (stochastic sampling)."""
    observation = torch.zeros(cfg.eval.samples, 1, device=env.device)
    samples = actor.model(observation).squeeze(-2)  # x0 ~ N(0, I): stochastic samples
    distance = torch.cdist(samples, env.peaks)
    near = distance < cfg.eval.near_radius
    return {
        "mean_reward": env.reward(samples).mean().item(),
        "share_near_each_peak": near.float().mean(0).tolist(),
        "share_near_any_peak": near.any(-1).float().mean().item(),
    }, samples.cpu()


def pretrain_base(cfg: DictConfig, device: torch.device) -> FlowActor:
    actor = FlowActor(FlowModel(
        VelocityMLP(1, 2, hidden_dim=cfg.model.hidden_dim), 2, cfg.model.num_steps,
        low=-3.0, high=3.0,
    )).to(device)
    bc = FlowMatchingBCLoss(actor)
    optim = torch.optim.Adam(bc.parameters(), lr=cfg.base.lr)
    for _ in range(cfg.base.steps):
        action = cfg.base.std * torch.randn(512, 1, 2, device=device)
        loss = bc(TensorDict(observation=torch.zeros(512, 1, device=device), action=action,
                             batch_size=[512]))["loss_flow_bc"]
        optim.zero_grad()
        loss.backward()
        optim.step()
    return actor


def finetune(base: FlowActor, kernel: str, cfg: DictConfig, device: torch.device) -> FlowActor:
    actor = copy.deepcopy(base)
    env = PeaksBanditEnv(cfg.num_envs, device=device)
    critic = ValueOperator(
        ChunkQValueMLP(1, 2, hidden_dim=cfg.rldt.critic_hidden_dim),
        in_keys=["observation", "action"],
        out_keys=["state_action_value"],
    ).to(device)
    loss = RLDTLoss(
        actor,
        critic,
        num_particles=cfg.rldt.num_particles,
        transport=SVGDTransport(kernel),
        consistency_coeff=cfg.rldt.consistency_coeff,
        reference_coeff=cfg.rldt.reference_coeff,
    )
    loss.make_value_estimator(gamma=0.99)  # every pull terminates: the target is the reward
    target_updater = SoftUpdate(loss, tau=cfg.rldt.tau)
    # the reference re-anchored after each iteration's actor steps, or frozen at the base
    reference_updater = (ReferenceUpdater(loss, every=cfg.rldt.actor_steps)
                         if cfg.rldt.reanchor_reference else None)
    actor_optim = torch.optim.Adam(loss.actor_network_params.values(True, True), lr=cfg.rldt.actor_lr)
    critic_optim = torch.optim.Adam(loss.qvalue_network_params.values(True, True), lr=cfg.rldt.critic_lr)
    buffer = TensorDictReplayBuffer(
        storage=LazyTensorStorage(cfg.num_envs * cfg.rldt.iterations, device=device),
        batch_size=cfg.rldt.batch_size,
    )
    collector = Collector(
        env,
        LandingPointExploration(actor, min_step=cfg.rldt.min_step),
        frames_per_batch=cfg.num_envs,
        total_frames=cfg.num_envs * cfg.rldt.iterations,
    )
    for iteration, batch in enumerate(collector):
        buffer.extend(batch.reshape(-1))
        for _ in range(cfg.rldt.critic_steps):
            critic_loss, _ = loss.qvalue_loss(buffer.sample())
            critic_optim.zero_grad()
            critic_loss.backward()
            critic_optim.step()
            target_updater.step()
        for _ in range(cfg.rldt.actor_steps):
            terms = loss.actor_loss(buffer.sample())
            actor_optim.zero_grad()
            sum(terms[key] for key in RLDTLoss.POLICY_TERMS).backward()
            actor_optim.step()
            if reference_updater is not None:
                reference_updater.step()
        if iteration % 10 == 0:
            log.info(
                "%s iteration %d: batch reward %.3f, critic loss %.4f, transport norm %.3f",
                kernel, iteration, batch["next", "reward"].mean().item(), critic_loss.item(),
                terms["transport_norm"].item(),
            )
    collector.shutdown()
    return actor


@hydra.main(version_base="1.3", config_path="config", config_name="bandit_2d")
def main(cfg: DictConfig) -> dict:
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.num_threads)
    device = torch.device(cfg.device)
    env = PeaksBanditEnv(1, device=device)
    base = pretrain_base(cfg, device)
    results = {"base": None}
    results["base"], base_samples = evaluate(base, env, cfg)
    samples = {"base": base_samples}
    for kernel in cfg.kernels:
        torch.manual_seed(cfg.seed + 1)
        actor = finetune(base, kernel, cfg, device)
        results[kernel], samples[kernel] = evaluate(actor, env, cfg)
    for name, result in results.items():
        log.info(
            "%-5s mean reward %.3f, near peak 1 / peak 2: %.2f / %.2f", name,
            result["mean_reward"], *result["share_near_each_peak"],
        )

    out_dir = (ROOT / cfg.out_dir) if cfg.out_dir else Path.cwd()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bandit_2d.json").write_text(json.dumps(
        {"results": results, "peaks": env.peaks.tolist(), "width": env.width,
         "command": "python examples/bandit_2d.py"}, indent=2) + "\n")
    grid = torch.linspace(-3, 3, 200)
    xx, yy = torch.meshgrid(grid, grid, indexing="xy")
    reward = env.reward(torch.stack([xx, yy], -1).to(device)).cpu()
    fig, axes = plt.subplots(1, len(samples), figsize=(4 * len(samples), 4), squeeze=False)
    for ax, (name, points) in zip(axes[0], samples.items()):
        ax.contourf(xx, yy, reward, levels=20, cmap="Greys")
        ax.scatter(points[:1500, 0], points[:1500, 1], s=2, alpha=0.5, color="tab:red")
        ax.set_title(f"{name}: reward {results[name]['mean_reward']:.2f}")
        ax.set_xlim(-3, 3)
        ax.set_ylim(-3, 3)
        ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(out_dir / "bandit_2d.png", dpi=100)
    plt.close(fig)
    return results


if __name__ == "__main__":
    refuse_renamed_keys(sys.argv[1:])
    main()
