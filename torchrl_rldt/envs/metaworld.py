# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
"""Meta-World manipulation tasks (EnvPool's ``MetaWorld/<Task>-v3``) with a sparse success reward."""
from __future__ import annotations

import torch
from tensordict import TensorDictBase
from torchrl.envs import Compose, TransformedEnv
from torchrl.envs.transforms import SuccessReward, TerminateTransform

from torchrl_rldt.envs.libs.envpool import EnvPoolEnv

__all__ = ["METAWORLD_EPISODE_STEPS", "is_success", "make_metaworld_env"]

# the time limit of every Meta-World v3 task in EnvPool
METAWORLD_EPISODE_STEPS = 500


def is_success(next_tensordict: TensorDictBase) -> torch.Tensor:
    """Meta-World's success flag of a step, as a boolean ``[*B, 1]``."""
    return next_tensordict.get("success") > 0.5


def make_metaworld_env(
    task: str,
    num_envs: int,
    *,
    seed: int | None = None,
    device: torch.device | str | None = None,
    max_episode_steps: int = METAWORLD_EPISODE_STEPS,
) -> TransformedEnv:
    """A batch of a Meta-World task whose reward is 1 on success, and whose episode ends there.

    EnvPool's Meta-World tasks report ``info["success"]`` but keep the episode running and
    return a dense shaped reward. Here, per env step:

    - ``"success"`` (float32 ``[num_envs, 1]``, 0 or 1) is an output at every step;
    - the reward is TorchRL's :class:`~torchrl.envs.transforms.SuccessReward`: 1 on a success
      step, else 0. Since the episode ends at the first success, an episode's return is its
      success (0 or 1) and the reward 1 occurs once;
    - :class:`~torchrl.envs.transforms.TerminateTransform` sets ``terminated`` (and ``done``)
      at success: the critic does not bootstrap past it, and a collector resets the env;
    - ``truncated`` comes at ``max_episode_steps`` (the time limit): a critic bootstraps there.

    The observation is the full 39-D state with the goal position (``partially_observable=False``:
    Meta-World's scripted experts read the goal, so a policy imitating them must see it).
    Wrap the result in an :class:`~torchrl_rldt.envs.ActionChunkEnv` to execute chunks: the
    transforms above then act at every env step, inside the chunk.

    Args:
        task (str): an EnvPool Meta-World id, e.g. ``"MetaWorld/PickPlace-v3"``.
        num_envs (int): the batch size.

    Keyword Args:
        seed (int, optional): the pool's seed (see :class:`~torchrl_rldt.envs.EnvPoolEnv`).
        device (torch.device or str, optional): where the data goes. Defaults to the CPU.
        max_episode_steps (int, optional): the time limit. Defaults to ``500``.

    Examples:
        >>> import torch
        >>> from torchrl_rldt.envs import make_metaworld_env
        >>> env = make_metaworld_env("MetaWorld/PickPlace-v3", num_envs=2, seed=0)
        >>> env.observation_spec["observation"].shape, env.action_spec.shape
        (torch.Size([2, 39]), torch.Size([2, 4]))
        >>> rollout = env.rollout(5)
        >>> rollout["next", "reward"].sum().item(), rollout["next", "success"].shape
        (0.0, torch.Size([2, 5, 1]))
    """
    if not task.startswith("MetaWorld/"):
        raise ValueError(f"make_metaworld_env expects a 'MetaWorld/<Task>-v3' id, got {task!r}.")
    base = EnvPoolEnv(task, num_envs, seed=seed, device=device, info_keys=("success",),
                      partially_observable=False, max_episode_steps=max_episode_steps)
    return TransformedEnv(base, Compose(TerminateTransform(is_success), SuccessReward("success")))
