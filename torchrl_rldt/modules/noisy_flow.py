# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
"""ReinFlow's stochastic Euler chain: a learned noise network makes the chain's likelihood exact."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase, dispatch
from tensordict.utils import NestedKey, unravel_key
from torch import nn
from torchrl.data import Composite
from torchrl_rldt.modules.flow import FixedKeysMixin, FlowActor, SinusoidalTimeEmbedding, is_deterministic_exploration

__all__ = ["FlowChainDistribution", "FlowNoiseMLP", "NoisyFlowActor"]


class FlowNoiseMLP(nn.Module):
    """Standard deviation of the noise added at each Euler step, ``sigma(s, t)``.

    One standard deviation per chunk step and action dimension, squashed into
    ``[min_std, max_std]`` through a ``tanh`` on the log-variance scale. Like ReinFlow's
    Gym networks it sees the observation and the step's time, not the chain state.

    Reference: Zhang et al., "ReinFlow: Fine-tuning Flow Matching Policy with Online
    Reinforcement Learning", arXiv 2505.22094 (Gym: 64 x 64 Tanh MLP, std in [0.10, 0.24]).

    Args:
        observation_dim (int): size of the observation.
        action_dim (int): size of one action.

    Keyword Args:
        chunk_len (int, optional): actions per chunk ``H``. Defaults to ``1``.
        hidden_dims (sequence of int, optional): hidden widths. Defaults to ``(64, 64)``.
        time_dim (int, optional): size of the sinusoidal time embedding. Defaults to ``16``.
        min_std (float, optional): lower bound of the standard deviation. Defaults to ``0.10``.
        max_std (float, optional): upper bound. Defaults to ``0.24``.

    Examples:
        >>> import torch
        >>> from torchrl_rldt.modules import FlowNoiseMLP
        >>> net = FlowNoiseMLP(11, 3, chunk_len=4)
        >>> std = net(torch.randn(5, 11), torch.full((5,), 0.25))
        >>> std.shape, bool(((std >= 0.10) & (std <= 0.24)).all())
        (torch.Size([5, 4, 3]), True)
    """

    def __init__(
        self,
        observation_dim: int,
        action_dim: int,
        *,
        chunk_len: int = 1,
        hidden_dims: Sequence[int] = (64, 64),
        time_dim: int = 16,
        min_std: float = 0.10,
        max_std: float = 0.24,
    ) -> None:
        super().__init__()
        if not 0 < min_std <= max_std:
            raise ValueError(f"need 0 < min_std <= max_std, got {min_std} and {max_std}.")
        self.chunk_len, self.action_dim = chunk_len, action_dim
        self.log_var_min, self.log_var_max = 2 * math.log(min_std), 2 * math.log(max_std)
        self.time_embedding = SinusoidalTimeEmbedding(time_dim)
        layers, width = [], observation_dim + time_dim
        for hidden in hidden_dims:
            layers += [nn.Linear(width, hidden), nn.Tanh()]
            width = hidden
        layers.append(nn.Linear(width, chunk_len * action_dim))
        self.mlp = nn.Sequential(*layers)

    def forward(self, observation: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        """The standard deviation ``[*B, H, A]`` for observations ``[*B, D]`` and times ``[*B]``."""
        features = torch.cat([observation, self.time_embedding(time)], -1)
        squashed = torch.tanh(self.mlp(features))
        log_var = self.log_var_min + (self.log_var_max - self.log_var_min) * (squashed + 1) / 2
        return (0.5 * log_var).exp().unflatten(-1, (self.chunk_len, self.action_dim))


class NoisyFlowActor(FixedKeysMixin, TensorDictModuleBase):
    """A :class:`~torchrl_rldt.modules.FlowActor` whose Euler steps are Gaussian transitions.

    Under a random exploration type each step is ``x_{k+1} ~ N(x_k + v(x_k, t_k | s) / N,
    sigma(s, t_k)^2)`` with ``sigma`` from ``noise_network``, so the log-likelihood of the
    whole chain ``x_0 .. x_N`` is exact: the sum of the ``N`` Gaussian transition
    log-densities (``x_0 ~ N(0, I)`` does not depend on the parameters and is left out).
    That is what ReinFlow's PPO ratio is built on. The chain and its log-likelihood are
    written to the tensordict so that a loss can recompute the likelihood under new
    parameters with :meth:`log_prob`. Under a deterministic exploration type the module
    behaves like the wrapped flow actor (``x_0 = 0``, no noise).

    Unlike ReinFlow's code, intermediate means are not clamped to the action range (only the
    executed action is), which keeps the likelihood that of the stored chain.

    The keys are fixed at construction: ``in_keys`` are the flow actor's, ``out_keys`` are
    ``[action_key, chain_key, log_prob_key]`` with the flow actor's action key, and :attr:`spec`
    is the flow actor's.

    Reference: Zhang et al., "ReinFlow: Fine-tuning Flow Matching Policy with Online
    Reinforcement Learning", arXiv 2505.22094.

    Args:
        flow_actor (FlowActor): the velocity field, Euler steps, chunk shape and bounds.
        noise_network (nn.Module): ``sigma(observation, time)`` returning ``[*B, H, A]``
            positive standard deviations, e.g. :class:`FlowNoiseMLP`.

    Keyword Args:
        chain_key (NestedKey, optional): where the chain ``[*B, N + 1, H, A]`` is written.
            Defaults to ``"flow_chain"``.
        log_prob_key (NestedKey, optional): where its log-likelihood ``[*B]`` is written.
            Defaults to ``"sample_log_prob"``.
        average_log_prob (bool, optional): divide the log-likelihood and the entropy by the
            number of Gaussian dimensions ``N * H * A``, as ReinFlow's code does (it then clips
            the PPO ratio at 0.01 on that per-dimension scale). Defaults to ``False`` (the
            exact log-likelihood).

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.envs.utils import ExplorationType, set_exploration_type
        >>> from torchrl_rldt.modules import (
        ...     FlowActor, FlowModel, FlowNoiseMLP, NoisyFlowActor, VelocityMLP)
        >>> flow = FlowActor(FlowModel(VelocityMLP(11, 3, chunk_len=4, hidden_dim=64), 3, 4, chunk_len=4))
        >>> policy = NoisyFlowActor(flow, FlowNoiseMLP(11, 3, chunk_len=4))
        >>> td = TensorDict(observation=torch.randn(5, 11), batch_size=[5])
        >>> with set_exploration_type(ExplorationType.RANDOM):
        ...     td = policy(td)
        >>> td["action"].shape, td["flow_chain"].shape, td["sample_log_prob"].shape
        (torch.Size([5, 4, 3]), torch.Size([5, 5, 4, 3]), torch.Size([5]))
        >>> new = policy.log_prob(td["observation"], td["flow_chain"])
        >>> torch.allclose(new, td["sample_log_prob"])
        True
    """

    def __init__(
        self,
        flow_actor: FlowActor,
        noise_network: nn.Module,
        *,
        chain_key: NestedKey = "flow_chain",
        log_prob_key: NestedKey = "sample_log_prob",
        average_log_prob: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(flow_actor, FlowActor):
            raise TypeError(f"flow_actor must be a FlowActor, got {type(flow_actor).__name__}.")
        self.flow_actor, self.noise_network = flow_actor, noise_network
        self._chain_key, self._log_prob_key = unravel_key(chain_key), unravel_key(log_prob_key)
        self.average_log_prob = average_log_prob

    _fixed_keys_hint = ("build a new NoisyFlowActor (observation and action keys from its FlowActor, "
                        "chain_key, log_prob_key)")

    def _fixed_in_keys(self) -> list[NestedKey]:
        return self.flow_actor.in_keys

    def _fixed_out_keys(self) -> list[NestedKey]:
        return [self.flow_actor.action_key, self._chain_key, self._log_prob_key]

    @property
    def spec(self) -> Composite:
        """The flow actor's output spec: the executed action is clamped to the same bounds.

        The chain and its log-likelihood are left out, as
        :attr:`FlowActor.spec <torchrl_rldt.modules.FlowActor.spec>` leaves its chain.
        """
        return self.flow_actor.spec

    def _transitions(self, observation: torch.Tensor, chain: torch.Tensor):
        """Means and standard deviations of the ``N`` transitions ``[*B, N, H, A]`` of ``chain``."""
        num_steps = chain.shape[-3] - 1
        time = torch.arange(num_steps, dtype=chain.dtype, device=chain.device) / num_steps
        time = time.expand(*chain.shape[:-3], num_steps)
        steps_observation = observation.unsqueeze(-2).expand(*time.shape, observation.shape[-1])
        mean = self.flow_actor.model.step_mean(steps_observation, chain[..., :-1, :, :], time)
        return mean, self.noise_network(steps_observation, time)

    def log_prob(self, observation: torch.Tensor, chain: torch.Tensor) -> torch.Tensor:
        """Log-likelihood ``[*B]`` of ``chain`` ``[*B, N + 1, H, A]`` under the current parameters."""
        if chain.shape[-3] != self.flow_actor.model.num_steps + 1:
            raise ValueError(
                f"the chain has {chain.shape[-3] - 1} steps but the actor takes "
                f"num_steps={self.flow_actor.model.num_steps}."
            )
        mean, std = self._transitions(observation, chain)
        log_prob = torch.distributions.Normal(mean, std).log_prob(chain[..., 1:, :, :])
        return self._reduce(log_prob)

    def entropy(self, observation: torch.Tensor, chain: torch.Tensor) -> torch.Tensor:
        """Sum of the transitions' Gaussian entropies ``[*B]`` along ``chain``."""
        _, std = self._transitions(observation, chain)
        return self._reduce(0.5 * math.log(2 * math.pi * math.e) + std.log())

    def get_dist(self, tensordict: TensorDictBase) -> FlowChainDistribution:
        """The chain distribution at ``tensordict``'s observations, along its stored chains."""
        return FlowChainDistribution(
            self, tensordict.get(self.flow_actor.observation_key), tensordict.get(self.chain_key)
        )

    def _reduce(self, per_dimension: torch.Tensor) -> torch.Tensor:
        """Sums ``[*B, N, H, A]`` to ``[*B]`` (or averages, with ``average_log_prob``)."""
        if self.average_log_prob:
            return per_dimension.mean((-3, -2, -1))
        return per_dimension.sum((-3, -2, -1))

    @property
    def written_keys(self) -> list[NestedKey]:
        """What a call writes: every out key under a random exploration type, the action alone
        under a deterministic one (what a call with keyword tensors returns)."""
        return self.out_keys[:1] if is_deterministic_exploration() else self.out_keys

    @dispatch(auto_batch_size=False, dest="written_keys")
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Samples a chunk (and, when random, its chain and log-likelihood) into ``tensordict``."""
        actor = self.flow_actor
        if is_deterministic_exploration():
            return actor(tensordict)
        observation = tensordict.get(actor.observation_key)
        chain, mean, std = actor.model.integrate(
            observation, actor.initial_noise(tensordict), step_std=self.noise_network
        )
        log_prob = self._reduce(torch.distributions.Normal(mean, std).log_prob(chain[..., 1:, :, :]))
        # rollout data: a loss recomputes the likelihood with gradients through log_prob()
        tensordict.set(actor.action_key, actor.model.clamp(chain[..., -1, :, :]).detach())
        tensordict.set(self.chain_key, chain.detach())
        tensordict.set(self.log_prob_key, log_prob.detach())
        return tensordict


class FlowChainDistribution(torch.distributions.Distribution):
    """The distribution of a :class:`NoisyFlowActor`'s Euler chain at some observations.

    It is what ``NoisyFlowActor.get_dist`` returns, so that TorchRL's PPO losses can score
    stored chains (``log_prob(chain)``) and read the entropy of the transitions along the
    stored chain. Sampling goes through the module, not through this object.

    Args:
        policy (NoisyFlowActor): the policy whose current parameters define the density.
        observation (torch.Tensor): observations ``[*B, D]``.
        chain (torch.Tensor): the chains ``[*B, N + 1, H, A]`` the entropy is read along.
    """

    arg_constraints: dict = {}
    has_rsample = False

    def __init__(self, policy: NoisyFlowActor, observation: torch.Tensor, chain: torch.Tensor) -> None:
        self.policy, self.observation, self.chain = policy, observation, chain
        super().__init__(observation.shape[:-1], chain.shape[-3:], validate_args=False)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return self.policy.log_prob(self.observation, value)

    def entropy(self) -> torch.Tensor:
        return self.policy.entropy(self.observation, self.chain)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        raise NotImplementedError(
            "FlowChainDistribution scores chains; sample them with the NoisyFlowActor module."
        )
