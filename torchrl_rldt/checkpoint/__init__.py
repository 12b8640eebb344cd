"""Checkpoints by layer: atomic file writes, training checkpoints with their replay buffer, and
flow-policy files."""
from __future__ import annotations

from torchrl_rldt.checkpoint.atomic import atomic_save, atomic_write, atomic_write_text
from torchrl_rldt.checkpoint.flow_policy import FlowPolicy, load_flow_policy, save_flow_policy
from torchrl_rldt.checkpoint.training import load_checkpoint_buffer, save_checkpoint

__all__ = [
    "FlowPolicy",
    "atomic_save",
    "atomic_write",
    "atomic_write_text",
    "load_checkpoint_buffer",
    "load_flow_policy",
    "save_checkpoint",
    "save_flow_policy",
]
