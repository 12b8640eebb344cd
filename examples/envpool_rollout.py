"""Collects random action chunks on an EnvPool MuJoCo task through TorchRL.

A smoke run of the environment stack that the RLDT job is built on:
``EnvPoolEnv`` -> ``ActionChunkEnv`` -> ``TransformedEnv(RewardSum, StepCounter)``
-> ``torchrl.collectors.Collector``. Prints episode returns and env steps/s.

    python examples/envpool_rollout.py env.name=Walker2d-v5 env.num_envs=16
"""
from __future__ import annotations

import time

import hydra
import torch
from omegaconf import DictConfig
from torchrl.collectors import Collector
from torchrl.envs import Compose, InitTracker, RewardSum, StepCounter, TransformedEnv

from torchrl_rldt.envs import ActionChunkEnv, EnvPoolEnv


@hydra.main(version_base="1.3", config_path="config", config_name="envpool_rollout")
def main(cfg: DictConfig) -> None:
    torch.manual_seed(cfg.env.seed)
    env = TransformedEnv(
        ActionChunkEnv(
            EnvPoolEnv(cfg.env.name, cfg.env.num_envs, seed=cfg.env.seed, device=cfg.device),
            chunk_len=cfg.env.chunk_len,
        ),
        Compose(InitTracker(), StepCounter(), RewardSum()),
    )
    collector = Collector(
        env,
        None,  # random chunks from the action spec
        frames_per_batch=cfg.collector.frames_per_batch,
        total_frames=cfg.collector.total_frames,
    )
    returns, env_steps = [], 0
    start = time.perf_counter()
    for batch in collector:
        env_steps += int(batch["next", "chunk_steps"].sum())
        done = batch["next", "done"].squeeze(-1)
        returns.extend(batch["next", "episode_reward"][done].squeeze(-1).tolist())
    elapsed = time.perf_counter() - start
    collector.shutdown()
    returns_t = torch.tensor(returns) if returns else torch.zeros(1)
    print(
        f"{cfg.env.name}: {len(returns)} episodes, return {returns_t.mean():.1f} "
        f"+- {returns_t.std():.1f} (random chunks), {env_steps} env steps "
        f"at {env_steps / elapsed:.0f} env-steps/s"
    )


if __name__ == "__main__":
    main()
