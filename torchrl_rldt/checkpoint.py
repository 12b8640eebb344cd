"""Checkpoints: atomic writes, training checkpoints with their replay buffer, and flow policies.

A flow-policy checkpoint holds what it takes to run a pretrained :class:`FlowActor` on its task:
the velocity network's weights and sizes, the sampler settings, the data-set normalisation and
the task id. Only tensors, strings, numbers, lists and dicts are stored, so
``torch.load(path, weights_only=True)`` reads it.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchrl.envs.transforms import Compose

from torchrl_rldt.envs.transforms import NormalizationStats, normalization_transforms
from torchrl_rldt.modules.flow import FlowActor, VelocityMLP

__all__ = [
    "FlowPolicy",
    "atomic_save",
    "atomic_write_text",
    "load_checkpoint_buffer",
    "load_flow_policy",
    "save_checkpoint",
    "save_flow_policy",
]

FLOW_POLICY_FORMAT = "torchrl_rldt.flow_policy"
FLOW_POLICY_VERSION = 1


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file beside ``path``, flushed to disk, then renamed.

    A crash or a kill during the write leaves the previous file (or none) in place, never a
    truncated one.

    Args:
        obj: what to save.
        path: the destination; parent directories are created.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(text: str, path: str | Path) -> Path:
    """Writes ``text`` to ``path`` through a temporary file and a rename (see :func:`atomic_save`).

    Args:
        text: the content.
        path: the destination; parent directories are created.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def save_checkpoint(state: dict, path: str | Path, replay_buffer: Any = None) -> Path:
    """Atomically writes a training checkpoint and, optionally, the replay buffer it goes with.

    The buffer is dumped (``replay_buffer.dumps``) into a new directory beside ``path``, named
    ``<file name>.buffer-<nanoseconds>``; the checkpoint, written next with :func:`atomic_save`,
    records that name under ``"replay_buffer_dir"`` (``None`` without a buffer); older dumps are
    removed last. A kill at any moment thus leaves a checkpoint and exactly the buffer it was
    written with (an unfinished dump is never referenced). Read both back with
    ``torch.load(path, weights_only=True)`` and :func:`load_checkpoint_buffer`.

    Args:
        state: what to save; only what ``torch.load(..., weights_only=True)`` reads. Its key
            ``"replay_buffer_dir"`` is set here.
        path: the checkpoint file; its parent is created.
        replay_buffer: a TorchRL replay buffer to save with it, or ``None``.

    Returns:
        The checkpoint path.

    Examples:
        >>> import tempfile, torch
        >>> from pathlib import Path
        >>> from tensordict import TensorDict
        >>> from torchrl.data import LazyTensorStorage, ReplayBuffer
        >>> from torchrl_rldt.checkpoint import load_checkpoint_buffer, save_checkpoint
        >>> buffer = ReplayBuffer(storage=LazyTensorStorage(10))
        >>> _ = buffer.extend(TensorDict({"reward": torch.arange(4.0)}, [4]))
        >>> path = Path(tempfile.mkdtemp()) / "checkpoint.pt"
        >>> _ = save_checkpoint({"steps": 4}, path, buffer)
        >>> restored = ReplayBuffer(storage=LazyTensorStorage(10))
        >>> load_checkpoint_buffer(torch.load(path, weights_only=True), path, restored)
        True
        >>> len(restored)
        4
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {**state, "replay_buffer_dir": None}
    if replay_buffer is not None:
        directory = path.with_name(f"{path.name}.buffer-{time.time_ns()}")
        replay_buffer.dumps(directory)
        state["replay_buffer_dir"] = directory.name
    atomic_save(state, path)
    for old in path.parent.glob(f"{path.name}.buffer-*"):
        if old.name != state["replay_buffer_dir"]:
            shutil.rmtree(old, ignore_errors=True)
    return path


def load_checkpoint_buffer(state: dict, path: str | Path, replay_buffer: Any) -> bool:
    """Loads into ``replay_buffer`` the dump that the checkpoint ``state`` (read from ``path``) names.

    Args:
        state: the loaded checkpoint, as written by :func:`save_checkpoint`.
        path: the checkpoint file it was read from.
        replay_buffer: the (empty) replay buffer to fill.

    Returns:
        ``True`` when a buffer was loaded, ``False`` when the checkpoint was saved without one.

    Raises:
        FileNotFoundError: the checkpoint names a dump that is not beside it (e.g. the checkpoint
            file was copied alone).
    """
    name = state.get("replay_buffer_dir")
    if name is None:
        return False
    directory = Path(path).with_name(name)
    if not directory.is_dir():
        raise FileNotFoundError(
            f"{path} was saved with its replay buffer in {directory}, which does not exist; copy "
            f"that directory beside the checkpoint, or start a new run."
        )
    replay_buffer.loads(directory)
    return True


@dataclass
class FlowPolicy:
    """A pretrained flow policy and what it needs to act in its environment.

    Args:
        task: the environment id the policy was trained for, e.g. ``"Hopper-v5"``.
        actor: the flow actor; it reads normalised observations and writes normalised chunks.
        observation_stats: the observation normalisation of the pretraining data.
        action_stats: the action normalisation of the pretraining data.
        metadata: free-form information (training steps, data set, evaluated returns).
    """

    task: str
    actor: FlowActor
    observation_stats: NormalizationStats
    action_stats: NormalizationStats
    metadata: dict = field(default_factory=dict)

    def env_transforms(self) -> Compose:
        """The TorchRL transforms that put an env into the actor's normalised space."""
        return normalization_transforms(self.observation_stats, self.action_stats)


def save_flow_policy(
    path: str | Path,
    actor: FlowActor,
    *,
    task: str,
    observation_stats: NormalizationStats,
    action_stats: NormalizationStats,
    metadata: dict | None = None,
) -> Path:
    """Writes a flow-policy checkpoint atomically.

    Args:
        path: the destination ``.pt`` file.
        actor: a :class:`FlowActor` whose velocity network is a :class:`VelocityMLP` (its sizes
            are stored so that :func:`load_flow_policy` can rebuild it).
        task: the environment id the policy acts in.
        observation_stats: the observation normalisation the actor expects.
        action_stats: the action normalisation the actor's chunks are expressed in.
        metadata: JSON-serialisable information to keep with the weights.

    Returns:
        The path written.
    """
    network = actor.velocity_network
    if not isinstance(network, VelocityMLP):
        raise TypeError(
            f"save_flow_policy stores VelocityMLP networks only, got {type(network).__name__}; "
            f"save the state_dict of a custom network with torch.save instead."
        )
    if not hasattr(nn, network.config["activation"]):
        raise TypeError(
            f"the activation {network.config['activation']!r} is not a torch.nn class and could "
            f"not be rebuilt at load time."
        )
    metadata = metadata or {}
    try:
        metadata = json.loads(json.dumps(metadata))
    except TypeError as err:
        raise TypeError(f"metadata must be JSON-serialisable: {err}") from err
    state = {
        "format": FLOW_POLICY_FORMAT,
        "version": FLOW_POLICY_VERSION,
        "task": task,
        "network": dict(network.config),
        "actor": {
            "action_dim": actor.action_dim,
            "chunk_len": actor.chunk_len,
            "num_steps": actor.num_steps,
            "low": None if actor.low is None else actor.low.detach().cpu(),
            "high": None if actor.high is None else actor.high.detach().cpu(),
        },
        "velocity_state_dict": {k: v.detach().cpu() for k, v in network.state_dict().items()},
        "observation_stats": observation_stats.state_dict(),
        "action_stats": action_stats.state_dict(),
        "metadata": metadata,
    }
    return atomic_save(state, path)


def load_flow_policy(
    path: str | Path,
    *,
    task: str | None = None,
    observation_dim: int | None = None,
    action_dim: int | None = None,
    chunk_len: int | None = None,
    device: str | torch.device = "cpu",
) -> FlowPolicy:
    """Reads a flow-policy checkpoint with ``weights_only=True`` and checks it fits.

    Every expectation that is given is checked, and a mismatch raises an error that names the
    field, the checkpoint's value and the expected one.

    Args:
        path: the checkpoint written by :func:`save_flow_policy`.
        task: the environment id the caller will run; ``None`` skips the check.
        observation_dim: the size of the env's observation; ``None`` skips the check.
        action_dim: the size of one env action; ``None`` skips the check.
        chunk_len: the chunk length the caller executes; ``None`` skips the check.
        device: where the actor is placed.

    Returns:
        A :class:`FlowPolicy`.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a flow-policy checkpoint, or does not fit an expectation.

    Examples:
        >>> import os, tempfile
        >>> from torchrl_rldt.checkpoint import load_flow_policy, save_flow_policy
        >>> from torchrl_rldt.envs import NormalizationStats
        >>> from torchrl_rldt.modules import FlowActor, VelocityMLP
        >>> actor = FlowActor(VelocityMLP(11, 3, chunk_len=4, hidden_dim=32), 3, chunk_len=4)
        >>> stats = NormalizationStats(torch.zeros(11), torch.ones(11))
        >>> path = os.path.join(tempfile.mkdtemp(), "policy.pt")
        >>> _ = save_flow_policy(path, actor, task="Hopper-v5", observation_stats=stats,
        ...                      action_stats=NormalizationStats(torch.zeros(3), torch.ones(3)))
        >>> load_flow_policy(path, task="Hopper-v5", observation_dim=11).actor.chunk_len
        4
        >>> load_flow_policy(path, task="Walker2d-v5")
        Traceback (most recent call last):
        ...
        ValueError: ... was trained for task 'Hopper-v5', but 'Walker2d-v5' was asked for...
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"No flow-policy checkpoint at {path}. Train one with `python "
            f"examples/pretrain_flow.py task=<Task-v5>`, or use a shipped one under checkpoints/."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path} holds objects that torch.load(weights_only=True) refuses; it is not a "
            f"torchrl-rldt flow-policy checkpoint ({err})."
        ) from err
    if not isinstance(state, dict) or state.get("format") != FLOW_POLICY_FORMAT:
        raise ValueError(
            f"{path} is not a torchrl-rldt flow-policy checkpoint (no format tag "
            f"{FLOW_POLICY_FORMAT!r}); write one with torchrl_rldt.checkpoint.save_flow_policy."
        )
    if state["version"] > FLOW_POLICY_VERSION:
        raise ValueError(
            f"{path} has checkpoint format version {state['version']}, newer than this "
            f"torchrl-rldt reads ({FLOW_POLICY_VERSION}); upgrade torchrl-rldt."
        )
    network_config = dict(state["network"])
    found = {
        "task": state["task"],
        "observation_dim": network_config["observation_dim"],
        "action_dim": network_config["action_dim"],
        "chunk_len": network_config["chunk_len"],
    }
    expected = {
        "task": task,
        "observation_dim": observation_dim,
        "action_dim": action_dim,
        "chunk_len": chunk_len,
    }
    for name, value in expected.items():
        if value is not None and found[name] != value:
            raise ValueError(
                f"Checkpoint {path} was trained for {name} {found[name]!r}, but {value!r} was "
                f"asked for. Use a checkpoint made for {name}={value!r} (examples/pretrain_flow.py "
                f"makes one)."
            )
    activation = getattr(nn, network_config.pop("activation"))
    network = VelocityMLP(
        network_config.pop("observation_dim"),
        network_config.pop("action_dim"),
        activation=activation,
        **network_config,
    )
    network.load_state_dict(state["velocity_state_dict"])
    actor_config = state["actor"]
    actor = FlowActor(
        network,
        actor_config["action_dim"],
        actor_config["num_steps"],
        chunk_len=actor_config["chunk_len"],
        low=actor_config["low"],
        high=actor_config["high"],
    ).to(device)
    return FlowPolicy(
        task=state["task"],
        actor=actor,
        observation_stats=NormalizationStats.from_state_dict(state["observation_stats"]),
        action_stats=NormalizationStats.from_state_dict(state["action_stats"]),
        metadata=state["metadata"],
    )
