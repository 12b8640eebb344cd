"""On-policy baselines for flow policies (ReinFlow, FPO++) on EnvPool MuJoCo, from the shipped base.

The same base policy, environments and evaluation as ``examples/rldt_gym.py``, with a method
switch: ``method=reinflow`` (``NoisyFlowActor`` + ``ReinFlowLoss``, arXiv 2505.22094) or
``method=fpo`` (``FlowActor`` + ``FPOLoss``, FPO++ by default, arXiv 2507.21053 / 2602.02481).
Each iteration collects ``num_envs x chunks_per_env`` chunk transitions with a TorchRL
``Collector``, computes GAE, and takes ``epochs`` passes of mini-batch PPO updates.

    python examples/flow_ppo_gym.py method=reinflow
    python examples/flow_ppo_gym.py method=fpo collector.total_env_steps=200000

Writes into the run directory: ``checkpoint.pt`` (atomically after every iteration: a kill loses
at most the iteration under way; ``resume=<checkpoint.pt>`` continues), the logger's files and
``summary.json``.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import hydra
import torch
import tqdm
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from torchrl.collectors import Collector
from torchrl.modules import MLP, ValueOperator
from torchrl.objectives import ValueEstimators
from torchrl.record.loggers import get_logger

from torchrl_rldt.checkpoint import atomic_save, atomic_write_text
from torchrl_rldt.modules import FlowNoiseMLP, NoisyFlowActor
from torchrl_rldt.objectives import FPOLoss, ReinFlowLoss
from utils import (
    ConfigCheck,
    load_base_policy,
    load_run_state,
    make_policy_chunk_env,
    record_returns,
    restore_rng_state,
    rng_state,
)

log = logging.getLogger("flow_ppo_gym")
CHECKPOINT_FORMAT = "torchrl_rldt.flow_ppo_gym"


def check_config(cfg: DictConfig) -> None:
    """Refuses invalid hyper-parameters with a message naming the value, before any work."""
    check = ConfigCheck(cfg)
    check.need(cfg.method in ("reinflow", "fpo"), f"method must be reinflow or fpo, got {cfg.method!r}")
    for name in ("collector.chunks_per_env", "ppo.epochs", "ppo.minibatch_size", "reinflow.num_steps",
                 "fpo.num_steps", "fpo.num_cfm_samples"):
        check.positive_int(name)
    check.positive_int("ppo.critic_warmup_iterations", minimum=0)
    for name in ("ppo.actor_lr", "ppo.critic_lr", "reinflow.min_std", "reinflow.clip_epsilon",
                 "fpo.clip_epsilon"):
        check.number(name, 0.0, open_low=True)
    for name in ("ppo.gamma", "ppo.lmbda"):
        check.number(name, 0.0, 1.0)
    check.number("reinflow.entropy_coeff", 0.0)
    check.number("reinflow.max_std", cfg.reinflow.min_std)
    if cfg.ppo.reward_scale_rate is not None:
        check.number("ppo.reward_scale_rate", 0.0, 1.0, open_low=True)
    check.need(cfg.fpo.variant in ("fpo++", "fpo"), f"fpo.variant must be fpo++ or fpo, got {cfg.fpo.variant!r}")
    check.common()
    check.done()


@hydra.main(version_base="1.3", config_path="config", config_name="flow_ppo_gym")
def main(cfg: DictConfig) -> None:
    check_config(cfg)
    device = torch.device(cfg.device)
    torch.set_num_threads(cfg.num_threads)
    resume_path, state = load_run_state(cfg, device, CHECKPOINT_FORMAT, task=cfg.task, method=cfg.method)
    method_cfg = cfg.reinflow if cfg.method == "reinflow" else cfg.fpo
    base = load_base_policy(cfg, device, method_cfg.num_steps)
    run_dir = resume_path.parent if resume_path else Path(HydraConfig.get().runtime.output_dir)
    torch.manual_seed(cfg.seed)

    # --- policy, critic, loss ------------------------------------------------------------------
    actor = base.actor
    observation_dim = actor.velocity_network.config["observation_dim"]
    critic = ValueOperator(
        MLP(in_features=observation_dim, out_features=1, num_cells=list(cfg.ppo.critic_hidden),
            activation_class=torch.nn.Mish),
        in_keys=["observation"],
    ).to(device)
    if cfg.method == "reinflow":
        noise = FlowNoiseMLP(observation_dim, actor.action_dim, chunk_len=actor.chunk_len,
                             min_std=cfg.reinflow.min_std, max_std=cfg.reinflow.max_std)
        policy = NoisyFlowActor(actor, noise.to(device), average_log_prob=True)
        loss = ReinFlowLoss(policy, critic, clip_epsilon=cfg.reinflow.clip_epsilon,
                            entropy_coeff=cfg.reinflow.entropy_coeff)
    else:
        policy = actor
        loss = FPOLoss(actor, critic, num_cfm_samples=cfg.fpo.num_cfm_samples,
                       variant=cfg.fpo.variant, clip_epsilon=cfg.fpo.clip_epsilon)
    loss.make_value_estimator(ValueEstimators.GAE, gamma=cfg.ppo.gamma, lmbda=cfg.ppo.lmbda)
    actor_optim = torch.optim.Adam(loss.actor_network_params.values(True, True), lr=cfg.ppo.actor_lr)
    critic_optim = torch.optim.Adam(loss.critic_network_params.values(True, True), lr=cfg.ppo.critic_lr)
    counters = {"env_steps": 0, "iterations": 0, "updates": 0}
    history, reward_abs_mean, base_returns = [], None, None
    if state:
        loss.load_state_dict(state["loss"])
        actor_optim.load_state_dict(state["actor_optim"])
        critic_optim.load_state_dict(state["critic_optim"])
        counters, history = state["counters"], state["history"]
        reward_abs_mean, base_returns = state["reward_abs_mean"], state["base_returns"]
        restore_rng_state(state["rng"], device)
        log.info("resumed %s at %d env steps", resume_path, counters["env_steps"])

    train_env = make_policy_chunk_env(base, cfg, cfg.env.num_envs, cfg.seed + counters["env_steps"], device)
    eval_env = make_policy_chunk_env(base, cfg, cfg.eval.episodes, cfg.seed + 10_000, device)
    final_env = make_policy_chunk_env(base, cfg, cfg.eval.final_episodes, cfg.seed + 20_000, device)

    logger = get_logger(cfg.logger.backend, logger_name=str(run_dir),
                        experiment_name="flow_ppo_gym") if cfg.logger.backend else None
    if base_returns is None:
        base_returns = record_returns(history, final_env, actor, cfg, env_steps=0,
                                      wall_seconds=0.0)
        log.info("%s base policy: deterministic return %.1f +- %.1f", cfg.task,
                 base_returns["mean"], base_returns["std"])

    # --- training loop: collect, GAE, epochs of mini-batch PPO ---------------------------------
    frames_per_batch = cfg.env.num_envs * cfg.collector.chunks_per_env
    collector = Collector(train_env, policy, frames_per_batch=frames_per_batch, total_frames=-1,
                          device=device, storing_device=device)
    next_eval = (counters["env_steps"] // cfg.eval.every_env_steps + 1) * cfg.eval.every_env_steps
    progress = tqdm.tqdm(total=cfg.collector.total_env_steps, initial=counters["env_steps"],
                         desc=f"{cfg.method} {cfg.task}", disable=not cfg.logger.progress_bar)
    wall_offset, start = (history[-1]["wall_seconds"] if history else 0.0), time.perf_counter()
    for batch in collector if counters["env_steps"] < cfg.collector.total_env_steps else ():
        steps = int(batch["next", "chunk_steps"].sum())
        counters["env_steps"] += steps
        counters["iterations"] += 1
        reward = batch["next", "reward"]
        if not torch.isfinite(reward).all():
            raise SystemExit(f"non-finite reward at {counters['env_steps']} env steps; the last "
                             f"checkpoint is {run_dir / 'checkpoint.pt'}")
        if cfg.ppo.reward_scale_rate is not None:
            rate, batch_abs = cfg.ppo.reward_scale_rate, reward.abs().mean().item()
            reward_abs_mean = batch_abs if reward_abs_mean is None else (
                (1 - rate) * reward_abs_mean + rate * batch_abs)
            batch["next", "reward"] = reward / max(reward_abs_mean, 1e-8)
        with torch.no_grad():
            loss.value_estimator(batch, params=loss.critic_network_params,
                                 target_params=loss.target_critic_network_params)
            if cfg.method == "fpo":
                loss.record_cfm_losses(batch)
        data = batch.reshape(-1)
        train_actor = counters["iterations"] > cfg.ppo.critic_warmup_iterations
        metrics = {}
        for _ in range(cfg.ppo.epochs):
            for index in torch.randperm(data.numel(), device=device).split(cfg.ppo.minibatch_size):
                terms = loss(data[index])
                total = terms["loss_critic"] + (
                    sum(value for key, value in terms.items() if key.startswith("loss_")
                        and key != "loss_critic") if train_actor else 0.0)
                if not torch.isfinite(total):
                    raise SystemExit(f"non-finite loss at {counters['env_steps']} env steps; the last "
                                     f"checkpoint is {run_dir / 'checkpoint.pt'}")
                actor_optim.zero_grad()
                critic_optim.zero_grad()
                total.backward()
                critic_optim.step()
                if train_actor:
                    actor_optim.step()
                counters["updates"] += 1
        metrics.update({key: value.item() for key, value in terms.items() if value.numel() == 1})
        done = batch["next", "done"].squeeze(-1)
        if done.any():
            metrics["train_return"] = batch["next", "episode_reward"][done].mean().item()
        if counters["env_steps"] >= next_eval:
            next_eval += cfg.eval.every_env_steps
            returns = record_returns(history, eval_env, actor, cfg, env_steps=counters["env_steps"],
                                     wall_seconds=wall_offset + time.perf_counter() - start)
            metrics["eval_return"] = returns["mean"]
            log.info("%d env steps: deterministic return %.1f +- %.1f", counters["env_steps"],
                     returns["mean"], returns["std"])
        if logger is not None:
            for key, value in metrics.items():
                logger.log_scalar(key, value, step=counters["env_steps"])
        progress.update(steps)
        atomic_save(
            {"format": CHECKPOINT_FORMAT, "task": cfg.task, "method": cfg.method,
             "loss": loss.state_dict(), "actor_optim": actor_optim.state_dict(),
             "critic_optim": critic_optim.state_dict(), "counters": dict(counters),
             "history": history, "reward_abs_mean": reward_abs_mean, "base_returns": base_returns,
             "rng": rng_state(device),
             "config": OmegaConf.to_container(cfg, resolve=True)},
            run_dir / "checkpoint.pt",
        )
        if counters["env_steps"] >= cfg.collector.total_env_steps:
            break
    progress.close()
    collector.shutdown()

    final_returns = record_returns(history, final_env, actor, cfg, env_steps=counters["env_steps"],
                                   wall_seconds=wall_offset + time.perf_counter() - start)
    summary = {"task": cfg.task, "method": cfg.method, "seed": cfg.seed, "counters": counters,
               "base": base_returns, "final": final_returns, "history": history,
               "command": "python examples/flow_ppo_gym.py " + " ".join(HydraConfig.get().overrides.task)}
    atomic_write_text(json.dumps(summary, indent=2) + "\n", run_dir / "summary.json")
    log.info(
        "\n%s (%s), deterministic return over %d episodes:\n  base       %8.1f +- %.1f\n"
        "  fine-tuned %8.1f +- %.1f   (%d env steps)\n  run directory: %s",
        cfg.task, cfg.method, final_returns["episodes"], base_returns["mean"], base_returns["std"],
        final_returns["mean"], final_returns["std"], counters["env_steps"], run_dir,
    )


if __name__ == "__main__":
    main()
