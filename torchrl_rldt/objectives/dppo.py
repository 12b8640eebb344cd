# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
"""DPPO: PPO over the denoising steps of a DDPM chunk policy, and the DDPM's pretraining loss."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import dispatch
from torch import nn
from torchrl.objectives import ClipPPOLoss, DiffusionBCLoss

from torchrl_rldt.modules.diffusion import DDPMChunkModel, DPPOActor
from torchrl_rldt.objectives._ppo import (
    check_advantage_shape,
    critic_out_keys,
    finish_ppo_output,
    refuse_ratio_sized_value_clip,
)
from torchrl_rldt.objectives._validation import check_reduction

__all__ = ["DDPMChunkBCLoss", "DPPOLoss"]


class DPPOLoss(ClipPPOLoss):
    """Diffusion Policy Policy Optimization: clipped PPO with one ratio per denoising step.

    DPPO sees the ``K`` fine-tuned reverse steps of a :class:`~torchrl_rldt.modules.diffusion.DPPOActor`
    as ``K`` Gaussian decisions taken before each environment step. For a collected sample with
    (normalised) advantage ``A`` of its environment transition, and fine-tuned transition ``k``
    of its stored chain (``k = 0 .. K - 1`` in chain order, at timestep ``t_k = K - 1 - k``):

    - ``r_k = exp(log pi_theta(x_{t_k - 1} | x_{t_k}, s) - log pi_old(...))``, the log-likelihoods
      being the actor's (per-dimension Gaussian log-densities, clamped, averaged over the chunk);
    - ``A_k = gamma_denoising ** t_k * A``: the advantage is discounted along the chain, so the
      step that outputs the action gets all of it and earlier steps less;
    - ``epsilon_k`` grows from ``first_step_clip_epsilon`` at ``k = 0`` to ``clip_epsilon`` at
      ``k = K - 1``: ``eps_first + (eps - eps_first) (exp(c k / (K - 1)) - 1) / (exp(c) - 1)``
      with ``c = clip_epsilon_growth`` (constant when both ends are equal, DPPO's Gym setting);
    - ``loss_objective = - mean_k min(r_k A_k, clip(r_k, 1 - epsilon_k, 1 + epsilon_k) A_k)``,
      then reduced over the batch.

    The critic is a state-value network ``V(s)`` on the environment MDP, trained on the targets
    of TorchRL's value estimators (GAE through ``make_value_estimator``); the advantage is
    computed from it when absent, then standardised per batch. There is no entropy term: the
    steps' standard deviations come from the noise schedule and have no parameters. Value
    clipping, reductions and keys are TorchRL's :class:`~torchrl.objectives.ClipPPOLoss`.

    Besides ``"loss_objective"`` and ``"loss_critic"``, the output holds detached statistics
    over all ``B * K`` ratios: ``"clip_fraction"`` (share with ``|r_k - 1| > epsilon_k``),
    ``"kl_approx"`` (the estimator ``mean(r - 1 - log r)`` of ``KL(old || new)``, which DPPO's
    ``target_kl`` early stop reads), ``"mean_ratio"`` and ``"max_ratio"``.

    Reference: Ren et al., "Diffusion Policy Policy Optimization", arXiv 2409.00588. Its Gym
    settings: 20 denoising steps with the last 10 fine-tuned, ratio clip 0.01 at every step,
    ``gamma_denoising`` 0.99, GAE lambda 0.95, gamma 0.99 per chunk, value loss
    ``0.5 * 0.5 * MSE`` (``critic_coeff=0.25`` with TorchRL's squared error).

    Args:
        actor_network (DPPOActor): the DDPM chunk policy (fine-tuned and frozen networks).
        critic_network (nn.Module): a TensorDict module writing ``"state_value"`` from the
            observation, e.g. a :class:`~torchrl.modules.ValueOperator`.

    Keyword Args:
        clip_epsilon (float, optional): ratio clip of the last denoising step (of every step
            when ``first_step_clip_epsilon`` is ``None``); schedulable as the ``clip_epsilon``
            buffer. Defaults to ``0.01`` (DPPO's ``clip_ploss_coef`` on Gym).
        first_step_clip_epsilon (float, optional): ratio clip of the first fine-tuned step
            (DPPO's ``clip_ploss_coef_base``). Defaults to ``None``: ``clip_epsilon``.
        clip_epsilon_growth (float, optional): rate ``c`` of the exponential interpolation
            between the two clips (DPPO's ``clip_ploss_coef_rate``). Defaults to ``3.0``.
        gamma_denoising (float, optional): discount of the advantage per denoising step before
            the last. Defaults to ``0.99``.
        critic_coeff (float, optional): weight of the squared value error. Defaults to ``0.25``.
        loss_critic_type (str, optional): ``"l2"``, ``"l1"`` or ``"smooth_l1"``. Defaults to
            ``"l2"``.
        normalize_advantage (bool, optional): standardise advantages per batch, before the
            denoising discount. Defaults to ``True``.
        **kwargs: other keyword arguments of :class:`~torchrl.objectives.ClipPPOLoss`
            (``reduction``, ``clip_value`` as a float, ``separate_losses``,
            ``log_explained_variance``, ...).

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.envs.utils import ExplorationType, set_exploration_type
        >>> from torchrl.modules import MLP, ValueOperator
        >>> from torchrl_rldt.modules import VelocityMLP
        >>> from torchrl_rldt.modules.diffusion import DDPMChunkModel, DPPOActor
        >>> from torchrl_rldt.objectives.dppo import DPPOLoss
        >>> model = DDPMChunkModel(VelocityMLP(11, 3, chunk_len=4, hidden_dim=32), 3, 20, chunk_len=4)
        >>> policy = DPPOActor(model, finetuned_steps=10)
        >>> critic = ValueOperator(MLP(in_features=11, out_features=1, num_cells=[32]),
        ...                        in_keys=["observation"])
        >>> loss = DPPOLoss(policy, critic)
        >>> loss.make_value_estimator(gamma=0.99, lmbda=0.95)
        >>> data = TensorDict(observation=torch.randn(8, 11), batch_size=[8])
        >>> with set_exploration_type(ExplorationType.RANDOM), torch.no_grad():
        ...     data = policy(data)
        >>> data["next"] = TensorDict(observation=torch.randn(8, 11), reward=torch.randn(8, 1),
        ...     done=torch.zeros(8, 1, dtype=torch.bool), terminated=torch.zeros(8, 1, dtype=torch.bool),
        ...     batch_size=[8])
        >>> losses = loss(data)
        >>> sorted(k for k in losses.keys() if k.startswith("loss_"))
        ['loss_critic', 'loss_objective']
        >>> round(losses["mean_ratio"].item(), 4)
        1.0
    """

    def __init__(
        self,
        actor_network: DPPOActor,
        critic_network: nn.Module,
        *,
        clip_epsilon: float = 0.01,
        first_step_clip_epsilon: float | None = None,
        clip_epsilon_growth: float = 3.0,
        gamma_denoising: float = 0.99,
        critic_coeff: float = 0.25,
        loss_critic_type: str = "l2",
        normalize_advantage: bool = True,
        **kwargs,
    ) -> None:
        if not isinstance(actor_network, DPPOActor):
            raise TypeError(f"actor_network must be a DPPOActor, got {type(actor_network).__name__}.")
        if isinstance(clip_epsilon, (tuple, list)):
            raise ValueError("DPPOLoss takes a float clip_epsilon (its per-step schedule is "
                             "set by first_step_clip_epsilon).")
        for name, value in (("clip_epsilon", clip_epsilon),
                            ("first_step_clip_epsilon", first_step_clip_epsilon)):
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}.")
        if not 0 < gamma_denoising <= 1:
            raise ValueError(f"gamma_denoising must be in (0, 1], got {gamma_denoising}.")
        if clip_epsilon_growth <= 0:
            raise ValueError(f"clip_epsilon_growth must be > 0, got {clip_epsilon_growth}.")
        refuse_ratio_sized_value_clip("DPPOLoss", kwargs)
        unsupported = [name for name in ("delay_actor", "max_importance_ratio", "entropy_coeff",
                                         "entropy_bonus", "functional", "advantage_norm")
                       if name in kwargs]
        if unsupported:
            # the ratio is recomputed with the module's current parameters, and the steps'
            # standard deviations have no parameters (no entropy to regularise)
            raise ValueError(f"DPPOLoss does not support {unsupported}.")
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
        self.first_step_clip_epsilon = first_step_clip_epsilon
        self.clip_epsilon_growth = clip_epsilon_growth
        self.gamma_denoising = gamma_denoising
        # the ratio scores the stored chains, under the actor's own keys
        self.set_keys(action=actor_network.chain_key, sample_log_prob=actor_network.log_prob_key)

    @property
    def out_keys(self) -> list[str]:
        if self._out_keys is None:
            self._out_keys = ["loss_objective", "clip_fraction", "kl_approx", "mean_ratio",
                              "max_ratio", *critic_out_keys(self)]
        return self._out_keys

    @out_keys.setter
    def out_keys(self, values) -> None:
        self._out_keys = values

    def step_clip_epsilon(self) -> torch.Tensor:
        """The ratio clip of each fine-tuned transition, ``[K]``, in chain order."""
        last = self.clip_epsilon
        num_steps = self.actor_network.finetuned_steps
        if self.first_step_clip_epsilon is None or num_steps == 1:
            return last.expand(num_steps)
        position = torch.arange(num_steps, dtype=last.dtype, device=last.device) / (num_steps - 1)
        growth = self.clip_epsilon_growth
        weight = torch.expm1(growth * position) / math.expm1(growth)
        return self.first_step_clip_epsilon + (last - self.first_step_clip_epsilon) * weight

    def denoising_discount(self) -> torch.Tensor:
        """``gamma_denoising ** t`` for each fine-tuned transition, ``[K]``, in chain order."""
        # on the loss's device, also after loss.to(device) moved only its functional copies
        timestep = self.actor_network.finetuned_timesteps.to(self.clip_epsilon)
        return self.gamma_denoising ** timestep

    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """The DPPO surrogate and the value loss on a batch of collected samples."""
        tensordict = tensordict.clone(False)
        advantage = tensordict.get(self.tensor_keys.advantage, None)
        update_norm = advantage is None
        if advantage is None:
            self.value_estimator(
                tensordict,
                params=self._cached_critic_network_params_detached,
                target_params=self.target_critic_network_params,
            )
            advantage = tensordict.get(self.tensor_keys.advantage)
        advantage = self._maybe_normalize_advantage(advantage, tensordict, update_norm=update_norm)

        actor = self.actor_network
        old_log_prob = tensordict.get(self.tensor_keys.sample_log_prob)
        if old_log_prob.requires_grad:
            raise RuntimeError(f"the stored {self.tensor_keys.sample_log_prob!r} requires grad.")
        with self.actor_network_params.to_module(actor):
            log_prob = actor.log_prob(
                tensordict.get(actor.observation_key), tensordict.get(self.tensor_keys.action)
            )
        if old_log_prob.shape != log_prob.shape:
            raise ValueError(
                f"the stored log-probabilities have shape {tuple(old_log_prob.shape)}, expected "
                f"{tuple(log_prob.shape)} (one per fine-tuned denoising step)."
            )
        check_advantage_shape(advantage, old_log_prob.shape[:-1], self.tensor_keys.advantage)
        log_ratio = log_prob - old_log_prob  # [*B, K]
        ratio = log_ratio.exp()
        epsilon = self.step_clip_epsilon()
        step_advantage = advantage * self.denoising_discount()  # [*B, 1] -> [*B, K]
        clipped = torch.minimum(torch.maximum(ratio, 1 - epsilon), 1 + epsilon)
        gain = torch.minimum(ratio * step_advantage, clipped * step_advantage)
        with torch.no_grad():
            out = TensorDict(
                {
                    "clip_fraction": ((ratio - 1).abs() > epsilon).to(ratio.dtype).mean(),
                    # k3 estimator of KL(old || new), what DPPO's target_kl is compared with
                    "kl_approx": (ratio - 1 - log_ratio).mean(),
                    "mean_ratio": ratio.mean(),
                    "max_ratio": ratio.max(),
                }
            )
        out.set("loss_objective", -gain.mean(-1, keepdim=True))
        return finish_ppo_output(self, out, tensordict)


class DDPMChunkBCLoss(DiffusionBCLoss):
    """Epsilon-prediction behaviour cloning of a DDPM over action chunks.

    TorchRL's :class:`~torchrl.objectives.DiffusionBCLoss` for a
    :class:`~torchrl_rldt.modules.diffusion.DDPMChunkModel` over action chunks: for a
    demonstration chunk ``a`` ``[*B, H, A]``, a timestep ``t ~ U{0, .., T - 1}`` and
    ``eps ~ N(0, I)``, the loss is ``|| eps(s, sqrt(abar_t) a + sqrt(1 - abar_t) eps, t) - eps ||^2``
    reduced by ``reduction`` over the batch and the chunk's dimensions (``"mean"``: DPPO's
    pretraining loss). Keys, output key (``"loss_diffusion_bc"``) and reduction are the parent's.
    Only the forward pass is new: the parent draws one timestep per entry of
    ``action.shape[:-1]`` (one per chunk row, for a chunk) and calls
    ``actor_network.module.score_network`` on the concatenation
    ``[noisy_action, observation, t]``, which takes flat actions and a one-tensor network.

    Pretrain the model with this loss, then build the
    :class:`~torchrl_rldt.modules.diffusion.DPPOActor` that fine-tunes it (the actor freezes a
    copy of the network when it is built).

    Reference: Ho et al., "Denoising Diffusion Probabilistic Models", arXiv 2006.11239; DPPO's
    pretraining, Ren et al., arXiv 2409.00588.

    Args:
        model (DDPMChunkModel): the DDPM to train.

    Keyword Args:
        reduction (str, optional): ``"mean"``, ``"sum"`` or ``"none"`` (per dimension).
            Defaults to ``"mean"``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl_rldt.modules import VelocityMLP
        >>> from torchrl_rldt.modules.diffusion import DDPMChunkModel
        >>> from torchrl_rldt.objectives.dppo import DDPMChunkBCLoss
        >>> model = DDPMChunkModel(VelocityMLP(11, 3, chunk_len=4, hidden_dim=32), 3, 20, chunk_len=4)
        >>> loss = DDPMChunkBCLoss(model)
        >>> data = TensorDict(observation=torch.randn(8, 11), action=torch.rand(8, 4, 3) * 2 - 1,
        ...                   batch_size=[8])
        >>> loss(data)["loss_diffusion_bc"].shape
        torch.Size([])
    """

    actor_network: DDPMChunkModel

    def __init__(self, model: DDPMChunkModel, *, reduction: str = "mean") -> None:
        if not isinstance(model, DDPMChunkModel):
            raise TypeError(f"model must be a DDPMChunkModel, got {type(model).__name__}.")
        super().__init__(model, reduction=check_reduction(reduction))

    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDict:
        """The epsilon-prediction loss on a batch of demonstration chunks."""
        action = tensordict.get(self.tensor_keys.action)
        observation = tensordict.get(self.tensor_keys.observation)
        model = self.actor_network
        if action.shape[-2:] != model.action_shape:
            raise ValueError(
                f"the action chunk at {self.tensor_keys.action!r} has trailing shape "
                f"{tuple(action.shape[-2:])}, the model expects {tuple(model.action_shape)}."
            )
        timestep = torch.randint(0, model.num_steps, action.shape[:-2], device=action.device)
        with self.actor_network_params.to_module(model):
            noisy, noise = model.add_noise(action, timestep)
            predicted = model.predict_noise(observation, noisy, timestep)
        return TensorDict(loss_diffusion_bc=F.mse_loss(predicted, noise, reduction=self.reduction))
