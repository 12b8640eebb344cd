# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
"""Schedules of the policies that RLDT's, QAM's and SWFP's actor terms are anchored to.

RLDT and QAM hold a copy of the actor's parameters as a buffer (RLDT's trust-region reference,
QAM's base policy); SWFP's anchor is the cascade before its active block. The losses never move
it themselves: as TorchRL's :class:`~torchrl.objectives.SoftUpdate` moves a loss's critic
targets, an updater here moves the anchor when the training loop calls :meth:`step` after each
actor update. A diagnostic call of ``actor_loss`` therefore changes nothing.
"""
from __future__ import annotations

from torchrl_rldt.objectives.qam import QAMLoss
from torchrl_rldt.objectives.rldt import RLDTLoss
from torchrl_rldt.objectives.swfp import SWFPLoss

__all__ = ["BaseEMAUpdater", "ReferenceUpdater", "StageUpdater"]


class _PeriodicUpdater:
    """Counts actor updates and acts after every ``every`` of them; the count is checkpointed."""

    def __init__(self, every: int) -> None:
        if type(every) is not int or every < 1:  # bool is an int too
            raise ValueError(f"every must be an integer >= 1 (actor updates), got {every!r}.")
        self.every, self.steps = every, 0

    def _update(self) -> None:
        raise NotImplementedError

    def step(self) -> None:
        """Counts one actor update; after every ``every`` of them, moves the anchor."""
        self.steps += 1
        if self.steps % self.every == 0:
            self._update()

    def state_dict(self) -> dict[str, int]:
        """The count of actor updates (the period is the constructor's)."""
        return {"steps": self.steps}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Restores the count, so that a resumed run keeps the schedule."""
        steps = state_dict.get("steps")
        if type(steps) is not int or steps < 0:
            raise ValueError(f"expected {{'steps': <int >= 0>}}, got {state_dict!r}.")
        self.steps = steps


class ReferenceUpdater(_PeriodicUpdater):
    """Re-anchors :class:`~torchrl_rldt.objectives.RLDTLoss`'s reference policy to the actor.

    The trust-region term ``L_ref`` compares the actor's velocity with a reference policy's.
    Without an updater the reference stays the actor at the loss's construction (the pretrained
    policy, the paper's text); with ``ReferenceUpdater(loss, every=32)`` and :meth:`step` called
    after each actor update, it is the iterate of at most 32 updates ago (the reference code
    re-anchors once per iteration of 32 actor updates).

    Reference: RLDT, arXiv 2606.08602 (``docs/algorithm.md``, "Reference policy").

    Args:
        loss (RLDTLoss): the loss whose reference policy moves.

    Keyword Args:
        every (int): actor updates between two re-anchorings.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.modules import ValueOperator
        >>> from torchrl_rldt.modules import ChunkQValueMLP, FlowActor, FlowModel, VelocityMLP
        >>> from torchrl_rldt.objectives import ReferenceUpdater, RLDTLoss
        >>> actor = FlowActor(FlowModel(VelocityMLP(3, 2, chunk_len=2, hidden_dim=16), 2,
        ...                             num_steps=4, chunk_len=2))
        >>> critic = ValueOperator(ChunkQValueMLP(3, 2, chunk_len=2, hidden_dim=16),
        ...                        in_keys=["observation", "action"])
        >>> loss = RLDTLoss(actor, critic, num_particles=2)
        >>> updater = ReferenceUpdater(loss, every=2)
        >>> optim = torch.optim.Adam(loss.actor_network_params.values(True, True), lr=1e-2)
        >>> batch = TensorDict(observation=torch.randn(8, 3), batch_size=[8])
        >>> for _ in range(2):
        ...     terms = loss.actor_loss(batch)
        ...     optim.zero_grad()
        ...     sum(terms[key] for key in loss.POLICY_TERMS).backward()
        ...     optim.step()
        ...     updater.step()
        >>> (loss.reference_actor_network_params == loss.actor_network_params.data).all()
        True
    """

    def __init__(self, loss: RLDTLoss, *, every: int) -> None:
        if not isinstance(loss, RLDTLoss):
            raise TypeError(f"ReferenceUpdater moves an RLDTLoss's reference, got {type(loss).__name__}.")
        super().__init__(every)
        self.loss = loss

    def _update(self) -> None:
        self.loss.reset_reference()


class BaseEMAUpdater(_PeriodicUpdater):
    """Moves :class:`~torchrl_rldt.objectives.QAMLoss`'s base policy towards the actor (an EMA).

    After every ``every`` actor updates: ``base <- decay * base + (1 - decay) * actor``
    (:meth:`QAMLoss.update_base_policy`). It is not a TorchRL target network update:
    :class:`~torchrl.objectives.SoftUpdate` moves the critic's targets after every critic step,
    this one the base after every ``every`` actor steps, at its own rate. Without an updater the
    base stays the pretrained policy.

    Reference: the RLDT authors' port of QAM (``docs/algorithm.md``, section 9): ``decay=0.995``
    every 32 actor updates.

    Args:
        loss (QAMLoss): the loss whose base policy moves.

    Keyword Args:
        decay (float, optional): the EMA factor, in ``[0, 1)``. Defaults to ``0.995``.
        every (int, optional): actor updates between two EMA steps. Defaults to ``32``.

    Examples:
        >>> from torchrl.modules import ValueOperator
        >>> from torchrl_rldt.modules import ChunkQValueMLP, FlowActor, FlowModel, VelocityMLP
        >>> from torchrl_rldt.objectives import BaseEMAUpdater, QAMLoss
        >>> actor = FlowActor(FlowModel(VelocityMLP(3, 2, chunk_len=2, hidden_dim=16), 2,
        ...                             num_steps=4, chunk_len=2))
        >>> critic = ValueOperator(ChunkQValueMLP(3, 2, chunk_len=2, hidden_dim=16),
        ...                        in_keys=["observation", "action"])
        >>> loss = QAMLoss(actor, critic)
        >>> updater = BaseEMAUpdater(loss, decay=0.995, every=32)
        >>> updater.step()  # after each actor update; the base moves at the 32nd
        >>> updater.state_dict()
        {'steps': 1}
    """

    def __init__(self, loss: QAMLoss, *, decay: float = 0.995, every: int = 32) -> None:
        if not isinstance(loss, QAMLoss):
            raise TypeError(f"BaseEMAUpdater moves a QAMLoss's base policy, got {type(loss).__name__}.")
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 <= decay < 1:
            raise ValueError(
                f"decay must be in [0, 1), got {decay!r} (a frozen base needs no updater)."
            )
        super().__init__(every)
        self.loss, self.decay = loss, float(decay)

    def _update(self) -> None:
        self.loss.update_base_policy(self.decay)


class StageUpdater(_PeriodicUpdater):
    """Advances :class:`~torchrl_rldt.objectives.SWFPLoss`'s cascade to its next block (a JKO stage).

    SWFP (our reading of the abstract, ``docs/swfp.md``) trains one flow block per stage, each a
    JKO step from the previous iterate. The stage criterion here is a fixed count: after every
    ``every`` actor updates the next block becomes the active one
    (:meth:`SWFPLoss.advance_stage`), starting as the identity, so the previous iterate (the
    anchor of the transport term) becomes the policy the last block reached. After the last block
    the last block keeps training. The count is checkpointed with :meth:`state_dict`; the active
    block is a buffer of the actor, saved in the loss's state dict.

    Reference: Sun, Ding, Zhang, Wang, arXiv 2510.15388 (our reading of the abstract).

    Args:
        loss (SWFPLoss): the loss whose active block moves.

    Keyword Args:
        every (int): actor updates per stage.

    Examples:
        >>> from torchrl.modules import ValueOperator
        >>> from torchrl_rldt.modules import (
        ...     ChunkQValueMLP, FlowActor, FlowModel, StepwiseFlowActor, VelocityMLP)
        >>> from torchrl_rldt.objectives import StageUpdater, SWFPLoss
        >>> base = FlowActor(FlowModel(VelocityMLP(3, 2, chunk_len=2, hidden_dim=16), 2,
        ...                            num_steps=4, chunk_len=2))
        >>> actor = StepwiseFlowActor(base, [VelocityMLP(3, 2, chunk_len=2, hidden_dim=8) for _ in range(2)])
        >>> critic = ValueOperator(ChunkQValueMLP(3, 2, chunk_len=2, hidden_dim=16),
        ...                        in_keys=["observation", "action"])
        >>> loss = SWFPLoss(actor, critic)
        >>> updater = StageUpdater(loss, every=3)
        >>> for _ in range(7):  # after each actor update
        ...     updater.step()
        >>> updater.state_dict(), actor.active_index  # the second (last) block keeps training
        ({'steps': 7}, 1)
    """

    def __init__(self, loss: SWFPLoss, *, every: int) -> None:
        if not isinstance(loss, SWFPLoss):
            raise TypeError(f"StageUpdater advances an SWFPLoss's blocks, got {type(loss).__name__}.")
        super().__init__(every)
        self.loss = loss

    def _update(self) -> None:
        self.loss.advance_stage()
