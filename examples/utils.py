"""Factories shared by the example scripts (the training loops stay in the scripts)."""
from __future__ import annotations

import torch
from tensordict.nn import NormalParamExtractor, TensorDictModule
from torch import nn
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
from torchrl.envs import EnvBase
from torchrl.modules import MLP, ProbabilisticActor, TanhNormal, ValueOperator
from torchrl.objectives import SACLoss, SoftUpdate

from torchrl_rldt.envs import EnvPoolEnv


def make_env(task: str, num_envs: int, seed: int, device: str | torch.device = "cpu") -> EnvPoolEnv:
    """One EnvPool env of ``num_envs`` copies of ``task``."""
    return EnvPoolEnv(task, num_envs, seed=seed, device=device)


def make_sac_agent(
    env: EnvBase, hidden_sizes, device: str | torch.device
) -> tuple[ProbabilisticActor, ValueOperator]:
    """SAC's tanh-Gaussian actor and one Q network (SACLoss makes the ensemble)."""
    obs_dim = env.observation_spec["observation"].shape[-1]
    action_spec = env.action_spec
    action_dim = action_spec.shape[-1]
    actor_mlp = MLP(
        in_features=obs_dim,
        out_features=2 * action_dim,
        num_cells=list(hidden_sizes),
        activation_class=nn.ReLU,
        device=device,
    )
    actor = ProbabilisticActor(
        TensorDictModule(
            nn.Sequential(actor_mlp, NormalParamExtractor(scale_mapping="biased_softplus_1.0")),
            in_keys=["observation"],
            out_keys=["loc", "scale"],
        ),
        in_keys=["loc", "scale"],
        spec=action_spec.to(device),
        distribution_class=TanhNormal,
        distribution_kwargs={
            "low": action_spec.space.low.to(device),
            "high": action_spec.space.high.to(device),
        },
        return_log_prob=False,
        default_interaction_type="random",
    )
    qvalue = ValueOperator(
        MLP(
            in_features=obs_dim + action_dim,
            out_features=1,
            num_cells=list(hidden_sizes),
            activation_class=nn.ReLU,
            device=device,
        ),
        in_keys=["observation", "action"],
    )
    return actor, qvalue


def make_sac_loss(
    actor: ProbabilisticActor, qvalue: ValueOperator, *, gamma: float, tau: float, alpha_init: float
) -> tuple[SACLoss, SoftUpdate]:
    """TorchRL's SACLoss (two Q nets, target Q nets) and the Polyak updater that drives it."""
    loss = SACLoss(
        actor, qvalue, num_qvalue_nets=2, loss_function="l2", alpha_init=alpha_init, delay_qvalue=True
    )
    loss.make_value_estimator(gamma=gamma)
    return loss, SoftUpdate(loss, tau=tau)


def make_replay_buffer(size: int, batch_size: int, device: str | torch.device) -> TensorDictReplayBuffer:
    """A uniform replay buffer of transitions kept on ``device``."""
    return TensorDictReplayBuffer(
        storage=LazyTensorStorage(size, device=device), batch_size=batch_size
    )
