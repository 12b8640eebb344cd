# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
"""The reward scale of the training examples: rewards divided by an EMA of their mean magnitude."""
from __future__ import annotations

from typing import MutableMapping

import torch

__all__ = ["RewardScale"]


class RewardScale:
    """Rewards divided by an exponential moving average of the collected batches' mean ``|r|``.

    The RLDT reference scales dense rewards this way (rate ``0.01``); on sparse rewards it keeps
    a fixed scale of 1 (``rate=None`` here). The first batch sets the average; then it is
    updated at every ``every_batches``-th collected batch (counting from the first), with the mean
    of the batch means since its last update. Its state lives in ``state`` (e.g. ``TrainingRun.extra``), so a
    checkpoint that saves that mapping resumes the scale exactly.

    Args:
        rate (float or None): the EMA's rate in ``(0, 1]``; ``None`` turns scaling off.
        every_batches (int, optional): collected batches per update. Defaults to ``1``.
        state (MutableMapping, optional): where the scale keeps ``reward_abs_mean`` and
            ``reward_abs_pending`` and ``reward_abs_batches``. Defaults to a new dict.

    Examples:
        >>> import torch
        >>> scale = RewardScale(0.5)
        >>> scale.update(torch.tensor([2.0, -2.0]))  # the first batch sets it
        2.0
        >>> scale.update(torch.tensor([4.0]))  # 0.5 * 2 + 0.5 * 4
        3.0
        >>> scale(torch.tensor([6.0]))
        tensor([2.])
        >>> RewardScale(None)(torch.tensor([6.0]))  # off
        tensor([6.])
    """

    def __init__(self, rate: float | None, every_batches: int = 1,
                 state: MutableMapping | None = None) -> None:
        if rate is not None and not 0 < rate <= 1:
            raise ValueError(f"rate must be in (0, 1] or None, got {rate!r}.")
        if type(every_batches) is not int or every_batches < 1:
            raise ValueError(f"every_batches must be an integer >= 1, got {every_batches!r}.")
        self.rate, self.every_batches = rate, every_batches
        self.state = state if state is not None else {}

    @property
    def value(self) -> float | None:
        """The current mean ``|r|`` estimate (``None`` before the first batch, or when off)."""
        return self.state.get("reward_abs_mean")

    def update(self, reward: torch.Tensor) -> float | None:
        """Takes one collected batch's rewards into the average; returns the current estimate."""
        if self.rate is None:
            return None
        pending = self.state.setdefault("reward_abs_pending", [])  # batch means since the update
        pending.append(reward.abs().mean().item())
        batches = self.state["reward_abs_batches"] = self.state.get("reward_abs_batches", 0) + 1
        previous = self.value
        if previous is None or batches % self.every_batches == 0:
            batch_abs = sum(pending) / len(pending)
            self.state["reward_abs_mean"] = batch_abs if previous is None else (
                (1 - self.rate) * previous + self.rate * batch_abs)
            pending.clear()
        return self.value

    def __call__(self, reward: torch.Tensor) -> torch.Tensor:
        """``reward`` divided by the scale (unchanged while the scale is off, unset or zero)."""
        value = self.value
        return reward / max(value, 1e-8) if value else reward
