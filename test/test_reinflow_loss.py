# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.modules import MLP, ValueOperator
from torchrl.objectives import ValueEstimators

from torchrl_rldt.modules import FlowActor, FlowModel, FlowNoiseMLP, NoisyFlowActor, VelocityMLP
from torchrl_rldt.objectives import ReinFlowLoss

from ppo_batches import add_transition

OBS, ACT, H, N = 5, 2, 3, 4


def make_policy(**kwargs):
    flow = FlowActor(FlowModel(VelocityMLP(OBS, ACT, chunk_len=H, hidden_dim=32), ACT, N, chunk_len=H))
    return NoisyFlowActor(flow, FlowNoiseMLP(OBS, ACT, chunk_len=H, hidden_dims=(16,)), **kwargs)


def make_critic():
    return ValueOperator(MLP(in_features=OBS, out_features=1, num_cells=[16]), in_keys=["observation"])


def make_batch(policy, batch=16, advantage=None):
    data = TensorDict(observation=torch.randn(batch, OBS), batch_size=[batch])
    with set_exploration_type(ExplorationType.RANDOM), torch.no_grad():
        data = policy(data)
    add_transition(data, OBS, advantage)
    return data


class TestReinFlowLoss:
    def test_outputs_and_gae(self):
        torch.manual_seed(0)
        policy = make_policy(average_log_prob=True)
        loss = ReinFlowLoss(policy, make_critic())
        loss.make_value_estimator(ValueEstimators.GAE, gamma=0.99, lmbda=0.95)
        out = loss(make_batch(policy))
        for key in ("loss_objective", "loss_entropy", "loss_critic"):
            assert out[key].shape == () and torch.isfinite(out[key])
        # the stored chain is scored by the current parameters: the first ratio is exactly 1
        torch.testing.assert_close(out["mean_ratio"], torch.tensor(1.0))
        assert loss.tensor_keys.action == "flow_chain"

    @pytest.mark.parametrize("sign", [1.0, -1.0])
    def test_a_step_moves_the_chain_likelihood_with_the_advantage(self, sign):
        torch.manual_seed(0)
        policy = make_policy()
        loss = ReinFlowLoss(policy, make_critic(), clip_epsilon=0.2, entropy_coeff=0.0,
                            normalize_advantage=False)
        data = make_batch(policy, advantage=sign)
        before = policy.log_prob(data["observation"], data["flow_chain"]).mean()
        optim = torch.optim.SGD(policy.parameters(), lr=1e-3)
        loss(data)["loss_objective"].backward()
        optim.step()
        after = policy.log_prob(data["observation"], data["flow_chain"]).mean()
        assert sign * (after - before) > 0

    def test_clipped_ratio_gives_no_gradient(self):
        torch.manual_seed(0)
        policy = make_policy()
        loss = ReinFlowLoss(policy, make_critic(), clip_epsilon=0.01, entropy_coeff=0.0,
                            normalize_advantage=False)
        data = make_batch(policy, advantage=1.0)
        data["sample_log_prob"] = data["sample_log_prob"] - 1.0  # ratio e > 1 + eps: clipped
        out = loss(data)
        assert out["clip_fraction"] == 1.0
        out["loss_objective"].backward()
        grads = [p.grad for p in policy.parameters() if p.grad is not None]
        assert all(g.abs().max() == 0 for g in grads)

    def test_entropy_bonus_widens_the_noise(self):
        torch.manual_seed(0)
        policy = make_policy()
        loss = ReinFlowLoss(policy, make_critic(), entropy_coeff=1.0)
        data = make_batch(policy, advantage=0.0)
        before = policy.entropy(data["observation"], data["flow_chain"]).mean()
        optim = torch.optim.SGD(policy.noise_network.parameters(), lr=1e-2)
        loss(data)["loss_entropy"].backward()
        optim.step()
        assert policy.entropy(data["observation"], data["flow_chain"]).mean() > before

    def test_critic_learns_from_the_value_loss_only(self):
        torch.manual_seed(0)
        policy, critic = make_policy(), make_critic()
        loss = ReinFlowLoss(policy, critic)
        loss.make_value_estimator(ValueEstimators.GAE, gamma=0.99, lmbda=0.95)
        out = loss(make_batch(policy))
        out["loss_critic"].backward()
        assert all(p.grad is None or p.grad.abs().max() == 0 for p in policy.parameters())
        assert any(p.grad is not None and p.grad.abs().max() > 0 for p in loss.critic_network_params.values(True, True))

    def test_a_plain_flow_actor_is_refused(self):
        flow = FlowActor(FlowModel(VelocityMLP(OBS, ACT, chunk_len=H, hidden_dim=8), ACT, N, chunk_len=H))
        with pytest.raises(TypeError, match="NoisyFlowActor"):
            ReinFlowLoss(flow, make_critic())
        with pytest.raises(ValueError, match="clip_epsilon"):
            ReinFlowLoss(make_policy(), make_critic(), clip_epsilon=0.0)
        with pytest.raises(ValueError, match="delay_actor"):
            ReinFlowLoss(make_policy(), make_critic(), delay_actor=True)
        with pytest.raises(ValueError, match="clip_value as a float"):
            ReinFlowLoss(make_policy(), make_critic(), clip_value=True)
