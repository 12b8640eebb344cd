# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
"""QAM: Q-learning with adjoint matching, for flow-matching policies over action chunks."""
from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Literal, NamedTuple

import torch
from tensordict import TensorDict, TensorDictBase, TensorDictParams
from tensordict.nn import TensorDictModule
from tensordict.utils import NestedKey

from torchrl_rldt._deprecation import RenamedAttribute, renamed_keyword_arguments
from torchrl_rldt.modules import FlowActor
from torchrl_rldt.objectives.critic import ChunkQEnsembleLoss
from torchrl_rldt.objectives.functional import flow_interpolant

__all__ = ["AdjointTrajectory", "QAMLoss", "memoryless_noise_std"]


def memoryless_noise_std(time: torch.Tensor | float, step_size: float) -> torch.Tensor:
    """The memoryless noise schedule of a linear-interpolant flow, ``sqrt(2 (1 - t + h) / (t + h))``.

    With this diffusion coefficient, the SDE ``dx = (2 v(x, t) - x / (t + h)) dt + sigma(t) dB``
    has the flow's marginals and forgets its starting noise (its end is independent of ``x_0``),
    which is what makes adjoint matching's regression target unbiased. The shift ``h`` (one Euler
    step) keeps both terms finite at ``t = 0`` and ``sigma(1)`` positive.

    Args:
        time (torch.Tensor or float): ``t`` in ``[0, 1]``.
        step_size (float): ``h = 1 / N``.

    Examples:
        >>> import torch
        >>> from torchrl_rldt.objectives.qam import memoryless_noise_std
        >>> memoryless_noise_std(torch.tensor([0.0, 0.5, 0.875]), 0.125)
        tensor([4.2426, 1.4142, 0.7071])
    """
    time = torch.as_tensor(time)
    return torch.sqrt(2 * (1 - time + step_size) / (time + step_size))


class AdjointTrajectory(NamedTuple):
    """What :meth:`QAMLoss.adjoint_trajectory` returns, for states of batch shape ``[*B]``.

    Attributes:
        states (torch.Tensor): ``x_0 .. x_{N-1}`` of the memoryless SDE, ``[N, *B, H, A]``.
        times (torch.Tensor): ``t_k = k / N``, ``[N]``.
        final_action (torch.Tensor): ``x_N``, ``[*B, H, A]``, unclamped.
        critic_gradient (torch.Tensor): ``mean_e dQ_e/da`` at the (clamped) final action,
            ``[*B, H, A]``; the terminal adjoint is ``a_N = -inverse_temperature *
            critic_gradient``.
        adjoint (torch.Tensor): the lean adjoint ``a_0 .. a_{N-1}``, ``[N, *B, H, A]``.
    """

    states: torch.Tensor
    times: torch.Tensor
    final_action: torch.Tensor
    critic_gradient: torch.Tensor
    adjoint: torch.Tensor


class QAMLoss(ChunkQEnsembleLoss):
    r"""Q-learning with adjoint matching (QAM): a Q-ensemble critic and an adjoint-matched flow.

    QAM fine-tunes the flow so that its samples follow the base policy tilted by the critic,
    ``pi*(a | s) ∝ pi_base(a | s) exp(lambda Q(s, a))`` (``lambda = inverse_temperature``), by
    adjoint matching on the flow's memoryless SDE. On the Euler grid ``t_k = k / N``, ``h = 1 / N``,
    ``sigma(t) = sqrt(2 (1 - t + h) / (t + h))`` (:func:`memoryless_noise_std`), for each state
    ``s`` of the batch (no gradient in steps 1-3):

    1. one trajectory of the fine-tuned flow's memoryless SDE from ``x_0 ~ N(0, I)``:
       ``x_{k+1} = x_k + h (2 v(x_k, t_k | s) - x_k / (t_k + h)) + sqrt(h) sigma(t_k) eps_k``
       for ``k < N - 1``, then one Euler step of the base flow,
       ``x_N = x_{N-1} + h v_base(x_{N-1}, t_{N-1} | s)``;
    2. the terminal adjoint ``a_N = -lambda mean_e dQ_e(s, clamp(x_N)) / dx_N`` (the clamp to the
       actor's bounds passes no gradient beyond them);
    3. the lean adjoint, backwards through the base flow's drift only:
       ``a_k = a_{k+1} + h (2 J_base^T a_{k+1} - a_{k+1} / (t_k + h))``,
       ``J_base = dv_base / dx`` at ``(x_k, t_k + h)``;
    4. the losses

       * ``L_adj = E_s[ sum_k || 2 (v(x_k, t_k | s) - sg(v_base(x_k, t_k | s))) / sigma(t_k)
         + sigma(t_k) a_k ||^2 ]``: the control ``(b - b_base) / sigma = 2 (v - v_base) / sigma``
         of the SDE (``b`` its drift) regressed onto ``-sigma a``; its minimiser moves the
         velocity by ``-sigma^2 a / 2``, up the critic;
       * ``L_base = c E_s[ || v(x', t' | s) - v_base(x', t' | s) ||^2 ]`` at
         ``x' = (1 - t') z + t' x_N``, ``t' ~ U[0, 1]``, ``z ~ N(0, I)``: the constraint to the
         base policy (``c = base_constraint_coeff``).

    Norms are sums over the chunk's ``H x A`` numbers; ``L_adj`` sums over the ``N`` steps.

    The base policy ``v_base`` is a copy of the actor's parameters held as a buffer
    (``base_actor_network_params``: no optimiser sees it). The loss never moves it: without an
    updater it stays the pretrained policy, and a
    :class:`~torchrl_rldt.objectives.BaseEMAUpdater` stepped after each actor update moves it
    towards the actor on the reference's schedule (an EMA of factor 0.995 every 32 actor
    updates). It is not a TorchRL target: :class:`~torchrl.objectives.SoftUpdate` moves every
    ``target_*`` parameter set after every step, here the critic's targets after every critic
    step, as for :class:`~torchrl_rldt.objectives.RLDTLoss`.

    The critic is :class:`~torchrl_rldt.objectives.ChunkQEnsembleLoss`'s, the one RLDT trains.

    Reference: Li, Levine, "Q-learning with Adjoint Matching", arXiv 2601.14234
    (https://arxiv.org/abs/2601.14234); the PyTorch port in the RLDT authors' code base gives the
    defaults (``docs/algorithm.md``, section 9, lists the deviations).

    Args:
        actor_network (FlowActor): the flow policy to fine-tune; its model's ``num_steps`` is
            ``N``. Its parameters at construction are the base policy.
        qvalue_network (TensorDictModule): one critic member, as for
            :class:`~torchrl_rldt.objectives.ChunkQEnsembleLoss`: reads the action chunk (at the
            loss's ``action`` key) and its other ``in_keys``, writes ``state_action_value``
            ``[*B, 1]``.

    Keyword Args:
        num_qvalue_nets (int, optional): the critic ensemble size. Defaults to ``2``.
        num_target_samples (int, optional): policy samples of ``s'`` averaged in the TD target.
            Defaults to ``2``.
        inverse_temperature (float, optional): ``lambda``, the weight of ``Q`` against the base
            policy in the tilted target. Defaults to ``0.3``.
        base_constraint_coeff (float, optional): ``c``, the weight of ``L_base``, a buffer (saved,
            moved and schedulable as TorchRL's coefficients). Defaults to ``0.2``.
        clamp_final_action (bool, optional): take the critic's gradient at the final action
            clamped to the actor's bounds (what the environment executes). Defaults to ``True``.
        action_gradient_critic (str, optional): the members whose action-gradient starts the
            adjoint: ``"online"`` or ``"target"``. Defaults to ``"online"``.
        target_std_penalty (float, optional): ``rho``; ``V(s') = mean_e Qbar_e - rho std_e
            Qbar_e`` instead of the minimum over the members. Defaults to ``None`` (the
            minimum, as RLDT).
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
        full_precision_actor_loss (bool, optional): run :meth:`actor_loss` in full precision under
            any autocast context (see there why). ``False`` lets it follow an enclosing autocast,
            to measure what that does (``benchmarks/qam_diagnostics.py``). Defaults to ``True``.
        **deprecated: ``base_constraint_coef``, the former name of ``base_constraint_coeff`` (a
            ``DeprecationWarning``).

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.modules import ValueOperator
        >>> from torchrl.objectives import SoftUpdate
        >>> from torchrl_rldt.modules import ChunkQValueMLP, FlowActor, FlowModel, VelocityMLP
        >>> from torchrl_rldt.objectives import QAMLoss
        >>> obs_dim, act_dim, chunk = 11, 3, 4
        >>> actor = FlowActor(FlowModel(VelocityMLP(obs_dim, act_dim, chunk_len=chunk, hidden_dim=64),
        ...                             act_dim, num_steps=8, chunk_len=chunk, low=-1.0, high=1.0))
        >>> critic = ValueOperator(ChunkQValueMLP(obs_dim, act_dim, chunk_len=chunk, hidden_dim=64),
        ...                        in_keys=["observation", "action"])
        >>> loss = QAMLoss(actor, critic, inverse_temperature=0.3, base_constraint_coeff=0.2)
        >>> loss.make_value_estimator(gamma=0.99)
        >>> target_updater = SoftUpdate(loss, eps=0.995)  # the critic's targets
        >>> batch = TensorDict({
        ...     "observation": torch.randn(16, obs_dim), "action": torch.rand(16, chunk, act_dim),
        ...     "next": {"observation": torch.randn(16, obs_dim), "reward": torch.randn(16, 1),
        ...              "done": torch.zeros(16, 1, dtype=torch.bool),
        ...              "terminated": torch.zeros(16, 1, dtype=torch.bool)}}, batch_size=[16])
        >>> losses = loss(batch)
        >>> sorted(key for key in losses.keys() if key.startswith("loss_"))
        ['loss_adjoint', 'loss_base_constraint', 'loss_qvalue']
        >>> critic_loss, _ = loss.qvalue_loss(batch)  # the two updates can run on their own
        >>> actor_terms = loss.actor_loss(batch)
        >>> (critic_loss + sum(actor_terms[key] for key in QAMLoss.POLICY_TERMS)).backward()
        >>> target_updater.step()
        >>> trajectory = loss.adjoint_trajectory(batch)  # the SDE sample and its adjoint
        >>> trajectory.states.shape, trajectory.adjoint.shape
        (torch.Size([8, 16, 4, 3]), torch.Size([8, 16, 4, 3]))
    """

    POLICY_TERMS = ("loss_adjoint", "loss_base_constraint")
    _schedulable_buffers = frozenset({"base_constraint_coeff"})
    base_constraint_coef = RenamedAttribute("base_constraint_coeff")

    base_actor_network_params: TensorDictParams

    def __init__(
        self,
        actor_network: FlowActor,
        qvalue_network: TensorDictModule,
        *,
        num_qvalue_nets: int = 2,
        num_target_samples: int = 2,
        inverse_temperature: float = 0.3,
        base_constraint_coeff: float = 0.2,
        clamp_final_action: bool = True,
        action_gradient_critic: Literal["online", "target"] = "online",
        target_std_penalty: float | None = None,
        target_clip: tuple[float, float] | None = None,
        loss_function: str = "l2",
        reduction: str | None = None,
        use_prioritized_weights: str | bool = "auto",
        deactivate_vmap: bool = False,
        full_precision_actor_loss: bool = True,
        **deprecated: float,
    ) -> None:
        base_constraint_coeff = renamed_keyword_arguments(
            "QAMLoss", deprecated, {"base_constraint_coef": "base_constraint_coeff"},
            {"base_constraint_coeff": base_constraint_coeff}, {"base_constraint_coeff": 0.2},
        )["base_constraint_coeff"]
        for name, value in (
            ("inverse_temperature", inverse_temperature),
            ("base_constraint_coeff", base_constraint_coeff),
        ):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}.")
        if action_gradient_critic not in ("online", "target"):
            raise ValueError(
                f"action_gradient_critic must be 'online' or 'target', got {action_gradient_critic!r}."
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
        self.inverse_temperature = float(inverse_temperature)
        self.register_coeff_buffer("base_constraint_coeff", float(base_constraint_coeff))
        self.clamp_final_action = clamp_final_action
        self.full_precision_actor_loss = full_precision_actor_loss
        self.action_gradient_critic = action_gradient_critic
        # A buffer: no optimiser sees it, and SoftUpdate (which moves every target_* set after
        # every critic step) leaves it to BaseEMAUpdater's schedule.
        self.base_actor_network_params = TensorDictParams(
            self.actor_network_params.data.clone(), no_convert=True
        )

    @property
    def out_keys(self) -> list[NestedKey]:
        if self._out_keys is None:
            self._out_keys = [
                "loss_qvalue",
                "loss_adjoint",
                "loss_base_constraint",
                "td_error_mean",
                "q_gradient_norm",
                "adjoint_norm",
                "velocity_gap",
            ]
        return self._out_keys

    @out_keys.setter
    def out_keys(self, values) -> None:
        self._out_keys = values

    @torch.no_grad()
    def update_base_policy(self, decay: float) -> None:
        """One EMA step of the base policy towards the actor: ``base <- decay base + (1 - decay) actor``.

        :class:`~torchrl_rldt.objectives.BaseEMAUpdater` calls it on a schedule of actor
        updates; call it by hand for another schedule.

        Args:
            decay (float): the EMA factor in ``[0, 1]`` (``0`` copies the actor).
        """
        if not 0 <= decay <= 1:
            raise ValueError(f"decay must be in [0, 1], got {decay}.")
        weight = 1 - decay

        def step(base: torch.Tensor, current: torch.Tensor) -> None:
            if base.is_floating_point():
                base.lerp_(current, weight)
            else:  # e.g. a step counter of a normalisation layer
                base.copy_(current)

        self.base_actor_network_params.data.apply(step, self.actor_network_params.data)

    @torch.no_grad()
    def reset_base_policy(self) -> None:
        """Makes the actor's current weights the base policy.

        The loss copies the actor into the base when it is built; call this after loading
        pretrained weights into the actor later, so that the adjoint and the constraint use them.
        """
        self.base_actor_network_params.data.update_(self.actor_network_params.data)

    # --- the adjoint ---------------------------------------------------------------------
    def _velocity(self, params: TensorDictBase, observation, action, time) -> torch.Tensor:
        with params.to_module(self.actor_network):
            return self.actor_network.model.velocity(observation, action, time)

    def _base_vector_jacobian(self, observation, action, time, cotangent) -> torch.Tensor:
        """``J_base(action, time)^T cotangent``, ``J_base = dv_base / dx``; no parameter gradient."""
        with torch.enable_grad():
            action = action.detach().requires_grad_(True)
            velocity = self._velocity(self.base_actor_network_params, observation, action, time)
            if not velocity.requires_grad:  # a velocity that ignores the action
                return torch.zeros_like(cotangent)
            (product,) = torch.autograd.grad(velocity, action, grad_outputs=cotangent,
                                             allow_unused=True)
        return torch.zeros_like(cotangent) if product is None else product

    def adjoint_trajectory(self, tensordict: TensorDictBase) -> AdjointTrajectory:
        """Samples the memoryless SDE of the current actor at each state and its lean adjoint.

        Steps 1-3 of the class description; no gradient reaches any parameter.

        Args:
            tensordict (TensorDictBase): a batch holding the observations and the critic's other
                inputs, batch shape ``[*B]``.

        Returns:
            An :class:`AdjointTrajectory`, in full precision under any autocast context (as
            :meth:`actor_loss` computes it).
        """
        observation = tensordict.get(self.tensor_keys.observation)
        with torch.autocast(observation.device.type, enabled=False):
            state = self._critic_state(tensordict, observation.shape[:-1])
            return self._adjoint_trajectory(observation, state)

    def _adjoint_trajectory(self, observation: torch.Tensor, state: TensorDictBase) -> AdjointTrajectory:
        model = self.actor_network.model
        num_steps = model.num_steps
        step_size = 1.0 / num_steps
        x = model.initial_noise(observation.shape[:-1], observation.device)
        states = []
        with torch.no_grad():
            for k in range(num_steps):
                states.append(x)
                time = k * step_size
                if k < num_steps - 1:
                    velocity = self._velocity(self.actor_network_params, observation, x, time)
                    drift = 2 * velocity - x / (time + step_size)
                    noise_std = math.sqrt(step_size) * float(memoryless_noise_std(time, step_size))
                    x = x + step_size * drift + noise_std * torch.randn_like(x)
                else:
                    # the noise-free last step of adjoint matching: the base flow's Euler step
                    with self.base_actor_network_params.to_module(self.actor_network):
                        x = model.step_mean(observation, x, time)
        final_action = x

        critic_params = (self.qvalue_network_params if self.action_gradient_critic == "online"
                         else self.target_qvalue_network_params)
        if self.clamp_final_action:
            # the bounds of the loss's copy of the actor, on its device also after loss.to(device)
            with self.actor_network_params.to_module(self.actor_network):
                clamped = model.clamp(final_action)
            critic_gradient = self._critic_action_gradient(state, clamped, critic_params)
            # the clamp's own gradient: nothing flows back through a component it cut
            critic_gradient = torch.where(clamped == final_action, critic_gradient, 0.0)
        else:
            critic_gradient = self._critic_action_gradient(state, final_action, critic_params)

        adjoint = -self.inverse_temperature * critic_gradient
        adjoints = [None] * num_steps
        for k in reversed(range(num_steps)):
            time = k * step_size
            # the base velocity's Jacobian at the step's end time t_k + h, as both reference codes
            product = self._base_vector_jacobian(observation, states[k], time + step_size, adjoint)
            adjoint = adjoint + step_size * (2 * product - adjoint / (time + step_size))
            adjoints[k] = adjoint
        times = torch.arange(num_steps, device=x.device, dtype=x.dtype) / num_steps
        return AdjointTrajectory(
            states=torch.stack(states),
            times=times,
            final_action=final_action,
            critic_gradient=critic_gradient,
            adjoint=torch.stack(adjoints),
        )

    # --- the policy loss -----------------------------------------------------------------
    def actor_loss(self, tensordict: TensorDictBase) -> TensorDict:
        """The adjoint-matching loss, the constraint to the base, and detached statistics.

        The call moves nothing (the base policy moves with a
        :class:`~torchrl_rldt.objectives.BaseEMAUpdater`).

        Args:
            tensordict (TensorDictBase): a batch holding the observations and the critic's other
                inputs (other entries are ignored).

        Returns:
            A TensorDict with ``loss_adjoint`` and ``loss_base_constraint`` (weighted, reduced)
            and detached statistics: ``q_gradient_norm`` (of ``mean_e dQ_e/da`` at the final
            actions), ``adjoint_norm`` (of ``a_k``, mean over steps) and ``velocity_gap`` (of
            ``v - v_base`` along the SDE, mean over steps).

        It runs in full precision under any autocast context (unless built with
        ``full_precision_actor_loss=False``): the regression target ``v -
        v_base`` is below bfloat16's rounding of the velocities for the first hundreds of actor
        steps (``benchmarks/qam_diagnostics.py``), so a bfloat16 forward pass would regress
        rounding noise.
        """
        device_type = tensordict.get(self.tensor_keys.observation).device.type
        with torch.autocast(device_type, enabled=False) if self.full_precision_actor_loss else nullcontext():
            return self._actor_loss(tensordict)

    def _actor_loss(self, tensordict: TensorDictBase) -> TensorDict:
        observation = tensordict.get(self.tensor_keys.observation)
        batch_shape = observation.shape[:-1]
        state = self._critic_state(tensordict, batch_shape)
        trajectory = self._adjoint_trajectory(observation, state)

        num_steps = trajectory.times.shape[0]
        step_size = 1.0 / num_steps
        per_step = (num_steps,) + (1,) * len(batch_shape)
        times = trajectory.times.reshape(per_step)
        noise_std = memoryless_noise_std(times, step_size)[..., None, None]
        observations = observation.expand(num_steps, *observation.shape)
        # every step in one call of the velocity network
        velocity = self._velocity(self.actor_network_params, observations, trajectory.states, times)
        with torch.no_grad():
            base_velocity = self._velocity(self.base_actor_network_params, observations,
                                           trajectory.states, times)
        velocity_gap = velocity - base_velocity
        residual = 2 * velocity_gap / noise_std + noise_std * trajectory.adjoint
        adjoint_matching = residual.pow(2).sum((-2, -1)).sum(0)

        final_action = trajectory.final_action
        constraint_time = torch.rand(batch_shape, device=final_action.device, dtype=final_action.dtype)
        constraint_point = flow_interpolant(torch.randn_like(final_action), final_action,
                                            constraint_time)
        constraint_velocity = self._velocity(self.actor_network_params, observation,
                                             constraint_point, constraint_time)
        with torch.no_grad():
            constraint_base = self._velocity(self.base_actor_network_params, observation,
                                             constraint_point, constraint_time)
        base_gap = (constraint_velocity - constraint_base).pow(2).sum((-2, -1))

        stats = {
            "q_gradient_norm": trajectory.critic_gradient.flatten(-2).norm(dim=-1).mean(),
            "adjoint_norm": trajectory.adjoint.flatten(-2).norm(dim=-1).mean(),
            "velocity_gap": velocity_gap.detach().flatten(-2).norm(dim=-1).mean(),
        }
        out = TensorDict(
            {
                "loss_adjoint": self._reduce_loss(adjoint_matching, tensordict),
                "loss_base_constraint": self._reduce_loss(self.base_constraint_coeff * base_gap,
                                                          tensordict),
                **{key: value.detach() for key, value in stats.items()},
            }
        )
        return out
