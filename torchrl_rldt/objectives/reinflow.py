# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
"""ReinFlow: PPO on the exact log-likelihood of a noisy flow chain."""
from __future__ import annotations

from torch import nn
from torchrl.objectives import ClipPPOLoss

from torchrl_rldt.modules.noisy_flow import NoisyFlowActor
from torchrl_rldt.objectives._ppo import refuse_ratio_sized_value_clip

__all__ = ["ReinFlowLoss"]


class ReinFlowLoss(ClipPPOLoss):
    """ReinFlow's objective: clipped PPO whose ratio is that of whole noisy Euler chains.

    The policy is a :class:`~torchrl_rldt.modules.NoisyFlowActor`: a learned noise network
    adds Gaussian noise to every Euler step of the flow, so the log-likelihood of a sampled
    chain ``x_0 .. x_N`` is exact and PPO applies as to any Gaussian policy. The "action"
    scored by the ratio is the stored chain (key ``"flow_chain"`` by default); the entropy
    bonus is the closed-form entropy of the chain's Gaussian transitions; the critic is a
    state-value network ``V(s)`` trained on GAE targets from TorchRL's value estimators
    (``make_value_estimator``). Everything else (advantage normalisation, value clipping,
    reductions, keys) is TorchRL's :class:`~torchrl.objectives.ClipPPOLoss`.

    Reference: Zhang et al., "ReinFlow: Fine-tuning Flow Matching Policy with Online
    Reinforcement Learning", arXiv 2505.22094. Its Gym settings: 4 flow steps, chunks of 4,
    noise std in [0.10, 0.24], ratio clip 0.01 and entropy coefficient 0.03 on the
    per-dimension averaged log-likelihood (``NoisyFlowActor(..., average_log_prob=True)``),
    GAE lambda 0.95, gamma 0.99 per chunk, normalised advantages.

    Args:
        actor_network (NoisyFlowActor): the noisy flow policy (velocity and noise networks).
        critic_network (nn.Module): a TensorDict module writing ``"state_value"`` from the
            observation, e.g. a :class:`~torchrl.modules.ValueOperator`.

    Keyword Args:
        clip_epsilon (float, optional): PPO ratio clip. Defaults to ``0.01`` (ReinFlow's Gym
            value, on the averaged log-likelihood).
        entropy_coeff (float, optional): weight of the entropy bonus. Defaults to ``0.03``.
        critic_coeff (float, optional): weight of the value loss. Defaults to ``0.5``.
        loss_critic_type (str, optional): ``"l2"``, ``"l1"`` or ``"smooth_l1"``. Defaults to
            ``"l2"`` (ReinFlow's mean-squared error).
        normalize_advantage (bool, optional): standardise advantages per batch. Defaults to
            ``True``.
        **kwargs: any other keyword argument of :class:`~torchrl.objectives.ClipPPOLoss`
            (``reduction``, ``clip_value`` as a float, ``separate_losses``, ...).

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.envs.utils import ExplorationType, set_exploration_type
        >>> from torchrl.modules import MLP, ValueOperator
        >>> from torchrl_rldt.modules import (
        ...     FlowActor, FlowModel, FlowNoiseMLP, NoisyFlowActor, VelocityMLP)
        >>> from torchrl_rldt.objectives import ReinFlowLoss
        >>> flow = FlowActor(FlowModel(VelocityMLP(11, 3, chunk_len=4, hidden_dim=32), 3, 4, chunk_len=4))
        >>> policy = NoisyFlowActor(flow, FlowNoiseMLP(11, 3, chunk_len=4), average_log_prob=True)
        >>> critic = ValueOperator(MLP(in_features=11, out_features=1, num_cells=[32]),
        ...                        in_keys=["observation"])
        >>> loss = ReinFlowLoss(policy, critic)
        >>> loss.make_value_estimator(gamma=0.99, lmbda=0.95)
        >>> data = TensorDict(observation=torch.randn(8, 11), batch_size=[8])
        >>> with set_exploration_type(ExplorationType.RANDOM), torch.no_grad():
        ...     data = policy(data)
        >>> data["next"] = TensorDict(observation=torch.randn(8, 11), reward=torch.randn(8, 1),
        ...     done=torch.zeros(8, 1, dtype=torch.bool), terminated=torch.zeros(8, 1, dtype=torch.bool),
        ...     batch_size=[8])
        >>> losses = loss(data)
        >>> sorted(k for k in losses.keys() if k.startswith("loss_"))
        ['loss_critic', 'loss_entropy', 'loss_objective']
    """

    def __init__(
        self,
        actor_network: NoisyFlowActor,
        critic_network: nn.Module,
        *,
        clip_epsilon: float = 0.01,
        entropy_coeff: float = 0.03,
        critic_coeff: float = 0.5,
        loss_critic_type: str = "l2",
        normalize_advantage: bool = True,
        **kwargs,
    ) -> None:
        if not isinstance(actor_network, NoisyFlowActor):
            raise TypeError(
                "actor_network must be a NoisyFlowActor (a FlowActor with a noise network), got "
                f"{type(actor_network).__name__}."
            )
        if clip_epsilon <= 0:
            raise ValueError(f"clip_epsilon must be > 0, got {clip_epsilon}.")
        if kwargs.get("delay_actor") or kwargs.get("functional") is False:
            # the chain distribution evaluates the networks when it scores, i.e. with the
            # module's current parameters: a separate proximal parameter set would be ignored
            raise ValueError("ReinFlowLoss supports neither delay_actor=True nor functional=False.")
        refuse_ratio_sized_value_clip("ReinFlowLoss", kwargs)
        super().__init__(
            actor_network,
            critic_network,
            clip_epsilon=clip_epsilon,
            entropy_coeff=entropy_coeff,
            critic_coeff=critic_coeff,
            loss_critic_type=loss_critic_type,
            normalize_advantage=normalize_advantage,
            **kwargs,
        )
        # the ratio scores whole chains, stored by the actor under its own keys
        self.set_keys(action=actor_network.chain_key, sample_log_prob=actor_network.log_prob_key)
