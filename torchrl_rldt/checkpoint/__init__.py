"""Checkpoints by layer: atomic file writes, training checkpoints with their replay buffer, and
policy files (flow and DDPM)."""
from __future__ import annotations

from torchrl_rldt.checkpoint.atomic import atomic_save, atomic_write, atomic_write_text, fsync_directory
from torchrl_rldt.checkpoint.policy_files import (
    DDPMPolicy,
    FlowPolicy,
    load_ddpm_policy,
    load_flow_policy,
    save_ddpm_policy,
    save_flow_policy,
)
from torchrl_rldt.checkpoint.training import (
    CHECKPOINT_VERSION,
    load_checkpoint_buffer,
    read_checkpoint,
    restore_rng_state,
    rng_state,
    save_checkpoint,
)

__all__ = [
    "CHECKPOINT_VERSION",
    "DDPMPolicy",
    "FlowPolicy",
    "atomic_save",
    "atomic_write",
    "atomic_write_text",
    "fsync_directory",
    "load_checkpoint_buffer",
    "load_ddpm_policy",
    "load_flow_policy",
    "read_checkpoint",
    "restore_rng_state",
    "rng_state",
    "save_checkpoint",
    "save_ddpm_policy",
    "save_flow_policy",
]
