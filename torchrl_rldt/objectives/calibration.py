# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
"""How well a critic's values match the discounted returns the policy actually collected.

A Q-ensemble trained by bootstrapping can be biased (the min over members is pessimistic, targets
lag) or flat (it does not tell the states that lead to success from those that do not). Both show
when its values at the stored state-action pairs are set against the Monte-Carlo returns of the
episodes they belong to, which is what :func:`critic_calibration` does.
"""
from __future__ import annotations

import torch
from torchrl.objectives.value.functional import reward2go

__all__ = ["critic_calibration", "finished_episode_mask"]


def finished_episode_mask(done: torch.Tensor, *, time_dim: int = -2) -> torch.Tensor:
    """Which steps belong to an episode that ends inside the window (their return is known).

    Args:
        done (torch.Tensor): episode ends (boolean), with time along ``time_dim``.

    Keyword Args:
        time_dim (int, optional): the time dimension. Defaults to ``-2`` (``[*B, T, 1]``).

    Examples:
        >>> import torch
        >>> from torchrl_rldt.objectives.calibration import finished_episode_mask
        >>> finished_episode_mask(torch.tensor([[0, 1, 0, 0]]).bool(), time_dim=-1)
        tensor([[ True,  True, False, False]])
    """
    flipped = done.flip(time_dim).to(torch.uint8)
    return flipped.cummax(dim=time_dim).values.flip(time_dim).bool()


def critic_calibration(
    value: torch.Tensor,
    reward: torch.Tensor,
    done: torch.Tensor,
    gamma: float,
    *,
    truncated: torch.Tensor | None = None,
    next_value: torch.Tensor | None = None,
    time_dim: int = -2,
) -> dict[str, float]:
    """Critic values against the discounted Monte-Carlo returns of the same steps.

    Only steps whose episode ends inside the window count. Without ``truncated``, an episode cut
    by a time limit counts with what it collected (its return, not a bootstrapped one), so on tasks
    where time-outs are frequent the returns are a lower bound of what a critic that bootstraps at
    time-outs predicts. With ``truncated`` and ``next_value``, the return of a truncated episode
    continues with ``gamma`` times the value of the state it was cut at, as the critic's own target
    does (a step ``k`` steps before the cut then owes ``gamma ** k`` of its return to that value).

    Args:
        value (torch.Tensor): the critic's value of each stored step, e.g. the ensemble's mean
            ``Q(s_t, a_t)``, shaped like ``reward``.
        reward (torch.Tensor): rewards ``r_t``, time along ``time_dim`` (e.g. ``[N, T, 1]``).
        done (torch.Tensor): episode ends after step ``t`` (terminated or truncated).
        gamma (float): the discount per step (per chunk for chunk transitions).

    Keyword Args:
        truncated (torch.Tensor, optional): episode ends by a time limit (a subset of ``done``).
            Defaults to none.
        next_value (torch.Tensor, optional): a value of each step's next state, read where
            ``truncated``; required with ``truncated``.
        time_dim (int, optional): the time dimension. Defaults to ``-2``.

    Returns:
        ``steps`` (counted), ``value_mean``, ``return_mean``, ``bias`` (mean value minus mean
        return), ``rmse``, ``correlation`` (Pearson, NaN if either side is constant), and for
        sparse success rewards the mean value of the steps whose return is positive
        (``value_mean_positive_return``) and zero (``value_mean_zero_return``), NaN when there are
        none.

    Examples:
        >>> import torch
        >>> from torchrl_rldt.objectives.calibration import critic_calibration
        >>> reward = torch.tensor([[0.0, 1.0, 0.0, 0.0]]).unsqueeze(-1)
        >>> done = torch.tensor([[False, True, False, True]]).unsqueeze(-1)
        >>> value = torch.tensor([[0.5, 1.0, 0.0, 0.0]]).unsqueeze(-1)
        >>> critic_calibration(value, reward, done, 0.5)["rmse"]
        0.0
    """
    if not value.shape == reward.shape == done.shape:
        raise ValueError(
            f"value, reward and done must have the same shape, got {tuple(value.shape)}, "
            f"{tuple(reward.shape)} and {tuple(done.shape)}."
        )
    done, reward = done.bool(), reward.float()
    if truncated is not None:
        if next_value is None or not truncated.shape == next_value.shape == reward.shape:
            raise ValueError(
                "truncated needs next_value, both shaped like reward "
                f"({tuple(reward.shape)}); got {None if next_value is None else tuple(next_value.shape)}."
            )
        # the cut episode's return goes on with the value of the state it was cut at
        reward = reward + gamma * torch.where(truncated.bool(), next_value.float(), 0.0)
    returns = reward2go(reward, done, gamma, time_dim=time_dim)
    counted = finished_episode_mask(done, time_dim=time_dim)
    value, returns = value[counted].float(), returns[counted]
    nan = float("nan")
    if value.numel() == 0:
        return {"steps": 0, "value_mean": nan, "return_mean": nan, "bias": nan, "rmse": nan,
                "correlation": nan, "value_mean_positive_return": nan, "value_mean_zero_return": nan}
    positive = returns > 0
    constant = (value == value[0]).all() or (returns == returns[0]).all()
    correlation = nan if constant else torch.corrcoef(torch.stack([value, returns]))[0, 1].item()
    return {
        "steps": value.numel(),
        "value_mean": value.mean().item(),
        "return_mean": returns.mean().item(),
        "bias": (value - returns).mean().item(),
        "rmse": (value - returns).pow(2).mean().sqrt().item(),
        "correlation": correlation,
        "value_mean_positive_return": value[positive].mean().item() if positive.any() else nan,
        "value_mean_zero_return": value[~positive].mean().item() if (~positive).any() else nan,
    }
