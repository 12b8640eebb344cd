# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
"""DDPM policies over action chunks, and the policy that DPPO fine-tunes.

Two layers, as for the flow policies of :mod:`torchrl_rldt.modules.flow`:

- :class:`DDPMChunkModel` is tensors only: an epsilon-prediction network, its noise schedule,
  the forward process (:meth:`~DDPMChunkModel.add_noise`, what behaviour cloning trains on)
  and the mean and standard deviation of one reverse step
  (:meth:`~DDPMChunkModel.posterior`).
- :class:`DPPOActor` is the TensorDict policy around it: it runs the reverse chain, keeps the
  last ``finetuned_steps`` latents and their Gaussian log-likelihood for PPO, and denoises the
  earlier steps with a frozen copy of the pretrained network.

Why not torchrl's :class:`~torchrl.modules.DiffusionActor`: its reverse chain is one call inside
a private module (``_DDPMModule.forward``) that returns the final action only, so neither the
latents nor the steps' means are reachable, and a likelihood cannot be built on it; its schedule
is linear and fixed at construction, where DPPO uses the cosine schedule; its reverse step draws
with variance ``beta_t`` and never clips the predicted clean action, where DPPO draws with the
posterior variance and clips that prediction, which changes the mean; and it has one network
for every step and flat ``[*B, A]`` actions. What is kept from it: the epsilon-prediction
contract (the network sees the noisy action, the observation and the integer timestep as a
float), the name and meaning of ``add_noise`` for the forward process, and its training loss
(:class:`~torchrl_rldt.objectives.dppo.DDPMChunkBCLoss` subclasses
:class:`~torchrl.objectives.DiffusionBCLoss`).

Notation: timesteps are 0-indexed as arrays are. The latent of level ``t`` (``0 .. T - 1``) is
``q(x_t | a) = N(sqrt(abar_t) a, (1 - abar_t) I)`` with ``abar_t = prod_{s <= t} (1 - beta_s)``;
the reverse step at timestep ``t`` takes the latent of level ``t`` to that of level ``t - 1``,
level ``-1`` being the clean action chunk. Sampling starts at level ``T - 1`` from ``N(0, I)``.
"""
from __future__ import annotations

import copy
import math
from typing import Sequence

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase, dispatch
from tensordict.utils import NestedKey, unravel_key
from torch import nn
from torchrl.data import Composite, TensorSpec

from torchrl_rldt.modules.flow import ChunkActionBounds, FixedKeysMixin, is_deterministic_exploration

__all__ = ["DDPMChunkModel", "DPPOActor", "cosine_beta_schedule"]

# floor of the DDPM noise in the reference's evaluation sampler (which adds none at the last step)
_EVALUATION_MIN_STD = 1e-3
# floor of the posterior variance before its logarithm (zero at the last step)
_MIN_POSTERIOR_VARIANCE = 1e-20


def cosine_beta_schedule(
    num_steps: int, offset: float = 0.008, max_beta: float = 0.999
) -> torch.Tensor:
    """The cosine noise schedule of Nichol and Dhariwal, the one DPPO uses.

    ``abar(t) = cos^2(((t / T) + s) / (1 + s) * pi / 2) / abar(0)`` on the grid ``t = 0 .. T``
    and ``beta_t = 1 - abar(t + 1) / abar(t)``, clipped to ``[0, max_beta]``. Computed in double
    precision, returned in ``float32``.

    Reference: Nichol and Dhariwal, "Improved Denoising Diffusion Probabilistic Models",
    arXiv 2102.09672.

    Args:
        num_steps (int): the number of diffusion steps ``T``.
        offset (float, optional): the offset ``s`` that keeps ``beta`` away from 0 near
            ``t = 0``. Defaults to ``0.008``.
        max_beta (float, optional): upper clip of ``beta``. Defaults to ``0.999``.

    Returns:
        The ``T`` values ``beta_0 .. beta_{T-1}``.

    Examples:
        >>> from torchrl_rldt.modules.diffusion import cosine_beta_schedule
        >>> betas = cosine_beta_schedule(20)
        >>> betas.shape, bool((betas[1:] > betas[:-1]).all())
        (torch.Size([20]), True)
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive int, got {num_steps!r}.")
    levels = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    alphas_cumprod = torch.cos((levels + offset) / (1 + offset) * math.pi / 2) ** 2
    alphas_cumprod = alphas_cumprod / alphas_cumprod[0]
    betas = 1 - alphas_cumprod[1:] / alphas_cumprod[:-1]
    return betas.clamp(0, max_beta).float()


class DDPMChunkModel(ChunkActionBounds, nn.Module):
    """An epsilon-prediction DDPM over action chunks ``[*B, H, A]``: tensors in, tensors out.

    The network ``eps(observation, noisy_action, timestep)`` predicts the noise of a latent
    ``x_t = sqrt(abar_t) a + sqrt(1 - abar_t) eps``. A reverse step first recovers the clean
    chunk, clips it to ``[-denoised_clip_value, denoised_clip_value]`` (actions are normalised
    to ``[-1, 1]``), and takes the mean and standard deviation of the Gaussian posterior
    ``q(x_{t-1} | x_t, a_hat)``:

    - ``a_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)``, then clipped;
    - ``mean = beta_t sqrt(abar_{t-1}) / (1 - abar_t) a_hat
      + (1 - abar_{t-1}) sqrt(alpha_t) / (1 - abar_t) x_t``;
    - ``std = sqrt(beta_t (1 - abar_{t-1}) / (1 - abar_t))`` (0 at ``t = 0``, floored at
      ``1e-10``), with ``abar_{-1} = 1``.

    Sampling lives in :class:`DPPOActor`, which adds the floors and the clips of DPPO around
    these steps. Timesteps are 0-indexed (see the module docstring).

    Reference: Ho et al., "Denoising Diffusion Probabilistic Models", arXiv 2006.11239; the
    schedule and clips of Ren et al., "Diffusion Policy Policy Optimization", arXiv 2409.00588.

    Args:
        denoising_network (nn.Module): ``eps(observation, noisy_action, timestep)`` returning a
            tensor shaped like ``noisy_action`` (``[*B, H, A]``) for observations ``[*B, D]``
            and float timesteps ``[*B]`` (the integer timestep, not a fraction: DPPO's
            sinusoidal embedding reads ``0 .. T - 1``); e.g.
            :class:`~torchrl_rldt.modules.VelocityMLP`, a residual MLP with the input layout of
            DPPO's ``DiffusionMLP`` (flattened chunk, sinusoidal time embedding, observation).
        action_dim (int): size of one action.
        num_steps (int, optional): diffusion steps ``T``. Defaults to ``20`` (DPPO's Gym setting).

    Keyword Args:
        chunk_len (int, optional): actions per chunk ``H``. Defaults to ``1``.
        betas (torch.Tensor, optional): a custom schedule of ``num_steps`` values in ``(0, 1)``,
            e.g. ``torch.linspace(1e-4, 0.02, num_steps)`` for the linear schedule of torchrl's
            ``DiffusionActor``. Defaults to :func:`cosine_beta_schedule`.
        denoised_clip_value (float, optional): clip of the predicted clean chunk in each reverse
            step; ``None`` disables it. Defaults to ``1.0`` (DPPO's value).
        final_action_clip_value (float, optional): clip of the last latent ``x_{-1}`` inside the
            chain, so that its likelihood is scored at the clipped value as DPPO does; ``None``
            disables it. Defaults to ``None`` (DPPO's Gym setting).
        low (torch.Tensor or float, optional): lower bound of the executed action (broadcast to
            one action); the chain itself is not clamped. Defaults to no bound.
        high (torch.Tensor or float, optional): upper bound of the executed action. Defaults to
            no bound.

    Examples:
        >>> import torch
        >>> from torchrl_rldt.modules import VelocityMLP
        >>> from torchrl_rldt.modules.diffusion import DDPMChunkModel
        >>> model = DDPMChunkModel(VelocityMLP(11, 3, chunk_len=4, hidden_dim=32), 3, 20, chunk_len=4)
        >>> action, timestep = torch.rand(5, 4, 3) * 2 - 1, torch.randint(0, 20, (5,))
        >>> noisy, noise = model.add_noise(action, timestep)
        >>> model(torch.randn(5, 11), noisy, timestep).shape
        torch.Size([5, 4, 3])
        >>> mean, std = model.posterior(torch.randn(5, 11), noisy, timestep)
        >>> mean.shape, std.shape
        (torch.Size([5, 4, 3]), torch.Size([5, 1, 1]))
    """

    def __init__(
        self,
        denoising_network: nn.Module,
        action_dim: int,
        num_steps: int = 20,
        *,
        chunk_len: int = 1,
        betas: torch.Tensor | None = None,
        denoised_clip_value: float | None = 1.0,
        final_action_clip_value: float | None = None,
        low: torch.Tensor | float | None = None,
        high: torch.Tensor | float | None = None,
    ) -> None:
        super().__init__()
        if action_dim < 1 or chunk_len < 1:
            raise ValueError("action_dim and chunk_len must be positive.")
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"num_steps must be a positive int, got {num_steps!r}.")
        for name, value in (("denoised_clip_value", denoised_clip_value),
                            ("final_action_clip_value", final_action_clip_value)):
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0 or None, got {value}.")
        if betas is None:
            betas = cosine_beta_schedule(num_steps)
        betas = torch.as_tensor(betas, dtype=torch.float64)
        if betas.shape != (num_steps,) or not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError(f"betas must hold num_steps={num_steps} values in (0, 1).")
        self.denoising_network = denoising_network
        self.action_dim, self.chunk_len, self.num_steps = action_dim, chunk_len, num_steps
        self.denoised_clip_value = denoised_clip_value
        self.final_action_clip_value = final_action_clip_value
        alphas = 1 - betas
        alphas_cumprod = alphas.cumprod(0)
        alphas_cumprod_prev = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
        variance = betas * (1 - alphas_cumprod_prev) / (1 - alphas_cumprod)
        schedule = {
            "betas": betas,
            "alphas_cumprod": alphas_cumprod,
            "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1 - alphas_cumprod).sqrt(),
            "sqrt_recip_alphas_cumprod": alphas_cumprod.rsqrt(),
            "sqrt_recipm1_alphas_cumprod": (1 / alphas_cumprod - 1).sqrt(),
            "posterior_clean_coef": betas * alphas_cumprod_prev.sqrt() / (1 - alphas_cumprod),
            "posterior_noisy_coef": (1 - alphas_cumprod_prev) * alphas.sqrt() / (1 - alphas_cumprod),
            "posterior_std": variance.clamp(min=_MIN_POSTERIOR_VARIANCE).sqrt(),
        }
        # derived from the constructor arguments: rebuilt, not in the model's state_dict (a
        # loss's functional copy of the model, convert_to_functional's, does hold them)
        for name, value in schedule.items():
            self.register_buffer(name, value.float(), persistent=False)
        self._register_action_bounds(low, high)

    @property
    def action_shape(self) -> torch.Size:
        """Shape of one chunk: ``[chunk_len, action_dim]``."""
        return torch.Size([self.chunk_len, self.action_dim])

    @staticmethod
    def _at(values: torch.Tensor, timestep: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
        """``values[timestep]`` shaped ``[*timestep.shape, 1, 1]`` to broadcast over chunks."""
        timestep = torch.as_tensor(timestep, device=values.device)
        return values[timestep].to(like.dtype)[..., None, None]

    def add_noise(
        self,
        clean_action: torch.Tensor,
        timestep: torch.Tensor | int,
        noise: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The forward process: ``x_t = sqrt(abar_t) a + sqrt(1 - abar_t) eps``.

        Named and shaped like torchrl's ``DiffusionActor`` counterpart, for chunks.

        Args:
            clean_action (torch.Tensor): chunks ``[*B, H, A]``.
            timestep (torch.Tensor or int): integer timesteps in ``[0, T)``, ``[*B]`` or a
                scalar.
            noise (torch.Tensor, optional): ``eps``; defaults to a fresh ``N(0, I)`` draw.

        Returns:
            The noisy chunks and the noise, both ``[*B, H, A]``.
        """
        if noise is None:
            noise = torch.randn_like(clean_action)
        noisy = (self._at(self.sqrt_alphas_cumprod, timestep, clean_action) * clean_action
                 + self._at(self.sqrt_one_minus_alphas_cumprod, timestep, clean_action) * noise)
        return noisy, noise

    def predict_noise(
        self,
        observation: torch.Tensor,
        noisy_action: torch.Tensor,
        timestep: torch.Tensor | int,
        *,
        network: nn.Module | None = None,
    ) -> torch.Tensor:
        """The predicted noise ``eps(observation, x_t, t)``, ``[*B, H, A]``.

        Args:
            observation (torch.Tensor): ``[*B, D]``.
            noisy_action (torch.Tensor): ``x_t``, ``[*B, H, A]``.
            timestep (torch.Tensor or int): ``t``, broadcast to ``[*B]``.

        Keyword Args:
            network (nn.Module, optional): replaces :attr:`denoising_network` (DPPO's frozen base
                network). Defaults to :attr:`denoising_network`.
        """
        network = self.denoising_network if network is None else network
        time = torch.as_tensor(timestep, dtype=noisy_action.dtype, device=noisy_action.device)
        return network(observation, noisy_action, time.expand(noisy_action.shape[:-2]))

    def forward(
        self, observation: torch.Tensor, noisy_action: torch.Tensor, timestep: torch.Tensor | int
    ) -> torch.Tensor:
        """The predicted noise (see :meth:`predict_noise`)."""
        return self.predict_noise(observation, noisy_action, timestep)

    def posterior(
        self,
        observation: torch.Tensor,
        noisy_action: torch.Tensor,
        timestep: torch.Tensor | int,
        *,
        network: nn.Module | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation of the reverse step at ``timestep``.

        Args:
            observation (torch.Tensor): ``[*B, D]``.
            noisy_action (torch.Tensor): the latent ``x_t``, ``[*B, H, A]``.
            timestep (torch.Tensor or int): ``t`` in ``[0, T)``, ``[*B]`` or a scalar.

        Keyword Args:
            network (nn.Module, optional): the network predicting the noise. Defaults to
                :attr:`denoising_network`.

        Returns:
            The mean ``[*B, H, A]`` (through the clipped clean-chunk prediction) and the
            standard deviation ``sqrt(beta_tilde_t)``, ``[*timestep.shape, 1, 1]``, before any
            floor.
        """
        noise = self.predict_noise(observation, noisy_action, timestep, network=network)
        clean = (self._at(self.sqrt_recip_alphas_cumprod, timestep, noisy_action) * noisy_action
                 - self._at(self.sqrt_recipm1_alphas_cumprod, timestep, noisy_action) * noise)
        if self.denoised_clip_value is not None:
            clean = clean.clamp(-self.denoised_clip_value, self.denoised_clip_value)
        mean = (self._at(self.posterior_clean_coef, timestep, noisy_action) * clean
                + self._at(self.posterior_noisy_coef, timestep, noisy_action) * noisy_action)
        return mean, self._at(self.posterior_std, timestep, noisy_action)

    def clip_final_latent(self, latent: torch.Tensor) -> torch.Tensor:
        """The last latent clipped by ``final_action_clip_value`` (unchanged when ``None``)."""
        if self.final_action_clip_value is None:
            return latent
        return latent.clamp(-self.final_action_clip_value, self.final_action_clip_value)


class DPPOActor(FixedKeysMixin, TensorDictModuleBase):
    """The DDPM chunk policy that DPPO fine-tunes, as a TensorDict policy.

    Sampling (RANDOM exploration type, or no exploration context) runs the ``T`` reverse steps
    of a :class:`DDPMChunkModel` from ``x_{T-1} ~ N(0, I)``. Step ``t`` draws
    ``x_{t-1} = mean_t + std_t * clip(z, -noise_clip, noise_clip)``, ``z ~ N(0, I)``, with
    ``std_t = max(sqrt(beta_tilde_t), min_sampling_std)``; the last latent is clipped by the
    model's ``final_action_clip_value``. Only the last ``K = finetuned_steps`` steps
    (``t < K``) use the fine-tuned network, ``model.denoising_network``; the first ``T - K``
    use ``base_network``, a frozen copy made at construction. The DDPM chain is then an MDP
    whose ``K`` fine-tuned steps are Gaussian policies: the module writes the chunk
    ``clamp(x_{-1}, low, high)``, the chain ``x_{K-1}, .., x_{-1}`` (``[*B, K + 1, H, A]``, the
    input of the first fine-tuned step first) and the log-likelihood of each fine-tuned step,
    ``[*B, K]``, scored as DPPO scores it:

    ``log N(x_{t-1}; mean_t, max(sqrt(beta_tilde_t), min_log_prob_std)^2)`` per dimension,
    clamped to ``log_prob_bounds``, averaged over the chunk's ``H * A`` dimensions.

    :meth:`log_prob` recomputes those log-likelihoods under the current parameters, with one
    batched call of the network over all ``K`` steps; a loss uses it for PPO's ratio. Under a
    deterministic exploration type (DETERMINISTIC, MODE, MEAN, MEDIAN) only the chunk is
    written, drawn by DPPO's evaluation sampler: the plain DDPM noise (``sqrt(beta_tilde_t)``
    floored at ``1e-3``, none at the last step) from a random ``x_{T-1}``; with
    ``noiseless_evaluation=True``, from ``x_{T-1} = 0`` and without any noise, the convention of
    torchrl's ``DiffusionActor`` (repeatable, but not a DDPM sample).

    Parameters: ``model.denoising_network`` is trained; ``base_network`` has
    ``requires_grad=False`` (an optimiser over :meth:`parameters` leaves it alone). Build the
    actor once the pretrained weights are loaded, or call :meth:`reset_base_network` after.

    Reference: Ren et al., "Diffusion Policy Policy Optimization", arXiv 2409.00588 (Gym: 20
    denoising steps, the last 10 fine-tuned, both std floors 0.1, noise clip 3).

    Args:
        model (DDPMChunkModel): the pretrained DDPM; its network is the one fine-tuned.

    Keyword Args:
        finetuned_steps (int, optional): ``K``, the number of last reverse steps that use the
            fine-tuned network and are scored (DPPO's ``ft_denoising_steps``), in ``[1, T]``.
            Defaults to ``10``.
        min_sampling_std (float, optional): floor of the sampling standard deviation, on every
            step (DPPO's ``min_sampling_denoising_std``). Defaults to ``0.1``.
        min_log_prob_std (float, optional): floor of the standard deviation of the scored
            Gaussians (DPPO's ``min_logprob_denoising_std``). Defaults to ``0.1``.
        noise_clip (float, optional): clip of the standard-normal draws (DPPO's
            ``randn_clip_value``). Defaults to ``3.0`` (its Gym fine-tuning value).
        log_prob_bounds (tuple of float, optional): clamp of each dimension's log-density before
            the reduction; ``None`` disables it. Defaults to ``(-5.0, 2.0)`` (DPPO's loss).
        average_log_prob (bool, optional): average the per-dimension log-densities over the
            chunk (DPPO; its ratio clip of 0.01 is calibrated on that scale) rather than sum
            them. Defaults to ``True``.
        noiseless_evaluation (bool, optional): see above. Defaults to ``False``.
        observation_key (NestedKey, optional): the observation input. Defaults to
            ``"observation"``.
        action_key (NestedKey, optional): where the chunk ``[*B, H, A]`` is written. Defaults to
            ``"action"``.
        chain_key (NestedKey, optional): where the chain ``[*B, K + 1, H, A]`` is written.
            Defaults to ``"denoising_chain"``.
        log_prob_key (NestedKey, optional): where the per-step log-likelihoods ``[*B, K]`` are
            written. Defaults to ``"sample_log_prob"``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.envs.utils import ExplorationType, set_exploration_type
        >>> from torchrl_rldt.modules import VelocityMLP
        >>> from torchrl_rldt.modules.diffusion import DDPMChunkModel, DPPOActor
        >>> model = DDPMChunkModel(VelocityMLP(11, 3, chunk_len=4, hidden_dim=32), 3, 20,
        ...                        chunk_len=4, low=-1.0, high=1.0)
        >>> policy = DPPOActor(model, finetuned_steps=10)
        >>> td = TensorDict(observation=torch.randn(5, 11), batch_size=[5])
        >>> with set_exploration_type(ExplorationType.RANDOM):
        ...     td = policy(td)
        >>> td["action"].shape, td["denoising_chain"].shape, td["sample_log_prob"].shape
        (torch.Size([5, 4, 3]), torch.Size([5, 11, 4, 3]), torch.Size([5, 10]))
        >>> torch.allclose(policy.log_prob(td["observation"], td["denoising_chain"]),
        ...                td["sample_log_prob"], atol=1e-5)
        True
        >>> bool(policy.action_spec.is_in(td["action"]))
        True
    """

    def __init__(
        self,
        model: DDPMChunkModel,
        *,
        finetuned_steps: int = 10,
        min_sampling_std: float = 0.1,
        min_log_prob_std: float = 0.1,
        noise_clip: float = 3.0,
        log_prob_bounds: Sequence[float] | None = (-5.0, 2.0),
        average_log_prob: bool = True,
        noiseless_evaluation: bool = False,
        observation_key: NestedKey = "observation",
        action_key: NestedKey = "action",
        chain_key: NestedKey = "denoising_chain",
        log_prob_key: NestedKey = "sample_log_prob",
    ) -> None:
        super().__init__()
        if not isinstance(model, DDPMChunkModel):
            raise TypeError(f"model must be a DDPMChunkModel, got {type(model).__name__}.")
        if (isinstance(finetuned_steps, bool) or not isinstance(finetuned_steps, int)
                or not 1 <= finetuned_steps <= model.num_steps):
            raise ValueError(
                f"finetuned_steps must be an int in [1, {model.num_steps}], got {finetuned_steps!r}."
            )
        for name, value in (("min_sampling_std", min_sampling_std),
                            ("min_log_prob_std", min_log_prob_std), ("noise_clip", noise_clip)):
            if value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}.")
        if log_prob_bounds is not None:
            log_prob_bounds = tuple(float(bound) for bound in log_prob_bounds)
            if len(log_prob_bounds) != 2 or log_prob_bounds[0] >= log_prob_bounds[1]:
                raise ValueError(f"log_prob_bounds must be (low, high) with low < high, got "
                                 f"{log_prob_bounds}.")
        self.model = model
        # DPPO leaves the early, coarse steps to the pretrained network
        self.base_network = copy.deepcopy(model.denoising_network).requires_grad_(False)
        self.finetuned_steps = finetuned_steps
        self.min_sampling_std, self.min_log_prob_std = min_sampling_std, min_log_prob_std
        self.noise_clip = noise_clip
        self.log_prob_bounds, self.average_log_prob = log_prob_bounds, average_log_prob
        self.noiseless_evaluation = noiseless_evaluation
        self._observation_key = unravel_key(observation_key)
        self._action_key, self._chain_key = unravel_key(action_key), unravel_key(chain_key)
        self._log_prob_key = unravel_key(log_prob_key)

    _fixed_keys_hint = "build a new DPPOActor"

    def _fixed_in_keys(self) -> list[NestedKey]:
        return [self._observation_key]

    def _fixed_out_keys(self) -> list[NestedKey]:
        return [self._action_key, self._chain_key, self._log_prob_key]

    @property
    def finetuned_timesteps(self) -> torch.Tensor:
        """The timesteps ``K - 1, .., 0`` of the scored transitions, in chain order."""
        return torch.arange(self.finetuned_steps - 1, -1, -1, device=self.model.betas.device)

    @property
    def action_spec(self) -> TensorSpec:
        """The spec of one chunk ``[H, A]``: ``Bounded`` with both bounds, else ``Unbounded``."""
        return self.model.chunk_spec(self.model.betas.device)

    @property
    def spec(self) -> Composite:
        """The output spec as TorchRL actors have it: ``Composite({action_key: action_spec})``."""
        return Composite({self.action_key: self.action_spec})

    def reset_base_network(self) -> None:
        """Copies the fine-tuned network into the frozen base network.

        The copy is made when the actor is built; call this after loading pretrained weights
        into ``model`` later, so that the early steps use them too.
        """
        self.base_network.load_state_dict(self.model.denoising_network.state_dict())

    def _reduce(self, per_dimension: torch.Tensor) -> torch.Tensor:
        """``[*B, K, H, A]`` log-densities to ``[*B, K]``: clamped, then averaged or summed."""
        if self.log_prob_bounds is not None:
            per_dimension = per_dimension.clamp(*self.log_prob_bounds)
        if self.average_log_prob:
            return per_dimension.mean((-2, -1))
        return per_dimension.sum((-2, -1))

    def transition_log_prob(self, observation: torch.Tensor, chain: torch.Tensor) -> torch.Tensor:
        """Per-dimension Gaussian log-densities ``[*B, K, H, A]`` of ``chain``'s transitions.

        Under the current fine-tuned network, with the ``min_log_prob_std`` floor; neither
        clamped nor reduced (see :meth:`log_prob`).

        Args:
            observation (torch.Tensor): ``[*B, D]``.
            chain (torch.Tensor): ``[*B, K + 1, H, A]`` as written by :meth:`forward`.
        """
        num_steps = self.finetuned_steps
        if chain.shape[-3] != num_steps + 1:
            raise ValueError(f"the chain holds {chain.shape[-3] - 1} transitions but the actor "
                             f"fine-tunes finetuned_steps={num_steps}.")
        batch_shape = chain.shape[:-3]
        timestep = self.finetuned_timesteps.expand(*batch_shape, num_steps)
        steps_observation = observation.unsqueeze(-2).expand(*batch_shape, num_steps,
                                                             observation.shape[-1])
        mean, std = self.model.posterior(steps_observation, chain[..., :-1, :, :], timestep)
        return self._step_log_prob(mean, std, chain[..., 1:, :, :])

    def _step_log_prob(self, mean: torch.Tensor, std: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-dimension ``log N(target; mean, max(std, min_log_prob_std)^2)``, as PPO scores a step."""
        return torch.distributions.Normal(mean, std.clamp(min=self.min_log_prob_std)).log_prob(target)

    def log_prob(self, observation: torch.Tensor, chain: torch.Tensor) -> torch.Tensor:
        """Log-likelihood ``[*B, K]`` of each fine-tuned transition of ``chain``, as PPO scores it.

        Args:
            observation (torch.Tensor): ``[*B, D]``.
            chain (torch.Tensor): ``[*B, K + 1, H, A]`` as written by :meth:`forward`.
        """
        return self._reduce(self.transition_log_prob(observation, chain))

    def _sample(self, observation: torch.Tensor, *, evaluation: bool):
        """Runs the reverse chain; returns the kept chain and the fine-tuned steps' means."""
        model, num_finetuned = self.model, self.finetuned_steps
        shape = (*observation.shape[:-1], *model.action_shape)
        if evaluation and self.noiseless_evaluation:
            latent = torch.zeros(shape, device=observation.device, dtype=self.model.dtype)
        else:
            latent = torch.randn(shape, device=observation.device, dtype=self.model.dtype)
        chain = [latent] if num_finetuned == model.num_steps else []
        means = []
        for timestep in reversed(range(model.num_steps)):
            network = model.denoising_network if timestep < num_finetuned else self.base_network
            mean, std = model.posterior(observation, latent, timestep, network=network)
            if not evaluation:
                std = std.clamp(min=self.min_sampling_std)
            elif timestep == 0 or self.noiseless_evaluation:
                std = torch.zeros_like(std)
            else:
                std = std.clamp(min=_EVALUATION_MIN_STD)
            noise = torch.randn_like(latent).clamp(-self.noise_clip, self.noise_clip)
            latent = mean + std * noise
            if timestep == 0:
                latent = model.clip_final_latent(latent)
            if timestep < num_finetuned:
                means.append(mean)
            # the input of the first fine-tuned step opens the chain
            if timestep <= num_finetuned:
                chain.append(latent)
        return torch.stack(chain, -3), torch.stack(means, -3)

    @property
    def written_keys(self) -> list[NestedKey]:
        """What a call writes: every out key under a random exploration type, the action alone
        under a deterministic one (what a call with keyword tensors returns)."""
        return self.out_keys[:1] if is_deterministic_exploration() else self.out_keys

    @dispatch(auto_batch_size=False, dest="written_keys")
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Samples a chunk (and, when random, its chain and log-likelihoods) into ``tensordict``."""
        observation = tensordict.get(self.observation_key)
        if is_deterministic_exploration():
            chain, _ = self._sample(observation, evaluation=True)
            return tensordict.set(self.action_key, self.model.clamp(chain[..., -1, :, :]).detach())
        chain, mean = self._sample(observation, evaluation=False)
        timestep = self.finetuned_timesteps
        std = self.model.posterior_std[timestep].to(mean.dtype)[:, None, None]
        log_prob = self._reduce(self._step_log_prob(mean, std, chain[..., 1:, :, :]))
        # rollout data: a loss recomputes the likelihood with gradients through log_prob()
        tensordict.set(self.action_key, self.model.clamp(chain[..., -1, :, :]).detach())
        tensordict.set(self.chain_key, chain.detach())
        tensordict.set(self.log_prob_key, log_prob.detach())
        return tensordict
