"""Environments: EnvPool for TorchRL, action-chunk execution and normalisation transforms."""
from __future__ import annotations

from torchrl_rldt.envs.bandit import PeaksBanditEnv
from torchrl_rldt.envs.chunk import ActionChunkEnv
from torchrl_rldt.envs.envpool import EnvPoolEnv, check_task_id
from torchrl_rldt.envs.evaluation import evaluate_policy
from torchrl_rldt.envs.transforms import NormalizationStats, normalization_transforms

__all__ = [
    "ActionChunkEnv",
    "EnvPoolEnv",
    "check_task_id",
    "evaluate_policy",
    "NormalizationStats",
    "PeaksBanditEnv",
    "normalization_transforms",
]
