# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
"""Observation and action normalisation from data-set statistics."""
from __future__ import annotations

from typing import Literal

import torch
from tensordict.utils import NestedKey
from torchrl.envs.transforms import Compose, ObservationNorm

__all__ = ["NormalizationStats", "normalization_transforms"]


class NormalizationStats:
    """Affine normalisation statistics of a data set: ``normalised = (x - loc) / scale``.

    Args:
        loc (torch.Tensor): the location, broadcastable to one sample.
        scale (torch.Tensor): the scale, same shape as ``loc``, strictly positive.
    """

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor) -> None:
        loc = torch.as_tensor(loc, dtype=torch.float32)
        scale = torch.as_tensor(scale, dtype=torch.float32)
        if loc.shape != scale.shape:
            raise ValueError(
                f"loc and scale must have the same shape, got {tuple(loc.shape)} "
                f"and {tuple(scale.shape)}."
            )
        if not torch.isfinite(loc).all() or not (scale > 0).all():
            raise ValueError("loc must be finite and scale strictly positive.")
        self.loc = loc
        self.scale = scale

    @classmethod
    def from_data(
        cls,
        data: torch.Tensor,
        mode: Literal["standard", "minmax"] = "standard",
        *,
        eps: float = 1e-6,
    ) -> NormalizationStats:
        """Statistics over the leading dimension of ``data`` ([num_samples, *feature]).

        Args:
            data (torch.Tensor): the samples.
            mode (str, optional): ``"standard"``: zero mean and unit variance;
                ``"minmax"``: the data range is mapped onto [-1, 1]. Defaults to
                ``"standard"``.

        Keyword Args:
            eps (float, optional): the smallest scale, for constant features.
                Defaults to ``1e-6``.
        """
        data = torch.as_tensor(data, dtype=torch.float32)
        if data.ndim < 1 or data.shape[0] < 2:
            raise ValueError(
                f"need at least two samples along dim 0, got shape {tuple(data.shape)}."
            )
        if mode == "standard":
            loc, scale = data.mean(0), data.std(0)
        elif mode == "minmax":
            low, high = data.amin(0), data.amax(0)
            loc, scale = (high + low) / 2, (high - low) / 2
        else:
            raise ValueError(f"mode must be 'standard' or 'minmax', got {mode!r}.")
        return cls(loc, scale.clamp_min(eps))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Maps data onto the normalised space."""
        return (x - self.loc.to(x.device)) / self.scale.to(x.device)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Maps normalised values back onto the data space."""
        return x * self.scale.to(x.device) + self.loc.to(x.device)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors only, so that ``torch.load(..., weights_only=True)`` accepts them."""
        return {"loc": self.loc, "scale": self.scale}

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> NormalizationStats:
        """Inverse of :meth:`state_dict`."""
        return cls(state["loc"], state["scale"])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={tuple(self.loc.shape)})"


def normalization_transforms(
    observation_stats: NormalizationStats,
    action_stats: NormalizationStats,
    *,
    observation_key: NestedKey = "observation",
    action_key: NestedKey = "action",
) -> Compose:
    """Observation and action normalisation from data-set statistics.

    The policy sees ``(observation - loc) / scale`` and writes a normalised
    action; the environment receives ``action * scale + loc``. Both are TorchRL
    :class:`~torchrl.envs.transforms.ObservationNorm` transforms (the action one
    acts on the inverse path only), so specs are transformed too. Over an
    :class:`~torchrl_rldt.envs.ActionChunkEnv` the action statistics broadcast
    over the chunk dimension.

    Args:
        observation_stats (NormalizationStats): statistics of the observations.
        action_stats (NormalizationStats): statistics of the (single-step) actions.

    Keyword Args:
        observation_key (NestedKey, optional): defaults to ``"observation"``.
        action_key (NestedKey, optional): defaults to ``"action"``.

    Examples:
        >>> import torch
        >>> from torchrl.envs import TransformedEnv
        >>> from torchrl_rldt.envs import (
        ...     ActionChunkEnv, EnvPoolEnv, NormalizationStats, normalization_transforms
        ... )
        >>> obs_stats = NormalizationStats(torch.zeros(11), torch.full((11,), 2.0))
        >>> act_stats = NormalizationStats(torch.zeros(3), torch.full((3,), 0.5))
        >>> env = TransformedEnv(
        ...     ActionChunkEnv(EnvPoolEnv("Hopper-v5", 2, seed=0), chunk_len=4),
        ...     normalization_transforms(obs_stats, act_stats),
        ... )
        >>> env.action_spec.space.high[0, 0]  # real bound 1.0, normalised 1.0 / 0.5
        tensor([2., 2., 2.])
    """
    return Compose(
        ObservationNorm(
            loc=observation_stats.loc,
            scale=observation_stats.scale,
            in_keys=[observation_key],
            standard_normal=True,
        ),
        ObservationNorm(
            loc=action_stats.loc,
            scale=action_stats.scale,
            in_keys=[],
            in_keys_inv=[action_key],
            standard_normal=True,
        ),
    )
