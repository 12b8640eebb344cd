# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from torchrl.modules import MLP, ValueOperator
from torchrl.objectives import ValueEstimators

from torchrl_rldt.modules import FlowActor, FlowModel, VelocityMLP
from torchrl_rldt.objectives import FPOLoss

from ppo_batches import add_transition

OBS, ACT, H, N, M = 5, 2, 3, 4, 8


def make_loss(**kwargs):
    actor = FlowActor(FlowModel(VelocityMLP(OBS, ACT, chunk_len=H, hidden_dim=32), ACT, N, chunk_len=H))
    critic = ValueOperator(MLP(in_features=OBS, out_features=1, num_cells=[16]), in_keys=["observation"])
    kwargs.setdefault("num_cfm_samples", M)
    return FPOLoss(actor, critic, **kwargs)


def make_batch(loss, batch=12, advantage=None):
    data = TensorDict(observation=torch.randn(batch, OBS), action=torch.rand(batch, H, ACT) * 2 - 1,
                      batch_size=[batch])
    add_transition(data, OBS, advantage)
    return loss.record_cfm_losses(data)


def cfm_loss_of_taken_actions(loss, data):
    return loss._cfm_losses(data["observation"], data["action"], data["cfm_time"],
                            data["cfm_noise"]).mean()


class TestFPOLoss:
    @pytest.mark.parametrize("variant", ["fpo++", "fpo"])
    def test_outputs_and_first_ratio(self, variant):
        torch.manual_seed(0)
        loss = make_loss(variant=variant)
        loss.make_value_estimator(ValueEstimators.GAE, gamma=0.99, lmbda=0.95)
        data = make_batch(loss)
        assert data["cfm_noise"].shape == (12, M, H, ACT)
        out = loss(data)
        for key in ("loss_objective", "loss_critic"):
            assert out[key].shape == () and torch.isfinite(out[key])
        torch.testing.assert_close(out["mean_ratio"], torch.tensor(1.0))

    @pytest.mark.parametrize("variant", ["fpo++", "fpo"])
    @pytest.mark.parametrize("sign", [1.0, -1.0])
    def test_a_step_moves_the_cfm_loss_against_the_advantage(self, variant, sign):
        # a positive advantage makes the taken chunk more likely: its CFM loss goes down
        torch.manual_seed(0)
        loss = make_loss(variant=variant, normalize_advantage=False)
        data = make_batch(loss, advantage=sign)
        before = cfm_loss_of_taken_actions(loss, data)
        optim = torch.optim.SGD(loss.actor_network_params.values(True, True), lr=1e-2)
        loss(data)["loss_objective"].backward()
        optim.step()
        assert sign * (cfm_loss_of_taken_actions(loss, data) - before) < 0

    def test_fpo_plus_plus_keeps_pulling_a_ratio_back_where_ppo_clips(self):
        torch.manual_seed(0)
        grads = {}
        for variant in ("fpo", "fpo++"):
            torch.manual_seed(0)
            loss = make_loss(variant=variant, normalize_advantage=False)
            data = make_batch(loss, advantage=-1.0)
            data["cfm_old_loss"] = data["cfm_old_loss"] - 1.0  # ratio e^-1 < 1 - epsilon
            loss(data)["loss_objective"].backward()
            grads[variant] = sum(p.grad.abs().sum() for p in loss.actor_network_params.values(True, True)
                                 if p.grad is not None)
        assert grads["fpo"] == 0  # PPO's clip: no gradient
        assert grads["fpo++"] > 0  # the quadratic penalty pulls the ratio back towards 1

    def test_missing_record_and_bad_arguments(self):
        loss = make_loss()
        data = make_batch(loss)
        del data["cfm_old_loss"]
        with pytest.raises(KeyError, match="record_cfm_losses"):
            loss(data)
        with pytest.raises(ValueError, match="variant"):
            make_loss(variant="ppo")
        with pytest.raises(ValueError, match="num_cfm_samples"):
            make_loss(num_cfm_samples=0)
        with pytest.raises(ValueError, match="delay_actor"):
            make_loss(delay_actor=True)
        with pytest.raises(ValueError, match="clip_value as a float"):
            make_loss(clip_value=True)

    @pytest.mark.parametrize("variant", ["fpo++", "fpo"])
    def test_an_advantage_without_its_trailing_dimension_is_refused(self, variant):
        # [*B] would broadcast against the [*B, M] ratios: every sample would see every advantage
        loss = make_loss(variant=variant, normalize_advantage=False)
        data = make_batch(loss, advantage=1.0)
        data["advantage"] = data["advantage"].squeeze(-1)
        with pytest.raises(ValueError, match="trailing dimension of 1"):
            loss(data)

    def test_keys_follow_the_actor_and_set_keys(self):
        torch.manual_seed(0)
        model = FlowModel(VelocityMLP(OBS, ACT, chunk_len=H, hidden_dim=32), ACT, N, chunk_len=H)
        actor = FlowActor(model, in_keys=["obs"], out_keys=["chunk"])
        critic = ValueOperator(MLP(in_features=OBS, out_features=1, num_cells=[16]), in_keys=["obs"])
        loss = FPOLoss(actor, critic, num_cfm_samples=M, normalize_advantage=False)
        loss.set_keys(cfm_time="t", cfm_noise=("records", "eps"), cfm_old_loss=("records", "old"))
        data = TensorDict(obs=torch.randn(12, OBS), chunk=torch.rand(12, H, ACT), batch_size=[12])
        data["next"] = TensorDict(obs=torch.randn(12, OBS), reward=torch.randn(12, 1),
                                  done=torch.zeros(12, 1, dtype=torch.bool),
                                  terminated=torch.zeros(12, 1, dtype=torch.bool), batch_size=[12])
        data["advantage"], data["value_target"] = torch.ones(12, 1), torch.zeros(12, 1)
        loss.record_cfm_losses(data)
        assert set(data.keys(True, True)) >= {"t", ("records", "eps"), ("records", "old")}
        assert "cfm_old_loss" not in data.keys()
        assert {"chunk", "t", ("records", "eps"), ("records", "old")} <= set(loss.in_keys)
        torch.testing.assert_close(loss(data)["mean_ratio"], torch.tensor(1.0))
        del data["records", "old"]
        with pytest.raises(KeyError, match="'records', 'old'"):
            loss(data)

    def test_value_clip_fraction_is_reported_with_a_value_clip(self):
        torch.manual_seed(0)
        loss = make_loss(clip_value=0.2)
        loss.make_value_estimator(ValueEstimators.GAE, gamma=0.99, lmbda=0.95)
        out = loss(make_batch(loss))
        assert "value_clip_fraction" in loss.out_keys
        assert 0 <= out["value_clip_fraction"] <= 1
        assert "value_clip_fraction" not in make_loss().out_keys
