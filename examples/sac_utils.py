"""SAC's factories, for ``sac_gym.py`` (SAC from scratch) and ``make_dataset.py`` (the SAC that
records the medium data sets): TorchRL's ``SACLoss`` with a TanhNormal actor and its optimisers."""
from __future__ import annotations

import torch
from tensordict import TensorDictBase
from tensordict.nn import NormalParamExtractor, TensorDictModule
from torch import nn
from torchrl.envs import EnvBase
from torchrl.modules import MLP, ProbabilisticActor, TanhNormal, ValueOperator
from torchrl.objectives import SACLoss, SoftUpdate

from torchrl_rldt.modules import ChunkQValueMLP
from torchrl_rldt.trainers import NonFiniteError


def make_sac_agent(
    env: EnvBase, hidden_sizes, device: str | torch.device
) -> tuple[ProbabilisticActor, ValueOperator]:
    """SAC's tanh-Gaussian actor and one Q network (SACLoss makes the ensemble).

    Actions are per step (``[*B, A]``) or, in an :class:`~torchrl_rldt.envs.ActionChunkEnv`,
    chunks (``[*B, H, A]``): then the actor's Gaussian and the critic's input span the whole
    ``H x A`` chunk, one SAC action. The actor's spec is the env's unbatched action spec, so
    ``SACLoss``'s automatic target entropy is minus the number of action dimensions (``-H * A``),
    not that times the number of envs.

    Args:
        env: the env the agent acts in (its observation ``"observation"`` and action specs).
        hidden_sizes: widths of the hidden ReLU layers of both networks; equal widths for chunk
            actions (the critic is then a :class:`~torchrl_rldt.modules.ChunkQValueMLP`).
        device: where the networks live.

    Raises:
        ValueError: chunk actions with unequal ``hidden_sizes``.
    """
    obs_dim = env.observation_spec["observation"].shape[-1]
    action_spec = env.action_spec_unbatched.to(device)
    action_shape = action_spec.shape
    head = [nn.Unflatten(-1, (*action_shape[:-1], 2 * action_shape[-1]))] if len(action_shape) > 1 else []
    actor_mlp = MLP(
        in_features=obs_dim,
        out_features=2 * action_shape.numel(),
        num_cells=list(hidden_sizes),
        activation_class=nn.ReLU,
        device=device,
    )
    actor = ProbabilisticActor(
        TensorDictModule(
            nn.Sequential(actor_mlp, *head, NormalParamExtractor(scale_mapping="biased_softplus_1.0")),
            in_keys=["observation"],
            out_keys=["loc", "scale"],
        ),
        in_keys=["loc", "scale"],
        spec=action_spec,
        distribution_class=TanhNormal,
        distribution_kwargs={
            "low": action_spec.space.low,
            "high": action_spec.space.high,
            "event_dims": len(action_shape),
        },
        return_log_prob=False,
        default_interaction_type="random",
    )
    if len(action_shape) == 1:
        qvalue_net = MLP(
            in_features=obs_dim + action_shape[-1],
            out_features=1,
            num_cells=list(hidden_sizes),
            activation_class=nn.ReLU,
            device=device,
        )
    else:
        if len(set(hidden_sizes)) != 1:
            raise ValueError(f"a chunk critic needs equal hidden layer sizes; got hidden_sizes={list(hidden_sizes)}.")
        qvalue_net = ChunkQValueMLP(
            obs_dim, action_shape[-1], chunk_len=action_shape[-2], hidden_dim=hidden_sizes[0],
            num_layers=len(hidden_sizes), activation=nn.ReLU,
        ).to(device)
    return actor, ValueOperator(qvalue_net, in_keys=["observation", "action"])


def make_sac_loss(
    actor: ProbabilisticActor, qvalue: ValueOperator, *, gamma: float, tau: float, alpha_init: float
) -> tuple[SACLoss, SoftUpdate]:
    """TorchRL's SACLoss (two Q nets, target Q nets) and the Polyak updater that drives it."""
    loss = SACLoss(
        actor, qvalue, num_qvalue_nets=2, loss_function="l2", alpha_init=alpha_init, delay_qvalue=True
    )
    loss.make_value_estimator(gamma=gamma)
    return loss, SoftUpdate(loss, tau=tau)


def make_sac_optimizers(loss: SACLoss, lr: float) -> dict[str, torch.optim.Optimizer]:
    """One Adam per part of ``loss``: the Q ensemble, the actor and the temperature."""
    return {
        "critic": torch.optim.Adam(loss.qvalue_network_params.values(True, True), lr=lr),
        "actor": torch.optim.Adam(loss.actor_network_params.values(True, True), lr=lr),
        "alpha": torch.optim.Adam([loss.log_alpha], lr=lr),
    }


def sac_update(loss: SACLoss, optimizers: dict[str, torch.optim.Optimizer], target_updater: SoftUpdate,
               batch: TensorDictBase) -> TensorDictBase:
    """One SAC step on ``batch``: the three losses, one backward, each optimiser, the targets.

    Args:
        loss: the ``SACLoss`` (see :func:`make_sac_loss`).
        optimizers: its optimisers (see :func:`make_sac_optimizers`).
        target_updater: the Polyak updater of its target Q nets.
        batch: a sampled batch of transitions.

    Returns:
        The loss terms of the step (before the update).

    Raises:
        NonFiniteError: the loss is not finite; nothing was updated.
    """
    terms = loss(batch)
    # SACLoss detaches what each term must not train, so one backward serves all three.
    total = terms["loss_qvalue"] + terms["loss_actor"] + terms["loss_alpha"]
    if not torch.isfinite(total):
        raise NonFiniteError(f"the SAC loss is not finite ({total.item()})")
    for optim in optimizers.values():
        optim.zero_grad()
    total.backward()
    for optim in optimizers.values():
        optim.step()
    target_updater.step()
    return terms
