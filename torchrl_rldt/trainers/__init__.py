"""The run harness of the training examples: :class:`TrainingRun` (checkpoints, resume,
evaluation, stops, summaries), its config checks and its reporting."""
from __future__ import annotations

from torchrl_rldt.trainers.config import ConfigCheck, apply_task_config, refuse_renamed_keys
from torchrl_rldt.trainers.reward_scale import RewardScale
from torchrl_rldt.trainers.run import CollectorFault, NonFiniteError, StorageFault, TrainingRun, env_seed

__all__ = ["CollectorFault", "ConfigCheck", "NonFiniteError", "RewardScale", "StorageFault", "TrainingRun", "apply_task_config", "env_seed",
           "refuse_renamed_keys"]
