# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
from __future__ import annotations

import argparse

import pytest
import torch
from tensordict import TensorDict
from torchrl.envs.utils import ExplorationType, set_exploration_type

from torchrl_rldt.modules import FlowActor, VelocityMLP

OBS, ACT, H = 5, 2, 3


def make_actor(num_steps=4, **kwargs):
    net = VelocityMLP(OBS, ACT, chunk_len=H, hidden_dim=32)
    return FlowActor(net, ACT, num_steps, chunk_len=H, **kwargs)


class TestFlowActor:
    @pytest.mark.parametrize("batch", [(), (1,), (4,), (2, 3)])
    def test_shapes(self, batch):
        actor = make_actor(chain_key="chain")
        td = TensorDict(observation=torch.randn(*batch, OBS), batch_size=batch)
        out = actor(td)
        assert out["action"].shape == (*batch, H, ACT)
        assert out["chain"].shape == (*batch, actor.num_steps + 1, H, ACT)
        assert actor(torch.randn(*batch, OBS)).shape == (*batch, H, ACT)

    def test_chain_is_the_euler_integration(self):
        actor = make_actor(num_steps=5)
        obs, noise = torch.randn(4, OBS), torch.randn(4, H, ACT)
        action, chain = actor.sample(obs, noise, return_chain=True)
        assert (chain[:, 0] == noise).all()
        for k in range(5):
            expected = chain[:, k] + actor.velocity(obs, chain[:, k], k / 5) / 5
            torch.testing.assert_close(chain[:, k + 1], expected)
        torch.testing.assert_close(action, chain[:, -1])

    def test_exploration_modes(self):
        actor = make_actor()
        td = TensorDict(observation=torch.randn(6, OBS), batch_size=[6])
        with set_exploration_type(ExplorationType.DETERMINISTIC):
            a1 = actor(td.clone())["action"]
            a2 = actor(td.clone())["action"]
            zero = actor.sample(td["observation"], torch.zeros(6, H, ACT))
        assert (a1 == a2).all()
        torch.testing.assert_close(a1, zero)
        with set_exploration_type(ExplorationType.RANDOM):
            r1 = actor(td.clone())["action"]
            r2 = actor(td.clone())["action"]
        assert not torch.allclose(r1, r2)
        # an explicit noise in the input wins over the exploration type
        noise = torch.randn(6, H, ACT)
        with set_exploration_type(ExplorationType.RANDOM):
            n1 = actor(td.clone().set("flow_noise", noise))["action"]
        torch.testing.assert_close(n1, actor.sample(td["observation"], noise))

    def test_num_steps_can_change(self):
        actor = make_actor(num_steps=2, chain_key="chain")
        td = TensorDict(observation=torch.randn(3, OBS), batch_size=[3])
        actor.num_steps = 8
        assert actor(td)["chain"].shape == (3, 9, H, ACT)
        with pytest.raises(ValueError, match="num_steps"):
            actor.num_steps = 0

    def test_bounds(self):
        actor = make_actor(low=-0.1, high=0.1)
        with set_exploration_type(ExplorationType.RANDOM):
            action = actor(torch.randn(100, OBS), torch.randn(100, H, ACT) * 10)
        assert action.abs().max() <= 0.1 + 1e-7
        with pytest.raises(ValueError, match="low must not exceed high"):
            make_actor(low=1.0, high=0.0)
        with pytest.raises(ValueError, match="noise must have shape"):
            make_actor().sample(torch.randn(2, OBS), torch.randn(2, ACT))

    def test_expected_action(self):
        actor = make_actor()
        obs, x = torch.randn(4, OBS), torch.randn(4, H, ACT)
        t = torch.tensor([0.0, 0.25, 0.5, 0.75])
        expected = x + (1 - t)[:, None, None] * actor.velocity(obs, x, t)
        torch.testing.assert_close(actor.expected_action(x, t, obs), expected)
        # its parameter gradient is (1 - t) dv/dtheta: zero at t = 1
        actor.zero_grad()
        actor.expected_action(x, 1.0, obs).sum().backward()
        assert all(p.grad is None or (p.grad == 0).all() for p in actor.parameters())

    def test_any_velocity_module(self):
        class Constant(torch.nn.Module):
            def forward(self, observation, action, time):
                return torch.ones_like(action)

        actor = FlowActor(Constant(), ACT, num_steps=4, chunk_len=H)
        with set_exploration_type(ExplorationType.DETERMINISTIC):
            # x_1 = x_0 + sum of 4 steps of 1/4 * 1 = 1
            torch.testing.assert_close(actor(torch.randn(2, OBS)), torch.ones(2, H, ACT))


if __name__ == "__main__":
    args, unknown = argparse.ArgumentParser().parse_known_args()
    pytest.main([__file__, "--capture", "no", "--exitfirst"] + unknown)


class TestVelocityMLP:
    def test_expanded_time_matches_per_sample_time(self):
        # The sampler passes one time expanded over the batch; the network embeds it once.
        net = VelocityMLP(OBS, ACT, chunk_len=H, hidden_dim=32)
        observation, action = torch.randn(4, 6, OBS), torch.randn(4, 6, H, ACT)
        expanded = torch.tensor(0.375).expand(4, 6)
        torch.testing.assert_close(net(observation, action, expanded),
                                   net(observation, action, expanded.clone()))
        mixed = torch.rand(4, 6)
        assert not torch.allclose(net(observation, action, mixed), net(observation, action, expanded))
