"""Environments: EnvPool for TorchRL (MuJoCo locomotion, Meta-World with a sparse success reward),
action-chunk execution, normalisation transforms and a toy bandit."""
from __future__ import annotations

from torchrl_rldt.envs.chunk import ActionChunkEnv
from torchrl_rldt.envs.custom import PeaksBanditEnv
from torchrl_rldt.envs.evaluation import SAMPLING_MODES, episode_returns, evaluate_policy, returns_by_sampling_mode
from torchrl_rldt.envs.factory import is_metaworld_task, make_chunk_env
from torchrl_rldt.envs.libs import EnvPoolEnv, check_task_id
from torchrl_rldt.envs.metaworld import MetaWorldExpert, is_success, make_metaworld_env
from torchrl_rldt.envs.transforms import NormalizationStats, normalization_transforms

__all__ = [
    "ActionChunkEnv",
    "EnvPoolEnv",
    "check_task_id",
    "episode_returns",
    "evaluate_policy",
    "returns_by_sampling_mode",
    "SAMPLING_MODES",
    "is_metaworld_task",
    "make_chunk_env",
    "MetaWorldExpert",
    "is_success",
    "make_metaworld_env",
    "NormalizationStats",
    "PeaksBanditEnv",
    "normalization_transforms",
]
