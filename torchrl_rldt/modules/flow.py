# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
"""Flow-matching policies: the velocity network, the tensor-only flow model and its TensorDict actor.

Two layers, as upstream TorchRL splits its flow policies (pytorch/rl PR 4436):

- :class:`FlowModel` is tensors only: the velocity ``v(observation, action, time)``, the one
  Euler integrator of the package (deterministic steps, or Gaussian steps for ReinFlow), the
  expected landing point of a chain state, and ``forward(observation, noise=None)``.
- :class:`FlowActor` is the TensorDict policy around it: keys fixed at construction, a bounded
  action spec, and the exploration-type contract (``x0 = 0`` under DETERMINISTIC).
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple, Sequence

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase, dispatch
from tensordict.utils import NestedKey, unravel_key
from torch import nn
from torchrl.data import Bounded, Composite, TensorSpec, Unbounded
from torchrl.envs.utils import ExplorationType, exploration_type

__all__ = ["FlowActor", "FlowChain", "FlowModel", "SinusoidalTimeEmbedding", "VelocityMLP"]

_DETERMINISTIC_TYPES = (
    ExplorationType.DETERMINISTIC,
    ExplorationType.MODE,
    ExplorationType.MEAN,
    ExplorationType.MEDIAN,
)


def is_deterministic_exploration() -> bool:
    """Whether the current exploration type asks for a deterministic action.

    DETERMINISTIC, MODE, MEAN and MEDIAN are deterministic; RANDOM, or no exploration context,
    is not.
    """
    return exploration_type() in _DETERMINISTIC_TYPES


class SinusoidalTimeEmbedding(nn.Module):
    """Sinusoidal embedding of a scalar time ``t`` in [0, 1], then a small MLP.

    Args:
        dim (int, optional): size of the sinusoidal features and of the output.
            Defaults to ``16``.
        hidden_dim (int, optional): hidden width of the MLP. Defaults to ``32``.
    """

    def __init__(self, dim: int = 16, hidden_dim: int = 32) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"dim must be even, got {dim}.")
        half = dim // 2
        frequencies = torch.exp(-math.log(10_000.0) * torch.arange(half) / max(half - 1, 1))
        self.register_buffer("frequencies", frequencies, persistent=False)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden_dim), nn.Mish(), nn.Linear(hidden_dim, dim))

    def forward(self, time: torch.Tensor) -> torch.Tensor:
        """Embeds ``time`` of shape ``[*B]`` into ``[*B, dim]``."""
        angles = time.unsqueeze(-1) * self.frequencies
        return self.mlp(torch.cat([angles.sin(), angles.cos()], -1))


class VelocityMLP(nn.Module):
    """The default velocity network ``v(observation, action, time)`` of a flow policy.

    A residual MLP over ``[flattened noisy chunk, time embedding, observation]``
    (the reference Gym network of RLDT, arXiv 2606.08602: 3 hidden layers of 512,
    ReLU, time embedding 16 -> 32 -> 16 with Mish). Hidden layer ``i > 0`` adds
    its input to its output.

    Args:
        observation_dim (int): size of the (flat) observation.
        action_dim (int): size of one action.

    Keyword Args:
        chunk_len (int, optional): actions per chunk ``H``. Defaults to ``1``.
        hidden_dim (int, optional): width of the hidden layers. Defaults to ``512``.
        num_layers (int, optional): number of hidden layers. Defaults to ``3``.
        time_dim (int, optional): size of the time embedding. Defaults to ``16``.
        activation (type[nn.Module], optional): activation of the hidden layers.
            Defaults to :class:`torch.nn.ReLU`.

    Examples:
        >>> import torch
        >>> from torchrl_rldt.modules import VelocityMLP
        >>> net = VelocityMLP(11, 3, chunk_len=4, hidden_dim=64)
        >>> net(torch.randn(5, 11), torch.randn(5, 4, 3), torch.rand(5)).shape
        torch.Size([5, 4, 3])
    """

    def __init__(
        self,
        observation_dim: int,
        action_dim: int,
        *,
        chunk_len: int = 1,
        hidden_dim: int = 512,
        num_layers: int = 3,
        time_dim: int = 16,
        activation: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        if min(observation_dim, action_dim, chunk_len, hidden_dim, num_layers) < 1:
            raise ValueError("all sizes of VelocityMLP must be positive.")
        self.chunk_len, self.action_dim = chunk_len, action_dim
        # what rebuilds this network from a checkpoint (see torchrl_rldt.checkpoint)
        self.config = {
            "observation_dim": observation_dim,
            "action_dim": action_dim,
            "chunk_len": chunk_len,
            "hidden_dim": hidden_dim,
            "num_layers": num_layers,
            "time_dim": time_dim,
            "activation": activation.__name__,
        }
        flat_action = chunk_len * action_dim
        self.time_embedding = SinusoidalTimeEmbedding(time_dim, 2 * time_dim)
        self.input_layer = nn.Linear(flat_action + time_dim + observation_dim, hidden_dim)
        self.hidden_layers = nn.ModuleList(
            nn.Linear(hidden_dim, hidden_dim) for _ in range(num_layers - 1)
        )
        self.activation = activation()
        self.output_layer = nn.Linear(hidden_dim, flat_action)

    def forward(
        self, observation: torch.Tensor, action: torch.Tensor, time: torch.Tensor
    ) -> torch.Tensor:
        """Velocity of shape ``action.shape`` ([*B, H, A]); ``time`` has shape [*B]."""
        if action.shape[-2:] != (self.chunk_len, self.action_dim):
            # a transposed [*B, A, H] chunk has the right size and would be read row by row
            raise ValueError(f"VelocityMLP expects chunks [*B, {self.chunk_len}, {self.action_dim}] "
                             f"(chunk_len, action_dim), got {tuple(action.shape)}.")
        flat = action.flatten(-2)
        if time.ndim and not any(time.stride()):
            # One time expanded over the batch (the Euler sampler): embed it once.
            embedding = self.time_embedding(time.reshape(-1)[:1]).expand(*time.shape, -1)
        else:
            embedding = self.time_embedding(time)
        hidden = self.activation(self.input_layer(torch.cat([flat, embedding, observation], -1)))
        for layer in self.hidden_layers:
            hidden = hidden + self.activation(layer(hidden))
        return self.output_layer(hidden).unflatten(-1, (self.chunk_len, self.action_dim))


class FlowChain(NamedTuple):
    """What :meth:`FlowModel.integrate` returns.

    Attributes:
        chain (torch.Tensor): the states ``x_0 .. x_N``, ``[*B, N + 1, H, A]``, unclamped.
        step_mean (torch.Tensor or None): the Gaussian steps' means ``x_k + v(x_k, t_k) / N``,
            ``[*B, N, H, A]`` (``None`` for a deterministic chain).
        step_std (torch.Tensor or None): the Gaussian steps' standard deviations,
            ``[*B, N, H, A]`` (``None`` for a deterministic chain).
    """

    chain: torch.Tensor
    step_mean: torch.Tensor | None = None
    step_std: torch.Tensor | None = None


def _broadcasts_to(shape: torch.Size, target: tuple[int, ...]) -> bool:
    try:
        return torch.broadcast_shapes(shape, target) == target
    except RuntimeError:
        return False


class ChunkActionBounds:
    """The optional action bounds of a chunk model: ``low`` and ``high`` buffers, their clamp
    and the TorchRL spec of one chunk.

    A mixin of :class:`FlowModel` and :class:`~torchrl_rldt.modules.DDPMChunkModel`, which
    define ``action_shape``.
    """

    low: torch.Tensor | None
    high: torch.Tensor | None

    def _register_action_bounds(
        self, low: torch.Tensor | float | None, high: torch.Tensor | float | None
    ) -> None:
        shape = tuple(self.action_shape)
        for name, bound in (("low", low), ("high", high)):
            bound = None if bound is None else torch.as_tensor(bound, dtype=torch.float32)
            if bound is not None and not _broadcasts_to(bound.shape, shape):
                raise ValueError(f"{name} has shape {tuple(bound.shape)}, which does not broadcast to "
                                 f"a chunk {shape}: give a scalar, ({shape[-1]},) or {shape}.")
            self.register_buffer(name, bound)
        if low is not None and high is not None and (self.low > self.high).any():
            raise ValueError("low must not exceed high.")

    @property
    def dtype(self) -> torch.dtype:
        """The floating dtype of the model's parameters: that of its noise, chains and actions."""
        for param in self.parameters():
            if param.is_floating_point():
                return param.dtype
        return torch.get_default_dtype()

    def clamp(self, action: torch.Tensor) -> torch.Tensor:
        """``action`` clamped to the bounds (unchanged without bounds)."""
        if self.low is None and self.high is None:
            return action
        return action.clamp(self.low, self.high)

    def chunk_spec(self, device: torch.device | None) -> TensorSpec:
        """The spec of one chunk ``[H, A]`` on ``device``.

        ``Bounded`` when both bounds are set, else ``Unbounded`` (a single bound is applied by
        :meth:`clamp` but has no TorchRL spec).

        Args:
            device (torch.device or None): the spec's device.
        """
        shape = self.action_shape
        if self.low is None or self.high is None:
            return Unbounded(shape, device=device)
        return Bounded(self.low.expand(shape), self.high.expand(shape), shape,
                       device=device, dtype=self.low.dtype)


class FlowModel(ChunkActionBounds, nn.Module):
    """A flow-matching model over action chunks: tensors in, tensors out.

    Time runs from ``t = 0`` (noise) to ``t = 1`` (action) along the linear interpolant
    ``x_t = (1 - t) z + t a``. Sampling integrates the learned velocity with ``num_steps``
    explicit Euler steps ``x_{k+1} = x_k + v(x_k, k / N | s) / N`` (:meth:`integrate`, the
    package's one sampler of the flow's ODE; with ``step_std`` each step becomes a Gaussian
    transition, ReinFlow's noisy chain; QAM's memoryless SDE has another drift and lives in
    :class:`~torchrl_rldt.objectives.QAMLoss`). The final state is clamped to ``[low, high]``.

    The method names and argument order follow upstream TorchRL's ``FlowMatchingModel``
    (``velocity(observation, action, time)``, ``forward(observation, noise=None)``, ``low`` and
    ``high`` keywords). Ours adds action chunks (``chunk_len``), the whole chain and the
    expected landing point that RLDT needs. ``forward`` without ``noise`` always samples
    ``x_0 ~ N(0, I)``: the deterministic ``x_0 = 0`` of evaluation is the
    :class:`FlowActor`'s decision, not the model's.

    Reference: Lei, Daniilidis, Loquercio, "Reinforcement Learning for Flow-Matching Policies
    with Density Transport", arXiv 2606.08602.

    Args:
        velocity_network (nn.Module): ``v(observation, action, time)`` returning a tensor shaped
            like ``action`` ([*B, chunk_len, action_dim]) for ``time`` of shape [*B]; e.g.
            :class:`VelocityMLP`.
        action_dim (int): size of one action.
        num_steps (int, optional): Euler steps ``N``; can be changed after training (the
            network is trained on continuous time). Defaults to ``10``.

    Keyword Args:
        chunk_len (int, optional): actions per chunk ``H``. Defaults to ``1``.
        low (torch.Tensor or float, optional): lower action bound (broadcast to one action).
            Defaults to no bound.
        high (torch.Tensor or float, optional): upper action bound. Defaults to no bound.

    Examples:
        >>> import torch
        >>> from torchrl_rldt.modules import FlowModel, VelocityMLP
        >>> model = FlowModel(VelocityMLP(11, 3, chunk_len=4, hidden_dim=64), 3, num_steps=8,
        ...                   chunk_len=4, low=-1.0, high=1.0)
        >>> observation = torch.randn(5, 11)
        >>> model(observation).shape
        torch.Size([5, 4, 3])
        >>> model.integrate(observation, torch.zeros(5, 4, 3)).chain.shape
        torch.Size([5, 9, 4, 3])
    """

    def __init__(
        self,
        velocity_network: nn.Module,
        action_dim: int,
        num_steps: int = 10,
        *,
        chunk_len: int = 1,
        low: torch.Tensor | float | None = None,
        high: torch.Tensor | float | None = None,
    ) -> None:
        super().__init__()
        if action_dim < 1 or chunk_len < 1:
            raise ValueError("action_dim and chunk_len must be positive.")
        self.velocity_network = velocity_network
        self.action_dim, self.chunk_len = action_dim, chunk_len
        self.num_steps = num_steps
        self._register_action_bounds(low, high)

    @property
    def num_steps(self) -> int:
        """Euler steps ``N`` used by the sampler."""
        return self._num_steps

    @num_steps.setter
    def num_steps(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"num_steps must be a positive int, got {value!r}.")
        self._num_steps = value

    @property
    def action_shape(self) -> torch.Size:
        """Shape of one chunk: ``[chunk_len, action_dim]``."""
        return torch.Size([self.chunk_len, self.action_dim])

    def velocity(
        self, observation: torch.Tensor, action: torch.Tensor, time: torch.Tensor | float
    ) -> torch.Tensor:
        """The velocity ``v(x_t, t | s)``; ``time`` broadcasts to the batch shape ``[*B]``."""
        time = torch.as_tensor(time, dtype=action.dtype, device=action.device)
        return self.velocity_network(observation, action, time.expand(action.shape[:-2]))

    def step_mean(
        self, observation: torch.Tensor, action: torch.Tensor, time: torch.Tensor | float
    ) -> torch.Tensor:
        """One Euler step from ``action`` at ``time``: ``x + v(x, t | s) / N``."""
        return action + self.velocity(observation, action, time) / self.num_steps

    def expected_action(
        self, observation: torch.Tensor, action: torch.Tensor, time: torch.Tensor | float
    ) -> torch.Tensor:
        """Expected landing point ``x_t + (1 - t) v(x_t, t | s)`` of a chain state.

        Its parameter gradient is ``(1 - t) dv/dtheta``: no back-propagation through the ODE.
        """
        return self._velocity_and_landing(observation, action, time)[1]

    def _velocity_and_landing(self, observation, action, time):
        time = torch.as_tensor(time, dtype=action.dtype, device=action.device)
        time = time.expand(action.shape[:-2])
        velocity = self.velocity(observation, action, time)
        return velocity, action + (1 - time)[..., None, None] * velocity

    def chain_landing(
        self, observation: torch.Tensor, chain: torch.Tensor, step: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The velocity and the expected landing point at step ``step`` of each chain.

        Args:
            observation (torch.Tensor): ``[*B, D]``.
            chain (torch.Tensor): chains ``[*B, N + 1, H, A]`` (see :meth:`integrate`).
            step (torch.Tensor): an integer step ``k`` in ``[0, N)`` per chain, ``[*B]``.

        Returns:
            ``v(x_k, k / N | s)`` and ``x_k + (1 - k / N) v``, both ``[*B, H, A]``.
        """
        index = step[..., None, None, None].expand(*step.shape, 1, *chain.shape[-2:])
        state = chain.gather(-3, index).squeeze(-3)
        time = step.to(chain.dtype) / (chain.shape[-3] - 1)
        return self._velocity_and_landing(observation, state, time)

    def initial_noise(self, batch_shape: torch.Size, device: torch.device | None = None) -> torch.Tensor:
        """``x_0 ~ N(0, I)`` of shape ``[*batch_shape, H, A]``, in the model's :attr:`dtype`."""
        return torch.randn((*batch_shape, *self.action_shape), device=device, dtype=self.dtype)

    def integrate(
        self,
        observation: torch.Tensor,
        noise: torch.Tensor,
        *,
        step_std: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ) -> FlowChain:
        """Runs the ``N`` Euler steps from ``x_0 = noise``.

        Args:
            observation (torch.Tensor): ``[*B, D]``.
            noise (torch.Tensor): the chain's start ``x_0``, ``[*B, H, A]``.

        Keyword Args:
            step_std (callable, optional): ``sigma(observation, time)`` returning positive
                standard deviations ``[*B, H, A]``; each step then draws
                ``x_{k+1} ~ N(x_k + v(x_k, t_k) / N, sigma(s, t_k)^2)``. Defaults to ``None``
                (deterministic steps).

        Returns:
            A :class:`FlowChain`: the chain ``[*B, N + 1, H, A]`` and, with ``step_std``, the
            steps' means and standard deviations ``[*B, N, H, A]``.
        """
        expected = (*observation.shape[:-1], *self.action_shape)
        if noise.shape != expected:
            raise ValueError(f"noise must have shape {expected}, got {tuple(noise.shape)}.")
        num_steps = self.num_steps
        x, chain, means, stds = noise, [noise], [], []
        for k in range(num_steps):
            if step_std is None:
                # one time for the whole batch: the velocity network can embed it once
                x = self.step_mean(observation, x, k / num_steps)
            else:
                time = torch.full(observation.shape[:-1], k / num_steps, dtype=x.dtype,
                                  device=x.device)
                mean, std = self.step_mean(observation, x, time), step_std(observation, time)
                x = mean + std * torch.randn_like(mean)
                means.append(mean)
                stds.append(std)
            chain.append(x)
        if step_std is None:
            return FlowChain(torch.stack(chain, dim=-3))
        return FlowChain(torch.stack(chain, -3), torch.stack(means, -3), torch.stack(stds, -3))

    def sample(
        self,
        observation: torch.Tensor,
        noise: torch.Tensor | None = None,
        *,
        return_chain: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Integrates the flow from ``noise`` (default ``N(0, I)``) to an action chunk.

        Returns the clamped action ``[*B, H, A]``, and with ``return_chain`` the unclamped
        chain ``x_0 .. x_N`` ``[*B, N + 1, H, A]`` as well.
        """
        if noise is None:
            noise = self.initial_noise(observation.shape[:-1], observation.device)
        chain = self.integrate(observation, noise).chain
        action = self.clamp(chain[..., -1, :, :])
        return (action, chain) if return_chain else action

    def forward(self, observation: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """An action chunk ``[*B, H, A]`` for observations ``[*B, D]`` (see :meth:`sample`)."""
        return self.sample(observation, noise)


def _fixed_keys_property(getter: str) -> property:
    """A read-only ``in_keys``/``out_keys``: reads ``getter()`` of the instance and refuses sets.

    A property with a setter (not a bare descriptor): tensordict's ``select_out_keys`` looks for
    ``fset`` and calls it, so the refusal reaches the user.
    """

    def read(self) -> list[NestedKey]:
        return getattr(self, getter)()

    def refuse(self, value) -> None:
        raise AttributeError(f"{type(self).__name__} keys are fixed at construction; "
                             f"{self._fixed_keys_hint}.")

    return property(read, refuse)


class FixedKeysMixin:
    """The key layout of the project's chunk policies, fixed at construction.

    ``in_keys == [observation_key]`` and ``out_keys == [action_key, chain_key, log_prob_key]``,
    the last two optional (a policy that writes no chain has neither; one that scores no
    log-likelihood has no ``log_prob_key``). Subclasses define :meth:`_fixed_in_keys` and
    :meth:`_fixed_out_keys` (where ``forward`` reads its keys, so a copy cannot drift) and
    :attr:`_fixed_keys_hint`, how to get other keys; setting ``in_keys`` or ``out_keys`` (also
    through ``select_out_keys``) raises with that hint. Put it before ``TensorDictModuleBase``
    in the bases.
    """

    _fixed_keys_hint = "build a new module with the keys wanted"
    in_keys = _fixed_keys_property("_fixed_in_keys")
    out_keys = _fixed_keys_property("_fixed_out_keys")

    def _fixed_in_keys(self) -> list[NestedKey]:
        raise NotImplementedError

    def _fixed_out_keys(self) -> list[NestedKey]:
        raise NotImplementedError

    @property
    def out_keys_source(self) -> list[NestedKey]:
        """The keys written before any ``select_out_keys`` (which these keys refuse): ``out_keys``."""
        return self.out_keys

    @property
    def observation_key(self) -> NestedKey:
        """The observation key, ``in_keys[0]``."""
        return self.in_keys[0]

    @property
    def action_key(self) -> NestedKey:
        """Where the executed action chunk is written, ``out_keys[0]``."""
        return self.out_keys[0]

    @property
    def chain_key(self) -> NestedKey | None:
        """Where the sampling chain is written, ``out_keys[1]``; ``None`` when none is written."""
        out_keys = self.out_keys
        return out_keys[1] if len(out_keys) > 1 else None

    @property
    def log_prob_key(self) -> NestedKey | None:
        """Where the chain's log-likelihood is written, ``out_keys[2]``; ``None`` when not scored."""
        out_keys = self.out_keys
        return out_keys[2] if len(out_keys) > 2 else None


class FlowActor(FixedKeysMixin, TensorDictModuleBase):
    """A :class:`FlowModel` as a TensorDict policy.

    Reads the observation at ``in_keys[0]`` and writes the action chunk ``[*B, H, A]`` at
    ``out_keys[0]`` (and, with ``chain_key``, the chain ``[*B, N + 1, H, A]``). The keys are
    fixed at construction: build a new actor around the same model for other keys.

    Exploration contract: under :class:`~torchrl.envs.utils.ExplorationType` ``DETERMINISTIC``
    (also ``MODE``, ``MEAN``, ``MEDIAN``) the chain starts from ``x_0 = 0``, so evaluation is
    repeatable and follows the flow's "centre"; otherwise (``RANDOM``, or no exploration
    context) from ``N(0, I)``. A noise given in the input tensordict (``noise_key``) wins over
    both. Upstream TorchRL's flow policy samples noise in every mode; ``x_0 = 0`` is RLDT's
    deterministic evaluation and is what the shipped returns were measured with.

    Args:
        model (FlowModel): the flow; its ``low``/``high`` define the action spec (a
            :class:`~torchrl.data.Bounded` spec, :attr:`action_spec`).

    Keyword Args:
        in_keys (sequence of NestedKey, optional): the observation key, one entry. Defaults to
            ``["observation"]``.
        out_keys (sequence of NestedKey, optional): the action key and, optionally, a second
            key where the chain is written. Defaults to ``["action"]``.
        noise_key (NestedKey, optional): an optional input holding ``x_0`` ([*B, H, A]); used
            when present, not required. Defaults to ``"flow_noise"``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl_rldt.modules import FlowActor, FlowModel, VelocityMLP
        >>> model = FlowModel(VelocityMLP(11, 3, chunk_len=4, hidden_dim=64), 3, num_steps=8,
        ...                   chunk_len=4, low=-1.0, high=1.0)
        >>> actor = FlowActor(model, out_keys=["action", "flow_chain"])
        >>> td = actor(TensorDict(observation=torch.randn(5, 11), batch_size=[5]))
        >>> td["action"].shape, td["flow_chain"].shape
        (torch.Size([5, 4, 3]), torch.Size([5, 9, 4, 3]))
        >>> actor.action_spec.shape, bool(actor.action_spec.is_in(td["action"]))
        (torch.Size([4, 3]), True)
        >>> action, chain = actor(observation=torch.randn(5, 11))  # keyword tensors in, tensors out
        >>> action.shape
        torch.Size([5, 4, 3])
    """

    def __init__(
        self,
        model: FlowModel,
        *,
        in_keys: Sequence[NestedKey] = ("observation",),
        out_keys: Sequence[NestedKey] = ("action",),
        noise_key: NestedKey = "flow_noise",
    ) -> None:
        super().__init__()
        if not isinstance(model, FlowModel):
            raise TypeError(f"model must be a FlowModel, got {type(model).__name__}.")
        in_keys, out_keys = [unravel_key(k) for k in in_keys], [unravel_key(k) for k in out_keys]
        if len(in_keys) != 1:
            raise ValueError(f"in_keys must hold exactly the observation key, got {in_keys}.")
        if len(out_keys) not in (1, 2):
            raise ValueError(f"out_keys must be [action] or [action, chain], got {out_keys}.")
        self.model = model
        self._in_keys, self._out_keys = in_keys, out_keys
        self._noise_key = unravel_key(noise_key)

    _fixed_keys_hint = "build a new FlowActor around the same model"

    def _fixed_in_keys(self) -> list[NestedKey]:
        return list(self._in_keys)

    def _fixed_out_keys(self) -> list[NestedKey]:
        return list(self._out_keys)

    @property
    def noise_key(self) -> NestedKey:
        """The optional input key of ``x_0``."""
        return self._noise_key

    @property
    def action_spec(self) -> TensorSpec:
        """The spec of one action chunk ``[H, A]``, on the model's device.

        ``Bounded`` when the model has both bounds; ``Unbounded`` otherwise (a single bound is
        applied by the model's clamp but has no TorchRL spec).
        """
        model = self.model
        reference = next(model.parameters(), model.low)
        return model.chunk_spec(None if reference is None else reference.device)

    @property
    def spec(self) -> Composite:
        """The output spec, as TorchRL actors have it: ``Composite({action_key: action_spec})``.

        The chain (when written) is left out: its length follows ``num_steps``, which can change.
        """
        return Composite({self.action_key: self.action_spec})

    def initial_noise(self, tensordict: TensorDictBase) -> torch.Tensor:
        """``x_0`` for ``tensordict``: its ``noise_key`` entry, else 0 when deterministic, else N(0, I)."""
        noise = tensordict.get(self._noise_key, None)
        if noise is not None:
            return noise
        observation = tensordict.get(self.observation_key)
        if is_deterministic_exploration():
            shape = (*observation.shape[:-1], *self.model.action_shape)
            return torch.zeros(shape, device=observation.device, dtype=self.model.dtype)
        return self.model.initial_noise(observation.shape[:-1], observation.device)

    @dispatch(auto_batch_size=False)
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Samples an action chunk (and, with a chain key, the chain) into ``tensordict``."""
        observation = tensordict.get(self.observation_key)
        noise = self.initial_noise(tensordict)
        if self.chain_key is None:
            return tensordict.set(self.action_key, self.model.sample(observation, noise))
        action, chain = self.model.sample(observation, noise, return_chain=True)
        return tensordict.set(self.action_key, action).set(self.chain_key, chain)
