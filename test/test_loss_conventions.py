# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
"""TorchRL's loss conventions, for every loss of the package: state dict, device, output keys."""
from __future__ import annotations

import argparse

import pytest
import torch
from tensordict import TensorDict
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.modules import MLP, ValueOperator

from torchrl_rldt.modules import (
    ChunkQValueMLP,
    DDPMChunkModel,
    DPPOActor,
    FlowActor,
    FlowModel,
    FlowNoiseMLP,
    NoisyFlowActor,
    VelocityMLP,
)
from torchrl_rldt.objectives import (
    DDPMChunkBCLoss,
    DPPOLoss,
    FlowMatchingBCLoss,
    FPOLoss,
    QAMLoss,
    ReinFlowLoss,
    RLDTLoss,
)

from ppo_batches import add_transition

OBS, ACT, H, N = 5, 2, 3, 4
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def flow_actor():
    return FlowActor(FlowModel(VelocityMLP(OBS, ACT, chunk_len=H, hidden_dim=16), ACT, N, chunk_len=H,
                               low=-1.0, high=1.0))


def value_critic():
    return ValueOperator(MLP(in_features=OBS, out_features=1, num_cells=[16]), in_keys=["observation"])


def transitions(batch=8):
    data = TensorDict(observation=torch.randn(batch, OBS), action=torch.rand(batch, H, ACT) * 2 - 1,
                      batch_size=[batch])
    return add_transition(data, OBS)


def sampled_transitions(policy, batch=8):
    """Transitions whose action (and chain, log-prob) the stochastic ``policy`` sampled."""
    data = TensorDict(observation=torch.randn(batch, OBS), batch_size=[batch])
    with set_exploration_type(ExplorationType.RANDOM), torch.no_grad():
        data = policy(data)
    return add_transition(data, OBS)


def make_bc():
    return FlowMatchingBCLoss(flow_actor()), lambda loss: transitions(), "loss_flow_bc"


def make_rldt():
    loss = RLDTLoss(flow_actor(), q_critic(), num_particles=3)
    loss.make_value_estimator(gamma=0.9)
    return loss, lambda loss: transitions(), "loss_rl"


def make_fpo():
    loss = FPOLoss(flow_actor(), value_critic(), num_cfm_samples=4)
    loss.make_value_estimator(gamma=0.9, lmbda=0.9)
    return loss, lambda loss: loss.record_cfm_losses(transitions()), "loss_objective"


def make_reinflow():
    policy = NoisyFlowActor(flow_actor(), FlowNoiseMLP(OBS, ACT, chunk_len=H, hidden_dims=(8,)),
                            average_log_prob=True)
    loss = ReinFlowLoss(policy, value_critic())
    loss.make_value_estimator(gamma=0.9, lmbda=0.9)
    return loss, lambda loss: sampled_transitions(policy), "loss_objective"


def q_critic():
    return ValueOperator(ChunkQValueMLP(OBS, ACT, chunk_len=H, hidden_dim=16), in_keys=["observation", "action"])


def make_qam():
    loss = QAMLoss(flow_actor(), q_critic())
    loss.make_value_estimator(gamma=0.9)
    return loss, lambda loss: transitions(), "loss_adjoint"


def ddpm_model():
    return DDPMChunkModel(VelocityMLP(OBS, ACT, chunk_len=H, hidden_dim=16), ACT, 6, chunk_len=H,
                          low=-1.0, high=1.0)


def make_dppo():
    policy = DPPOActor(ddpm_model(), finetuned_steps=3)
    loss = DPPOLoss(policy, value_critic())
    loss.make_value_estimator(gamma=0.9, lmbda=0.9)
    return loss, lambda loss: sampled_transitions(policy), "loss_objective"


def make_ddpm_bc():
    return DDPMChunkBCLoss(ddpm_model()), lambda loss: transitions(), "loss_diffusion_bc"


LOSSES = {"bc": make_bc, "rldt": make_rldt, "fpo": make_fpo, "reinflow": make_reinflow, "qam": make_qam,
          "dppo": make_dppo, "ddpm_bc": make_ddpm_bc}


@pytest.mark.parametrize("name", LOSSES)
class TestLossConventions:
    def test_state_dict_round_trip(self, name):
        torch.manual_seed(0)
        loss, make_batch, _ = LOSSES[name]()
        batch = make_batch(loss)
        torch.manual_seed(1)
        restored, _, _ = LOSSES[name]()
        restored.load_state_dict(loss.state_dict())
        for key, value in restored.state_dict().items():
            torch.testing.assert_close(value, loss.state_dict()[key], msg=key)
        torch.manual_seed(2)
        expected = loss(batch.clone())
        torch.manual_seed(2)
        got = restored(batch.clone())
        for key in expected.keys():
            torch.testing.assert_close(got[key], expected[key], msg=key)

    @pytest.mark.parametrize("device", DEVICES)
    def test_runs_on_device(self, name, device):
        loss, make_batch, main_key = LOSSES[name]()
        loss = loss.to(device)
        # .to() moves the loss's functional copy of the actor (its buffers, such as the action
        # bounds, stay where the module was built): batches are sampled with that copy
        with torch.device(device), loss.actor_network_params.to_module(loss.actor_network):
            batch = make_batch(loss)
        out = loss(batch.to(device))
        assert out[main_key].device.type == device and torch.isfinite(out[main_key])
        out[main_key].backward()
        assert any(p.grad is not None for p in loss.actor_network_params.values(True, True))

    def test_select_out_keys(self, name):
        loss, make_batch, main_key = LOSSES[name]()
        batch = make_batch(loss)
        loss.select_out_keys(main_key)
        assert list(loss(batch).keys()) == [main_key]


if __name__ == "__main__":
    args, unknown = argparse.ArgumentParser().parse_known_args()
    pytest.main([__file__, "--capture", "no", "--exitfirst"] + unknown)
