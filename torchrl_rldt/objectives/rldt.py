# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
"""RLDT: reinforcement learning for flow-matching policies with density transport."""
from __future__ import annotations

from typing import Literal

import torch
from tensordict import TensorDict, TensorDictBase, TensorDictParams
from tensordict.nn import TensorDictModule
from tensordict.utils import NestedKey

from torchrl_rldt._deprecation import RenamedAttribute, renamed_keyword_arguments
from torchrl_rldt.modules import FlowActor, SVGDTransport
from torchrl_rldt.objectives.critic import ChunkQEnsembleLoss
from torchrl_rldt.objectives.functional import flow_interpolant

__all__ = ["RLDTLoss"]


class RLDTLoss(ChunkQEnsembleLoss):
    """The RLDT objective: a Q-ensemble critic and an SVGD-transported flow policy.

    The critic is trained on chunk transitions with the TD target
    ``y = r + gamma (1 - terminated) V(s')``, ``V(s') = mean over fresh policy samples of the min
    over the target critics`` (no entropy term), or its TD(lambda) version along trajectory slices
    (``make_value_estimator(ValueEstimators.TDLambda, ...)``), optionally clipped
    (``target_clip``), as the reference does on sparse rewards: the critic of
    :class:`~torchrl_rldt.objectives.ChunkQEnsembleLoss`, which QAM shares. The policy update
    draws ``K`` particles per state (full Euler chains of the current policy), picks a query step
    per particle, computes the expected landing points ``a_hat = x_t + (1 - t) v(x_t, t | s)``,
    the critics' action-gradients
    (ensemble mean; no gradient reaches the critic parameters) and the SVGD transport field
    ``phi`` at the landing points, then minimises

    * ``L_RL = - E[<v(x_t, t | s), sg(phi)> / (N (1 - t))]``, whose gradient is that of regressing
      ``v`` towards ``v + phi / (N (1 - t))``: one SVGD step of size ``1/N`` on the landing point;
    * ``L_cons = E[||a_hat - a||^2 / (N (1 - t))^2]``, which keeps the chains straight;
    * ``L_ref = E[||v(x', t' | s) - v_ref(x', t' | s)||^2]`` at ``x' = (1 - t') z + t' a``, a
      Fisher-style divergence to a reference policy: the actor at the loss's construction (the
      pretrained policy, the paper's text), or, with a
      :class:`~torchrl_rldt.objectives.ReferenceUpdater` stepped after each actor update, the
      iterate of at most ``every`` updates ago (the reference code re-anchors every iteration
      of 32 updates). The loss never moves the reference itself, so any call of
      :meth:`actor_loss`, a diagnostic one included, changes nothing.

    Deviations from the reference code, on purpose: bootstrapping masks ``terminated`` only (the
    reference code also stops at time-limit truncations); the particles are the clamped chain
    ends (what the environment executes), which equal the chain ends inside the action bounds.

    Reference: Lei, Daniilidis, Loquercio, "Reinforcement Learning for Flow-Matching Policies with
    Density Transport", arXiv 2606.08602 (``docs/algorithm.md``).

    Args:
        actor_network (FlowActor): the flow policy to fine-tune; its model's ``num_steps`` is
            ``N``.
        qvalue_network (TensorDictModule): reads the action chunk (at the loss's ``action`` key)
            and whatever else its ``in_keys`` name (e.g. the observation), and writes
            ``state_action_value`` ``[*B, 1]``, e.g. a ``ValueOperator`` around a
            :class:`~torchrl_rldt.modules.ChunkQValueMLP`. It is copied into an ensemble of
            ``num_qvalue_nets`` members with independent initial weights, and target copies.

    Keyword Args:
        num_qvalue_nets (int, optional): the critic ensemble size. Defaults to ``2``.
        num_particles (int, optional): ``K``, particles per state. Defaults to ``8``.
        num_target_samples (int, optional): policy samples of ``s'`` averaged in the TD target.
            Defaults to ``2``.
        transport (SVGDTransport, optional): the transport (kernel, bandwidth, temperature).
            Defaults to ``SVGDTransport()`` (RBF, median rule, adaptive temperature with
            ``c = 1e-3``).
        rl_coeff (float, optional): weight of ``L_RL``. Defaults to ``1.0``.
        consistency_coeff (float, optional): weight of ``L_cons``. Defaults to ``0.5``.
        reference_coeff (float, optional): weight of ``L_ref``. Defaults to ``0.2``.
        rl_objective (str, optional): ``"inner_product"`` (the formula above) or
            ``"regression"`` (the equivalent ``0.5 ||v - sg(v + phi / (N (1 - t)))||^2``: same
            gradient, other value). Defaults to ``"inner_product"``.
        target_std_penalty (float, optional): ``rho``; ``V(s') = mean_e Qbar_e - rho std_e
            Qbar_e`` instead of the minimum over the members. Defaults to ``None`` (the
            minimum, the reference).
        target_clip (tuple of float, optional): ``(low, high)`` bounds of the critic's target,
            e.g. ``(0, 1)`` for a success reward paid once (the reference's sparse-reward
            setting). Defaults to ``None`` (no clipping).
        stop_at_bounds (bool, optional): drop the components of the transport field that push
            a landing point already at or past an action bound further out (a projected
            gradient on the action box). The environment executes the clamped action, so such
            a push changes nothing it sees while the critic's gradient at the bound keeps
            pointing outward; ``False`` is the reference. Needs an actor with bounds. Defaults
            to ``False``.
        loss_function (str, optional): the critic's distance, ``"l2"``, ``"l1"`` or
            ``"smooth_l1"``. Defaults to ``"l2"``.
        reduction (str, optional): ``"mean"``, ``"sum"`` or ``"none"`` over the batch. Defaults
            to ``"mean"``.
        use_prioritized_weights (str or bool, optional): weight the critic loss by
            ``priority_weight`` when present (``"auto"``), always (``True``) or never
            (``False``). Defaults to ``"auto"``.
        deactivate_vmap (bool, optional): evaluate the ensemble members in a loop instead of
            ``torch.vmap`` (as in TorchRL's losses). Defaults to ``False``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.modules import ValueOperator
        >>> from torchrl.objectives import SoftUpdate
        >>> from torchrl_rldt.modules import ChunkQValueMLP, FlowActor, FlowModel, VelocityMLP
        >>> from torchrl_rldt.objectives import ReferenceUpdater, RLDTLoss
        >>> obs_dim, act_dim, chunk = 11, 3, 4
        >>> actor = FlowActor(FlowModel(VelocityMLP(obs_dim, act_dim, chunk_len=chunk, hidden_dim=64),
        ...                             act_dim, num_steps=8, chunk_len=chunk, low=-1.0, high=1.0))
        >>> critic = ValueOperator(ChunkQValueMLP(obs_dim, act_dim, chunk_len=chunk, hidden_dim=64),
        ...                        in_keys=["observation", "action"])
        >>> loss = RLDTLoss(actor, critic, num_particles=4)
        >>> loss.make_value_estimator(gamma=0.99)
        >>> target_updater = SoftUpdate(loss, eps=0.995)
        >>> reference_updater = ReferenceUpdater(loss, every=32)  # step() after each actor update
        >>> batch = TensorDict({
        ...     "observation": torch.randn(16, obs_dim), "action": torch.rand(16, chunk, act_dim),
        ...     "next": {"observation": torch.randn(16, obs_dim), "reward": torch.randn(16, 1),
        ...              "done": torch.zeros(16, 1, dtype=torch.bool),
        ...              "terminated": torch.zeros(16, 1, dtype=torch.bool)}}, batch_size=[16])
        >>> losses = loss(batch)
        >>> sorted(key for key in losses.keys() if key.startswith("loss_"))
        ['loss_consistency', 'loss_qvalue', 'loss_reference', 'loss_rl']
        >>> critic_loss, _ = loss.qvalue_loss(batch)  # the two updates can run on their own
        >>> actor_loss = loss.actor_loss(batch)  # a TensorDict of the three policy terms
        >>> (critic_loss + sum(actor_loss[k] for k in ("loss_rl", "loss_consistency",
        ...                                           "loss_reference"))).backward()
        >>> target_updater.step()
        >>> reference_updater.step()
        >>> loss.critic_values(batch).shape  # every member's Q(s, a), a diagnostic
        torch.Size([2, 16])

        Beside another TorchRL objective in one loop, e.g. a behaviour-cloning term on
        demonstrations (``FlowMatchingBCLoss`` shares the actor's parameters):

        >>> from torchrl_rldt.objectives import FlowMatchingBCLoss
        >>> bc = FlowMatchingBCLoss(actor)
        >>> total = loss.actor_loss(batch)["loss_rl"] + 0.1 * bc(batch)["loss_flow_bc"]
    """

    POLICY_TERMS = ("loss_rl", "loss_consistency", "loss_reference")
    COEFFICIENTS = {"rl_coeff": 1.0, "consistency_coeff": 0.5, "reference_coeff": 0.2}
    _schedulable_buffers = frozenset(COEFFICIENTS)
    rl_coef = RenamedAttribute("rl_coeff")
    consistency_coef = RenamedAttribute("consistency_coeff")
    reference_coef = RenamedAttribute("reference_coeff")

    reference_actor_network_params: TensorDictParams

    def __init__(
        self,
        actor_network: FlowActor,
        qvalue_network: TensorDictModule,
        *,
        num_qvalue_nets: int = 2,
        num_particles: int = 8,
        num_target_samples: int = 2,
        transport: SVGDTransport | None = None,
        rl_coeff: float = 1.0,
        consistency_coeff: float = 0.5,
        reference_coeff: float = 0.2,
        rl_objective: Literal["inner_product", "regression"] = "inner_product",
        target_std_penalty: float | None = None,
        target_clip: tuple[float, float] | None = None,
        stop_at_bounds: bool = False,
        loss_function: str = "l2",
        reduction: str | None = None,
        use_prioritized_weights: str | bool = "auto",
        deactivate_vmap: bool = False,
        **deprecated: float,
    ) -> None:
        if type(num_particles) is not int or num_particles < 1:  # bool is an int too
            raise ValueError(f"num_particles must be an integer >= 1, got {num_particles!r}.")
        coefficients = renamed_keyword_arguments(
            "RLDTLoss", deprecated, {name[:-1]: name for name in self.COEFFICIENTS},
            {"rl_coeff": rl_coeff, "consistency_coeff": consistency_coeff,
             "reference_coeff": reference_coeff},
            self.COEFFICIENTS,
        )
        for name, value in coefficients.items():
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}.")
        if rl_objective not in ("inner_product", "regression"):
            raise ValueError(
                f"rl_objective must be 'inner_product' or 'regression', got {rl_objective!r}."
            )
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
        self.num_particles = num_particles
        self.transport = transport if transport is not None else SVGDTransport()
        for name, value in coefficients.items():
            self.register_coeff_buffer(name, float(value))
        self.rl_objective = rl_objective
        model = self.actor_network.model
        if stop_at_bounds and (model.low is None or model.high is None):
            raise ValueError(
                "stop_at_bounds=True needs an actor whose model has action bounds (FlowModel's "
                "low and high); this one has none."
            )
        self.stop_at_bounds = stop_at_bounds
        # The reference policy is a buffer: no optimiser sees it and no target updater moves it.
        self.reference_actor_network_params = TensorDictParams(
            self.actor_network_params.data.clone(), no_convert=True
        )

    @property
    def out_keys(self) -> list[NestedKey]:
        if self._out_keys is None:
            keys = [
                "loss_qvalue",
                "loss_rl",
                "loss_consistency",
                "loss_reference",
                "td_error_mean",
                "q_gradient_norm",
                "transport_norm",
                "transport_bandwidth",
                "transport_temperature",
                "particle_spread",
            ]
            if self.transport.kernel != "rbf":  # the delta kernel has no bandwidth
                keys.remove("transport_bandwidth")
            self._out_keys = keys
        return self._out_keys

    @out_keys.setter
    def out_keys(self, values) -> None:
        self._out_keys = values

    @torch.no_grad()
    def reset_reference(self) -> None:
        """Re-anchors the reference policy of ``L_ref`` to the current actor parameters.

        :class:`~torchrl_rldt.objectives.ReferenceUpdater` calls it on a schedule of actor
        updates; call it by hand for another schedule (or after loading weights into the actor).
        """
        self.reference_actor_network_params.data.copy_(self.actor_network_params.data)

    def actor_loss(self, tensordict: TensorDictBase) -> TensorDict:
        """The three policy terms and the transport statistics (the call moves nothing).

        Args:
            tensordict (TensorDictBase): a batch holding the observations and the critic's other
                inputs (other entries are ignored).

        Returns:
            A TensorDict with ``loss_rl``, ``loss_consistency``, ``loss_reference`` (weighted,
            reduced) and detached statistics: ``q_gradient_norm``, ``transport_norm``,
            ``transport_temperature``, ``particle_spread`` and, for the RBF kernel,
            ``transport_bandwidth``.
        """
        actor, model = self.actor_network, self.actor_network.model
        num_steps, num_particles = model.num_steps, self.num_particles
        observation = tensordict.get(self.tensor_keys.observation)
        batch_shape = observation.shape[:-1]
        observation = observation.unsqueeze(-2).expand(*batch_shape, num_particles, -1)
        state = self._critic_state(tensordict, batch_shape)
        state = state.unsqueeze(-1).expand(*batch_shape, num_particles)

        # K particles per state: full chains of the current policy (no gradient).
        particles, chain = self._sample(observation, return_chain=True)
        query_step = torch.randint(num_steps, (*batch_shape, num_particles), device=chain.device)
        time = query_step.to(chain.dtype) / num_steps
        reference_time = (
            torch.randint(num_steps, time.shape, device=time.device).to(time.dtype) / num_steps
        )
        x_ref = flow_interpolant(torch.randn_like(particles), particles, reference_time)

        with self.actor_network_params.to_module(actor):
            velocity, landing = model.chain_landing(observation, chain, query_step)
            velocity_at_ref = model.velocity(observation, x_ref, reference_time)
        with torch.no_grad(), self.reference_actor_network_params.to_module(actor):
            reference_velocity = model.velocity(observation, x_ref, reference_time)

        # The transport field at the landing points (a stop-gradient target).
        event_shape = particles.shape[-2:]

        def action_gradient(points: torch.Tensor) -> torch.Tensor:
            return self._critic_action_gradient(state, points.unflatten(-1, event_shape)).flatten(-2)

        field, info = self.transport.transport(
            particles.flatten(-2), action_gradient, queries=landing.detach().flatten(-2)
        )
        field = field.unflatten(-1, event_shape)
        if self.stop_at_bounds:
            landed = landing.detach()
            # the bounds of the loss's copy of the actor, on its device also after loss.to(device)
            with self.actor_network_params.to_module(actor):
                low, high = model.low, model.high
            outward = ((landed >= high) & (field > 0)) | ((landed <= low) & (field < 0))
            field = field.masked_fill(outward, 0.0)

        scale = num_steps * (1 - time)  # N (1 - t) >= 1
        if self.rl_objective == "inner_product":
            rl = -(velocity * field).sum((-2, -1)) / scale
        else:
            target = (velocity + field / scale[..., None, None]).detach()
            rl = 0.5 * (velocity - target).pow(2).sum((-2, -1))
        consistency = (landing - particles).pow(2).sum((-2, -1)) / scale.pow(2)
        reference_gap = (velocity_at_ref - reference_velocity).pow(2).sum((-2, -1))

        def reduce(per_particle: torch.Tensor, coeff: torch.Tensor) -> torch.Tensor:
            return self._reduce_loss(coeff * per_particle.mean(-1), tensordict)

        spread = (particles - particles.mean(-3, keepdim=True)).flatten(-2).norm(dim=-1)
        stats = {
            "q_gradient_norm": info["gradient"].norm(dim=-1).mean(),
            "transport_norm": field.flatten(-2).norm(dim=-1).mean(),
            "transport_temperature": info["temperature"].mean(),
            "particle_spread": spread.mean(),
        }
        if "bandwidth" in info:
            stats["transport_bandwidth"] = info["bandwidth"].mean()
        out = TensorDict(
            {
                "loss_rl": reduce(rl, self.rl_coeff),
                "loss_consistency": reduce(consistency, self.consistency_coeff),
                "loss_reference": reduce(reference_gap, self.reference_coeff),
                **{key: value.detach() for key, value in stats.items()},
            }
        )
        return out
