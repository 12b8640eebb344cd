# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
"""The Q-ensemble critic over action chunks shared by the off-policy flow losses (RLDT, QAM)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase, TensorDictParams
from tensordict.nn import TensorDictModule, dispatch
from tensordict.utils import NestedKey, unravel_key
from torchrl.objectives import LossModule
from torchrl.objectives.utils import (
    _vmap_func,
    ValueEstimators,
    dispatch_value_estimator,
    distance_loss,
)

from torchrl_rldt.modules import FlowActor, StepwiseFlowActor
from torchrl_rldt.objectives._validation import check_loss_function, check_reduction

__all__ = ["ChunkQEnsembleLoss"]


class ChunkQEnsembleLoss(LossModule):
    """Base class of the off-policy flow losses: a flow actor and a Q-ensemble critic over chunks.

    It owns everything about the critic, so that every off-policy method of the package trains
    the same one: ``num_qvalue_nets`` members with independent initial weights evaluated in one
    ``torch.vmap`` call, their Polyak target copies (``target_qvalue_network_params``, moved by
    TorchRL's :class:`~torchrl.objectives.SoftUpdate`), the TD target

    ``y = r + gamma (1 - terminated) V(s')``, ``V(s') = (1 / M) sum_m min_e Qbar_e(s', a'_m)``

    over ``M = num_target_samples`` fresh policy samples ``a'_m`` (no entropy term), or its
    TD(lambda) version along trajectory slices, optionally clipped (``target_clip``), and the loss
    ``sum_e (Q_e(s, a) - y)^2`` with optional bootstrap masks (``critic_member``).
    :meth:`forward` returns the critic loss with the subclass's policy terms.

    A subclass implements :meth:`actor_loss` (a TensorDict of its ``loss_*`` terms and detached
    statistics) and the ``out_keys`` property.

    Args:
        actor_network (FlowActor): the flow policy; the TD target samples it at ``s'``.
        qvalue_network (TensorDictModule): reads the action chunk (at the loss's ``action`` key)
            and whatever else its ``in_keys`` name (e.g. the observation), and writes
            ``state_action_value`` ``[*B, 1]``, e.g. a ``ValueOperator`` around a
            :class:`~torchrl_rldt.modules.ChunkQValueMLP`. It is copied into an ensemble of
            ``num_qvalue_nets`` members with independent initial weights, and target copies.

    Keyword Args:
        num_qvalue_nets (int, optional): the critic ensemble size. Defaults to ``2``.
        num_target_samples (int, optional): ``M``, policy samples of ``s'`` averaged in the TD
            target. Defaults to ``2``.
        target_std_penalty (float, optional): ``rho``; when given, ``V(s')`` uses
            ``mean_e Qbar_e - rho std_e Qbar_e`` (``std`` with Bessel's correction, as
            ``torch.std``) instead of the minimum over the members. Defaults to ``None`` (the
            minimum).
        target_clip (tuple of float, optional): ``(low, high)`` bounds of the critic's target,
            e.g. ``(0, 1)`` for a success reward paid once. Defaults to ``None`` (no clipping).
        loss_function (str, optional): the critic's distance, ``"l2"``, ``"l1"`` or
            ``"smooth_l1"``. Defaults to ``"l2"``.
        reduction (str, optional): ``"mean"``, ``"sum"`` or ``"none"`` over the batch. Defaults
            to ``"mean"``.
        use_prioritized_weights (str or bool, optional): weight the critic loss by
            ``priority_weight`` when present (``"auto"``), always (``True``) or never
            (``False``). The policy terms are not weighted (unlike TorchRL's ``SACLoss``): the
            reference has no prioritized replay, and its policy terms are plain batch means.
            Defaults to ``"auto"``.
        deactivate_vmap (bool, optional): evaluate the ensemble members in a loop instead of
            ``torch.vmap`` (as in TorchRL's losses). Defaults to ``False``.

    Examples:
        The critic half of any subclass, here :class:`~torchrl_rldt.objectives.QAMLoss`:

        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.modules import ValueOperator
        >>> from torchrl_rldt.modules import ChunkQValueMLP, FlowActor, FlowModel, VelocityMLP
        >>> from torchrl_rldt.objectives import ChunkQEnsembleLoss, QAMLoss
        >>> actor = FlowActor(FlowModel(VelocityMLP(11, 3, chunk_len=4, hidden_dim=64), 3,
        ...                             num_steps=8, chunk_len=4, low=-1.0, high=1.0))
        >>> critic = ValueOperator(ChunkQValueMLP(11, 3, chunk_len=4, hidden_dim=64),
        ...                        in_keys=["observation", "action"])
        >>> loss = QAMLoss(actor, critic, num_qvalue_nets=3)
        >>> isinstance(loss, ChunkQEnsembleLoss)
        True
        >>> loss.make_value_estimator(gamma=0.99)
        >>> batch = TensorDict({
        ...     "observation": torch.randn(16, 11), "action": torch.rand(16, 4, 3),
        ...     "next": {"observation": torch.randn(16, 11), "reward": torch.randn(16, 1),
        ...              "done": torch.zeros(16, 1, dtype=torch.bool),
        ...              "terminated": torch.zeros(16, 1, dtype=torch.bool)}}, batch_size=[16])
        >>> critic_loss, info = loss.qvalue_loss(batch)
        >>> info["state_action_value"].shape, info["target_value"].shape
        (torch.Size([3, 16]), torch.Size([16]))
    """

    @dataclass
    class _AcceptedKeys:
        """Keys of the input tensordict; change them with :meth:`set_keys`.

        Attributes:
            observation (NestedKey): the observation the actor conditions on. Defaults to
                the actor's ``observation_key`` (``"observation"``).
            action (NestedKey): the executed action chunk ``[*B, H, A]``, also where the
                critic reads its action. Defaults to the actor's ``action_key``
                (``"action"``).
            reward (NestedKey): the chunk reward, under ``"next"``. Defaults to ``"reward"``.
            done (NestedKey): the done flag, under ``"next"``. Defaults to ``"done"``.
            terminated (NestedKey): the termination flag, under ``"next"``; the TD target
                bootstraps unless it is set. Defaults to ``"terminated"``.
            state_action_value (NestedKey): the critic's output. Defaults to
                ``"state_action_value"``.
            value (NestedKey): where ``V(s')`` is written for the value estimator. Defaults to
                ``"state_value"``.
            priority (NestedKey): where the TD error is written for prioritized replay.
                Defaults to ``"td_error"``.
            priority_weight (NestedKey): importance weights of a prioritized replay buffer,
                used by the reduction when present. Defaults to ``"priority_weight"``.
            critic_member (NestedKey): optional, an integer ``[*B]`` (or ``[*B, 1]``) in
                ``[0, num_qvalue_nets)`` naming the one ensemble member that trains on each
                transition (a bootstrap: members trained on disjoint
                trajectories, as the reference splits them); absent, every member trains on
                every transition. Defaults to ``"critic_member"``.
            target_action (NestedKey): under ``"next"``, policy samples at ``s'``
                ``[*B, M, H, A]`` for the TD target, written by :meth:`sample_target_actions`;
                when absent the target draws fresh ones. Defaults to ``"target_action"``.
        """

        observation: NestedKey = "observation"
        action: NestedKey = "action"
        reward: NestedKey = "reward"
        done: NestedKey = "done"
        terminated: NestedKey = "terminated"
        state_action_value: NestedKey = "state_action_value"
        value: NestedKey = "state_value"
        priority: NestedKey = "td_error"
        priority_weight: NestedKey = "priority_weight"
        critic_member: NestedKey = "critic_member"
        target_action: NestedKey = "target_action"

    default_keys = _AcceptedKeys
    tensor_keys: _AcceptedKeys
    default_value_estimator = ValueEstimators.TD0
    # whether the subclass trains a StepwiseFlowActor's blocks (SWFP); the others train a flow's own
    # velocity network and would silently leave a cascade's blocks out of every sample
    _TRAINS_CASCADE = False
    SUPPORTED_VALUE_ESTIMATORS = (ValueEstimators.TD0, ValueEstimators.TDLambda)

    actor_network: FlowActor
    actor_network_params: TensorDictParams
    # named for convert_to_functional, which checks the annotations; the actor gets no target copy
    target_actor_network_params: TensorDictParams
    qvalue_network: TensorDictModule
    qvalue_network_params: TensorDictParams
    target_qvalue_network_params: TensorDictParams

    def __init__(
        self,
        actor_network: FlowActor,
        qvalue_network: TensorDictModule,
        *,
        num_qvalue_nets: int = 2,
        num_target_samples: int = 2,
        target_std_penalty: float | None = None,
        target_clip: tuple[float, float] | None = None,
        loss_function: str = "l2",
        reduction: str | None = None,
        use_prioritized_weights: str | bool = "auto",
        deactivate_vmap: bool = False,
    ) -> None:
        if not isinstance(actor_network, FlowActor):
            raise TypeError(
                f"actor_network must be a FlowActor, got {type(actor_network).__name__}."
            )
        if isinstance(actor_network, StepwiseFlowActor) and not self._TRAINS_CASCADE:
            raise TypeError(f"{type(self).__name__} trains a flow's own velocity network, not a "
                            "StepwiseFlowActor's blocks: give it the base FlowActor (SWFPLoss trains "
                            "the cascade).")
        for name, value in (
            ("num_qvalue_nets", num_qvalue_nets),
            ("num_target_samples", num_target_samples),
        ):
            if type(value) is not int or value < 1:  # bool is an int too
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
        if target_std_penalty is not None:
            if target_std_penalty < 0:
                raise ValueError(f"target_std_penalty must be >= 0, got {target_std_penalty}.")
            if num_qvalue_nets < 2:
                raise ValueError("target_std_penalty needs num_qvalue_nets >= 2 (a spread to penalise).")
        if target_clip is not None and not (len(target_clip) == 2 and target_clip[0] <= target_clip[1]):
            raise ValueError(f"target_clip must be (low, high) with low <= high, got {target_clip!r}.")
        reduction = check_reduction(reduction)
        check_loss_function(loss_function)
        super().__init__()
        self._in_keys = None
        self._out_keys = None
        self.reduction = reduction
        self.use_prioritized_weights = use_prioritized_weights
        self.deactivate_vmap = deactivate_vmap
        self.num_qvalue_nets = num_qvalue_nets
        self.num_target_samples = num_target_samples
        self.target_std_penalty = None if target_std_penalty is None else float(target_std_penalty)
        self.target_clip = None if target_clip is None else tuple(float(v) for v in target_clip)
        self.loss_function = loss_function

        self.convert_to_functional(actor_network, "actor_network")
        self.convert_to_functional(
            qvalue_network,
            "qvalue_network",
            num_qvalue_nets,
            create_target_params=True,
            compare_against=list(actor_network.parameters()),
        )
        self._make_vmap()
        # the actor's own keys are the loss's defaults: one place to name them
        self.set_keys(observation=actor_network.observation_key, action=actor_network.action_key)

    # --- TorchRL plumbing -------------------------------------------------------------------
    def _make_vmap(self) -> None:
        self._vmap_qvalue = _vmap_func(
            self.qvalue_network,
            (None, 0),
            randomness=self.vmap_randomness,
            pseudo_vmap=self.deactivate_vmap,
        )

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        if self._value_estimator is not None:
            self._value_estimator.set_keys(
                value=self.tensor_keys.value,
                reward=self.tensor_keys.reward,
                done=self.tensor_keys.done,
                terminated=self.tensor_keys.terminated,
            )
        self._in_keys = None  # rebuilt (and checked against the critic) when next read

    def make_value_estimator(self, value_type: ValueEstimators | None = None, **hyperparams):
        """Builds the estimator of the critic target; ``gamma`` (and ``lmbda``) are given here.

        Args:
            value_type (ValueEstimators, optional): ``ValueEstimators.TD0`` (the default): a
                one-step bootstrap over each chunk transition, any batch shape. Or
                ``ValueEstimators.TDLambda``: lambda-returns along trajectories, for batches of
                shape ``[*B, T]`` holding consecutive transitions of one env along the last
                dimension, or a flat batch of such slices laid end to end (what TorchRL's
                ``SliceSampler`` returns); the recursion stops at ``done`` (the sampler marks
                every slice end done) and bootstraps there unless ``terminated``.
            **hyperparams: estimator hyper-parameters, e.g. ``gamma=0.999, lmbda=0.5``.
        """
        value_type, hp = self._prepare_value_estimator_kwargs(value_type, **hyperparams)
        if value_type is None:
            return self
        dispatch_value_estimator(
            self,
            value_type,
            supported=self.SUPPORTED_VALUE_ESTIMATORS,
            tensor_keys={
                "value_target": "value_target",
                "value": self.tensor_keys.value,
                "reward": self.tensor_keys.reward,
                "done": self.tensor_keys.done,
                "terminated": self.tensor_keys.terminated,
            },
            value_network=None,
            **hp,
        )

    def _critic_state_keys(self) -> list[NestedKey]:
        """The critic's in_keys other than the action (what a state contributes)."""
        action = unravel_key(self.tensor_keys.action)
        keys = [unravel_key(key) for key in self.qvalue_network.in_keys]
        if action not in keys:
            raise KeyError(
                f"the critic reads {self.qvalue_network.in_keys}, which does not include the "
                f"loss's action key {self.tensor_keys.action!r}; make them match, e.g. "
                f"loss.set_keys(action=...)."
            )
        return [key for key in keys if key != action]

    def _set_in_keys(self) -> None:
        keys = [
            self.tensor_keys.observation,
            self.tensor_keys.action,
            ("next", self.tensor_keys.observation),
            ("next", self.tensor_keys.reward),
            ("next", self.tensor_keys.done),
            ("next", self.tensor_keys.terminated),
            *self.qvalue_network.in_keys,
            *[("next", key) for key in self._critic_state_keys()],
        ]
        self._in_keys = list(dict.fromkeys(unravel_key(key) for key in keys))

    @property
    def in_keys(self) -> list[NestedKey]:
        if self._in_keys is None:
            self._set_in_keys()
        return self._in_keys

    @in_keys.setter
    def in_keys(self, values) -> None:
        self._in_keys = values

    @property
    def out_keys(self) -> list[NestedKey]:
        raise NotImplementedError(f"{type(self).__name__} must define its out_keys.")

    @out_keys.setter
    def out_keys(self, values) -> None:
        self._out_keys = values

    @torch.no_grad()
    def critic_values(
        self, tensordict: TensorDictBase, action: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Every ensemble member's ``Q(s, a)``, ``[E, *B]``, without gradients (a diagnostic).

        Args:
            tensordict (TensorDictBase): the critic's state inputs, batch ``[*B]``.
            action (torch.Tensor, optional): action chunks ``[*B, H, A]``. Defaults to the
                ``action`` entry of ``tensordict``.

        Returns:
            ``[num_qvalue_nets, *B]`` values of the online critic.
        """
        state = tensordict.select(*self._critic_state_keys())
        if action is None:
            action = tensordict.get(self.tensor_keys.action)
        return self._q_values(state, action, self.qvalue_network_params)

    # --- helpers ----------------------------------------------------------------------------
    def _q_values(self, state: TensorDictBase, action: torch.Tensor, params) -> torch.Tensor:
        """Every ensemble member's Q ``[E, *B]`` at the critic inputs ``state`` and ``action``."""
        critic_input = state.clone(False)
        critic_input.set(self.tensor_keys.action, action)
        key = self.tensor_keys.state_action_value
        values = self._vmap_qvalue(critic_input, params).get(key, None)
        if values is None:
            raise KeyError(
                f"the critic wrote no {key!r} (its out_keys are {self.qvalue_network.out_keys}); "
                f"make them match, e.g. loss.set_keys(state_action_value=...)."
            )
        return values.squeeze(-1)

    def _sample(self, observation: torch.Tensor, return_chain: bool = False):
        # the model samples x0 ~ N(0, I) whatever the exploration type
        with torch.no_grad(), self.actor_network_params.to_module(self.actor_network):
            return self.actor_network.model.sample(observation, return_chain=return_chain)

    def _critic_state(self, tensordict: TensorDictBase, batch_shape: torch.Size) -> TensorDictBase:
        """The critic's state inputs of ``tensordict`` with batch size ``batch_shape``."""
        state = tensordict.select(*self._critic_state_keys())
        if state.batch_size != batch_shape:  # e.g. a tensordict of batch size []
            state = state.clone(False)
            state.batch_size = batch_shape
        return state

    def _critic_action_gradient(
        self, state: TensorDictBase, action: torch.Tensor, params: TensorDictBase | None = None
    ) -> torch.Tensor:
        """``mean_e dQ_e/da`` at ``action``; the critic parameters get no gradient.

        ``params`` defaults to the online members (``target_qvalue_network_params`` for the
        target ones).
        """
        if params is None:
            params = self.qvalue_network_params
        with torch.enable_grad():
            action = action.detach().requires_grad_(True)
            q = self._q_values(state, action, params.detach())
            (gradient,) = torch.autograd.grad(q.mean(0).sum(), action)
        return gradient

    # --- critic ------------------------------------------------------------------------------
    def sample_target_actions(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Draws the TD target's policy samples at every ``s'`` of ``tensordict``, once.

        Writes ``("next", target_action)`` ``[*B, M, H, A]`` (``M = num_target_samples``) with the
        current actor; :meth:`qvalue_loss` then uses them instead of drawing its own. Sampling is
        most of a critic step's work, and the actor does not change between critic steps: the
        reference draws these once per round of critic steps on one batch and reuses them. Draw
        them on a batch that several critic steps take sub-batches of; draw again once the actor
        has changed.

        Args:
            tensordict (TensorDictBase): a batch of transitions; modified in place and returned.
        """
        next_td = tensordict.get("next")
        observation = next_td.get(self.tensor_keys.observation)
        samples = self._sample(observation.expand(self.num_target_samples, *observation.shape))
        tensordict.set(("next", self.tensor_keys.target_action), samples.movedim(0, -3))
        return tensordict

    def _target_value(self, tensordict: TensorDictBase) -> torch.Tensor:
        next_td = tensordict.get("next")
        stored = next_td.get(self.tensor_keys.target_action, None)
        samples = self.num_target_samples if stored is None else stored.shape[-3]
        next_state = next_td.select(*self._critic_state_keys())
        next_state = next_state.expand(samples, *next_state.batch_size)
        next_observation = next_td.get(self.tensor_keys.observation)
        next_observation = next_observation.expand(samples, *next_observation.shape)
        with torch.no_grad():
            if stored is None:
                next_action = self._sample(next_observation)  # [M, *B, H, A]
            else:
                next_action = stored.movedim(-3, 0)
            next_q = self._q_values(next_state, next_action, self.target_qvalue_network_params)
            if self.target_std_penalty is None:
                member_value = next_q.min(0).values
            else:
                member_value = next_q.mean(0) - self.target_std_penalty * next_q.std(0)
            next_value = member_value.mean(0)  # over the policy samples
            target_td = tensordict.select(
                ("next", self.tensor_keys.reward),
                ("next", self.tensor_keys.done),
                ("next", self.tensor_keys.terminated),
                # n-step transitions (TorchRL's MultiStep) discount by gamma ** steps
                self.value_estimator.tensor_keys.steps_to_next_obs,
                strict=False,
            )
            target = self.value_estimator.value_estimate(target_td,
                                                         next_value=next_value.unsqueeze(-1))
            if self.target_clip is not None:
                target = target.clamp(*self.target_clip)
            return target.squeeze(-1)

    def qvalue_loss(self, tensordict: TensorDictBase) -> tuple[torch.Tensor, dict]:
        """The critic loss ``sum_e (Q_e(s, a) - y)^2`` and its TD error.

        With a ``critic_member`` entry, member ``e`` trains only on the transitions naming it.

        Args:
            tensordict (TensorDictBase): a batch of chunk transitions, with the TD target's
                policy samples of :meth:`sample_target_actions` or without (then drawn here).

        Returns:
            The reduced loss and a dict with ``"td_error"`` ``[*B]`` (max over the ensemble),
            ``"state_action_value"`` ``[E, *B]`` (every member's prediction, detached) and
            ``"target_value"`` ``[*B]`` (the target ``y``).
        """
        if self._value_estimator is None:
            self.make_value_estimator()
        target = self._target_value(tensordict)
        predicted = self._q_values(
            tensordict.select(*self._critic_state_keys()),
            tensordict.get(self.tensor_keys.action),
            self.qvalue_network_params,
        )
        loss = distance_loss(predicted, target.expand_as(predicted), loss_function=self.loss_function)
        member = tensordict.get(self.tensor_keys.critic_member, None)
        if member is not None:
            member = self._checked_member(member, loss.shape[1:])
            # each transition trains its own member; x E keeps each member's mean at full weight
            members = torch.arange(self.num_qvalue_nets, device=member.device)
            mask = member.reshape(1, *loss.shape[1:]) == members.reshape(-1, *[1] * member.ndim)
            loss = loss * mask * self.num_qvalue_nets
        loss = loss.sum(0)
        td_error = (predicted - target).abs().max(0).values.detach()
        weights = self._maybe_get_priority_weight(tensordict)
        metadata = {"td_error": td_error, "state_action_value": predicted.detach(),
                    "target_value": target}
        return self._reduce_loss(loss, tensordict, weights=weights), metadata

    def _checked_member(self, member: torch.Tensor, batch_shape: torch.Size) -> torch.Tensor:
        """``member`` as ``[*B]``, refused unless it is an integer in ``[0, E)`` for every sample:
        a member outside the ensemble would silently train nothing on its transitions."""
        key = self.tensor_keys.critic_member
        if member.dtype.is_floating_point or member.dtype.is_complex or member.dtype == torch.bool:
            raise TypeError(f"{key!r} must hold integers (member indices), got {member.dtype}.")
        if member.shape == batch_shape + (1,):
            member = member.squeeze(-1)
        if member.shape != batch_shape:
            raise ValueError(f"{key!r} has shape {tuple(member.shape)}, expected {tuple(batch_shape)} "
                             "(one member index per transition).")
        if ((member < 0) | (member >= self.num_qvalue_nets)).any():  # one host sync per step
            raise ValueError(f"{key!r} holds indices in [{int(member.min())}, {int(member.max())}], "
                             f"outside the ensemble's [0, {self.num_qvalue_nets}).")
        return member

    # --- the policy, the subclass's part -----------------------------------------------------
    def actor_loss(self, tensordict: TensorDictBase) -> TensorDict:
        """The policy terms (``loss_*``, reduced) and detached statistics; see the subclass."""
        raise NotImplementedError(f"{type(self).__name__} must define actor_loss.")

    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Critic and policy losses on one batch; writes the TD error into ``tensordict``."""
        loss_qvalue, metadata = self.qvalue_loss(tensordict)
        tensordict.set(self.tensor_keys.priority, metadata["td_error"])
        out = self.actor_loss(tensordict)
        out.set("loss_qvalue", loss_qvalue)
        out.set("td_error_mean", metadata["td_error"].mean())
        self._clear_weakrefs(tensordict, out, "actor_network_params", "qvalue_network_params",
                             "target_actor_network_params", "target_qvalue_network_params")
        return out
