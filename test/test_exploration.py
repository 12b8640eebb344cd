# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
from __future__ import annotations

import argparse

import pytest
import torch
from tensordict import TensorDict
from torchrl.envs.utils import ExplorationType, set_exploration_type

from torchrl_rldt.modules import FlowActor, FlowModel, LandingPointExploration, VelocityMLP

OBS, ACT, H, N = 6, 2, 4, 8


def make_actor(bounded=True):
    bounds = {"low": -1.0, "high": 1.0} if bounded else {}
    return FlowActor(FlowModel(VelocityMLP(OBS, ACT, chunk_len=H, hidden_dim=32), ACT, N,
                               chunk_len=H, **bounds))


class TestLandingPointExploration:
    def test_off_under_deterministic_exploration(self):
        actor = make_actor()
        policy = LandingPointExploration(actor)
        obs = TensorDict(observation=torch.randn(7, OBS), batch_size=[7])
        with set_exploration_type(ExplorationType.DETERMINISTIC):
            torch.testing.assert_close(policy(obs.clone())["action"], actor(obs.clone())["action"])

    def test_noise_is_the_landing_point_distance(self):
        """With the noise input fixed, the spread around x_N is ||x_N - a_hat(x_i, t_i)||.

        i ~ U{N-2, N-1}; at i = N - 1 the landing point is x_N itself (one Euler step of the
        remaining 1/N), so half the draws add no noise and the mean squared deviation per
        coordinate is half the squared distance at i = N - 2.
        """
        torch.manual_seed(0)
        actor = make_actor(bounded=False)  # unbounded: the spread is not cut by the clamp
        model = actor.model
        policy = LandingPointExploration(actor, min_step=N - 2)
        obs = torch.randn(3, OBS)
        x0 = torch.randn(3, H, ACT)
        td = TensorDict(observation=obs.expand(4000, 3, OBS), flow_noise=x0.expand(4000, 3, H, ACT),
                        batch_size=[4000, 3])
        with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
            explored = policy(td)["action"]
            final, chain = model.sample(obs, x0, return_chain=True)
            last_landing = model.expected_action(obs, chain[:, N - 1], (N - 1) / N)
            landing = model.expected_action(obs, chain[:, N - 2], (N - 2) / N)
        torch.testing.assert_close(last_landing, final)
        distance = (final - landing).flatten(-2).norm(dim=-1)  # [3]
        assert (distance > 0).all()
        mean_square = (explored - final).pow(2).flatten(-2).mean((0, -1))
        torch.testing.assert_close(mean_square, 0.5 * distance.pow(2), rtol=0.1, atol=0)

    def test_actions_stay_in_bounds_and_shapes(self):
        policy = LandingPointExploration(make_actor())
        td = TensorDict(observation=torch.randn(2, 5, OBS), batch_size=[2, 5])
        with set_exploration_type(ExplorationType.RANDOM):
            action = policy(td)["action"]
        assert action.shape == (2, 5, H, ACT)
        assert action.abs().max() <= 1.0

    @pytest.mark.parametrize("min_step", [-1, 2.5, True])
    def test_min_step_must_be_an_integer(self, min_step):
        with pytest.raises(ValueError, match="min_step must be an integer >= 0"):
            LandingPointExploration(make_actor(), min_step=min_step)

    def test_min_step_must_be_below_num_steps(self):
        policy = LandingPointExploration(make_actor(), min_step=N)
        with pytest.raises(ValueError, match="min_step=8 must be below"):
            with set_exploration_type(ExplorationType.RANDOM):
                policy(TensorDict(observation=torch.randn(2, OBS), batch_size=[2]))


if __name__ == "__main__":
    args, unknown = argparse.ArgumentParser().parse_known_args()
    pytest.main([__file__, "--capture", "no", "--exitfirst"] + unknown)
