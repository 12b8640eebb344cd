# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
from __future__ import annotations

import argparse

import pytest
import torch
from tensordict import TensorDict
from torchrl.modules import ValueOperator

from torchrl_rldt.modules import ChunkQValueMLP, FlowActor, FlowModel, VelocityMLP
from torchrl_rldt.objectives import QAMLoss, RLDTLoss
from torchrl_rldt.objectives.diagnostics import policy_term_gradients

OBS, ACT, H = 3, 2, 2


def make_loss(cls=RLDTLoss, **kwargs):
    torch.manual_seed(0)
    actor = FlowActor(FlowModel(VelocityMLP(OBS, ACT, chunk_len=H, hidden_dim=16), ACT, 4,
                                chunk_len=H, low=-1.0, high=1.0))
    critic = ValueOperator(ChunkQValueMLP(OBS, ACT, chunk_len=H, hidden_dim=16),
                           in_keys=["observation", "action"])
    loss = cls(actor, critic, **kwargs)
    with torch.no_grad():  # an actor away from its reference: every term has a gradient
        for param in loss.actor_network_params.values(True, True):
            param.add_(0.05 * torch.randn_like(param))
    return loss


def batches(size=32):
    generator = torch.Generator().manual_seed(1)
    return [TensorDict(observation=torch.randn(size, OBS, generator=generator), batch_size=[size])
            for _ in range(2)]


def report_at_seed(loss, seed=0):
    torch.manual_seed(seed)
    return policy_term_gradients(loss, *batches())


def test_norms_are_those_of_the_weighted_terms():
    """Twice the transport weight: twice its gradient and twice the ratio, the anchor's unchanged."""
    one, two = report_at_seed(make_loss(num_particles=4)), report_at_seed(make_loss(num_particles=4, rl_coeff=2.0))
    assert one["gradient_norm_loss_rl"] > 0 and one["gradient_norm_loss_reference"] > 0
    torch.testing.assert_close(two["gradient_norm_loss_rl"], 2 * one["gradient_norm_loss_rl"])
    torch.testing.assert_close(two["gradient_norm_loss_reference"], one["gradient_norm_loss_reference"])
    torch.testing.assert_close(two["drive_to_anchor_gradient_ratio"], 2 * one["drive_to_anchor_gradient_ratio"])
    torch.testing.assert_close(two["drive_gradient_cosine"], one["drive_gradient_cosine"])
    assert -1 <= one["drive_gradient_cosine"] <= 1


def test_matches_autograd_and_leaves_no_gradient():
    loss = make_loss(num_particles=4)
    report = report_at_seed(loss)
    torch.manual_seed(0)
    terms = loss.actor_loss(batches()[0])
    params = [param for param in loss.actor_network_params.values(True, True) if param.requires_grad]
    gradient = torch.autograd.grad(terms["loss_reference"], params, allow_unused=True)
    expected = torch.cat([g.flatten() for g in gradient if g is not None]).norm().item()
    torch.testing.assert_close(report["gradient_norm_loss_reference"], expected)
    assert all(param.grad is None for param in params)


def test_a_term_of_weight_zero_has_no_gradient():
    report = report_at_seed(make_loss(num_particles=4, consistency_coeff=0.0))
    assert report["gradient_norm_loss_consistency"] == 0


def test_qam_terms_and_bad_names():
    report = report_at_seed(make_loss(QAMLoss))
    assert {"gradient_norm_loss_adjoint", "gradient_norm_loss_base_constraint"} <= set(report)
    with pytest.raises(ValueError, match="not one of the loss's policy terms"):
        policy_term_gradients(make_loss(num_particles=4), *batches(), drive_term="loss_adjoint")


if __name__ == "__main__":
    args, unknown = argparse.ArgumentParser().parse_known_args()
    pytest.main([__file__, "--capture", "no", "--exitfirst"] + unknown)
