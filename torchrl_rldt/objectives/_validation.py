# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
"""Checks of the arguments the package's losses share, made when a loss is built."""
from __future__ import annotations

REDUCTIONS = ("mean", "sum", "none")
LOSS_FUNCTIONS = ("l2", "l1", "smooth_l1")  # torchrl.objectives.utils.distance_loss


def check_reduction(reduction: str | None) -> str:
    """``reduction`` if valid (``None`` is ``"mean"``), else a ``ValueError`` that lists the choices.

    Args:
        reduction (str or None): the loss's reduction over the batch.
    """
    if reduction is None:
        return "mean"
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}.")
    return reduction


def check_loss_function(loss_function: str) -> str:
    """``loss_function`` if ``distance_loss`` knows it, else a ``ValueError`` that lists the choices.

    Args:
        loss_function (str): the critic's distance.
    """
    if loss_function not in LOSS_FUNCTIONS:
        raise ValueError(f"loss_function must be one of {LOSS_FUNCTIONS}, got {loss_function!r}.")
    return loss_function
