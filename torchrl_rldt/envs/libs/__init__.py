"""Environment libraries: EnvPool for TorchRL."""
from __future__ import annotations

from torchrl_rldt.envs.libs.envpool import EnvPoolEnv, check_task_id

__all__ = ["EnvPoolEnv", "check_task_id"]
