"""SAC from scratch on EnvPool MuJoCo: the non-pretrained reference of the fine-tuning examples.

TorchRL's ``SACLoss`` (two Q nets with Polyak targets, a learned temperature) with a ``Collector``
over the same environments, time limit and deterministic evaluation as ``examples/rldt_gym.py``
and ``examples/ppo_gym.py``, but no demonstrations and no base policy. ``env.chunk_len=1``
(the default) is plain SAC; ``env.chunk_len=4`` makes one SAC action a chunk of 4 env actions,
as the flow policies act.

    python examples/sac_gym.py
    python examples/sac_gym.py task=Walker2d-v5 collector.total_env_steps=300_000
    python examples/sac_gym.py resume=outputs/sac_gym/Hopper-v5/<run>/checkpoint.pt

Writes into the run directory: ``checkpoint.pt`` and its replay buffer (atomically, every
``checkpoint.every_env_steps`` and at the end: a kill loses at most that much; ``resume=``
continues), the logger's files and ``summary.json``.
"""
from __future__ import annotations

import functools
import math

import hydra
import torch
from omegaconf import DictConfig

from torchrl_rldt.trainers import ConfigCheck, TrainingRun
from sac_utils import make_sac_agent, make_sac_loss, make_sac_optimizers, sac_update
from utils import (
    apply_per_task_config,
    check_collector_config,
    collected_chunks,
    frames_covering,
    make_chunk_env,
    make_collector,
    make_replay_buffer,
)


def check_config(cfg: DictConfig) -> None:
    """Refuses invalid hyper-parameters with a message naming the value, before any work."""
    check = ConfigCheck(cfg)
    for name in ("env.chunk_len", "collector.frames_per_batch", "sac.batch_size", "sac.buffer_size",
                 "checkpoint.every_env_steps"):
        check.positive_int(name)
    check.integer("collector.init_random_env_steps", minimum=0)
    for name in ("sac.utd_ratio", "sac.lr", "sac.alpha_init"):
        check.number(name, 0.0, open_low=True)
    check.number("sac.gamma", 0.0, 1.0)
    check.number("sac.tau", 0.0, 1.0, open_low=True)
    hidden = cfg.sac.hidden_sizes
    check.need(len(hidden) > 0 and all(isinstance(size, int) and size > 0 for size in hidden),
               f"sac.hidden_sizes must be a non-empty list of positive integers, got {hidden}")
    # the actions are chunks, also of one action, and the chunk critic's layers have one width
    check.need(len(set(hidden)) <= 1,
               f"sac.hidden_sizes needs equal sizes (the critic is a ChunkQValueMLP), got {hidden}")
    check_collector_config(check)
    check.common()
    check.done()


@hydra.main(version_base="1.3", config_path="config", config_name="sac_gym")
def main(cfg: DictConfig) -> None:
    apply_per_task_config(cfg)
    check_config(cfg)
    device = torch.device(cfg.device)
    chunk_len = cfg.env.chunk_len
    run = TrainingRun.from_hydra(
        "sac_gym", cfg,
        identity={"task": cfg.task, "chunk_len": chunk_len},
        counters={"env_steps": 0, "frames": 0, "updates": 0},
    )
    torch.manual_seed(cfg.seed)

    # make_env(num_envs, seed), picklable for the workers of a multi-process collector
    make_env = functools.partial(make_chunk_env, cfg.task, chunk_len=chunk_len,
                                 max_episode_steps=cfg.env.max_episode_steps, device=device)

    # --- environments, agent, loss, optimisers, buffer ----------------------------------------
    counters = run.counters
    eval_env = make_env(cfg.eval.episodes, run.env_seed("eval"))
    final_env = make_env(cfg.eval.final_episodes, run.env_seed("final"))
    # the specs of one env (the collector makes the training envs in its own processes)
    actor, qvalue = make_sac_agent(eval_env, cfg.sac.hidden_sizes, device)
    loss, target_updater = make_sac_loss(actor, qvalue, gamma=cfg.sac.gamma, tau=cfg.sac.tau,
                                         alpha_init=cfg.sac.alpha_init)
    optimizers = make_sac_optimizers(loss, cfg.sac.lr)
    replay_buffer = make_replay_buffer(cfg.sac.buffer_size, cfg.sac.batch_size, device)
    run.track(loss=loss, **{f"{name}_optim": optim for name, optim in optimizers.items()})
    run.restore_buffer(replay_buffer)
    run.evaluate_base(final_env, actor, chunk_len=chunk_len)

    # --- training loop: collect, then utd_ratio SAC updates per collected action ---------------
    frames_per_batch = cfg.collector.frames_per_batch
    random_frames = math.ceil(cfg.collector.init_random_env_steps / chunk_len)
    # chunks cut short at episode ends make frames and env steps differ: the loop stops on env steps
    collector = make_collector(
        cfg, actor, make_env, run.env_seed("train"), frames_per_batch=frames_per_batch,
        total_frames=frames_covering(cfg.collector.total_env_steps - counters["env_steps"], frames_per_batch),
        init_random_frames=max(0, random_frames - counters["frames"]),
    )
    next_checkpoint = (counters["env_steps"] // cfg.checkpoint.every_env_steps + 1) * cfg.checkpoint.every_env_steps
    try:
        with run.loop(total_env_steps=cfg.collector.total_env_steps, description=f"SAC {cfg.task}",
                      replay_buffer=replay_buffer):
            for batch in map(collected_chunks, run.collected(collector)):
                steps = int(batch["next", "chunk_steps"].sum())
                counters["env_steps"] += steps
                counters["frames"] += batch.numel()
                replay_buffer.extend(batch.reshape(-1))
                metrics = {}
                if counters["frames"] >= random_frames:
                    with run.timed("update"):
                        for _ in range(max(1, round(batch.numel() * cfg.sac.utd_ratio))):
                            terms = sac_update(loss, optimizers, target_updater, replay_buffer.sample())
                            counters["updates"] += 1
                    run.update_policy_weights(collector)  # to the workers of a multi-process collector
                    metrics.update({key: value.item() for key, value in terms.items() if value.numel() == 1})
                returns = run.evaluate_periodically(eval_env, actor, chunk_len=chunk_len)
                if returns is not None:
                    metrics["eval_return"] = returns["mean"]
                run.log(metrics, steps, batch)
                if counters["env_steps"] >= next_checkpoint:
                    next_checkpoint += cfg.checkpoint.every_env_steps
                    run.save(replay_buffer)
                if run.stop_requested:
                    return run.interrupted(replay_buffer)
    finally:
        run.shutdown_collector(collector)

    run.finish(final_env, actor, chunk_len=chunk_len, title=f"SAC from scratch, chunk_len {chunk_len}",
               replay_buffer=replay_buffer, summary={"method": "sac"})


if __name__ == "__main__":
    main()
