"""Offline data: D4RL-style data set files, replay buffers and action-chunk views."""
from __future__ import annotations

from torchrl_rldt.data.datasets import (
    D4RL_KEYS,
    action_chunks,
    d4rl_arrays,
    describe_dataset_file,
    load_d4rl_dataset,
    load_offline_dataset,
    make_offline_replay_buffer,
    save_d4rl_dataset,
    transitions_from_buffer,
)

__all__ = [
    "D4RL_KEYS",
    "action_chunks",
    "d4rl_arrays",
    "describe_dataset_file",
    "load_d4rl_dataset",
    "load_offline_dataset",
    "make_offline_replay_buffer",
    "save_d4rl_dataset",
    "transitions_from_buffer",
]
