"""Pretrains a base chunk policy by behaviour cloning on a medium data set: a flow-matching
policy (``policy=flow``, what RLDT, ReinFlow, FPO++ and QAM fine-tune) or a DDPM policy
(``policy=ddpm``, what DPPO fine-tunes).

Observation and action chunks (H = 4) are normalised with the data set's statistics; the velocity
field is trained with ``FlowMatchingBCLoss``, the DDPM's noise prediction with ``DDPMChunkBCLoss``
(the same network, data, batches and optimiser); an EMA of the weights is the policy that is
evaluated (deterministic and stochastic sampling) and saved with
``torchrl_rldt.checkpoint.save_flow_policy`` or ``save_ddpm_policy``. The evaluated returns go
into a manifest beside the checkpoints (DDPM bases under ``"ddpm"``).

    python examples/pretrain_flow.py task=Hopper-v5
    python examples/pretrain_flow.py task=Walker2d-v5 train.steps=50000
    python examples/pretrain_flow.py policy=ddpm task=Hopper-v5
"""
from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
import torch
from omegaconf import DictConfig, OmegaConf
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torchrl.envs import ExplorationType, TransformedEnv
from tqdm import tqdm

from torchrl_rldt.checkpoint import save_ddpm_policy, save_flow_policy
from torchrl_rldt.data import action_chunks, load_offline_dataset, make_offline_replay_buffer
from torchrl_rldt.envs import NormalizationStats, normalization_transforms
from torchrl_rldt.envs import episode_returns
from torchrl_rldt.modules import DDPMChunkModel, DPPOActor, FlowActor, FlowModel, VelocityMLP
from torchrl_rldt.objectives import DDPMChunkBCLoss, FlowMatchingBCLoss

from utils import (default_data_path, make_chunk_env, read_manifest, repo_path, task_slug, time_limit,
                   update_manifest)

log = logging.getLogger("pretrain_flow")

def evaluate(trained, env, cfg, mode: ExplorationType) -> dict:
    # a DDPM is sampled by DPPO's sampler over all its steps (its own network on every step)
    policy = (DPPOActor(trained, finetuned_steps=trained.num_steps)
              if isinstance(trained, DDPMChunkModel) else trained)
    return episode_returns(env, policy, max_env_steps=time_limit(cfg.task, cfg.eval.max_env_steps),
                           chunk_len=cfg.model.chunk_len, exploration_type=mode)


@hydra.main(version_base="1.3", config_path="config", config_name="pretrain_flow")
def main(cfg: DictConfig) -> None:
    if not isinstance(cfg.data, DictConfig):  # data=<file> replaced the whole data block
        raise ValueError(f"data={cfg.data} replaces the data block (its source and normalisations); "
                         f"pass the file as data.source={cfg.data}")
    if cfg.policy not in ("flow", "ddpm"):
        raise ValueError(f"policy must be flow or ddpm, got {cfg.policy!r}.")
    manifest_path = repo_path(cfg.out.manifest)
    read_manifest(manifest_path)  # a broken manifest is refused before the training, not after
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.num_threads)
    device = torch.device(cfg.device)
    source = cfg.data.source or default_data_path(cfg.task)
    if ":" not in source:
        source = str(repo_path(source))

    # --- data: normalisation statistics, action chunks, a replay buffer -----------------
    data = load_offline_dataset(source)
    observation_stats = NormalizationStats.from_data(data["observation"], cfg.data.observation_norm)
    action_stats = NormalizationStats.from_data(data["action"], cfg.data.action_norm)
    chunks = action_chunks(data, cfg.model.chunk_len)
    chunks["observation"] = observation_stats.normalize(chunks["observation"])
    chunks["action"] = action_stats.normalize(chunks["action"])
    buffer = make_offline_replay_buffer(chunks, cfg.train.batch_size, device=device)
    log.info("%s: %d transitions -> %d chunks of %d", source, data.shape[0], chunks.shape[0],
             cfg.model.chunk_len)

    # --- the flow policy, acting in the normalised space of its eval env ----------------
    def make_eval_env(num_episodes: int, seed: int) -> TransformedEnv:
        return make_chunk_env(
            cfg.task, num_episodes, seed, cfg.model.chunk_len,
            normalization_transforms(observation_stats, action_stats),
            max_episode_steps=time_limit(cfg.task, cfg.eval.max_env_steps), device=device,
        )

    eval_env = make_eval_env(cfg.eval.episodes, cfg.seed + 1000)
    bounds = eval_env.action_spec.space
    observation_dim = eval_env.observation_spec["observation"].shape[-1]
    action_dim = eval_env.action_spec.shape[-1]
    if observation_dim != data["observation"].shape[-1] or action_dim != data["action"].shape[-1]:
        raise ValueError(
            f"{source} has observations of size {data['observation'].shape[-1]} and actions of "
            f"size {data['action'].shape[-1]}, but {cfg.task} has {observation_dim} and "
            f"{action_dim}: is it a data set of another task?"
        )
    network = VelocityMLP(
        observation_dim,
        action_dim,
        chunk_len=cfg.model.chunk_len,
        hidden_dim=cfg.model.hidden_dim,
        num_layers=cfg.model.num_layers,
        time_dim=cfg.model.time_dim,
    )
    if cfg.policy == "flow":
        trained = FlowActor(FlowModel(
            network,
            action_dim,
            cfg.model.num_steps,
            chunk_len=cfg.model.chunk_len,
            low=bounds.low[0],
            high=bounds.high[0],
        )).to(device)
        loss_module, loss_key = FlowMatchingBCLoss(trained), "loss_flow_bc"
    else:
        trained = DDPMChunkModel(
            network,
            action_dim,
            cfg.ddpm.num_steps,
            chunk_len=cfg.model.chunk_len,
            denoised_clip_value=cfg.ddpm.denoised_clip_value,
            final_action_clip_value=cfg.ddpm.final_action_clip_value,
            low=bounds.low[0],
            high=bounds.high[0],
        ).to(device)
        loss_module, loss_key = DDPMChunkBCLoss(trained), "loss_diffusion_bc"
    optimizer = torch.optim.Adam(loss_module.parameters(), lr=cfg.train.lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=cfg.train.steps, eta_min=cfg.train.lr_min
    )
    ema = AveragedModel(trained, multi_avg_fn=get_ema_multi_avg_fn(cfg.train.ema_decay),
                        use_buffers=True)
    ema_policy = ema.module

    # --- training loop ------------------------------------------------------------------
    history = []
    start = time.perf_counter()
    progress = tqdm(range(1, cfg.train.steps + 1), desc=f"pretrain {cfg.task}", mininterval=5)
    running = None
    for step in progress:
        loss = loss_module(buffer.sample())[loss_key]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        ema.update_parameters(trained)
        running = loss.item() if running is None else 0.99 * running + 0.01 * loss.item()
        if step % cfg.train.log_every == 0:
            progress.set_postfix(loss=f"{running:.4f}")
        if cfg.train.eval_every and step % cfg.train.eval_every == 0 and step < cfg.train.steps:
            returns = evaluate(ema_policy, eval_env, cfg, ExplorationType.DETERMINISTIC)
            history.append({"step": step, "loss": running, "deterministic": returns})
            log.info("step %d: loss %.4f, deterministic return %.0f +- %.0f", step, running,
                     returns["mean"], returns["std"])
    train_seconds = time.perf_counter() - start

    # --- final evaluation, checkpoint and manifest ----------------------------------------
    final_env = make_eval_env(cfg.eval.final_episodes, cfg.seed + 2000)
    final = {
        "deterministic": evaluate(ema_policy, final_env, cfg, ExplorationType.DETERMINISTIC),
        "stochastic": evaluate(ema_policy, final_env, cfg, ExplorationType.RANDOM),
    }
    checkpoint = repo_path(
        cfg.out.checkpoint or f"checkpoints/{task_slug(cfg.task)}-{cfg.policy}-base.pt"
    )
    data_path = Path(source)
    entry = {
        "file": checkpoint.name,
        "data": data_path.name if data_path.is_file() else source,
        "data_sha256": (
            hashlib.sha256(data_path.read_bytes()).hexdigest() if data_path.is_file() else None
        ),
        "num_chunks": chunks.shape[0],
        **({"euler_steps": cfg.model.num_steps} if cfg.policy == "flow"
           else {"denoising_steps": cfg.ddpm.num_steps}),
        "chunk_len": cfg.model.chunk_len,
        "returns": final,
        "train_steps": cfg.train.steps,
        "train_seconds": round(train_seconds, 1),
        "final_loss": running,
        "history": history,
        "command": "python examples/pretrain_flow.py " + " ".join(HydraConfig.get().overrides.task),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    save_policy = save_flow_policy if cfg.policy == "flow" else save_ddpm_policy
    save_policy(
        checkpoint,
        ema_policy.to("cpu"),
        task=cfg.task,
        observation_stats=observation_stats,
        action_stats=action_stats,
        metadata={k: v for k, v in entry.items() if k not in ("history", "config")},
    )
    entry["sha256"] = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    update_manifest(manifest_path, entry, *([] if cfg.policy == "flow" else ["ddpm"]), cfg.task)
    log.info(
        "%s %s base policy: deterministic %.4g +- %.4g, stochastic %.4g +- %.4g (%d episodes each); "
        "saved %s",
        cfg.task, cfg.policy, final["deterministic"]["mean"], final["deterministic"]["std"],
        final["stochastic"]["mean"], final["stochastic"]["std"], cfg.eval.final_episodes,
        checkpoint,
    )


if __name__ == "__main__":
    main()
