"""RLDT: online RL fine-tuning of a pretrained flow-matching policy on EnvPool MuJoCo.

RLDT ("Reinforcement Learning for Flow-Matching Policies with Density Transport", arXiv
2606.08602) with TorchRL pieces: a ``Collector`` over an ``EnvPoolEnv`` executing action
chunks with the landing-point exploration, a replay buffer of chunk transitions, ``RLDTLoss``
(SVGD-transported policy loss, a Q ensemble with Polyak targets). Starts from the shipped base
policy of the task, evaluates it, fine-tunes, and ends with base against fine-tuned return.

    python examples/rldt_gym.py
    python examples/rldt_gym.py task=Walker2d-v5 collector.total_env_steps=300_000
    python examples/rldt_gym.py resume=outputs/rldt_gym/Hopper-v5/<run>/checkpoint.pt

Writes into the run directory: ``checkpoint.pt`` (atomically, every ``checkpoint.every_batches``
batches, on Ctrl-C and at the end), the logger's files, ``learning_curve.png`` and
``summary.json``.
"""
from __future__ import annotations

import json
import logging
import math
import signal
import time
from pathlib import Path

import hydra
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import tqdm  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402
from torchrl.record.loggers import get_logger  # noqa: E402

from torchrl_rldt.checkpoint import (  # noqa: E402
    atomic_write_text,
    load_checkpoint_buffer,
    save_checkpoint,
)

from utils import (  # noqa: E402
    check_rldt_config,
    load_base_policy,
    load_run_state,
    make_policy_chunk_env,
    make_replay_buffer,
    make_rldt_collector,
    make_rldt_critic,
    make_rldt_loss,
    record_returns,
    restore_rng_state,
    rng_state,
)

log = logging.getLogger("rldt_gym")
POLICY_TERMS = ("loss_rl", "loss_consistency", "loss_reference")
CHECKPOINT_FORMAT = "torchrl_rldt.rldt_gym"


class NonFiniteError(RuntimeError):
    """A loss or a reward became NaN or infinite."""


def check_finite(name: str, value: torch.Tensor, env_steps: int) -> None:
    if not torch.isfinite(value).all():
        raise NonFiniteError(f"{name} is not finite at {env_steps} env steps")


@hydra.main(version_base="1.3", config_path="config", config_name="rldt_gym")
def main(cfg: DictConfig) -> None:
    # --- everything that can be refused is checked before any work ---------------------------
    check_rldt_config(cfg)
    device = torch.device(cfg.device)
    torch.set_num_threads(cfg.num_threads)
    resume_path, state = load_run_state(cfg, device, CHECKPOINT_FORMAT, task=cfg.task)
    base = load_base_policy(cfg, device, cfg.rldt.num_steps)
    run_dir = resume_path.parent if resume_path else Path(HydraConfig.get().runtime.output_dir)
    torch.manual_seed(cfg.seed)

    # --- environments, actor, critic, loss, optimisers, buffer --------------------------------
    env_steps = state["counters"]["env_steps"] if state else 0
    # A resumed run reseeds its envs so that it does not replay the episodes it began with.
    train_env = make_policy_chunk_env(base, cfg, cfg.env.num_envs, cfg.seed + env_steps, device)
    eval_env = make_policy_chunk_env(base, cfg, cfg.eval.episodes, cfg.seed + 10_000, device)
    final_env = make_policy_chunk_env(base, cfg, cfg.eval.final_episodes, cfg.seed + 20_000, device)
    actor = base.actor
    loss, target_updater = make_rldt_loss(actor, make_rldt_critic(base, cfg, device), cfg)
    actor_optim = torch.optim.Adam(loss.actor_network_params.values(True, True), lr=cfg.optim.actor_lr)
    actor_warmup = torch.optim.lr_scheduler.LambdaLR(
        actor_optim, lambda step: min(1.0, (step + 1) / max(cfg.optim.actor_warmup_steps, 1))
    )
    critic_optim = torch.optim.AdamW(loss.qvalue_network_params.values(True, True), lr=cfg.optim.critic_lr)
    # no default batch size: the critic and the actor sample batches of their own sizes
    replay_buffer = make_replay_buffer(cfg.buffer.size, None, device)
    counters = {"env_steps": 0, "chunks": 0, "batches": 0, "critic_updates": 0, "actor_updates": 0}
    history, reward_abs_mean, base_returns = [], None, None
    if state:
        loss.load_state_dict(state["loss"])
        actor_optim.load_state_dict(state["actor_optim"])
        actor_warmup.load_state_dict(state["actor_warmup"])
        critic_optim.load_state_dict(state["critic_optim"])
        counters, history = state["counters"], state["history"]
        reward_abs_mean, base_returns = state["reward_abs_mean"], state["base_returns"]
        restore_rng_state(state["rng"], device)
        load_checkpoint_buffer(state, resume_path, replay_buffer)
        log.info("resumed %s at %d env steps (%d transitions in the buffer)", resume_path,
                 counters["env_steps"], len(replay_buffer))

    logger = None
    if cfg.logger.backend:
        logger = get_logger(cfg.logger.backend, logger_name=str(run_dir), experiment_name="rldt_gym")

    def write_checkpoint() -> Path:
        return save_checkpoint(
            {
                "format": CHECKPOINT_FORMAT, "task": cfg.task, "loss": loss.state_dict(),
                "actor_optim": actor_optim.state_dict(), "actor_warmup": actor_warmup.state_dict(),
                "critic_optim": critic_optim.state_dict(), "counters": dict(counters),
                "history": history, "reward_abs_mean": reward_abs_mean,
                "base_returns": base_returns, "rng": rng_state(device),
                "config": OmegaConf.to_container(cfg, resolve=True),
            },
            run_dir / "checkpoint.pt",
            replay_buffer if cfg.checkpoint.save_replay_buffer else None,
        )

    if base_returns is None:
        base_returns = record_returns(history, final_env, actor, cfg, env_steps=0,
                                      wall_seconds=0.0)
        log.info("%s base policy: deterministic return %.1f +- %.1f (%d episodes)", cfg.task,
                 base_returns["mean"], base_returns["std"], base_returns["episodes"])

    # --- training loop ------------------------------------------------------------------------
    remaining = cfg.collector.total_env_steps - counters["env_steps"]
    collector = make_rldt_collector(train_env, actor, cfg, math.ceil(remaining / actor.chunk_len))
    next_eval = (counters["env_steps"] // cfg.eval.every_env_steps + 1) * cfg.eval.every_env_steps
    progress = tqdm.tqdm(total=cfg.collector.total_env_steps, initial=counters["env_steps"],
                         desc=f"RLDT {cfg.task}", disable=not cfg.logger.progress_bar, mininterval=2)
    wall_offset = history[-1]["wall_seconds"] if history else 0.0
    first_env_step, start = counters["env_steps"], time.perf_counter()
    # Ctrl-C stops at the end of the current batch (a KeyboardInterrupt in the middle of an update
    # could leave modules half-swapped); a second Ctrl-C interrupts at once.
    stop_requested = []

    def request_stop(signum, frame):
        stop_requested.append(signum)
        signal.signal(signal.SIGINT, previous_handler)
        log.warning("Ctrl-C: stopping after this batch (Ctrl-C again to abort at once)")

    previous_handler = signal.signal(signal.SIGINT, request_stop)
    try:
        for batch in collector:
            if counters["env_steps"] >= cfg.collector.total_env_steps:
                break
            steps = int(batch["next", "chunk_steps"].sum())
            reward = batch["next", "reward"]
            check_finite("the collected reward", reward, counters["env_steps"])
            counters["env_steps"] += steps
            counters["chunks"] += batch.numel()
            counters["batches"] += 1
            replay_buffer.extend(batch.reshape(-1))
            if cfg.optim.reward_scale_rate is not None:
                batch_abs = reward.abs().mean().item()
                rate = cfg.optim.reward_scale_rate
                reward_abs_mean = batch_abs if reward_abs_mean is None else (
                    (1 - rate) * reward_abs_mean + rate * batch_abs
                )

            metrics = {}
            for _ in range(cfg.schedule.critic_steps):
                sample = replay_buffer.sample(cfg.buffer.batch_size)
                if reward_abs_mean:
                    sample["next", "reward"] = sample["next", "reward"] / max(reward_abs_mean, 1e-8)
                critic_loss, critic_info = loss.qvalue_loss(sample)
                check_finite("the critic loss", critic_loss, counters["env_steps"])
                critic_optim.zero_grad()
                critic_loss.backward()
                critic_optim.step()
                target_updater.step()
                counters["critic_updates"] += 1
                metrics["loss_qvalue"] = critic_loss.item()
                metrics["q_mean"] = critic_info["state_action_value"].mean().item()
            after_warmup = counters["batches"] - cfg.schedule.critic_warmup_batches
            if after_warmup > 0 and after_warmup % cfg.schedule.actor_every_batches == 0:
                for _ in range(cfg.schedule.actor_steps):
                    terms = loss.actor_loss(replay_buffer.sample(cfg.schedule.actor_batch_size))
                    actor_loss = sum(terms[key] for key in POLICY_TERMS)
                    check_finite("the actor loss", actor_loss, counters["env_steps"])
                    actor_optim.zero_grad()
                    actor_loss.backward()
                    actor_optim.step()
                    actor_warmup.step()
                    counters["actor_updates"] += 1
                    metrics.update({key: value.item() for key, value in terms.items()})
                    reanchor_every = cfg.schedule.reanchor_every
                    if reanchor_every and counters["actor_updates"] % reanchor_every == 0:
                        loss.reset_reference()

            done = batch["next", "done"].squeeze(-1)
            if done.any():
                metrics["train_return"] = batch["next", "episode_reward"][done].mean().item()
            metrics["env_steps_per_second"] = (counters["env_steps"] - first_env_step) / (
                time.perf_counter() - start)
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
            postfix = {"eval": f"{history[-1]['mean']:.0f}",
                       "steps/s": f"{metrics['env_steps_per_second']:.0f}"}
            if "train_return" in metrics:
                postfix["train"] = f"{metrics['train_return']:.0f}"
            progress.set_postfix(postfix, refresh=False)
            if counters["batches"] % cfg.checkpoint.every_batches == 0:
                write_checkpoint()
            if stop_requested:
                log.warning("interrupted at %d env steps: wrote %s; resume=%s continues the run",
                            counters["env_steps"], write_checkpoint(), run_dir / "checkpoint.pt")
                return
    except NonFiniteError as error:
        last = run_dir / "checkpoint.pt"
        log.error("%s; stopping. The last good checkpoint is %s (resume=%s).", error,
                  last if last.exists() else "none yet", last)
        raise SystemExit(1) from None
    finally:
        signal.signal(signal.SIGINT, previous_handler)
        progress.close()
        collector.shutdown()

    # --- final evaluation, checkpoint, curve and summary -------------------------------------
    final_returns = record_returns(history, final_env, actor, cfg, env_steps=counters["env_steps"],
                                   wall_seconds=wall_offset + time.perf_counter() - start)
    write_checkpoint()
    summary = {
        "task": cfg.task, "seed": cfg.seed, "counters": counters,
        "base": base_returns, "final": final_returns, "history": history,
        "command": "python examples/rldt_gym.py " + " ".join(HydraConfig.get().overrides.task),
    }
    atomic_write_text(json.dumps(summary, indent=2) + "\n", run_dir / "summary.json")
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.errorbar([h["env_steps"] for h in history], [h["mean"] for h in history],
                yerr=[h["std"] for h in history], marker="o", capsize=3)
    ax.set_xlabel("env steps")
    ax.set_ylabel("deterministic return")
    ax.set_title(f"RLDT on {cfg.task} (seed {cfg.seed})")
    fig.tight_layout()
    fig.savefig(run_dir / "learning_curve.png", dpi=100)
    plt.close(fig)
    table = (
        f"\n{cfg.task}, deterministic return over {final_returns['episodes']} episodes:\n"
        f"  base       {base_returns['mean']:8.1f} +- {base_returns['std']:.1f}\n"
        f"  fine-tuned {final_returns['mean']:8.1f} +- {final_returns['std']:.1f}"
        f"   ({counters['env_steps']} env steps, {counters['actor_updates']} actor updates)\n"
        f"  run directory: {run_dir}"
    )
    log.info(table)


if __name__ == "__main__":
    main()
