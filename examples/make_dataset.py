"""Regenerates a D4RL-style "medium" data set for an EnvPool MuJoCo task.

As D4RL made its medium data: train SAC online until its stochastic policy reaches about a third
of what SAC reaches with a long budget, freeze it, and record transitions with that stochastic
policy. SAC is TorchRL's ``SACLoss`` with a ``Collector`` and a replay buffer over our
``EnvPoolEnv``. Writes ``<out_dir>/<task>-medium.npz`` (D4RL arrays) and a manifest
``<out_dir>/<task>-medium.json`` with what reproduces it.

    python examples/make_dataset.py task=Hopper-v5
    python examples/make_dataset.py task=HalfCheetah-v5 seed=1 dataset.num_transitions=50000

SAC stops at the first evaluation whose mean stochastic return lies in the medium band
``[medium_return, medium_band * medium_return]``; a policy that jumps past the band (Hopper can
go from 1000 to 3000 within 10k steps) is not medium, so training goes on until an evaluation
lands in the band. At every evaluation the SAC state (networks, optimisers, replay buffer,
counters) is saved atomically under ``state_dir``; a killed run started again with the same
command resumes from there.
"""
from __future__ import annotations

import json
import logging
import math
import platform
import time
from pathlib import Path

import envpool
import hydra
import mujoco
import tensordict
import torch
import torchrl
from omegaconf import DictConfig, OmegaConf
from torchrl.collectors import Collector
from torchrl.envs import ExplorationType

from torchrl_rldt.checkpoint import (
    atomic_save,
    atomic_write_text,
    load_checkpoint_buffer,
    save_checkpoint,
)
from torchrl_rldt.data import d4rl_arrays, describe_dataset_file, save_d4rl_dataset
from torchrl_rldt.checkpoint import restore_rng_state, rng_state
from torchrl_rldt.envs import evaluate_policy
from torchrl_rldt.trainers import NonFiniteError, env_seed

from sac_utils import make_sac_agent, make_sac_loss, make_sac_optimizers, sac_update
from utils import make_env, make_replay_buffer, repo_path

log = logging.getLogger("make_dataset")


def save_sac_state(state_dir: Path, loss, optimizers, replay_buffer, progress: dict,
                   device: torch.device) -> None:
    """Writes the resumable SAC state with its replay buffer."""
    state = {
        "loss": loss.state_dict(),
        "optimizers": {name: optim.state_dict() for name, optim in optimizers.items()},
        "progress": progress,
        "rng": rng_state(device),
    }
    save_checkpoint(state, state_dir / "sac_state.pt", replay_buffer)


def restore_sac_state(state: dict, state_dir: Path, loss, optimizers, replay_buffer,
                      device: torch.device) -> None:
    """Loads what :func:`save_sac_state` wrote into freshly built SAC objects."""
    loss.load_state_dict(state["loss"])
    for name, optim in optimizers.items():
        optim.load_state_dict(state["optimizers"][name])
    load_checkpoint_buffer(state, state_dir / "sac_state.pt", replay_buffer)
    rng = state["rng"]
    # states written before the run harness hold the CPU generator's state alone
    restore_rng_state(rng if isinstance(rng, dict) else {"torch": rng, "cuda": None}, device)


def stochastic_and_deterministic_returns(env, actor) -> dict:
    returns = {}
    for name, mode in (("stochastic", ExplorationType.RANDOM), ("deterministic", ExplorationType.DETERMINISTIC)):
        result = evaluate_policy(env, actor, max_steps=1000, exploration_type=mode)
        returns[name] = {
            "mean": result["return"].mean().item(),
            "std": result["return"].std().item(),
            "episodes": result.shape[0],
        }
    return returns


@hydra.main(version_base="1.3", config_path="config", config_name="make_dataset")
def main(cfg: DictConfig) -> None:
    threshold = cfg.medium_return
    if threshold is None:
        if cfg.task not in cfg.medium_defaults:
            raise ValueError(
                f"No default medium return for task {cfg.task!r} (defaults exist for "
                f"{list(cfg.medium_defaults)}); pass medium_return=<return>."
            )
        threshold = cfg.medium_defaults[cfg.task]
    upper = math.inf if cfg.medium_band is None else cfg.medium_band * threshold
    if upper < threshold:
        raise ValueError(f"medium_band={cfg.medium_band} must be >= 1 (or null for no upper bound).")
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.num_threads)
    device = torch.device(cfg.device)
    sac = cfg.sac

    # --- SAC until the medium band -------------------------------------------------------
    state_dir = repo_path(cfg.state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    saved = None
    if cfg.resume and (state_dir / "sac_state.pt").exists():
        saved = torch.load(state_dir / "sac_state.pt", weights_only=True)
    progress = saved["progress"] if saved else {"frames": 0, "updates": 0, "history": [], "train_seconds": 0.0}
    frames, updates, history = progress["frames"], progress["updates"], progress["history"]
    train_env = make_env(cfg.task, sac.num_envs, seed=env_seed(cfg.seed, "train", frames))
    eval_env = make_env(cfg.task, sac.eval_episodes, seed=env_seed(cfg.seed, "eval"))
    actor, qvalue = make_sac_agent(train_env, sac.hidden_sizes, device)
    loss, target_updater = make_sac_loss(
        actor, qvalue, gamma=sac.gamma, tau=sac.tau, alpha_init=sac.alpha_init
    )
    optimizers = make_sac_optimizers(loss, sac.lr)
    replay_buffer = make_replay_buffer(sac.buffer_size, sac.batch_size, device)
    if saved:
        restore_sac_state(saved, state_dir, loss, optimizers, replay_buffer, device)
        log.info("resumed from %s at %d env steps", state_dir, frames)
    collector = Collector(
        train_env,
        actor,
        frames_per_batch=sac.frames_per_batch,
        total_frames=max(sac.max_frames - frames, sac.frames_per_batch),
        init_random_frames=max(sac.init_random_frames - frames, 0),
        device=device,
        storing_device=device,
    )

    next_eval = (frames // sac.eval_every + 1) * sac.eval_every
    reached = False
    start = time.perf_counter() - progress["train_seconds"]
    try:
        for batch in collector:
            replay_buffer.extend(batch.reshape(-1))
            frames += batch.numel()
            if frames >= sac.init_random_frames:
                for _ in range(max(1, round(batch.numel() * sac.utd_ratio))):
                    try:
                        sac_update(loss, optimizers, target_updater, replay_buffer.sample())
                    except NonFiniteError as error:
                        raise SystemExit(
                            f"{error} at {frames} env steps; the last SAC state is in {state_dir} "
                            f"(run again to resume it, or delete it to start over)") from None
                    updates += 1
            if frames >= next_eval:
                next_eval += sac.eval_every
                returns = stochastic_and_deterministic_returns(eval_env, actor)
                history.append({"env_steps": frames, "updates": updates, **returns})
                log.info(
                    "%s %7d steps %6.0fs: stochastic %.0f +- %.0f, deterministic %.0f (target %d)",
                    cfg.task, frames, time.perf_counter() - start, returns["stochastic"]["mean"],
                    returns["stochastic"]["std"], returns["deterministic"]["mean"], threshold,
                )
                progress = {
                    "frames": frames, "updates": updates, "history": history,
                    "train_seconds": time.perf_counter() - start,
                }
                save_sac_state(state_dir, loss, optimizers, replay_buffer, progress, device)
                if threshold <= returns["stochastic"]["mean"] <= upper:
                    reached = True
                    break
                if returns["stochastic"]["mean"] > upper:
                    log.info("above the medium band (%d, %d]: not medium, training on", threshold, upper)
    finally:
        collector.shutdown()
    train_seconds = time.perf_counter() - start
    if not reached:
        log.warning(
            "SAC did not land in the medium band [%s, %s] within sac.max_frames=%d; recording "
            "with the last policy.", threshold, upper, sac.max_frames,
        )

    # --- record the data set with the frozen stochastic policy ---------------------------
    data_cfg = cfg.dataset
    num_envs = data_cfg.num_envs
    steps_per_env = math.ceil(data_cfg.num_transitions / num_envs)
    record_env = make_env(cfg.task, num_envs, seed=env_seed(cfg.seed, "record"))
    recorder = Collector(
        record_env,
        actor,
        frames_per_batch=num_envs * min(steps_per_env, 1000),
        total_frames=num_envs * steps_per_env,
        exploration_type=ExplorationType.RANDOM,
        device=device,
        storing_device="cpu",
    )
    streams = torch.cat([batch for batch in recorder], dim=1)  # [num_envs, steps_per_env]
    recorder.shutdown()
    # Each env's stream ends mid-episode: mark that cut as a time-out so no episode runs on
    # into the next env's stream. Episodes ended by such a cut are not counted as complete.
    cut = torch.zeros(streams.shape, dtype=torch.bool)
    cut[:, -1] = ~streams["next", "done"][:, -1, 0]
    streams["next", "truncated"][:, -1] = True
    streams["next", "done"][:, -1] = True
    transitions = streams.reshape(-1)[: data_cfg.num_transitions]
    cut = cut.reshape(-1)[: data_cfg.num_transitions]
    cut[-1] |= not bool(transitions["next", "done"][-1])
    transitions["next", "truncated"][-1] = True
    arrays = d4rl_arrays(transitions)

    out_dir = repo_path(data_cfg.out_dir)
    name = f"{cfg.task.lower()}-medium"
    path = save_d4rl_dataset(out_dir / f"{name}.npz", arrays)

    ends = torch.as_tensor(arrays["terminals"] | arrays["timeouts"])
    episode_id = torch.cat([torch.zeros(1, dtype=torch.long), ends.long().cumsum(0)[:-1]])
    episode_returns = torch.zeros(int(ends.sum()), dtype=torch.float64).index_add_(
        0, episode_id, torch.as_tensor(arrays["rewards"]).double()
    )
    complete_returns = episode_returns[~cut[ends]]
    final_returns = stochastic_and_deterministic_returns(eval_env, actor)
    manifest = {
        "task": cfg.task,
        **describe_dataset_file(path, arrays),
        "num_episodes": int(ends.sum()),
        "num_terminals": int(arrays["terminals"].sum()),
        "num_timeouts": int(arrays["timeouts"].sum()),
        "num_cut_episodes": int(cut.sum()),
        "dataset_episode_return": {
            "mean": complete_returns.mean().item(),
            "std": complete_returns.std().item(),
            "episodes": int(complete_returns.numel()),
            "note": "complete episodes only (the episodes cut by the end of recording excluded)",
        },
        "medium_threshold": threshold,
        "medium_upper_bound": None if math.isinf(upper) else upper,
        "threshold_reached": reached,
        "policy_returns_at_stop": final_returns,
        "sac": {
            "env_steps": frames,
            "gradient_updates": updates,
            "train_seconds": round(train_seconds, 1),
            "history": history,
        },
        "config": OmegaConf.to_container(cfg, resolve=True),
        "command": f"python examples/make_dataset.py task={cfg.task} seed={cfg.seed}",
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchrl": torchrl.__version__,
            "tensordict": tensordict.__version__,
            "envpool": envpool.__version__,
            "mujoco": mujoco.__version__,
        },
    }
    # The frozen medium policy, so the data can be re-recorded (other sizes, seeds) without SAC.
    actor_path = out_dir / f"{name}-sac-actor.pt"
    atomic_save({k: v.cpu() for k, v in actor.state_dict().items()}, actor_path)
    manifest["sac_actor"] = actor_path.name
    manifest_path = out_dir / f"{name}.json"
    atomic_write_text(json.dumps(manifest, indent=2) + "\n", manifest_path)
    log.info(
        "wrote %s (%d transitions, %.1f MB), data return %.0f +- %.0f; manifest %s",
        path, manifest["num_transitions"], manifest["bytes"] / 1e6,
        manifest["dataset_episode_return"]["mean"], manifest["dataset_episode_return"]["std"],
        manifest_path,
    )


if __name__ == "__main__":
    main()
