# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
from __future__ import annotations

import argparse

import pytest
import torch
from tensordict import TensorDict
from torchrl.envs.utils import ExplorationType, set_exploration_type

from torchrl_rldt.modules import FlowActor, FlowModel, VelocityMLP
from torchrl_rldt.objectives import FlowMatchingBCLoss

OBS, ACT, H = 4, 2, 3


def make_loss(**kwargs):
    actor = FlowActor(FlowModel(VelocityMLP(OBS, ACT, chunk_len=H, hidden_dim=32), ACT, chunk_len=H))
    return FlowMatchingBCLoss(actor, **kwargs)


def make_data(batch=16, observation_key="observation", action_key="action"):
    td = TensorDict(batch_size=[batch])
    td.set(observation_key, torch.randn(batch, OBS))
    td.set(action_key, torch.randn(batch, H, ACT))
    return td


class TestFlowMatchingBCLoss:
    @pytest.mark.parametrize("reduction", [None, "mean", "sum", "none"])
    def test_reduction(self, reduction):
        loss = make_loss(reduction=reduction)
        out = loss(make_data(10))["loss_flow_bc"]
        assert out.shape == ((10,) if reduction == "none" else ())
        assert torch.isfinite(out).all()

    def test_keys_and_set_keys(self):
        loss = make_loss()
        assert loss.in_keys == ["observation", "action"]
        assert loss.out_keys == ["loss_flow_bc"]
        loss.set_keys(observation=("agent", "obs"), action=("agent", "chunk"))
        data = make_data(8, ("agent", "obs"), ("agent", "chunk"))
        assert loss(data)["loss_flow_bc"].shape == ()
        assert loss.in_keys == [("agent", "obs"), ("agent", "chunk")]
        with pytest.raises(ValueError, match="trailing shape"):
            make_loss()(TensorDict(observation=torch.randn(2, OBS), action=torch.randn(2, ACT),
                                   batch_size=[2]))

    def test_keys_follow_the_actor(self):
        model = FlowModel(VelocityMLP(OBS, ACT, chunk_len=H, hidden_dim=32), ACT, chunk_len=H)
        loss = FlowMatchingBCLoss(FlowActor(model, in_keys=[("agent", "obs")], out_keys=["chunk"]))
        assert loss.in_keys == [("agent", "obs"), "chunk"]
        assert loss(make_data(8, ("agent", "obs"), "chunk"))["loss_flow_bc"].shape == ()

    def test_bad_reduction(self):
        with pytest.raises(ValueError, match="reduction must be one of"):
            make_loss(reduction="average")

    def test_tensordict_free_call(self):
        loss = make_loss()
        data = make_data(8)
        torch.manual_seed(1)
        expected = loss(data)["loss_flow_bc"]
        torch.manual_seed(1)
        value = loss(observation=data["observation"], action=data["action"])
        torch.testing.assert_close(value, expected)

    def test_gradients_reach_the_actor(self):
        loss = make_loss()
        loss(make_data(8))["loss_flow_bc"].backward()
        grads = [p.grad for p in loss.parameters()]
        assert len(grads) == len(list(loss.actor_network.parameters()))
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert any(g.abs().sum() > 0 for g in grads)

    def test_loss_decreases_and_learns_a_fixed_map(self):
        torch.manual_seed(0)
        loss = make_loss()
        optim = torch.optim.Adam(loss.parameters(), lr=3e-3)
        weight = torch.randn(OBS, H * ACT)

        def batch(n=256):
            obs = torch.randn(n, OBS)
            return TensorDict(observation=obs, action=(obs @ weight).view(n, H, ACT) * 0.5,
                              batch_size=[n])

        first = None
        for step in range(300):
            value = loss(batch())["loss_flow_bc"]
            first = value.item() if first is None else first
            optim.zero_grad()
            value.backward()
            optim.step()
        last = torch.stack([loss(batch())["loss_flow_bc"] for _ in range(5)]).mean()
        assert last < 0.5 * first
        test = batch(64)
        with set_exploration_type(ExplorationType.DETERMINISTIC):
            loss.actor_network.num_steps = 8
            action = loss.actor_network(test.exclude("action"))["action"]
        error = (action - test["action"]).pow(2).mean() / test["action"].pow(2).mean()
        assert error < 0.2

    def test_two_mode_distribution_is_covered(self):
        """A flow trained on a 2-D mixture samples both modes, in their proportions.

        A unimodal regressor (the mean action) would land between the modes and fail both
        the coverage and the balance statistic.
        """
        torch.manual_seed(0)
        centres = torch.tensor([[-2.0, 0.0], [2.0, 0.0]])
        actor = FlowActor(FlowModel(VelocityMLP(1, 2, hidden_dim=64), action_dim=2, num_steps=16))
        loss = FlowMatchingBCLoss(actor)
        optim = torch.optim.Adam(loss.parameters(), lr=3e-3)

        def batch(n=256):
            action = centres[torch.randint(2, (n,))] + 0.25 * torch.randn(n, 2)
            return TensorDict(observation=torch.zeros(n, 1), action=action.unsqueeze(-2),
                              batch_size=[n])

        for _ in range(300):
            value = loss(batch())["loss_flow_bc"]
            optim.zero_grad()
            value.backward()
            optim.step()
        with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
            sample = actor(TensorDict(observation=torch.zeros(2000, 1), batch_size=[2000]))
        distance = torch.cdist(sample["action"].squeeze(-2), centres)  # [2000, 2]
        nearest = distance.argmin(-1)
        near_a_mode = distance.min(-1).values < 0.75  # 3 standard deviations
        assert near_a_mode.float().mean() > 0.9
        share_left = (nearest == 0).float().mean()
        assert 0.35 < share_left < 0.65


if __name__ == "__main__":
    args, unknown = argparse.ArgumentParser().parse_known_args()
    pytest.main([__file__, "--capture", "no", "--exitfirst"] + unknown)
