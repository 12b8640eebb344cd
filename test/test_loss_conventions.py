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
    StepwiseFlowActor,
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
    SWFPLoss,
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


def make_swfp():
    blocks = [VelocityMLP(OBS, ACT, chunk_len=H, hidden_dim=8) for _ in range(2)]
    actor = StepwiseFlowActor(flow_actor(), blocks, block_steps=2)
    with torch.no_grad():  # off the identity, so that the entropy and transport terms are not 0
        for block in actor.blocks:
            block.output_layer.weight.normal_(0.0, 0.1)
    actor.set_active_block(1)
    loss = SWFPLoss(actor, q_critic(), num_samples=2)
    loss.make_value_estimator(gamma=0.9)
    return loss, lambda loss: transitions(), "loss_value"


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
          "dppo": make_dppo, "ddpm_bc": make_ddpm_bc, "swfp": make_swfp}
# parameter sets a loss holds beside its networks' and their targets: buffers no optimiser sees
# (SWFP has none: its frozen base and its active-block index are part of the actor's own parameters)
EXTRA_PARAMETER_SETS = {"rldt": "reference_actor_network_params", "qam": "base_actor_network_params"}


def move_every_weight(loss):
    """Moves every weight of every parameter set of ``loss`` in place, each by its own noise: the
    actor, the critic, their targets and the extra sets (RLDT's reference policy, QAM's base
    policy, DPPO's frozen base network), so that a round trip that drops or mixes up one of them
    shows in the restored state."""
    with torch.no_grad():
        for name, value in loss.state_dict(keep_vars=True).items():
            if name.endswith((".weight", ".bias")):
                value.add_(0.05 * torch.randn_like(value))


def batch_on(loss, make_batch, device):
    """A batch on ``device``, sampled with the loss's copy of the actor.

    ``.to()`` moves the loss's functional copy of the actor (its buffers, such as the action
    bounds, stay where the module was built): batches are sampled with that copy.
    """
    with torch.device(device), loss.actor_network_params.to_module(loss.actor_network):
        return make_batch(loss).to(device)


@pytest.mark.parametrize("name", LOSSES)
class TestLossConventions:
    @pytest.mark.parametrize("device", DEVICES)
    def test_state_dict_round_trip(self, name, device):
        """Every entry of the state dict, the extra parameter sets included, comes back, and the
        restored loss gives the same outputs from the same random state."""
        torch.manual_seed(0)
        loss, make_batch, _ = LOSSES[name]()
        loss = loss.to(device)
        move_every_weight(loss)
        batch = batch_on(loss, make_batch, device)
        state = loss.state_dict()
        if name in EXTRA_PARAMETER_SETS:
            extra = [key for key in state if key.startswith(EXTRA_PARAMETER_SETS[name] + ".")]
            assert extra
            # moved apart from the actor: a load that copied the actor into them would show
            assert not all(torch.equal(state[key], state[key.replace(EXTRA_PARAMETER_SETS[name],
                                                                     "actor_network_params")])
                           for key in extra)
        torch.manual_seed(1)
        restored, _, _ = LOSSES[name]()
        restored = restored.to(device)
        restored.load_state_dict(state)
        for key, value in restored.state_dict().items():
            torch.testing.assert_close(value, state[key], msg=key)
        torch.manual_seed(2)
        expected = loss(batch.clone())
        torch.manual_seed(2)
        got = restored(batch.clone())
        assert set(got.keys()) == set(expected.keys())
        for key in expected.keys():
            torch.testing.assert_close(got[key], expected[key], msg=key)

    @pytest.mark.parametrize("device", DEVICES)
    def test_runs_on_device(self, name, device):
        """Every output on ``device``, finite, and a gradient for the actor."""
        loss, make_batch, main_key = LOSSES[name]()
        loss = loss.to(device)
        out = loss(batch_on(loss, make_batch, device))
        assert all(value.device.type == device for value in out.values())
        assert torch.isfinite(out[main_key])
        out[main_key].backward()
        assert any(p.grad is not None for p in loss.actor_network_params.values(True, True))

    def test_select_out_keys(self, name):
        """The loss's main term and another of its outputs, when it has one, and nothing else."""
        loss, make_batch, main_key = LOSSES[name]()
        batch = make_batch(loss)
        keys = [main_key] + [key for key in loss.out_keys if key != main_key][:1]
        loss.select_out_keys(*keys)
        assert set(loss.out_keys) == set(keys)
        assert set(loss(batch).keys()) == set(keys)


# each loss's weights -> the output each one scales (TorchRL's *_coeff buffers)
COEFFICIENTS = {
    "rldt": {"rl_coeff": "loss_rl", "consistency_coeff": "loss_consistency",
             "reference_coeff": "loss_reference"},
    "qam": {"base_constraint_coeff": "loss_base_constraint"},
    "reinflow": {"critic_coeff": "loss_critic", "entropy_coeff": "loss_entropy"},
    "fpo": {"critic_coeff": "loss_critic"},
    "dppo": {"critic_coeff": "loss_critic"},
    "swfp": {"entropy_coeff": "loss_entropy", "transport_coeff": "loss_transport"},
}


@pytest.mark.parametrize("name", COEFFICIENTS)
class TestCoefficients:
    def test_buffers_scheduled_saved_and_moved(self, name):
        """Each weight is a buffer: assigning a number copies into it in place and scales its term by
        that factor, from the same random state; the state dict carries it to a new loss."""
        torch.manual_seed(0)
        loss, make_batch, _ = LOSSES[name]()
        batch = make_batch(loss)
        for coeff, term in COEFFICIENTS[name].items():
            buffer = getattr(loss, coeff)
            assert coeff in dict(loss.named_buffers()) and buffer.ndim == 0
            old = buffer.item()
            torch.manual_seed(1)
            before = loss(batch.clone())[term]
            setattr(loss, coeff, 2.5 * old)
            assert getattr(loss, coeff) is buffer  # scheduled in place: optimisers and devices keep it
            torch.manual_seed(1)
            after = loss(batch.clone())[term]
            torch.testing.assert_close(after, 2.5 * before)
            restored, _, _ = LOSSES[name]()
            restored.load_state_dict(loss.state_dict())
            assert getattr(restored, coeff).item() == pytest.approx(2.5 * old)
            moved = restored.to(torch.float64)
            assert getattr(moved, coeff).dtype == torch.float64


class TestRenamedCoefficients:
    """The former ``*_coef`` names: a warning, and the same loss; never silently ignored."""

    def test_deprecated_keyword_arguments(self):
        with pytest.warns(DeprecationWarning, match="rl_coef=.... is deprecated: pass rl_coeff="):
            loss = RLDTLoss(flow_actor(), q_critic(), num_particles=3, rl_coef=3.0, reference_coef=0.1)
        assert loss.rl_coeff.item() == 3.0 and loss.reference_coeff.item() == pytest.approx(0.1)
        assert loss.consistency_coeff.item() == 0.5
        with pytest.warns(DeprecationWarning, match="base_constraint_coef"):
            qam = QAMLoss(flow_actor(), q_critic(), base_constraint_coef=0.7)
        assert qam.base_constraint_coeff.item() == pytest.approx(0.7)

    def test_deprecated_attributes_forward_reads_and_writes(self):
        loss = RLDTLoss(flow_actor(), q_critic(), num_particles=3)
        buffer = loss.rl_coeff
        with pytest.warns(DeprecationWarning, match="RLDTLoss.rl_coef is deprecated: use RLDTLoss.rl_coeff"):
            loss.rl_coef = 4.0
        assert loss.rl_coeff is buffer and buffer.item() == 4.0
        with pytest.warns(DeprecationWarning):
            assert loss.rl_coef.item() == 4.0
        assert "rl_coef" not in loss.__dict__

    def test_refused_when_ambiguous_or_unknown(self):
        with pytest.raises(TypeError, match="both rl_coef= .deprecated. and rl_coeff="):
            RLDTLoss(flow_actor(), q_critic(), rl_coeff=2.0, rl_coef=3.0)
        with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['rl_coefff'\]"):
            RLDTLoss(flow_actor(), q_critic(), rl_coefff=2.0)


if __name__ == "__main__":
    args, unknown = argparse.ArgumentParser().parse_known_args()
    pytest.main([__file__, "--capture", "no", "--exitfirst"] + unknown)
