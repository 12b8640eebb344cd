# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
"""Deprecated: the run harness moved, by concern.

- :class:`~torchrl_rldt.trainers.TrainingRun`, :class:`~torchrl_rldt.trainers.NonFiniteError`,
  :func:`~torchrl_rldt.trainers.env_seed`: :mod:`torchrl_rldt.trainers`;
- :class:`~torchrl_rldt.trainers.ConfigCheck`, :func:`~torchrl_rldt.trainers.apply_task_config`:
  :mod:`torchrl_rldt.trainers.config`;
- :func:`~torchrl_rldt.envs.evaluate_policy`, :func:`~torchrl_rldt.envs.episode_returns`:
  :mod:`torchrl_rldt.envs.evaluation`;
- :func:`~torchrl_rldt.checkpoint.read_checkpoint`, :func:`~torchrl_rldt.checkpoint.rng_state`,
  :func:`~torchrl_rldt.checkpoint.restore_rng_state`: :mod:`torchrl_rldt.checkpoint.training`.

This module re-exports them and warns once on import; it will be removed.
"""
from __future__ import annotations

import warnings

from torchrl_rldt.checkpoint.training import read_checkpoint, restore_rng_state, rng_state
from torchrl_rldt.envs.evaluation import episode_returns, evaluate_policy
from torchrl_rldt.trainers import ConfigCheck, NonFiniteError, TrainingRun, apply_task_config, env_seed

__all__ = [
    "ConfigCheck",
    "NonFiniteError",
    "TrainingRun",
    "apply_task_config",
    "env_seed",
    "episode_returns",
    "evaluate_policy",
    "read_checkpoint",
    "restore_rng_state",
    "rng_state",
]

warnings.warn(
    "torchrl_rldt.harness is deprecated: import TrainingRun, ConfigCheck and env_seed from "
    "torchrl_rldt.trainers, evaluate_policy and episode_returns from torchrl_rldt.envs, and "
    "read_checkpoint from torchrl_rldt.checkpoint.",
    DeprecationWarning,
    stacklevel=2,
)
