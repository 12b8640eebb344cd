"""Records Meta-World demonstrations with the scripted expert, as a D4RL-style data set.

The ``metaworld`` package's scripted policy of the task (:class:`~torchrl_rldt.envs.MetaWorldExpert`)
runs in EnvPool's Meta-World with the sparse success reward (:func:`~torchrl_rldt.envs.make_metaworld_env`:
reward 1 at the first success, which ends the episode; time-out at 500 steps), with Gaussian noise on
every action: i.i.d. by default, or with ``noise_correlation`` in (0, 1) an autoregressive process
that holds the demonstrator off its path for about ``1 / (1 - noise_correlation)`` steps. Each round
runs one episode per env; ``num_episodes`` episodes are kept (the successful ones, or all with
``keep=all``). The executed (noisy) actions are what is recorded.

    python examples/record_demos.py task=MetaWorld/PickPlace-v3

Writes ``data/<task>-demos.npz`` (observations, actions, rewards, next observations, terminals at
success, time-outs) and its manifest ``data/<task>-demos.json`` (seed, noise, success rate of the
attempted episodes, lengths, sha256, command).
"""
from __future__ import annotations

import json
import logging
import platform

import envpool
import hydra
from hydra.core.hydra_config import HydraConfig
import torch
from omegaconf import DictConfig, OmegaConf

from torchrl_rldt.checkpoint import atomic_write_text
from torchrl_rldt.data import d4rl_arrays, describe_dataset_file, save_d4rl_dataset
from torchrl_rldt.envs import MetaWorldExpert, make_metaworld_env
from torchrl_rldt.envs.metaworld import METAWORLD_EPISODE_STEPS
from torchrl_rldt.trainers import ConfigCheck
from utils import is_metaworld, repo_path, task_slug

log = logging.getLogger("record_demos")


def check_config(cfg: DictConfig) -> None:
    """Refuses invalid values with a message naming them, before any work."""
    check = ConfigCheck(cfg)
    check.need(is_metaworld(cfg.task), f"task must be a MetaWorld/<Task>-v3 id, got {cfg.task!r}")
    for name in ("num_envs", "num_episodes", "max_attempts"):
        check.positive_int(name)
    check.number("noise_std", 0.0)
    check.number("noise_correlation", 0.0, 1.0)
    check.need(cfg.noise_correlation != 1, "noise_correlation must be < 1 (1 is a constant offset)")
    check.one_of("keep", ("success", "all"))
    check.done()


@hydra.main(version_base="1.3", config_path="config", config_name="record_demos")
def main(cfg: DictConfig) -> None:
    check_config(cfg)
    torch.set_num_threads(1)
    expert = MetaWorldExpert(cfg.task, noise_std=cfg.noise_std,
                             noise_correlation=cfg.noise_correlation, seed=cfg.seed)
    env = make_metaworld_env(cfg.task, cfg.num_envs, seed=cfg.seed)

    episodes, attempted, successes, lengths = [], 0, 0, []
    while len(episodes) < cfg.num_episodes and attempted < cfg.max_attempts:
        # one episode per env: a finished env is no longer stepped (rollout's partial steps)
        with torch.no_grad():
            rollout = env.rollout(METAWORLD_EPISODE_STEPS, expert, break_when_any_done=False,
                                  break_when_all_done=True)
        done = rollout["next", "done"].squeeze(-1)
        for index in range(cfg.num_envs):
            end = int(done[index].float().argmax())
            episode = rollout[index, : end + 1]
            success = bool(episode["next", "terminated"][-1])
            attempted += 1
            successes += success
            if (success or cfg.keep == "all") and len(episodes) < cfg.num_episodes:
                episodes.append(episode)
                lengths.append(end + 1)
        log.info("%d episodes attempted, %d successful, %d kept", attempted, successes, len(episodes))
    if len(episodes) < cfg.num_episodes:
        raise SystemExit(f"only {len(episodes)} episodes to keep after {attempted} attempts "
                         f"(max_attempts={cfg.max_attempts}); lower noise_std or raise max_attempts.")

    transitions = torch.cat(episodes, 0)
    arrays = d4rl_arrays(transitions)
    out_dir = repo_path(cfg.out_dir)
    name = f"{task_slug(cfg.task)}-demos"
    path = save_d4rl_dataset(out_dir / f"{name}.npz", arrays)
    kept_success = float(arrays["terminals"].sum()) / len(episodes)
    manifest = {
        "task": cfg.task,
        **describe_dataset_file(path, arrays),
        "num_episodes": len(episodes),
        "episode_length": {"mean": sum(lengths) / len(lengths), "min": min(lengths),
                           "max": max(lengths)},
        "kept_success_rate": kept_success,
        "expert": {"policy": type(expert.policy).__name__, "noise_std": cfg.noise_std,
                   "noise_correlation": cfg.noise_correlation,
                   "attempted_episodes": attempted, "successful_episodes": successes,
                   "success_rate": successes / attempted},
        "seed": cfg.seed,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "command": "python examples/record_demos.py " + " ".join(HydraConfig.get().overrides.task),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "envpool": envpool.__version__},
    }
    manifest_path = out_dir / f"{name}.json"
    atomic_write_text(json.dumps(manifest, indent=2) + "\n", manifest_path)
    log.info("%s: %d episodes (%d transitions; the noisy expert succeeded in %d of %d attempts) "
             "-> %s", cfg.task, len(episodes), len(arrays["rewards"]), successes, attempted, path)


if __name__ == "__main__":
    main()
