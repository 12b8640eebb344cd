# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
"""Action-chunk execution: one transition per executed chunk."""
from __future__ import annotations

from typing import Any

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey
from torchrl.data import Unbounded
from torchrl.envs import EnvBase
from torchrl.envs.utils import step_mdp

__all__ = ["ActionChunkEnv"]


class ActionChunkEnv(EnvBase):
    """Executes action chunks on a batched environment, one transition per chunk.

    The policy writes a chunk of ``chunk_len`` actions, shape
    ``[*batch, chunk_len, *action_shape]``. :meth:`step` executes the chunk's
    actions one env step at a time on ``env``, sums their rewards, and stops early
    for every sub-environment whose episode ends inside the chunk: such an env is
    left out of the remaining steps through the ``"_step"`` mask, and its rows of
    the transition keep the step that ended its episode (also with an ``env``
    that ignores the mask).
    The transition recorded for the chunk holds the observation before the chunk,
    the chunk, the summed reward, the observation after the last executed step,
    ``terminated`` and ``truncated`` of that step, and ``chunk_steps``: the number
    of env steps executed (``chunk_len``, or fewer at an episode end).

    Why not TorchRL's own tools: :class:`~torchrl.modules.MultiStepActorWrapper`
    replays a chunk from the policy side and records one transition per env step,
    where chunk-level RL (one transition and one discount per chunk) needs one per
    chunk. :class:`~torchrl.envs.transforms.MultiAction` executes chunks on the env
    side, as here, and is what this class was first built on, but its chunk dimension
    is dynamic, its reward stack is ragged when an episode ends inside a chunk
    (rollouts then fail to stack), and when every sub-environment finishes before
    the chunk's last action, :class:`~torchrl.envs.TransformedEnv` skips the last
    step without calling the transforms placed after it, so their outputs (a
    normalised observation, a running return) silently keep stale values.

    Transforms applied to ``env`` (inside) run once per env step; transforms
    applied to this env (``TransformedEnv(ActionChunkEnv(...), ...)``) run once
    per chunk. Discount once per chunk.

    Args:
        env (EnvBase): the environment executing single actions.
        chunk_len (int): the number of actions in a chunk (``H``).

    Keyword Args:
        chunk_steps_key (NestedKey, optional): where the number of executed env
            steps is written. Defaults to ``"chunk_steps"``.

    Examples:
        >>> from torchrl_rldt.envs import ActionChunkEnv, EnvPoolEnv
        >>> env = ActionChunkEnv(EnvPoolEnv("Hopper-v5", 2, seed=0), chunk_len=4)
        >>> env.action_spec.shape
        torch.Size([2, 4, 3])
        >>> rollout = env.rollout(5, break_when_any_done=False)
        >>> rollout["next", "reward"].shape
        torch.Size([2, 5, 1])
    """

    def __init__(
        self,
        env: EnvBase,
        chunk_len: int,
        *,
        chunk_steps_key: NestedKey = "chunk_steps",
    ) -> None:
        if isinstance(chunk_len, bool) or not isinstance(chunk_len, int) or chunk_len < 1:
            raise ValueError(f"chunk_len must be a positive int, got {chunk_len!r}.")
        if len(env.action_keys) != 1:
            raise ValueError(
                f"ActionChunkEnv supports envs with one action key, got {env.action_keys}."
            )
        if "done" not in env.done_keys:
            raise ValueError(
                "ActionChunkEnv ends a chunk on the env's top-level 'done' entry; this env's done "
                f"keys are {env.done_keys}."
            )
        super().__init__(device=env.device, batch_size=env.batch_size)
        self.base_env = env
        self.chunk_len = chunk_len
        self.chunk_steps_key = chunk_steps_key
        batch = env.batch_size
        ndim = len(batch)
        observation_spec = env.full_observation_spec.clone()
        observation_spec[chunk_steps_key] = Unbounded(
            shape=(*batch, 1), dtype=torch.int64, device=env.device
        )
        self.full_observation_spec = observation_spec
        self.full_reward_spec = env.full_reward_spec.clone()
        self.full_done_spec = env.full_done_spec.clone()
        self.full_state_spec = env.full_state_spec.clone()
        action_spec = env.full_action_spec.clone()
        for key in env.action_keys:
            leaf = action_spec[key].unsqueeze(ndim)
            action_spec[key] = leaf.expand(*batch, chunk_len, *leaf.shape[ndim + 1 :])
        self.full_action_spec = action_spec

    @property
    def batch_locked(self) -> bool:
        return self.base_env.batch_locked

    def to(self, device) -> ActionChunkEnv:
        # nn.Module.to only applies to the inner env's tensors: its device and specs move with it
        self.base_env = self.base_env.to(device)
        return super().to(device)

    def _set_seed(self, seed: int | None) -> None:
        self.base_env.set_seed(seed)

    def _reset(
        self, tensordict: TensorDictBase | None = None, **kwargs: Any
    ) -> TensorDictBase:
        tensordict_reset = self.base_env.reset(
            None if tensordict is None else tensordict.copy(), **kwargs
        )
        tensordict_reset.set(
            self.chunk_steps_key,
            torch.zeros((*self.batch_size, 1), dtype=torch.int64, device=self.device),
        )
        return tensordict_reset

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        base = self.base_env
        action_key = self.action_key
        chunk = tensordict.get(action_key)
        ndim = tensordict.ndim
        if chunk.ndim <= ndim or chunk.shape[ndim] != self.chunk_len:
            raise ValueError(
                f"{type(self).__name__} expects {action_key!r} of shape "
                f"{tuple(self.action_spec.shape)} ([*batch, chunk_len, *action_shape]), "
                f"got {tuple(chunk.shape)}."
            )
        alive = tensordict.get("_step", None)
        alive = (
            torch.ones((*self.batch_size, 1), dtype=torch.bool, device=self.device)
            if alive is None
            else alive.reshape(*self.batch_size, 1).clone()
        )
        step_td = tensordict.exclude("next", "_step", self.chunk_steps_key)
        reward_sums = {key: 0.0 for key in self.reward_keys}
        chunk_steps = torch.zeros_like(alive, dtype=torch.int64)
        next_td = None
        for k in range(self.chunk_len):
            step_td.set(action_key, chunk.select(ndim, k))
            partial = not alive.all()
            if partial:
                step_td.set("_step", alive.reshape(self.batch_size))
                finished = next_td.clone() if next_td is not None else None
            step_td = base.step(step_td)
            next_td = step_td.get("next")
            if partial and finished is not None:
                # an env that steps the rows "_step" leaves out (not every batch-locked env
                # honours it) must not overwrite the last transition of a finished episode
                next_td = next_td.where(alive.reshape(self.batch_size), finished)
            for key in self.reward_keys:
                # a skipped env contributes nothing, whatever the base env wrote
                reward_sums[key] = reward_sums[key] + next_td.get(key) * alive
            chunk_steps += alive
            alive = alive & ~next_td.get("done").reshape_as(alive)
            if k + 1 < self.chunk_len and not alive.any():
                break
            step_td = step_mdp(step_td, keep_other=True)
        for key, reward in reward_sums.items():
            next_td.set(key, reward)
        next_td.set(self.chunk_steps_key, chunk_steps)
        return next_td

    def close(self, *, raise_if_closed: bool = True) -> None:
        self.base_env.close(raise_if_closed=raise_if_closed)
        self.is_closed = True

    def __repr__(self) -> str:
        return f"{type(self).__name__}(env={self.base_env}, chunk_len={self.chunk_len})"
