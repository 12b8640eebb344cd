"""Policy files: a pretrained chunk policy with what it needs to act on its task.

A flow-policy checkpoint holds what it takes to run a pretrained :class:`FlowActor` on its task:
the velocity network's weights and sizes, the sampler settings, the data-set normalisation and
the task id. A DDPM-policy checkpoint holds the same for a :class:`DDPMChunkModel` (the policy
DPPO fine-tunes): its denoising network, its noise schedule and clips. Only tensors, strings,
numbers, lists and dicts are stored, so ``torch.load(path, weights_only=True)`` reads them.
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
from torchrl_rldt.modules.diffusion import DDPMChunkModel
from torchrl_rldt.modules.flow import FlowActor, FlowModel, VelocityMLP
from torchrl_rldt.modules.stepwise_flow import StepwiseFlowActor

__all__ = ["DDPMPolicy", "FlowPolicy", "load_ddpm_policy", "load_flow_policy",
           "save_ddpm_policy", "save_flow_policy"]

FLOW_POLICY_FORMAT = "torchrl_rldt.flow_policy"
FLOW_POLICY_VERSION = 1
DDPM_POLICY_FORMAT = "torchrl_rldt.ddpm_policy"
DDPM_POLICY_VERSION = 1
# what writes each format, for the error of a missing or mistaken file
_MAKERS = {
    FLOW_POLICY_FORMAT: ("save_flow_policy", "python examples/pretrain_flow.py task=<Task>"),
    DDPM_POLICY_FORMAT: ("save_ddpm_policy",
                         "python examples/pretrain_flow.py policy=ddpm task=<Task>"),
}


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

    @property
    def chunk_len(self) -> int:
        """Actions per chunk the policy outputs."""
        return self.actor.model.chunk_len

    def env_transforms(self) -> Compose:
        """The TorchRL transforms that put an env into the actor's normalised space."""
        return normalization_transforms(self.observation_stats, self.action_stats)


@dataclass
class DDPMPolicy:
    """A pretrained DDPM chunk policy and what it needs to act in its environment.

    The model is tensors only: wrap it in a :class:`~torchrl_rldt.modules.DPPOActor` with the
    sampler settings of the use at hand (DPPO's fine-tuning floors, or its evaluation sampler).

    Args:
        task: the environment id the policy was trained for, e.g. ``"Hopper-v5"``.
        model: the DDPM; it reads normalised observations and denoises normalised chunks.
        observation_stats: the observation normalisation of the pretraining data.
        action_stats: the action normalisation of the pretraining data.
        metadata: free-form information (training steps, data set, evaluated returns).
    """

    task: str
    model: DDPMChunkModel
    observation_stats: NormalizationStats
    action_stats: NormalizationStats
    metadata: dict = field(default_factory=dict)

    @property
    def chunk_len(self) -> int:
        """Actions per chunk the policy outputs."""
        return self.model.chunk_len

    def env_transforms(self) -> Compose:
        """The TorchRL transforms that put an env into the model's normalised space."""
        return normalization_transforms(self.observation_stats, self.action_stats)


def _network_config(network: nn.Module, saver: str) -> dict:
    if not isinstance(network, VelocityMLP):
        raise TypeError(
            f"{saver} stores VelocityMLP networks only, got {type(network).__name__}; "
            f"save the state_dict of a custom network with torch.save instead."
        )
    if not hasattr(nn, network.config["activation"]):
        raise TypeError(
            f"the activation {network.config['activation']!r} is not a torch.nn class and could "
            f"not be rebuilt at load time."
        )
    return dict(network.config)


def _common_state(fmt: str, version: int, task: str, network: nn.Module, saver: str,
                  observation_stats: NormalizationStats, action_stats: NormalizationStats,
                  metadata: dict | None) -> dict:
    """The fields every policy file has: format, task, network sizes and weights, statistics."""
    config = _network_config(network, saver)
    metadata = metadata or {}
    try:
        metadata = json.loads(json.dumps(metadata))
    except TypeError as err:
        raise TypeError(f"metadata must be JSON-serialisable: {err}") from err
    return {
        "format": fmt,
        "version": version,
        "task": task,
        "network": config,
        "observation_stats": observation_stats.state_dict(),
        "action_stats": action_stats.state_dict(),
        "metadata": metadata,
    }


def _bound(value: torch.Tensor | None) -> torch.Tensor | None:
    return None if value is None else value.detach().cpu()


def _read_policy_file(path: Path, fmt: str, version: int, expected: dict) -> dict:
    """The state of the policy file at ``path`` after its format, version and fit are checked."""
    saver, command = _MAKERS[fmt]
    kind = "flow-policy" if fmt == FLOW_POLICY_FORMAT else "DDPM-policy"
    if not path.is_file():
        raise FileNotFoundError(
            f"No {kind} checkpoint at {path}. Train one with `{command}`, or use a shipped one "
            f"under checkpoints/."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path} holds objects that torch.load(weights_only=True) refuses; it is not a "
            f"torchrl-rldt {kind} checkpoint ({err})."
        ) from err
    found_format = state.get("format") if isinstance(state, dict) else None
    if found_format != fmt:
        other = {FLOW_POLICY_FORMAT: "load_flow_policy", DDPM_POLICY_FORMAT: "load_ddpm_policy"}
        hint = (f"it is a {found_format!r} file: read it with {other[found_format]}"
                if found_format in other else f"write one with torchrl_rldt.checkpoint.{saver}")
        raise ValueError(
            f"{path} is not a torchrl-rldt {kind} checkpoint (no format tag {fmt!r}); {hint}."
        )
    if state["version"] > version:
        raise ValueError(
            f"{path} has checkpoint format version {state['version']}, newer than this "
            f"torchrl-rldt reads ({version}); upgrade torchrl-rldt."
        )
    network_config = state["network"]
    found = {
        "task": state["task"],
        "observation_dim": network_config["observation_dim"],
        "action_dim": network_config["action_dim"],
        "chunk_len": network_config["chunk_len"],
    }
    for name, value in expected.items():
        if value is not None and found[name] != value:
            raise ValueError(
                f"Checkpoint {path} was trained for {name} {found[name]!r}, but {value!r} was "
                f"asked for. Use a checkpoint made for {name}={value!r} ({command} makes one)."
            )
    return state


def _load_network(state: dict, weights_key: str) -> VelocityMLP:
    config = dict(state["network"])
    activation = getattr(nn, config.pop("activation"))
    network = VelocityMLP(config.pop("observation_dim"), config.pop("action_dim"),
                          activation=activation, **config)
    network.load_state_dict(state[weights_key])
    return network


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
    if isinstance(actor, StepwiseFlowActor):
        raise TypeError("a StepwiseFlowActor (a base and SWFP's flow blocks) cannot be written as a flow "
                        "policy, which holds one velocity network; save its state_dict instead.")
    model = actor.model
    network = model.velocity_network
    state = _common_state(FLOW_POLICY_FORMAT, FLOW_POLICY_VERSION, task, network,
                          "save_flow_policy", observation_stats, action_stats, metadata)
    state["actor"] = {
        "action_dim": model.action_dim,
        "chunk_len": model.chunk_len,
        "num_steps": model.num_steps,
        "low": _bound(model.low),
        "high": _bound(model.high),
    }
    state["velocity_state_dict"] = {k: v.detach().cpu() for k, v in network.state_dict().items()}
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
    expected = {"task": task, "observation_dim": observation_dim, "action_dim": action_dim,
                "chunk_len": chunk_len}
    state = _read_policy_file(Path(path), FLOW_POLICY_FORMAT, FLOW_POLICY_VERSION, expected)
    network = _load_network(state, "velocity_state_dict")
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


def save_ddpm_policy(
    path: str | Path,
    model: DDPMChunkModel,
    *,
    task: str,
    observation_stats: NormalizationStats,
    action_stats: NormalizationStats,
    metadata: dict | None = None,
) -> Path:
    """Writes a DDPM-policy checkpoint atomically.

    Args:
        path: the destination ``.pt`` file.
        model: a :class:`DDPMChunkModel` whose denoising network is a :class:`VelocityMLP`; its
            schedule (``betas``) and clips are stored with the weights.
        task: the environment id the policy acts in.
        observation_stats: the observation normalisation the model expects.
        action_stats: the action normalisation the model's chunks are expressed in.
        metadata: JSON-serialisable information to keep with the weights.

    Returns:
        The path written.
    """
    if not isinstance(model, DDPMChunkModel):
        raise TypeError(f"model must be a DDPMChunkModel, got {type(model).__name__}.")
    network = model.denoising_network
    state = _common_state(DDPM_POLICY_FORMAT, DDPM_POLICY_VERSION, task, network,
                          "save_ddpm_policy", observation_stats, action_stats, metadata)
    state["model"] = {
        "action_dim": model.action_dim,
        "chunk_len": model.chunk_len,
        "num_steps": model.num_steps,
        "betas": model.betas.detach().cpu(),
        "denoised_clip_value": model.denoised_clip_value,
        "final_action_clip_value": model.final_action_clip_value,
        "low": _bound(model.low),
        "high": _bound(model.high),
    }
    state["denoising_state_dict"] = {k: v.detach().cpu() for k, v in network.state_dict().items()}
    return atomic_save(state, path)


def load_ddpm_policy(
    path: str | Path,
    *,
    task: str | None = None,
    observation_dim: int | None = None,
    action_dim: int | None = None,
    chunk_len: int | None = None,
    device: str | torch.device = "cpu",
) -> DDPMPolicy:
    """Reads a DDPM-policy checkpoint with ``weights_only=True`` and checks it fits.

    Every expectation that is given is checked, and a mismatch raises an error that names the
    field, the checkpoint's value and the expected one.

    Args:
        path: the checkpoint written by :func:`save_ddpm_policy`.
        task: the environment id the caller will run; ``None`` skips the check.
        observation_dim: the size of the env's observation; ``None`` skips the check.
        action_dim: the size of one env action; ``None`` skips the check.
        chunk_len: the chunk length the caller executes; ``None`` skips the check.
        device: where the model is placed.

    Returns:
        A :class:`DDPMPolicy`.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a DDPM-policy checkpoint, or does not fit an expectation.

    Examples:
        >>> import os, tempfile
        >>> from torchrl_rldt.checkpoint import load_ddpm_policy, save_ddpm_policy
        >>> from torchrl_rldt.envs import NormalizationStats
        >>> from torchrl_rldt.modules import DDPMChunkModel, DPPOActor, VelocityMLP
        >>> model = DDPMChunkModel(VelocityMLP(11, 3, chunk_len=4, hidden_dim=32), 3, 20, chunk_len=4)
        >>> stats = NormalizationStats(torch.zeros(11), torch.ones(11))
        >>> path = os.path.join(tempfile.mkdtemp(), "ddpm.pt")
        >>> _ = save_ddpm_policy(path, model, task="Hopper-v5", observation_stats=stats,
        ...                      action_stats=NormalizationStats(torch.zeros(3), torch.ones(3)))
        >>> policy = load_ddpm_policy(path, task="Hopper-v5", chunk_len=4)
        >>> DPPOActor(policy.model, finetuned_steps=10).finetuned_steps
        10
    """
    expected = {"task": task, "observation_dim": observation_dim, "action_dim": action_dim,
                "chunk_len": chunk_len}
    state = _read_policy_file(Path(path), DDPM_POLICY_FORMAT, DDPM_POLICY_VERSION, expected)
    network = _load_network(state, "denoising_state_dict")
    config = state["model"]
    model = DDPMChunkModel(
        network,
        config["action_dim"],
        config["num_steps"],
        chunk_len=config["chunk_len"],
        betas=config["betas"],
        denoised_clip_value=config["denoised_clip_value"],
        final_action_clip_value=config["final_action_clip_value"],
        low=config["low"],
        high=config["high"],
    ).to(device)
    return DDPMPolicy(
        task=state["task"],
        model=model,
        observation_stats=NormalizationStats.from_state_dict(state["observation_stats"]),
        action_stats=NormalizationStats.from_state_dict(state["action_stats"]),
        metadata=state["metadata"],
    )
