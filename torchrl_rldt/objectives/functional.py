# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
"""Flow-matching interpolant and conditional flow-matching loss, shared by the objectives.

One convention for every loss of the package: time runs from ``t = 0`` (noise ``z``) to
``t = 1`` (action ``a``) on the linear path ``x_t = (1 - t) z + t a``, whose velocity is
``a - z``.

Reduction over the chunk's dimensions, chosen per loss and kept on purpose: the behaviour-cloning
loss and RLDT's reference term use the squared norm (``"sum"``), the formula as written in the
RLDT paper and what the shipped bases and fine-tuning runs were trained with (under Adam a
constant factor barely matters); FPO uses the per-dimension mean (``"mean"``) because its ratio
``exp(l_old - l_new)`` and its clamps are calibrated per dimension, as in the FPO++ code, where
a sum would scale every log-ratio by ``H x A``.
"""
from __future__ import annotations

from typing import Literal

import torch

__all__ = ["cfm_loss", "flow_interpolant"]


def flow_interpolant(noise: torch.Tensor, action: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
    """``x_t = (1 - t) z + t a`` for chunks ``[*B, H, A]`` and times ``[*B]``.

    Args:
        noise (torch.Tensor): ``z``, ``[*B, H, A]``.
        action (torch.Tensor): ``a``, broadcastable to ``noise``.
        time (torch.Tensor): ``t``, ``[*B]``.

    Examples:
        >>> import torch
        >>> from torchrl_rldt.objectives.functional import flow_interpolant
        >>> flow_interpolant(torch.zeros(2, 1, 1), torch.ones(2, 1, 1), torch.tensor([0.25, 1.0]))
        tensor([[[0.2500]],
        <BLANKLINE>
                [[1.0000]]])
    """
    t = time[..., None, None]
    return (1 - t) * noise + t * action


def cfm_loss(
    velocity: torch.Tensor,
    noise: torch.Tensor,
    action: torch.Tensor,
    reduction: Literal["sum", "mean"] = "sum",
) -> torch.Tensor:
    """Conditional flow-matching loss ``||v - (a - z)||^2`` per sample, ``[*B]``.

    Args:
        velocity (torch.Tensor): the predicted velocity at ``x_t``, ``[*B, H, A]``.
        noise (torch.Tensor): ``z``, ``[*B, H, A]``.
        action (torch.Tensor): ``a``, broadcastable to ``noise``.
        reduction (str, optional): over the chunk's ``H x A`` dimensions: ``"sum"`` (the squared
            norm) or ``"mean"`` (per dimension). Defaults to ``"sum"``.

    Examples:
        >>> import torch
        >>> from torchrl_rldt.objectives.functional import cfm_loss
        >>> cfm_loss(torch.zeros(3, 4, 2), torch.zeros(3, 4, 2), torch.ones(3, 4, 2))
        tensor([8., 8., 8.])
    """
    squared = (velocity - (action - noise)).pow(2)
    if reduction == "sum":
        return squared.sum((-2, -1))
    if reduction == "mean":
        return squared.mean((-2, -1))
    raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}.")
