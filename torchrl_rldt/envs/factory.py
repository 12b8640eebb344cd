# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
"""The chunk environment every training example runs, as one picklable factory.

A module-level function, so that ``functools.partial(make_chunk_env, ...)`` can be sent to the
workers of TorchRL's multi-process and Ray collectors, which rebuild the env on their side.
"""
from __future__ import annotations

import torch
from torchrl.envs import Compose, InitTracker, RewardSum, StepCounter, TransformedEnv

from torchrl_rldt.envs.chunk import ActionChunkEnv
from torchrl_rldt.envs.libs import EnvPoolEnv
from torchrl_rldt.envs.metaworld import make_metaworld_env

__all__ = ["is_metaworld_task", "make_chunk_env"]


def is_metaworld_task(task: str) -> bool:
    """Whether ``task`` is an EnvPool Meta-World id (sparse success reward, 500-step episodes)."""
    return task.startswith("MetaWorld/")


def make_chunk_env(
    task: str,
    num_envs: int,
    seed: int,
    chunk_len: int,
    transforms: Compose | None = None,
    *,
    max_episode_steps: int,
    device: str | torch.device = "cpu",
) -> TransformedEnv:
    """EnvPool ``task`` executing action chunks, behind ``transforms`` (e.g. a policy's normalisation).

    One step is one chunk; ``("next", "reward")`` is the chunk's summed reward and
    ``"episode_reward"`` the running return. A Meta-World task gets its sparse success reward
    and ends at success (:func:`~torchrl_rldt.envs.make_metaworld_env`): its return is the
    episode's success.

    Args:
        task (str): an EnvPool id, e.g. ``"Hopper-v5"`` or ``"MetaWorld/Assembly-v3"``.
        num_envs (int): envs in the pool.
        seed (int): the pool's seed.
        chunk_len (int): actions per chunk.
        transforms (Compose, optional): transforms between the chunk env and the policy; the env
            gets a copy, followed by the episode transforms (``InitTracker``, ``StepCounter``,
            ``RewardSum``), so one ``Compose`` can serve several envs. Defaults to none.

    Keyword Args:
        max_episode_steps (int): the time limit, in env steps.
        device (str or torch.device, optional): where the env's tensors live. Defaults to
            ``"cpu"``.

    Examples:
        >>> from torchrl_rldt.envs import make_chunk_env
        >>> env = make_chunk_env("Hopper-v5", 2, seed=0, chunk_len=4, max_episode_steps=1000)
        >>> env.rollout(3)["next", "chunk_steps"].squeeze(-1).tolist()
        [[4, 4, 4], [4, 4, 4]]
    """
    if is_metaworld_task(task):
        env = make_metaworld_env(task, num_envs, seed=seed, device=device,
                                 max_episode_steps=max_episode_steps)
    else:
        env = EnvPoolEnv(task, num_envs, seed=seed, device=device, max_episode_steps=max_episode_steps)
    transforms = Compose() if transforms is None else transforms.clone()
    for transform in (InitTracker(), StepCounter(), RewardSum()):
        transforms.append(transform)
    return TransformedEnv(ActionChunkEnv(env, chunk_len), transforms)
