# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
"""critic_calibration: critic values against the discounted returns of finished episodes."""
from __future__ import annotations

import math

import pytest
import torch

from torchrl_rldt.objectives.calibration import critic_calibration, finished_episode_mask


def trajectories():
    # env 0: success at step 2, then an unfinished episode; env 1: a time-out at step 3 with no reward
    reward = torch.tensor([[0.0, 0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0]]).unsqueeze(-1)
    done = torch.tensor([[0, 0, 1, 0, 0], [0, 0, 0, 1, 0]]).bool().unsqueeze(-1)
    return reward, done


def test_finished_episode_mask_drops_the_unfinished_tail():
    _, done = trajectories()
    expected = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]]).bool().unsqueeze(-1)
    assert torch.equal(finished_episode_mask(done), expected)


def test_values_equal_to_the_discounted_returns_are_calibrated():
    reward, done = trajectories()
    gamma = 0.9
    returns = torch.tensor([[gamma**2, gamma, 1.0, 7.0, 7.0], [0.0, 0.0, 0.0, 0.0, 7.0]]).unsqueeze(-1)
    report = critic_calibration(returns, reward, done, gamma)  # the 7s are unfinished: not counted
    assert report["steps"] == 7
    assert report["rmse"] == pytest.approx(0.0, abs=1e-6)
    assert report["bias"] == pytest.approx(0.0, abs=1e-6)
    assert report["return_mean"] == pytest.approx((gamma**2 + gamma + 1.0) / 7)
    assert report["correlation"] == pytest.approx(1.0, abs=1e-5)
    assert report["value_mean_positive_return"] == pytest.approx((gamma**2 + gamma + 1.0) / 3)
    assert report["value_mean_zero_return"] == pytest.approx(0.0)


def test_a_pessimistic_flat_critic_shows_as_negative_bias_and_no_discrimination():
    reward, done = trajectories()
    value = torch.full_like(reward, 0.1)
    report = critic_calibration(value, reward, done, 0.9)
    assert report["bias"] == pytest.approx(0.1 - report["return_mean"])
    assert report["bias"] < 0
    assert report["value_mean_positive_return"] == pytest.approx(report["value_mean_zero_return"])
    assert math.isnan(report["correlation"])  # a constant critic has no correlation


def test_nothing_finished_counts_nothing_and_shapes_must_match():
    reward = torch.zeros(2, 4, 1)
    done = torch.zeros(2, 4, 1, dtype=torch.bool)
    report = critic_calibration(torch.zeros(2, 4, 1), reward, done, 0.99)
    assert report["steps"] == 0 and math.isnan(report["bias"])
    with pytest.raises(ValueError, match="same shape"):
        critic_calibration(torch.zeros(2, 4), reward, done, 0.99)


def test_truncated_episodes_continue_with_the_next_state_value():
    reward, done = trajectories()  # env 1 is cut at step 3 by a time limit
    truncated = torch.zeros_like(done)
    truncated[1, 3] = True
    next_value = torch.full_like(reward, 5.0)  # read only where truncated
    gamma = 0.9
    bootstrapped = torch.tensor([gamma**4, gamma**3, gamma**2, gamma]) * 5.0
    value = torch.zeros_like(reward)
    value[1, :4, 0] = bootstrapped
    value[0, :3, 0] = torch.tensor([gamma**2, gamma, 1.0])
    report = critic_calibration(value, reward, done, gamma, truncated=truncated, next_value=next_value)
    assert report["steps"] == 7
    assert report["rmse"] == pytest.approx(0.0, abs=1e-6)
    # without the bootstrap the same values look optimistic by what the cut episode owes
    plain = critic_calibration(value, reward, done, gamma)
    assert plain["bias"] == pytest.approx(bootstrapped.sum().item() / 7, rel=1e-5)
    with pytest.raises(ValueError, match="truncated needs next_value"):
        critic_calibration(value, reward, done, gamma, truncated=truncated)
