# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
"""Flow-matching policy: velocity network, Euler sampler and action chunks."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from tensordict.utils import NestedKey
from torch import nn
from torchrl.envs.utils import ExplorationType, exploration_type

__all__ = ["FlowActor", "SinusoidalTimeEmbedding", "VelocityMLP"]

_DETERMINISTIC_TYPES = (
    ExplorationType.DETERMINISTIC,
    ExplorationType.MODE,
    ExplorationType.MEAN,
    ExplorationType.MEDIAN,
)


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


class FlowActor(TensorDictModuleBase):
    """A flow-matching policy over action chunks, as a TensorDict module.

    Time runs from ``t = 0`` (noise) to ``t = 1`` (action) along the linear
    interpolant ``x_t = (1 - t) z + t a``; sampling integrates the learned
    velocity with ``num_steps`` explicit Euler steps ``x_{k+1} = x_k + v(x_k, k/N) / N``.
    Under :class:`~torchrl.envs.utils.ExplorationType` ``DETERMINISTIC`` (also
    ``MODE``, ``MEAN``, ``MEDIAN``) the chain starts from ``x_0 = 0``; otherwise
    (``RANDOM``, or no exploration context) from ``N(0, I)``. A noise given in the
    input tensordict (``noise_key``) or as argument wins over both.

    The tensor contract follows upstream TorchRL's flow model:
    :meth:`velocity` ``(observation, action, time)`` and
    ``forward(observation, noise=None)``; ``forward`` also takes a tensordict.
    ``num_steps`` can be changed after training (the network is trained on
    continuous time).

    Reference: Lei, Daniilidis, Loquercio, "Reinforcement Learning for
    Flow-Matching Policies with Density Transport", arXiv 2606.08602.

    Args:
        velocity_network (nn.Module): ``v(observation, action, time)`` returning a
            tensor shaped like ``action`` ([*B, chunk_len, action_dim]) for ``time``
            of shape [*B]. :class:`VelocityMLP` is the default choice.
        action_dim (int): size of one action.
        num_steps (int, optional): Euler steps ``N``. Defaults to ``10``.

    Keyword Args:
        chunk_len (int, optional): actions per chunk ``H``. Defaults to ``1``.
        low (torch.Tensor or float, optional): lower action bound; the final
            action is clamped to it. Defaults to no bound.
        high (torch.Tensor or float, optional): upper action bound. Defaults to
            no bound.
        observation_key (NestedKey, optional): defaults to ``"observation"``.
        action_key (NestedKey, optional): defaults to ``"action"``.
        noise_key (NestedKey, optional): an optional input key holding ``x_0``
            ([*B, H, A]); used when present. Defaults to ``"flow_noise"``.
        chain_key (NestedKey, optional): if set, the whole Euler chain
            ``x_0 .. x_N`` ([*B, N + 1, H, A]) is written there. Defaults to
            ``None`` (not written).

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl_rldt.modules import FlowActor, VelocityMLP
        >>> net = VelocityMLP(11, 3, chunk_len=4, hidden_dim=64)
        >>> actor = FlowActor(net, action_dim=3, num_steps=8, chunk_len=4, low=-1.0, high=1.0)
        >>> td = actor(TensorDict(observation=torch.randn(5, 11), batch_size=[5]))
        >>> td["action"].shape
        torch.Size([5, 4, 3])
        >>> actor(torch.randn(2, 7, 11)).shape
        torch.Size([2, 7, 4, 3])
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
        observation_key: NestedKey = "observation",
        action_key: NestedKey = "action",
        noise_key: NestedKey = "flow_noise",
        chain_key: NestedKey | None = None,
    ) -> None:
        super().__init__()
        if action_dim < 1 or chunk_len < 1:
            raise ValueError("action_dim and chunk_len must be positive.")
        self.velocity_network = velocity_network
        self.action_dim, self.chunk_len = action_dim, chunk_len
        self.num_steps = num_steps
        for name, bound in (("low", low), ("high", high)):
            self.register_buffer(
                name, None if bound is None else torch.as_tensor(bound, dtype=torch.float32)
            )
        if low is not None and high is not None and (self.low > self.high).any():
            raise ValueError("low must not exceed high.")
        self.observation_key, self.action_key = observation_key, action_key
        self.noise_key, self.chain_key = noise_key, chain_key
        # the noise is an optional input: not listed, so that nothing requires it
        self.in_keys: Sequence[NestedKey] = [observation_key]
        self.out_keys: Sequence[NestedKey] = [action_key] + (
            [chain_key] if chain_key is not None else []
        )

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
        """The velocity ``v(x_t, t | s)``; ``time`` broadcasts to the batch shape."""
        time = torch.as_tensor(time, dtype=action.dtype, device=action.device)
        return self.velocity_network(observation, action, time.expand(action.shape[:-2]))

    def expected_action(
        self, action: torch.Tensor, time: torch.Tensor | float, observation: torch.Tensor
    ) -> torch.Tensor:
        """Expected landing point ``x_t + (1 - t) v(x_t, t | s)`` of a chain state.

        Its parameter gradient is ``(1 - t) dv/dtheta``: no back-propagation
        through the ODE.
        """
        time = torch.as_tensor(time, dtype=action.dtype, device=action.device)
        time = time.expand(action.shape[:-2])
        remaining = (1 - time)[..., None, None]
        return action + remaining * self.velocity(observation, action, time)

    def initial_noise(self, batch_shape: torch.Size, device: torch.device) -> torch.Tensor:
        """``x_0``: zeros under a deterministic exploration type, else ``N(0, I)``."""
        shape = (*batch_shape, *self.action_shape)
        if exploration_type() in _DETERMINISTIC_TYPES:
            return torch.zeros(shape, device=device)
        return torch.randn(shape, device=device)

    def sample(
        self,
        observation: torch.Tensor,
        noise: torch.Tensor | None = None,
        *,
        return_chain: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Integrates the flow from ``noise`` (``x_0``) to an action chunk.

        Returns the clamped action ``[*B, H, A]``, and with ``return_chain`` the
        unclamped chain ``x_0 .. x_N`` ``[*B, N + 1, H, A]`` as well.
        """
        batch_shape = observation.shape[:-1]
        if noise is None:
            noise = self.initial_noise(batch_shape, observation.device)
        elif noise.shape != (*batch_shape, *self.action_shape):
            raise ValueError(
                f"noise must have shape {(*batch_shape, *self.action_shape)}, got "
                f"{tuple(noise.shape)}."
            )
        step = 1.0 / self.num_steps
        x = noise
        chain = [x]
        for k in range(self.num_steps):
            x = x + step * self.velocity(observation, x, k * step)
            chain.append(x)
        action = x
        if self.low is not None or self.high is not None:
            action = action.clamp(self.low, self.high)
        if return_chain:
            return action, torch.stack(chain, dim=-3)
        return action

    def forward(
        self,
        tensordict: TensorDictBase | torch.Tensor,
        noise: torch.Tensor | None = None,
    ) -> TensorDictBase | torch.Tensor:
        """Samples an action chunk from a tensordict (writes ``out_keys``) or a tensor."""
        if not isinstance(tensordict, TensorDictBase):
            return self.sample(tensordict, noise)
        observation = tensordict.get(self.observation_key)
        if noise is None:
            noise = tensordict.get(self.noise_key, None)
        if self.chain_key is None:
            tensordict.set(self.action_key, self.sample(observation, noise))
        else:
            action, chain = self.sample(observation, noise, return_chain=True)
            tensordict.set(self.action_key, action)
            tensordict.set(self.chain_key, chain)
        return tensordict
