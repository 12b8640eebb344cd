"""Flow-policy files: a pretrained flow policy with what it needs to act on its task.

A flow-policy checkpoint holds what it takes to run a pretrained :class:`FlowActor` on its task:
the velocity network's weights and sizes, the sampler settings, the data-set normalisation and
the task id. Only tensors, strings, numbers, lists and dicts are stored, so
``torch.load(path, weights_only=True)`` reads it.
"""
from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torchrl.envs.transforms import Compose

from torchrl_rldt.checkpoint.atomic import atomic_save
from torchrl_rldt.envs.transforms import NormalizationStats, normalization_transforms
from torchrl_rldt.modules.flow import FlowActor, FlowModel, VelocityMLP

__all__ = ["FlowPolicy", "load_flow_policy", "save_flow_policy"]

FLOW_POLICY_FORMAT = "torchrl_rldt.flow_policy"
FLOW_POLICY_VERSION = 1


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
    model = actor.model
    network = model.velocity_network
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
            "action_dim": model.action_dim,
            "chunk_len": model.chunk_len,
            "num_steps": model.num_steps,
            "low": None if model.low is None else model.low.detach().cpu(),
            "high": None if model.high is None else model.high.detach().cpu(),
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
        >>> from torchrl_rldt.modules import FlowActor, FlowModel, VelocityMLP
        >>> actor = FlowActor(FlowModel(VelocityMLP(11, 3, chunk_len=4, hidden_dim=32), 3, chunk_len=4))
        >>> stats = NormalizationStats(torch.zeros(11), torch.ones(11))
        >>> path = os.path.join(tempfile.mkdtemp(), "policy.pt")
        >>> _ = save_flow_policy(path, actor, task="Hopper-v5", observation_stats=stats,
        ...                      action_stats=NormalizationStats(torch.zeros(3), torch.ones(3)))
        >>> load_flow_policy(path, task="Hopper-v5", observation_dim=11).actor.model.chunk_len
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
        FlowModel(
            network,
            actor_config["action_dim"],
            actor_config["num_steps"],
            chunk_len=actor_config["chunk_len"],
            low=actor_config["low"],
            high=actor_config["high"],
        )
    ).to(device)
    return FlowPolicy(
        task=state["task"],
        actor=actor,
        observation_stats=NormalizationStats.from_state_dict(state["observation_stats"]),
        action_stats=NormalizationStats.from_state_dict(state["action_stats"]),
        metadata=state["metadata"],
    )
