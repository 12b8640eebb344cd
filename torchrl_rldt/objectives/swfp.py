# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
"""SWFP: the policy as a sequence of JKO steps in probability space, one small flow block each.

Our reading of the abstract of Sun, Ding, Zhang, Wang, "Iterative Refinement of Flow Policies in
Probability Space for Online Reinforcement Learning", arXiv 2510.15388; ``docs/swfp.md`` lists
every choice the abstract leaves open, with its reason.
"""
from __future__ import annotations

import logging
from contextlib import nullcontext

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModule
from tensordict.utils import NestedKey

from torchrl_rldt.modules import StepwiseFlowActor
from torchrl_rldt.objectives.critic import ChunkQEnsembleLoss

__all__ = ["SWFPLoss"]

log = logging.getLogger(__name__)


class SWFPLoss(ChunkQEnsembleLoss):
    r"""SWFP (our reading of the abstract): a Q-ensemble critic and one JKO step per flow block.

    The policy is a :class:`~torchrl_rldt.modules.StepwiseFlowActor`: a frozen pretrained flow,
    then a cascade of small flow blocks. Each stage trains the active block ``T`` alone, as one
    Jordan-Kinderlehrer-Otto (JKO) step from the previous iterate ``p`` (the cascade before the
    block): the new policy ``T#p`` minimises a free energy plus a Wasserstein-2 trust region,

    ``min_T  E_a[-Q(s, T(a))] - eps E_a[log|det dT/da|] + E_a[||T(a) - a||^2] / (2 tau)``,
    ``a ~ p(. | s)``.

    The free energy is ``E_q[-Q] - eps H(q)`` of ``q = T#p``: by the change of variables
    ``H(T#p) = H(p) + E_p[log|det dT/da|]``, and ``H(p)`` does not depend on ``T``. The
    transport term is the cost of the map ``T``, an upper bound of ``W_2^2(p, T#p) / (2 tau)``
    that is attained when ``T`` is the optimal map (for a small step from the identity, the
    gradient of a convex function). The three terms are

    * ``loss_value = E[-Q(s, T(a))]``, ``Q`` the mean over the online critic ensemble (at the
      action clamped to the bounds, what the environment executes, unless
      ``clamp_critic_action=False``); the critic's parameters get no gradient;
    * ``loss_entropy = -entropy_coeff E[log|det dT/da|]``: ``eps = entropy_coeff``, the
      log-determinant of the block (exact for chunks of up to 32 numbers, see
      :meth:`~torchrl_rldt.modules.StepwiseFlowActor.block_with_log_det`);
    * ``loss_transport = transport_coeff E[||T(a) - a||^2]``, ``transport_coeff = 1 / (2 tau)``
      with ``tau = jko_step`` (norms over the chunk's ``H x A`` numbers).

    ``a`` is drawn, without gradient, from the cascade before the active block: the base from
    ``x_0 ~ N(0, I)`` (unclamped), then the blocks before it; ``num_samples`` draws per state. The
    base and the other blocks get no gradient. The loss never moves the active block itself: a
    :class:`~torchrl_rldt.objectives.StageUpdater` stepped after each actor update does (the
    stage criterion), so that any call of :meth:`actor_loss` changes nothing.

    The critic is :class:`~torchrl_rldt.objectives.ChunkQEnsembleLoss`'s, the one RLDT and QAM
    train; its TD target samples the cascade up to the active block (clamped).

    Reference: Sun, Ding, Zhang, Wang, "Iterative Refinement of Flow Policies in Probability
    Space for Online Reinforcement Learning", arXiv 2510.15388. Only its abstract is known: this
    is our reading of it, and ``docs/swfp.md`` lists each choice it leaves open with its reason.

    Args:
        actor_network (StepwiseFlowActor): the cascade; its base is frozen, its blocks train one
            per stage.
        qvalue_network (TensorDictModule): one critic member, as for
            :class:`~torchrl_rldt.objectives.ChunkQEnsembleLoss`: reads the action chunk (at the
            loss's ``action`` key) and its other ``in_keys``, writes ``state_action_value``
            ``[*B, 1]``.

    Keyword Args:
        num_qvalue_nets (int, optional): the critic ensemble size. Defaults to ``2``.
        num_samples (int, optional): draws ``a`` per state in the actor loss. Defaults to ``8``
            (RLDT's particles per state: the same critic evaluations per actor step).
        num_target_samples (int, optional): policy samples of ``s'`` averaged in the TD target.
            Defaults to ``2``.
        entropy_coeff (float, optional): ``eps``, the weight of the entropy term, a buffer
            (saved, moved and schedulable as TorchRL's coefficients). Defaults to ``1e-3``.
        jko_step (float, optional): ``tau > 0``, the JKO step; the transport term's weight is the
            buffer ``transport_coeff = 1 / (2 tau)``. Defaults to ``0.1``.
        clamp_critic_action (bool, optional): evaluate ``Q`` at ``T(a)`` clamped to the actor's
            bounds (what the environment executes; the critic is trained on such actions), so
            that no gradient pushes a component beyond a bound. Defaults to ``True``.
        target_std_penalty (float, optional): ``rho``; ``V(s') = mean_e Qbar_e - rho std_e
            Qbar_e`` instead of the minimum over the members. Defaults to ``None`` (the minimum).
        target_clip (tuple of float, optional): ``(low, high)`` bounds of the critic's target.
            Defaults to ``None`` (no clipping).
        loss_function (str, optional): the critic's distance, ``"l2"``, ``"l1"`` or
            ``"smooth_l1"``. Defaults to ``"l2"``.
        reduction (str, optional): ``"mean"``, ``"sum"`` or ``"none"`` over the batch. Defaults
            to ``"mean"``.
        use_prioritized_weights (str or bool, optional): weight the critic loss by
            ``priority_weight`` when present (``"auto"``), always (``True``) or never
            (``False``). Defaults to ``"auto"``.
        deactivate_vmap (bool, optional): evaluate the ensemble members in a loop instead of
            ``torch.vmap``. Defaults to ``False``.
        full_precision_actor_loss (bool, optional): run :meth:`actor_loss` in full precision
            under any autocast context: ``log|det(I + h J)|`` of a block near the identity is
            below bfloat16's rounding of ``I + h J``. Defaults to ``True``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.modules import ValueOperator
        >>> from torchrl.objectives import SoftUpdate
        >>> from torchrl_rldt.modules import (
        ...     ChunkQValueMLP, FlowActor, FlowModel, StepwiseFlowActor, VelocityMLP)
        >>> from torchrl_rldt.objectives import StageUpdater, SWFPLoss
        >>> obs_dim, act_dim, chunk = 11, 3, 4
        >>> base = FlowActor(FlowModel(VelocityMLP(obs_dim, act_dim, chunk_len=chunk, hidden_dim=64),
        ...                            act_dim, num_steps=8, chunk_len=chunk, low=-1.0, high=1.0))
        >>> actor = StepwiseFlowActor(base, [VelocityMLP(obs_dim, act_dim, chunk_len=chunk, hidden_dim=16)
        ...                                  for _ in range(4)], block_steps=2)
        >>> critic = ValueOperator(ChunkQValueMLP(obs_dim, act_dim, chunk_len=chunk, hidden_dim=64),
        ...                        in_keys=["observation", "action"])
        >>> loss = SWFPLoss(actor, critic, num_samples=4, entropy_coeff=1e-3, jko_step=0.1)
        >>> loss.make_value_estimator(gamma=0.99)
        >>> target_updater = SoftUpdate(loss, tau=0.05)
        >>> stage_updater = StageUpdater(loss, every=2)  # step() after each actor update
        >>> optim = torch.optim.Adam(loss.block_parameters(), lr=1e-3)  # the blocks only
        >>> batch = TensorDict({
        ...     "observation": torch.randn(16, obs_dim), "action": torch.rand(16, chunk, act_dim),
        ...     "next": {"observation": torch.randn(16, obs_dim), "reward": torch.randn(16, 1),
        ...              "done": torch.zeros(16, 1, dtype=torch.bool),
        ...              "terminated": torch.zeros(16, 1, dtype=torch.bool)}}, batch_size=[16])
        >>> sorted(key for key in loss(batch).keys() if key.startswith("loss_"))
        ['loss_entropy', 'loss_qvalue', 'loss_transport', 'loss_value']
        >>> for _ in range(2):
        ...     terms = loss.actor_loss(batch)
        ...     optim.zero_grad()
        ...     sum(terms[key] for key in SWFPLoss.POLICY_TERMS).backward()
        ...     optim.step()
        ...     stage_updater.step()
        >>> actor.active_index  # two actor updates: the second block trains now
        1
        >>> loss.jko_step
        0.1
    """

    POLICY_TERMS = ("loss_value", "loss_entropy", "loss_transport")
    _TRAINS_CASCADE = True
    _schedulable_buffers = frozenset({"entropy_coeff", "transport_coeff"})

    actor_network: StepwiseFlowActor

    def __init__(
        self,
        actor_network: StepwiseFlowActor,
        qvalue_network: TensorDictModule,
        *,
        num_qvalue_nets: int = 2,
        num_samples: int = 8,
        num_target_samples: int = 2,
        entropy_coeff: float = 1e-3,
        jko_step: float = 0.1,
        clamp_critic_action: bool = True,
        target_std_penalty: float | None = None,
        target_clip: tuple[float, float] | None = None,
        loss_function: str = "l2",
        reduction: str | None = None,
        use_prioritized_weights: str | bool = "auto",
        deactivate_vmap: bool = False,
        full_precision_actor_loss: bool = True,
    ) -> None:
        if not isinstance(actor_network, StepwiseFlowActor):
            raise TypeError(
                f"actor_network must be a StepwiseFlowActor, got {type(actor_network).__name__}."
            )
        if type(num_samples) is not int or num_samples < 1:  # bool is an int too
            raise ValueError(f"num_samples must be an integer >= 1, got {num_samples!r}.")
        if isinstance(entropy_coeff, bool) or not entropy_coeff >= 0:
            raise ValueError(f"entropy_coeff must be >= 0, got {entropy_coeff!r}.")
        if isinstance(jko_step, bool) or not jko_step > 0:
            raise ValueError(f"jko_step must be > 0, got {jko_step!r}.")
        super().__init__(
            actor_network,
            qvalue_network,
            num_qvalue_nets=num_qvalue_nets,
            num_target_samples=num_target_samples,
            target_std_penalty=target_std_penalty,
            target_clip=target_clip,
            loss_function=loss_function,
            reduction=reduction,
            use_prioritized_weights=use_prioritized_weights,
            deactivate_vmap=deactivate_vmap,
        )
        self.num_samples = num_samples
        self.register_coeff_buffer("entropy_coeff", float(entropy_coeff))
        self.register_coeff_buffer("transport_coeff", 1.0 / (2.0 * float(jko_step)))
        self.clamp_critic_action = clamp_critic_action
        self.full_precision_actor_loss = full_precision_actor_loss

    @property
    def jko_step(self) -> float:
        """``tau``, the JKO step: ``1 / (2 transport_coeff)``."""
        return 1.0 / (2.0 * float(self.transport_coeff))

    @property
    def out_keys(self) -> list[NestedKey]:
        if self._out_keys is None:
            self._out_keys = [
                "loss_qvalue",
                "loss_value",
                "loss_entropy",
                "loss_transport",
                "td_error_mean",
                "q_value",
                "log_det",
                "transport_distance",
                "active_block",
            ]
        return self._out_keys

    @out_keys.setter
    def out_keys(self, values) -> None:
        self._out_keys = values

    # --- the stage -------------------------------------------------------------------------------
    @property
    def active_block(self) -> int:
        """The index of the block being trained (the loss's copy of the actor's buffer)."""
        return int(self.actor_network_params.get("active_block"))

    @torch.no_grad()
    def advance_stage(self) -> bool:
        """Activates the next block (the next JKO step); after the last one the last block stays.

        :class:`~torchrl_rldt.objectives.StageUpdater` calls it on a schedule of actor updates;
        call it by hand for another stage criterion. The loss's copy of the actor's buffer is
        changed in place, so the actor module (the collector's policy) sees the new stage too.

        Returns:
            Whether the active block changed.
        """
        index = self.actor_network_params.get("active_block")
        if int(index) + 1 >= self.actor_network.num_blocks:
            return False
        index.add_(1)
        log.info("SWFP: block %d of %d is now trained", int(index) + 1, self.actor_network.num_blocks)
        return True

    def block_parameters(self) -> list[torch.Tensor]:
        """The loss's copies of every block's parameters: what the actor optimiser holds (the base
        is frozen, and a block gets gradients only while it is active)."""
        return [value for value in self.actor_network_params.get("blocks").values(True, True)
                if isinstance(value, torch.nn.Parameter)]

    # --- sampling ---------------------------------------------------------------------------------
    def _sample(self, observation: torch.Tensor, return_chain: bool = False):
        """The cascade up to the active block from ``x_0 ~ N(0, I)``, clamped (the TD target's)."""
        if return_chain:
            raise ValueError("SWFPLoss samples have no chain: the cascade is not one Euler chain.")
        with torch.no_grad(), self.actor_network_params.to_module(self.actor_network):
            return self.actor_network.sample(observation)

    # --- the policy loss ----------------------------------------------------------------------------
    def actor_loss(self, tensordict: TensorDictBase) -> TensorDict:
        """The three JKO terms of the active block and detached statistics (the call moves nothing).

        Args:
            tensordict (TensorDictBase): a batch holding the observations and the critic's other
                inputs (other entries are ignored).

        Returns:
            A TensorDict with ``loss_value``, ``loss_entropy``, ``loss_transport`` (weighted,
            reduced) and detached statistics: ``q_value`` (the ensemble-mean ``Q(s, T(a))``),
            ``log_det`` (``log|det dT/da|``), ``transport_distance`` (``||T(a) - a||^2``, the
            Monte-Carlo ``W_2^2`` of the step when ``T`` is the optimal map) and
            ``active_block``, each a mean over the batch and the draws.
        """
        device_type = tensordict.get(self.tensor_keys.observation).device.type
        with torch.autocast(device_type, enabled=False) if self.full_precision_actor_loss else nullcontext():
            return self._actor_loss(tensordict)

    def _actor_loss(self, tensordict: TensorDictBase) -> TensorDict:
        actor = self.actor_network
        observation = tensordict.get(self.tensor_keys.observation)
        batch_shape, num_samples = observation.shape[:-1], self.num_samples
        observation = observation.unsqueeze(-2).expand(*batch_shape, num_samples, -1)
        state = self._critic_state(tensordict, batch_shape)
        state = state.unsqueeze(-1).expand(*batch_shape, num_samples)

        with self.actor_network_params.to_module(actor):
            index = actor.active_index
            with torch.no_grad():  # the previous iterate: the base, then the blocks before this one
                noise = actor.model.initial_noise(observation.shape[:-1], observation.device)
                start = actor.cascade(observation, noise, num_blocks=index)
            moved, log_det = actor.block_with_log_det(index, observation, start)
            executed = actor.model.clamp(moved) if self.clamp_critic_action else moved
        # gradients reach the action, not the critic's parameters
        q_value = self._q_values(state, executed, self.qvalue_network_params.detach()).mean(0)
        distance = (moved - start).pow(2).sum((-2, -1))

        def reduce(per_sample: torch.Tensor) -> torch.Tensor:
            return self._reduce_loss(per_sample.mean(-1), tensordict)

        stats = {
            "q_value": q_value.mean(),
            "log_det": log_det.mean(),
            "transport_distance": distance.mean(),
            "active_block": torch.tensor(float(index), device=q_value.device),
        }
        return TensorDict(
            {
                "loss_value": reduce(-q_value),
                "loss_entropy": reduce(-self.entropy_coeff * log_det),
                "loss_transport": reduce(self.transport_coeff * distance),
                **{key: value.detach() for key, value in stats.items()},
            }
        )
