"""The factories that the example scripts share: paths and tasks, base policies, chunk envs and
TorchRL collectors (the training loops stay in the scripts; what every run needs besides its loop
is :mod:`torchrl_rldt.trainers`). RLDT's and QAM's factories are in ``rldt_utils.py``, SAC's in
``sac_utils.py``."""
from __future__ import annotations

import functools
import json
import math
import sys
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from tensordict import TensorDictBase
from torchrl.collectors import Collector, MultiAsyncCollector, MultiSyncCollector
from torchrl.data import LazyTensorStorage, SliceSampler, TensorDictReplayBuffer
from torchrl.envs import TransformedEnv

from torchrl_rldt.checkpoint import (
    DDPMPolicy,
    FlowPolicy,
    atomic_write_text,
    load_ddpm_policy,
    load_flow_policy,
)
from torchrl_rldt.envs import (
    EnvPoolEnv,
    is_metaworld_task,
    make_chunk_env,
)
from torchrl_rldt.envs.metaworld import METAWORLD_EPISODE_STEPS
from torchrl_rldt.trainers import ConfigCheck, apply_task_config

REPO_ROOT = Path(__file__).resolve().parents[1]


def repo_path(path: str | Path) -> Path:
    """``path`` as given when absolute, else relative to the repository root."""
    path = Path(path)
    return path if path.is_absolute() else REPO_ROOT / path


def read_manifest(path: Path) -> dict:
    """The JSON manifest at ``path`` (``{}`` when there is none yet), refused with its name when
    it is not a JSON object: read before the work whose entry it gets, not after."""
    if not path.is_file():
        return {}
    try:
        manifest = json.loads(path.read_text())
        if not isinstance(manifest, dict):
            raise ValueError(f"a JSON {type(manifest).__name__}, not an object")
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not a readable manifest ({error}); restore it from git (git checkout "
                         f"-- {path}) or move it away, and the next write starts a new one") from None
    return manifest


def update_manifest(path: Path, entry: dict, *sections: str) -> None:
    """Sets ``entry`` at ``sections`` (nested keys) of the manifest at ``path``, written atomically."""
    manifest = read_manifest(path)
    node = manifest
    for key in sections[:-1]:
        node = node.setdefault(key, {})
    node[sections[-1]] = entry
    atomic_write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", path)


def task_slug(task: str) -> str:
    """The file-name form of a task id: ``"Hopper-v5"`` -> ``"hopper-v5"``,
    ``"MetaWorld/PickPlace-v3"`` -> ``"metaworld-pickplace-v3"``."""
    return task.lower().replace("/", "-")


is_metaworld = is_metaworld_task  # short name in the examples


def time_limit(task: str, configured: int | None) -> int:
    """``configured`` when set, else the task's own time limit (Meta-World 500, MuJoCo 1000)."""
    if configured is not None:
        return configured
    return METAWORLD_EPISODE_STEPS if is_metaworld(task) else 1000


def default_data_path(task: str) -> str:
    """Where the data set of ``task`` is: demonstrations for Meta-World, medium data otherwise."""
    return f"data/{task_slug(task)}-{'demos' if is_metaworld(task) else 'medium'}.npz"


def apply_per_task_config(cfg: DictConfig) -> list[str]:
    """The values ``cfg.task`` needs beyond the example's defaults, from
    ``examples/config/per_task/<config name>/<task slug>.yaml`` when it exists (e.g.
    ``per_task/rldt_gym/halfcheetah-v5.yaml``); the command line still wins. Call it first.

    A Meta-World task under a Gym config (``*_gym``: dense-reward settings, TD(0), discount
    0.99, deterministic evaluation) or a Gym task under a Meta-World config is refused with the
    command that has its settings."""
    from hydra.core.hydra_config import HydraConfig

    hydra_config = HydraConfig.get()
    name = hydra_config.job.config_name
    family, other = ("gym", "metaworld") if name.endswith("_gym") else ("metaworld", "gym")
    if name.endswith(("_gym", "_metaworld")) and is_metaworld(cfg.task) != (family == "metaworld"):
        kind = "a sparse-reward Meta-World task" if is_metaworld(cfg.task) else "a dense-reward Gym task"
        overrides = " ".join(hydra_config.overrides.task)
        raise ValueError(
            f"{cfg.task} is {kind}, and the {name} config has the settings of the other kind (its "
            f"discount, value target and evaluation). Run it with its config: python "
            f"examples/{Path(sys.argv[0]).name} --config-name {name[: -len(family)]}{other} {overrides}")
    path = (REPO_ROOT / "examples" / "config" / "per_task" / hydra_config.job.config_name
            / f"{task_slug(cfg.task)}.yaml")
    return apply_task_config(cfg, path, hydra_config.overrides.task)


def make_env(task: str, num_envs: int, seed: int, device: str | torch.device = "cpu") -> EnvPoolEnv:
    """One EnvPool env of ``num_envs`` copies of ``task``."""
    return EnvPoolEnv(task, num_envs, seed=seed, device=device)


def make_replay_buffer(
    size: int, batch_size: int | None, device: str | torch.device, *, slice_len: int | None = None
) -> TensorDictReplayBuffer:
    """A FIFO replay buffer kept on ``device`` (``batch_size`` None: given to ``sample``).

    Uniform over transitions (extend it with flat batches), or, with ``slice_len``, over slices
    of up to ``slice_len`` consecutive transitions of one env (TorchRL's ``SliceSampler`` on a
    two-dimensional storage: extend it with the collector's ``[num_envs, T]`` batches, which it
    stores as ``[time, num_envs]``, each write along time). A
    slice ends at an episode end or after ``slice_len`` steps, where the sampler marks it done
    (and truncated): what TD(lambda) targets need.
    """
    if slice_len is None:
        return TensorDictReplayBuffer(
            storage=LazyTensorStorage(size, device=device), batch_size=batch_size
        )
    return TensorDictReplayBuffer(
        storage=LazyTensorStorage(size, device=device, ndim=2),
        sampler=SliceSampler(slice_len=slice_len, end_key=("next", "done"), strict_length=False),
        batch_size=batch_size,
    )


def end_slices_at_the_last_write(replay_buffer: TensorDictReplayBuffer) -> None:
    """Marks each env's last stored step of a slice buffer (:func:`make_replay_buffer` with
    ``slice_len``) done and truncated.

    A resumed run's collector starts new episodes, and its first batch is stored right after each
    env's last step: without an end there, slices (and their TD(lambda) targets) would run from
    the interrupted episode into an unrelated one. The storage is ``[time, num_envs]``, written
    along time at the writer's cursor.
    """
    if len(replay_buffer) == 0:
        return
    storage = replay_buffer.storage
    last = (replay_buffer.writer.state_dict()["_cursor"] - 1) % storage.shape[0]
    step = storage[last]
    for key in (("next", "done"), ("next", "truncated")):
        step.set(key, torch.ones_like(step.get(key)))
    storage.set(last, step)


def check_collector_config(check: ConfigCheck) -> None:
    """``collector.kind``, its stall timeout and, for several workers, ``collector.num_workers``
    against ``env.num_envs``."""
    cfg = check.cfg
    check.one_of("collector.kind", ("single", "multi_sync", "multi_async", "ray"))
    if cfg.collector.stall_timeout_s is not None:
        check.number("collector.stall_timeout_s", 0.0, open_low=True)
    if cfg.collector.kind == "single":
        return
    check.positive_int("collector.num_workers")
    workers, envs = cfg.collector.num_workers, cfg.env.num_envs
    if isinstance(workers, int) and isinstance(envs, int) and workers >= 1:
        check.need(envs % workers == 0,
                   f"env.num_envs ({envs}) must be a multiple of collector.num_workers ({workers}): "
                   f"each worker runs env.num_envs / num_workers envs")
    if cfg.collector.kind == "ray":
        import importlib.util

        check.need(importlib.util.find_spec("ray") is not None,
                   "collector.kind=ray needs Ray: pip install 'torchrl-rldt[distributed]' (or pip install ray)")
    if cfg.collector.kind == "multi_async" and OmegaConf.select(cfg, "critic.value_estimator") == "td_lambda":
        check.need(False, "collector.kind=multi_async yields one worker's envs per batch, which breaks "
                          "the per-env trajectories that critic.value_estimator=td_lambda samples "
                          "slices of; use collector.kind=multi_sync")


def load_base_policy(cfg: DictConfig, device: torch.device, num_steps: int | None = None, *,
                     kind: str = "flow") -> FlowPolicy | DDPMPolicy:
    """The pretrained policy of ``cfg.task``: a flow policy sampling with ``num_steps`` Euler
    steps (``kind="flow"``), or a DDPM policy (``kind="ddpm"``, DPPO's; its steps are its own).

    Errors name a missing file or a mismatch (task, dimensions, chunks longer than an episode).
    """
    path = repo_path(cfg.base_checkpoint or f"checkpoints/{task_slug(cfg.task)}-{kind}-base.pt")
    policy_option = "" if kind == "flow" else f" policy={kind}"
    if not path.is_file() and is_metaworld(cfg.task):
        data = repo_path(default_data_path(cfg.task))
        raise FileNotFoundError(
            f"no base policy for {cfg.task} at {path}. " + (
                f"Pretrain one on {data}: python examples/pretrain_flow.py{policy_option} "
                f"task={cfg.task}"
                if data.is_file() else
                f"There are no demonstrations for it either ({data}): record them with "
                f"python examples/record_demos.py task={cfg.task}, then pretrain with "
                f"python examples/pretrain_flow.py{policy_option} task={cfg.task}.")
        )
    if kind == "flow":
        policy = load_flow_policy(path, task=cfg.task, device=device)
    else:
        policy = load_ddpm_policy(path, task=cfg.task, device=device)
    if policy.chunk_len > cfg.env.max_episode_steps:
        raise ValueError(
            f"the base policy's chunks ({policy.chunk_len} actions) are longer than an episode "
            f"(env.max_episode_steps={cfg.env.max_episode_steps})."
        )
    if num_steps is not None:
        policy.actor.model.num_steps = num_steps
    return policy


def make_policy_chunk_env(policy: FlowPolicy | DDPMPolicy, cfg: DictConfig, num_envs: int, seed: int,
                          device: torch.device) -> TransformedEnv:
    """A chunk env of ``cfg.task`` in ``policy``'s normalised spaces, with its chunk length."""
    return policy_env_maker(policy, cfg, device)(num_envs, seed)


# a worker's envs are seeded apart from the others' (and from the evaluation envs)
WORKER_SEED_STRIDE = 100_003


def make_collector(cfg: DictConfig, policy, make_env, seed: int, *, frames_per_batch: int,
                   total_frames: int, **kwargs):
    """TorchRL's collector of ``cfg.collector.kind`` for ``policy`` on envs built by ``make_env``.

    Args:
        cfg: the example's config (``collector.kind``, ``collector.num_workers``,
            ``collector.ray_address``, ``env.num_envs``, ``device``).
        policy: the collecting policy (with its exploration module, which travels with it).
        make_env: ``make_env(num_envs, seed)`` builds an env; picklable for the workers, e.g. a
            ``functools.partial`` of :func:`torchrl_rldt.envs.make_chunk_env`.
        seed: the seed of the (first worker's) envs.

    Keyword Args:
        frames_per_batch, total_frames: as TorchRL's collectors (a batch holds
            ``frames_per_batch`` chunks whatever the kind); more ``kwargs`` go to every collector.

    ``single``: one ``Collector`` over one pool of ``env.num_envs`` envs. ``multi_sync`` and
    ``multi_async``: ``MultiSyncCollector`` / ``MultiAsyncCollector`` over
    ``collector.num_workers`` processes, each with its own pool of ``env.num_envs / num_workers``
    envs seeded apart (all workers' envs in a batch for ``multi_sync``, one worker's for
    ``multi_async``). ``ray``: TorchRL's ``RayCollector``, ``num_workers`` Ray actors of one CPU
    each, on the cluster at ``collector.ray_address`` (``null``: a local Ray instance on loopback);
    its batches go through :func:`collected_chunks`. After an update of the policy,
    ``collector.update_policy_weights_()`` sends its weights to the workers (a no-op in one
    process).
    """
    common = dict(frames_per_batch=frames_per_batch, total_frames=total_frames, device=cfg.device,
                  storing_device=cfg.device, **kwargs)
    kind = cfg.collector.kind
    if kind == "single":
        return Collector(make_env(cfg.env.num_envs, seed), policy, **common)
    workers = cfg.collector.num_workers
    env_makers = [functools.partial(make_env, cfg.env.num_envs // workers, seed + worker * WORKER_SEED_STRIDE)
                  for worker in range(workers)]
    if kind == "multi_sync":
        # workers' batches side by side along the env dimension: [num_envs, chunks]
        return MultiSyncCollector(env_makers, policy, cat_results=0, **common)
    if kind == "multi_async":
        return MultiAsyncCollector(env_makers, policy, **common)
    from torchrl.collectors.distributed import RayCollector

    # one Collector per Ray actor, one CPU each; a batch stacks them: [workers, envs, chunks]
    address = cfg.collector.ray_address
    return RayCollector(
        env_makers, policy, collector_class=Collector, num_collectors=workers, sync=True,
        ray_init_config={"address": address, "include_dashboard": False} if address is not None else {
            "address": "local", "include_dashboard": False, "num_cpus": workers,
            "_node_ip_address": "127.0.0.1"},  # a local instance on loopback
        remote_configs={"num_cpus": 1, "num_gpus": 1 if torch.device(cfg.device).type == "cuda" else 0},
        **common,
    )


def policy_env_maker(policy: FlowPolicy | DDPMPolicy, cfg: DictConfig, device: torch.device):
    """``make_env(num_envs, seed)``: chunk envs of ``cfg.task`` in ``policy``'s normalised spaces
    (picklable, for :func:`make_collector`'s workers)."""
    return functools.partial(make_chunk_env, cfg.task, chunk_len=policy.chunk_len,
                             transforms=policy.env_transforms(),
                             max_episode_steps=cfg.env.max_episode_steps, device=device)


def frames_covering(env_steps: int, frames_per_batch: int) -> int:
    """A collector's ``total_frames`` that is sure to cover ``env_steps`` more env steps.

    A frame (a chunk transition) holds at least one env step, fewer than the chunk's length when
    an episode ends inside it, so ``env_steps`` frames, rounded up to whole batches, always reach
    the budget; the training loop stops on its env-step count before the collector runs out. A
    finite budget rather than TorchRL's ``-1`` (no limit), which ``RayCollector`` does not run.
    """
    return max(1, math.ceil(max(env_steps, 1) / frames_per_batch)) * frames_per_batch


def collected_chunks(batch: TensorDictBase) -> TensorDictBase:
    """A collector's batch as ``[envs, chunks]`` (a Ray collector stacks its workers in front)."""
    return batch.reshape(-1, batch.shape[-1]) if batch.ndim > 2 else batch
