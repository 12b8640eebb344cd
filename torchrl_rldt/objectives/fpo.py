# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
"""FPO and FPO++: PPO whose ratio comes from conditional flow-matching loss differences."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import dispatch
from tensordict.utils import NestedKey, unravel_key
from torch import nn
from torchrl.objectives import ClipPPOLoss

from torchrl_rldt.modules.flow import FlowActor
from torchrl_rldt.objectives._ppo import (
    check_advantage_shape,
    critic_out_keys,
    finish_ppo_output,
    refuse_ratio_sized_value_clip,
)
from torchrl_rldt.objectives.functional import cfm_loss, flow_interpolant

__all__ = ["FPOLoss"]


class FPOLoss(ClipPPOLoss):
    """Flow Policy Optimisation, with the FPO++ ratio and trust region by default.

    A flow policy has no tractable likelihood, so FPO replaces PPO's log-ratio by a difference
    of conditional flow-matching (CFM) losses of the taken action chunk ``a``: for pairs
    ``(t_i, eps_i)`` drawn when the data is collected, ``x_t = (1 - t) eps + t a`` and
    ``l_i(theta) = mean || v_theta(x_t, t | s) - (a - eps) ||^2`` (mean over the chunk's
    dimensions). The pairs and their losses under the behaviour parameters are stored by
    :meth:`record_cfm_losses`; the loss recomputes ``l_i`` under the current parameters.

    - ``variant="fpo"``: one ratio per sample, ``exp(mean_i l_i(old) - mean_i l_i(theta))``,
      with PPO's clipped surrogate.
    - ``variant="fpo++"`` (default): one ratio per pair, ``rho_i = exp(l_i(old) - l_i(theta))``,
      each weighted by the sample's advantage and averaged over the pairs; the asymmetric
      trust region: PPO's clip where the advantage is positive and, elsewhere,
      ``rho A - |A| (rho - 1)^2 / (2 epsilon)``, which keeps pushing down a ratio that the clip
      would let grow unbounded.

    Per-pair CFM losses are clamped at ``max_cfm_loss`` (a plain clamp: a pair above it gives
    no gradient) and log-ratios at ``max_log_ratio`` (straight-through: the value is clamped,
    the gradient is not).
    The critic, the advantage (GAE through ``make_value_estimator``), its normalisation and
    the reductions are TorchRL's :class:`~torchrl.objectives.ClipPPOLoss`.

    References: McAllister et al., "Flow Matching Policy Gradients", arXiv 2507.21053 (FPO);
    FPO++, arXiv 2602.02481.

    Args:
        actor_network (FlowActor): the flow policy; rollouts sample it stochastically.
        critic_network (nn.Module): a TensorDict module writing ``"state_value"``.

    Keyword Args:
        num_cfm_samples (int, optional): ``(t, eps)`` pairs per sample. Defaults to ``16``.
        variant (str, optional): ``"fpo++"`` or ``"fpo"``. Defaults to ``"fpo++"``.
        clip_epsilon (float, optional): trust-region size. Defaults to ``0.05``.
        max_cfm_loss (float, optional): clamp of each CFM loss. Defaults to ``20.0``.
        max_log_ratio (float, optional): clamp of each log-ratio. Defaults to ``10.0``.
        critic_coeff (float, optional): weight of the value loss. Defaults to ``0.5``.
        loss_critic_type (str, optional): defaults to ``"l2"``.
        normalize_advantage (bool, optional): defaults to ``True``.
        **kwargs: other keyword arguments of :class:`~torchrl.objectives.ClipPPOLoss`
            (``reduction``, ``clip_value`` as a float, ``separate_losses``, ...).

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.modules import MLP, ValueOperator
        >>> from torchrl_rldt.modules import FlowActor, FlowModel, VelocityMLP
        >>> from torchrl_rldt.objectives import FPOLoss
        >>> actor = FlowActor(FlowModel(VelocityMLP(11, 3, chunk_len=4, hidden_dim=32), 3, 4, chunk_len=4))
        >>> critic = ValueOperator(MLP(in_features=11, out_features=1, num_cells=[32]),
        ...                        in_keys=["observation"])
        >>> loss = FPOLoss(actor, critic, num_cfm_samples=8)
        >>> loss.make_value_estimator(gamma=0.99, lmbda=0.95)
        >>> data = TensorDict(observation=torch.randn(6, 11), action=torch.rand(6, 4, 3),
        ...                   batch_size=[6])
        >>> data["next"] = TensorDict(observation=torch.randn(6, 11), reward=torch.randn(6, 1),
        ...     done=torch.zeros(6, 1, dtype=torch.bool), terminated=torch.zeros(6, 1, dtype=torch.bool),
        ...     batch_size=[6])
        >>> data = loss.record_cfm_losses(data)  # at collection time, with the behaviour policy
        >>> data["cfm_old_loss"].shape
        torch.Size([6, 8])
        >>> sorted(k for k in loss(data).keys() if k.startswith("loss_"))
        ['loss_critic', 'loss_objective']
    """

    @dataclass
    class _AcceptedKeys(ClipPPOLoss._AcceptedKeys):
        """``ClipPPOLoss``'s keys and the records of :meth:`record_cfm_losses`; change them with
        :meth:`set_keys`.

        Attributes:
            cfm_time (NestedKey): the recorded flow times ``[*B, M]``. Defaults to
                ``"cfm_time"``.
            cfm_noise (NestedKey): the recorded noise samples ``[*B, M, H, A]``. Defaults to
                ``"cfm_noise"``.
            cfm_old_loss (NestedKey): the CFM losses under the behaviour parameters ``[*B, M]``.
                Defaults to ``"cfm_old_loss"``.
        """

        cfm_time: NestedKey = "cfm_time"
        cfm_noise: NestedKey = "cfm_noise"
        cfm_old_loss: NestedKey = "cfm_old_loss"

    default_keys = _AcceptedKeys
    tensor_keys: _AcceptedKeys

    def __init__(
        self,
        actor_network: FlowActor,
        critic_network: nn.Module,
        *,
        num_cfm_samples: int = 16,
        variant: Literal["fpo++", "fpo"] = "fpo++",
        clip_epsilon: float = 0.05,
        max_cfm_loss: float = 20.0,
        max_log_ratio: float = 10.0,
        critic_coeff: float = 0.5,
        loss_critic_type: str = "l2",
        normalize_advantage: bool = True,
        **kwargs,
    ) -> None:
        if not isinstance(actor_network, FlowActor):
            raise TypeError(
                f"actor_network must be a FlowActor, got {type(actor_network).__name__}."
            )
        if variant not in ("fpo++", "fpo"):
            raise ValueError(f"variant must be 'fpo++' or 'fpo', got {variant!r}.")
        if not isinstance(num_cfm_samples, int) or num_cfm_samples < 1:
            raise ValueError(f"num_cfm_samples must be an integer >= 1, got {num_cfm_samples!r}.")
        unsupported = [name for name in ("delay_actor", "max_importance_ratio", "entropy_coeff",
                                         "entropy_bonus", "functional") if name in kwargs]
        if unsupported:
            raise ValueError(f"FPOLoss does not support {unsupported} (its ratio is built from CFM "
                             "losses under the current parameters, without an entropy term).")
        refuse_ratio_sized_value_clip("FPOLoss", kwargs)
        for name, value in (("clip_epsilon", clip_epsilon), ("max_cfm_loss", max_cfm_loss),
                            ("max_log_ratio", max_log_ratio)):
            if value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}.")
        super().__init__(
            actor_network,
            critic_network,
            clip_epsilon=clip_epsilon,
            entropy_bonus=False,
            critic_coeff=critic_coeff,
            loss_critic_type=loss_critic_type,
            normalize_advantage=normalize_advantage,
            **kwargs,
        )
        self.num_cfm_samples, self.variant = num_cfm_samples, variant
        self.max_cfm_loss, self.max_log_ratio = max_cfm_loss, max_log_ratio
        # the CFM pairs are drawn around the chunks the actor writes
        self.set_keys(action=actor_network.action_key)

    def _set_in_keys(self) -> None:
        # PPO's keys without the log-probability (the ratio comes from the recorded CFM losses)
        super()._set_in_keys()
        log_prob = unravel_key(self.tensor_keys.sample_log_prob)
        records = [unravel_key(key) for key in (self.tensor_keys.cfm_time, self.tensor_keys.cfm_noise,
                                                 self.tensor_keys.cfm_old_loss)]
        self._in_keys = [key for key in self._in_keys if key != log_prob] + records

    @property
    def out_keys(self) -> list[str]:
        if self._out_keys is None:
            self._out_keys = ["loss_objective", "clip_fraction", "mean_ratio", "cfm_loss",
                              *critic_out_keys(self)]
        return self._out_keys

    @out_keys.setter
    def out_keys(self, values) -> None:
        self._out_keys = values

    def _cfm_losses(self, observation, action, time, noise) -> torch.Tensor:
        """Per-pair CFM losses ``[*B, M]`` under the current parameters."""
        observation = observation.unsqueeze(-2).expand(*time.shape, observation.shape[-1])
        action = action.unsqueeze(-3).expand_as(noise)
        model = self.actor_network.model
        with self.actor_network_params.to_module(self.actor_network):
            velocity = model.velocity(observation, flow_interpolant(noise, action, time), time)
        # per-dimension mean: the ratio and its clamps are calibrated per dimension (FPO++)
        return cfm_loss(velocity, noise, action, reduction="mean").clamp(max=self.max_cfm_loss)

    @torch.no_grad()
    def record_cfm_losses(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Draws the ``(t, eps)`` pairs of each sample and stores their CFM losses.

        Call it on collected data before any update (the parameters are the behaviour
        policy's). Writes ``"cfm_time"`` ``[*B, M]``, ``"cfm_noise"`` ``[*B, M, H, A]`` and
        ``"cfm_old_loss"`` ``[*B, M]`` (the keys of :meth:`set_keys`).

        Args:
            tensordict (TensorDictBase): collected samples with their observation and action
                chunk ``[*B, H, A]``; modified in place and returned.
        """
        action = tensordict.get(self.tensor_keys.action)
        batch_shape = action.shape[:-2]
        time = torch.rand(*batch_shape, self.num_cfm_samples, device=action.device)
        noise = torch.randn(*batch_shape, self.num_cfm_samples, *action.shape[-2:],
                            device=action.device)
        observation = tensordict.get(self.actor_network.observation_key)
        tensordict.set(self.tensor_keys.cfm_time, time)
        tensordict.set(self.tensor_keys.cfm_noise, noise)
        tensordict.set(self.tensor_keys.cfm_old_loss, self._cfm_losses(observation, action, time, noise))
        return tensordict

    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """The FPO(++) surrogate and the value loss on a batch of recorded samples."""
        tensordict = tensordict.clone(False)
        old = tensordict.get(self.tensor_keys.cfm_old_loss, None)
        if old is None:
            raise KeyError(
                f"no {self.tensor_keys.cfm_old_loss!r} in the batch: call "
                "loss.record_cfm_losses(data) on the collected data before the updates."
            )
        advantage = tensordict.get(self.tensor_keys.advantage, None)
        update_norm = advantage is None  # running advantage statistics: only on fresh estimates
        if advantage is None:
            self.value_estimator(
                tensordict,
                params=self._cached_critic_network_params_detached,
                target_params=self.target_critic_network_params,
            )
            advantage = tensordict.get(self.tensor_keys.advantage)
        advantage = self._maybe_normalize_advantage(advantage, tensordict, update_norm=update_norm)
        check_advantage_shape(advantage, old.shape[:-1], self.tensor_keys.advantage)
        new = self._cfm_losses(
            tensordict.get(self.actor_network.observation_key),
            tensordict.get(self.tensor_keys.action),
            tensordict.get(self.tensor_keys.cfm_time),
            tensordict.get(self.tensor_keys.cfm_noise),
        )
        if self.variant == "fpo":
            log_ratio = (old.mean(-1) - new.mean(-1)).unsqueeze(-1)  # [*B, 1]
        else:
            log_ratio = old - new  # [*B, M]
        # straight-through clamp: bounded value, unchanged gradient
        log_ratio = log_ratio - (log_ratio - log_ratio.clamp(max=self.max_log_ratio)).detach()
        ratio = log_ratio.exp()
        epsilon = self.clip_epsilon
        clipped = ratio.clamp(1 - epsilon, 1 + epsilon)
        ppo_gain = torch.minimum(ratio * advantage, clipped * advantage)
        if self.variant == "fpo":
            gain = ppo_gain
        else:
            penalised = ratio * advantage - advantage.abs() * (ratio - 1).pow(2) / (2 * epsilon)
            gain = torch.where(advantage > 0, ppo_gain, penalised)
        out = TensorDict(
            {
                "loss_objective": -gain.mean(-1, keepdim=True),
                # where the trust region is PPO's clip (FPO++: positive advantages only)
                "clip_fraction": (((ratio - clipped).abs() > 0)
                                  & ((advantage > 0) | (self.variant == "fpo"))).float().mean(),
                "mean_ratio": ratio.detach().mean(),
                "cfm_loss": new.detach().mean(),
            }
        )
        return finish_ppo_output(self, out, tensordict)
