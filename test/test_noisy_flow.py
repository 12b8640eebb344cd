# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
from __future__ import annotations

import math

import pytest
import torch
from tensordict import TensorDict
from torch import nn
from torchrl.envs.utils import ExplorationType, set_exploration_type

from torchrl_rldt.modules import FlowActor, FlowModel, FlowNoiseMLP, NoisyFlowActor, VelocityMLP

OBS, ACT, H, N = 5, 2, 3, 4


def make_policy(velocity=None, noise=None, **kwargs):
    velocity = velocity if velocity is not None else VelocityMLP(OBS, ACT, chunk_len=H, hidden_dim=32)
    noise = noise if noise is not None else FlowNoiseMLP(OBS, ACT, chunk_len=H, hidden_dims=(16,))
    return NoisyFlowActor(FlowActor(FlowModel(velocity, ACT, N, chunk_len=H, **kwargs)), noise)


class ConstantVelocity(nn.Module):
    def __init__(self, value):
        super().__init__()
        self.value = nn.Parameter(torch.tensor(value))

    def forward(self, observation, action, time):
        return torch.zeros_like(action) + self.value


class ConstantStd(nn.Module):
    def __init__(self, std):
        super().__init__()
        self.log_std = nn.Parameter(torch.tensor(math.log(std)))

    def forward(self, observation, time):
        return self.log_std.exp().expand(*time.shape, H, ACT)


class TestFlowNoiseMLP:
    def test_bounds_hold_for_extreme_inputs(self):
        net = FlowNoiseMLP(OBS, ACT, chunk_len=H, min_std=0.1, max_std=0.24)
        std = net(1e3 * torch.randn(64, OBS), torch.rand(64))
        assert std.shape == (64, H, ACT)
        assert (std >= 0.1 - 1e-6).all() and (std <= 0.24 + 1e-6).all()

    def test_bad_bounds_are_refused(self):
        with pytest.raises(ValueError, match="min_std <= max_std"):
            FlowNoiseMLP(OBS, ACT, min_std=0.3, max_std=0.2)


class TestNoisyFlowActor:
    @pytest.mark.parametrize("batch", [(), (4,), (2, 3)])
    def test_shapes_and_stored_log_prob_is_recomputed(self, batch):
        torch.manual_seed(0)
        policy = make_policy()
        td = TensorDict(observation=torch.randn(*batch, OBS), batch_size=batch)
        with set_exploration_type(ExplorationType.RANDOM):
            td = policy(td)
        assert td["action"].shape == (*batch, H, ACT)
        assert td["flow_chain"].shape == (*batch, N + 1, H, ACT)
        assert td["sample_log_prob"].shape == batch
        assert not td["sample_log_prob"].requires_grad
        recomputed = policy.log_prob(td["observation"], td["flow_chain"])
        torch.testing.assert_close(recomputed, td["sample_log_prob"], rtol=1e-5, atol=1e-4)

    def test_log_prob_is_the_gaussian_chain_density(self):
        # constant velocity c and std s: each step x_{k+1} - x_k - c/N ~ N(0, s^2) per dimension
        policy = make_policy(ConstantVelocity(0.5), ConstantStd(0.2))
        observation, chain = torch.randn(7, OBS), torch.randn(7, N + 1, H, ACT)
        residual = chain[:, 1:] - chain[:, :-1] - 0.5 / N
        expected = (-0.5 * (residual / 0.2) ** 2 - math.log(0.2) - 0.5 * math.log(2 * math.pi))
        torch.testing.assert_close(policy.log_prob(observation, chain), expected.sum((1, 2, 3)))
        entropy = N * H * ACT * (0.5 * math.log(2 * math.pi * math.e) + math.log(0.2))
        torch.testing.assert_close(policy.entropy(observation, chain), torch.full((7,), entropy))

    def test_samples_follow_the_chain_distribution(self):
        # x_N = x_0 + c + sum of N noises: mean c, variance 1 + N s^2
        torch.manual_seed(0)
        policy = make_policy(ConstantVelocity(0.5), ConstantStd(0.2))
        td = TensorDict(observation=torch.zeros(20_000, OBS), batch_size=[20_000])
        with set_exploration_type(ExplorationType.RANDOM):
            action = policy(td)["action"]
        assert abs(action.mean().item() - 0.5) < 0.02
        assert abs(action.var().item() - (1 + N * 0.04)) < 0.03

    def test_log_prob_trains_both_networks(self):
        policy = make_policy()
        td = TensorDict(observation=torch.randn(8, OBS), batch_size=[8])
        with set_exploration_type(ExplorationType.RANDOM):
            td = policy(td)
        policy.log_prob(td["observation"], td["flow_chain"]).sum().backward()
        for network in (policy.flow_actor.model.velocity_network, policy.noise_network):
            grads = [p.grad for p in network.parameters() if p.requires_grad]
            assert any(g is not None and g.abs().sum() > 0 for g in grads)

    def test_deterministic_mode_is_the_flow_actor(self):
        policy = make_policy(low=-1.0, high=1.0)
        observation = torch.randn(6, OBS)
        with set_exploration_type(ExplorationType.DETERMINISTIC):
            td = policy(TensorDict(observation=observation, batch_size=[6]))
            expected = policy.flow_actor.model(observation, torch.zeros(*observation.shape[:-1], H, ACT))
        torch.testing.assert_close(td["action"], expected)
        assert "flow_chain" not in td.keys()

    def test_action_is_clamped_and_chain_is_not(self):
        torch.manual_seed(0)
        policy = make_policy(ConstantVelocity(3.0), ConstantStd(0.2), low=-1.0, high=1.0)
        td = TensorDict(observation=torch.randn(32, OBS), batch_size=[32])
        with set_exploration_type(ExplorationType.RANDOM):
            td = policy(td)
        assert td["action"].max() <= 1.0 and td["flow_chain"][:, -1].max() > 1.0

    def test_chain_of_another_length_is_refused(self):
        policy = make_policy()
        with pytest.raises(ValueError, match="num_steps=4"):
            policy.log_prob(torch.randn(2, OBS), torch.randn(2, N + 3, H, ACT))
