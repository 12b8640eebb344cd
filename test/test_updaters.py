# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
from __future__ import annotations

import argparse

import pytest
import torch
from tensordict import TensorDict
from torchrl.modules import ValueOperator

from torchrl_rldt.modules import ChunkQValueMLP, FlowActor, FlowModel, VelocityMLP
from torchrl_rldt.objectives import BaseEMAUpdater, QAMLoss, ReferenceUpdater, RLDTLoss

OBS, ACT, H = 3, 2, 2


def make_actor_critic():
    torch.manual_seed(0)
    actor = FlowActor(FlowModel(VelocityMLP(OBS, ACT, chunk_len=H, hidden_dim=16), ACT, 4,
                                chunk_len=H, low=-1.0, high=1.0))
    critic = ValueOperator(ChunkQValueMLP(OBS, ACT, chunk_len=H, hidden_dim=16),
                           in_keys=["observation", "action"])
    return actor, critic


def perturb_actor(loss):
    with torch.no_grad():
        for param in loss.actor_network_params.values(True, True):
            param.add_(0.01 * torch.randn_like(param))


def anchor(loss):
    return (loss.reference_actor_network_params if isinstance(loss, RLDTLoss)
            else loss.base_actor_network_params)


@pytest.mark.parametrize("kind", ["reference", "base"])
def test_resumed_updater_keeps_the_schedule(kind):
    """An updater restored from a state dict mid-period acts on the same step as the original."""
    def make():
        actor, critic = make_actor_critic()
        if kind == "reference":
            loss = RLDTLoss(actor, critic, num_particles=2)
            return loss, ReferenceUpdater(loss, every=3)
        loss = QAMLoss(actor, critic)
        return loss, BaseEMAUpdater(loss, decay=0.5, every=3)

    loss, updater = make()
    perturb_actor(loss)
    updater.step()
    updater.step()
    assert (anchor(loss) == make()[0].actor_network_params.data).all()  # not moved yet
    resumed_loss, resumed = make()
    resumed_loss.load_state_dict(loss.state_dict())
    resumed.load_state_dict(updater.state_dict())
    assert resumed.state_dict() == {"steps": 2}
    resumed.step()  # the third update of the period
    assert not (anchor(resumed_loss) == anchor(loss)).all()
    updater.step()
    assert (anchor(resumed_loss) == anchor(loss)).all()


def test_diagnostic_calls_move_nothing():
    actor, critic = make_actor_critic()
    loss = RLDTLoss(actor, critic, num_particles=2)
    updater = ReferenceUpdater(loss, every=1)
    perturb_actor(loss)
    reference = loss.reference_actor_network_params.clone()
    batch = TensorDict(observation=torch.randn(4, OBS), batch_size=[4])
    for _ in range(5):
        loss.actor_loss(batch)
    assert (loss.reference_actor_network_params == reference).all() and updater.steps == 0


def test_bad_arguments():
    actor, critic = make_actor_critic()
    rldt, qam = RLDTLoss(actor, critic, num_particles=2), QAMLoss(*make_actor_critic())
    with pytest.raises(ValueError, match="every must be an integer >= 1"):
        ReferenceUpdater(rldt, every=0)
    with pytest.raises(ValueError, match="every must be an integer >= 1"):
        BaseEMAUpdater(qam, every=True)
    with pytest.raises(ValueError, match="decay must be in \\[0, 1\\)"):
        BaseEMAUpdater(qam, decay=1.0)
    with pytest.raises(TypeError, match="moves an RLDTLoss's reference"):
        ReferenceUpdater(qam, every=2)
    with pytest.raises(TypeError, match="moves a QAMLoss's base policy"):
        BaseEMAUpdater(rldt)
    with pytest.raises(ValueError, match="expected \\{'steps'"):
        ReferenceUpdater(rldt, every=2).load_state_dict({"steps": -1})


if __name__ == "__main__":
    args, unknown = argparse.ArgumentParser().parse_known_args()
    pytest.main([__file__, "--capture", "no", "--exitfirst"] + unknown)
