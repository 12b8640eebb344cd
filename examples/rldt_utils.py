"""RLDT's, QAM's and SWFP's factories, for ``rldt_gym.py`` (and the tools that read its runs): the
config check, the replay buffer, the critic, the loss with its updaters (and, for SWFP, its cascade
actor), the optimisers and the collector (with landing-point exploration for RLDT and QAM)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torchrl.modules import ValueOperator
from torchrl.objectives import SoftUpdate, ValueEstimators

from torchrl_rldt.checkpoint import FlowPolicy, read_checkpoint
from torchrl_rldt.modules import (
    ChunkQValueMLP,
    FlowActor,
    LandingPointExploration,
    StepwiseFlowActor,
    SVGDTransport,
    VelocityMLP,
)
from torchrl_rldt.objectives import (
    BaseEMAUpdater,
    ChunkQEnsembleLoss,
    QAMLoss,
    ReferenceUpdater,
    RLDTLoss,
    StageUpdater,
    SWFPLoss,
)
from torchrl_rldt.objectives.calibration import critic_calibration

from utils import check_collector_config, frames_covering, load_base_policy, make_collector, policy_env_maker
from torchrl_rldt.trainers import ConfigCheck


def check_rldt_config(cfg: DictConfig) -> None:
    """Refuses invalid hyper-parameters with a message naming the value, before any work."""
    check = ConfigCheck(cfg)
    need, positive_int, number = check.need, check.positive_int, check.number

    for name in ("collector.chunks_per_env", "buffer.size", "buffer.batch_size",
                 "schedule.actor_batch_size", "rldt.num_particles", "rldt.num_steps",
                 "critic.hidden_dim", "critic.num_layers", "critic.num_qvalue_nets",
                 "critic.num_target_samples", "checkpoint.every_batches",
                 "schedule.actor_every_batches"):
        positive_int(name)
    for name in ("schedule.critic_warmup_batches", "schedule.critic_steps", "schedule.actor_steps",
                 "optim.actor_warmup_steps", "eval.calibration_batches"):
        check.integer(name, minimum=0)
    if cfg.schedule.reanchor_every is not None:
        positive_int("schedule.reanchor_every")
    for name in ("optim.actor_lr", "optim.critic_lr"):
        number(name, 0.0, open_low=True)
    number("optim.critic_weight_decay", 0.0)
    number("optim.gamma", 0.0, 1.0)
    number("optim.tau", 0.0, 1.0, open_low=True)
    if cfg.optim.reward_scale_rate is not None:
        number("optim.reward_scale_rate", 0.0, 1.0, open_low=True)
        positive_int("optim.reward_scale_every_batches")
    for name in ("rldt.rl_coeff", "rldt.consistency_coeff", "rldt.reference_coeff", "rldt.temperature_coef"):
        number(name, 0.0)
    need(cfg.rldt.kernel in ("rbf", "delta"), f"rldt.kernel must be rbf or delta, got {cfg.rldt.kernel!r}")
    check.one_of("rldt.field_normalization", ("particles", "kernel_mass"))
    if cfg.rldt.bandwidth is not None:
        number("rldt.bandwidth", 0.0, open_low=True)
    if cfg.rldt.temperature != "adaptive":
        number("rldt.temperature", 0.0)
    check.one_of("method", ("rldt", "qam", "swfp"))
    if cfg.method == "qam":
        for name in ("qam.inverse_temperature", "qam.base_constraint_coeff"):
            number(name, 0.0)
        number("qam.base_ema", 0.0, 1.0)
        positive_int("qam.base_update_every")
        if cfg.qam.max_grad_norm is not None:
            number("qam.max_grad_norm", 0.0, open_low=True)
        check.one_of("qam.clamp_final_action", (False, True))
    if cfg.method == "swfp":
        for name in ("swfp.num_blocks", "swfp.updates_per_stage", "swfp.block_steps",
                     "swfp.block_hidden_dim", "swfp.block_num_layers", "swfp.num_samples"):
            positive_int(name)
        number("swfp.entropy_coeff", 0.0)
        for name in ("swfp.jko_step", "swfp.block_lr"):
            number(name, 0.0, open_low=True)
    check.one_of("critic.value_estimator", ("td0", "td_lambda"))
    number("critic.lmbda", 0.0, 1.0)
    clip = cfg.critic.target_clip
    need(clip is None or (len(clip) == 2 and all(isinstance(v, (int, float)) for v in clip)
                          and clip[0] <= clip[1]),
         f"critic.target_clip must be null or [low, high] with low <= high, got {clip}")
    positive_int("buffer.slice_len")
    positive_int("schedule.target_action_reuse")
    check.one_of("learner_precision", ("fp32", "bf16"))
    check_collector_config(check)
    check.one_of("critic.bootstrap", (False, True))
    if cfg.critic.bootstrap and isinstance(cfg.critic.num_qvalue_nets, int):
        need(cfg.env.num_envs >= cfg.critic.num_qvalue_nets,
             f"critic.bootstrap gives each ensemble member the trajectories of its own envs: "
             f"env.num_envs ({cfg.env.num_envs}) must be >= critic.num_qvalue_nets "
             f"({cfg.critic.num_qvalue_nets})")
    reuse, steps = cfg.schedule.target_action_reuse, cfg.schedule.critic_steps
    if all(isinstance(v, int) and v >= 1 for v in (reuse, steps)) and reuse > 1:
        need(reuse <= steps and (steps * cfg.buffer.batch_size) % reuse == 0,
             f"schedule.target_action_reuse ({reuse}) must divide schedule.critic_steps x "
             f"buffer.batch_size ({steps} x {cfg.buffer.batch_size}) and be <= critic_steps")
        if cfg.critic.value_estimator == "td_lambda" and isinstance(cfg.buffer.slice_len, int):
            need((steps * cfg.buffer.batch_size // reuse) % cfg.buffer.slice_len == 0,
                 f"the round batch (critic_steps x batch_size / target_action_reuse = "
                 f"{steps * cfg.buffer.batch_size // reuse}) must be a multiple of buffer.slice_len "
                 f"({cfg.buffer.slice_len}): TD(lambda) samples whole slices")
    if cfg.critic.value_estimator == "td_lambda" and isinstance(cfg.buffer.slice_len, int):
        for name in ("buffer.batch_size", "schedule.actor_batch_size"):
            value = check.get(name)
            need(isinstance(value, int) and value % cfg.buffer.slice_len == 0,
                 f"{name} ({value}) must be a multiple of buffer.slice_len ({cfg.buffer.slice_len}): "
                 f"TD(lambda) samples whole slices")
    need(cfg.rldt.rl_objective in ("inner_product", "regression"),
         f"rldt.rl_objective must be inner_product or regression, got {cfg.rldt.rl_objective!r}")
    check.integer("rldt.min_step", minimum=0)
    if isinstance(cfg.rldt.min_step, int) and isinstance(cfg.rldt.num_steps, int):
        need(cfg.rldt.min_step < cfg.rldt.num_steps,
             f"rldt.min_step ({cfg.rldt.min_step}) must be < rldt.num_steps ({cfg.rldt.num_steps})")
    check.common()
    check.done()


def make_rldt_critic(policy: FlowPolicy, cfg: DictConfig, device: torch.device) -> ValueOperator:
    """One Q(observation, chunk) network; RLDTLoss makes the ensemble and its targets."""
    model = policy.actor.model
    network = ChunkQValueMLP(
        model.velocity_network.config["observation_dim"], model.action_dim,
        chunk_len=model.chunk_len, hidden_dim=cfg.critic.hidden_dim, num_layers=cfg.critic.num_layers,
    )
    return ValueOperator(network, in_keys=["observation", "action"]).to(device)


def make_offpolicy_loss(
    actor: FlowActor, critic: ValueOperator, cfg: DictConfig,
) -> tuple[ChunkQEnsembleLoss, SoftUpdate, ReferenceUpdater | BaseEMAUpdater | StageUpdater | None]:
    """The loss of ``cfg.method`` (RLDT, QAM or SWFP) with its critic's value estimator (TD(0) or
    TD(lambda)), the Polyak updater of the critic's targets, and the updater of the policy that
    the actor terms are anchored to (RLDT's reference, QAM's base, SWFP's stage; ``None`` when it
    stays the pretrained one), to step after each actor update.

    ``actor`` is the pretrained flow actor. The policy the loss trains is ``loss.actor_network``:
    ``actor`` itself for RLDT and QAM, for SWFP a :class:`StepwiseFlowActor` built on it
    (:func:`make_swfp_actor`), which collection and evaluation then run."""
    target_clip = None if cfg.critic.target_clip is None else tuple(cfg.critic.target_clip)
    if cfg.method == "swfp":
        loss = SWFPLoss(
            make_swfp_actor(actor, cfg),
            critic,
            num_qvalue_nets=cfg.critic.num_qvalue_nets,
            num_samples=cfg.swfp.num_samples,
            num_target_samples=cfg.critic.num_target_samples,
            entropy_coeff=cfg.swfp.entropy_coeff,
            jko_step=cfg.swfp.jko_step,
            target_clip=target_clip,
        )
        policy_updater = StageUpdater(loss, every=cfg.swfp.updates_per_stage)
    elif cfg.method == "qam":
        loss = QAMLoss(
            actor,
            critic,
            num_qvalue_nets=cfg.critic.num_qvalue_nets,
            num_target_samples=cfg.critic.num_target_samples,
            inverse_temperature=cfg.qam.inverse_temperature,
            base_constraint_coeff=cfg.qam.base_constraint_coeff,
            clamp_final_action=cfg.qam.clamp_final_action,
            target_clip=target_clip,
        )
        policy_updater = (None if cfg.qam.base_ema == 1 else
                          BaseEMAUpdater(loss, decay=cfg.qam.base_ema, every=cfg.qam.base_update_every))
    else:
        loss = make_rldt_loss(actor, critic, cfg, target_clip)
        every = cfg.schedule.reanchor_every
        policy_updater = None if every is None else ReferenceUpdater(loss, every=every)
    if cfg.critic.value_estimator == "td_lambda":
        loss.make_value_estimator(ValueEstimators.TDLambda, gamma=cfg.optim.gamma,
                                  lmbda=cfg.critic.lmbda)
    else:
        loss.make_value_estimator(ValueEstimators.TD0, gamma=cfg.optim.gamma)
    return loss, SoftUpdate(loss, tau=cfg.optim.tau), policy_updater


def make_swfp_actor(actor: FlowActor, cfg: DictConfig) -> StepwiseFlowActor:
    """SWFP's cascade on the pretrained ``actor`` (frozen): ``swfp.num_blocks`` blocks, each a
    :class:`VelocityMLP` of ``swfp.block_num_layers x swfp.block_hidden_dim`` (Mish) integrated with
    ``swfp.block_steps`` Euler steps, on the actor's device."""
    model = actor.model
    blocks = [
        VelocityMLP(model.velocity_network.config["observation_dim"], model.action_dim,
                    chunk_len=model.chunk_len, hidden_dim=cfg.swfp.block_hidden_dim,
                    num_layers=cfg.swfp.block_num_layers, activation=nn.Mish)
        for _ in range(cfg.swfp.num_blocks)
    ]
    device = next(model.parameters()).device
    return StepwiseFlowActor(actor, blocks, block_steps=cfg.swfp.block_steps).to(device)


def make_rldt_loss(actor: FlowActor, critic: ValueOperator, cfg: DictConfig,
                   target_clip: tuple[float, float] | None) -> RLDTLoss:
    """RLDTLoss with its SVGD transport (the value estimator is :func:`make_offpolicy_loss`'s)."""
    transport = SVGDTransport(
        cfg.rldt.kernel,
        bandwidth=cfg.rldt.bandwidth,
        temperature=cfg.rldt.temperature,
        temperature_coef=cfg.rldt.temperature_coef,
        normalization=cfg.rldt.field_normalization,
    )
    return RLDTLoss(
        actor,
        critic,
        num_qvalue_nets=cfg.critic.num_qvalue_nets,
        num_particles=cfg.rldt.num_particles,
        num_target_samples=cfg.critic.num_target_samples,
        transport=transport,
        rl_coeff=cfg.rldt.rl_coeff,
        consistency_coeff=cfg.rldt.consistency_coeff,
        reference_coeff=cfg.rldt.reference_coeff,
        rl_objective=cfg.rldt.rl_objective,
        target_clip=target_clip,
        stop_at_bounds=cfg.rldt.stop_at_bounds,
    )


@torch.no_grad()
def collected_calibration(loss: ChunkQEnsembleLoss, batches, gamma: float, reward_scale: float | None) -> dict:
    """The critic's ensemble-mean ``Q(s, a)`` against the discounted returns of the episodes that
    end within ``batches``: consecutive collector batches ``[envs, chunks]``, oldest first.

    Rewards are divided by ``reward_scale`` (what the critic learns); an episode cut by the time
    limit continues with the critic's value of the state it was cut at (the mean over the TD
    target's policy samples there), as the TD target does. Returns
    :func:`~torchrl_rldt.objectives.calibration.critic_calibration`'s report.
    """
    transitions = torch.cat(list(batches), dim=1)
    value = loss.critic_values(transitions).mean(0)
    next_td = transitions.get("next")
    truncated = next_td.get("truncated") & ~next_td.get("terminated")
    next_value = torch.zeros_like(value)
    cut = truncated.squeeze(-1)
    if cut.any():
        at_cut = loss.sample_target_actions(transitions[cut].clone())
        actions = at_cut.get(("next", loss.tensor_keys.target_action)).movedim(-3, 0)  # [M, n, H, A]
        state = at_cut.get("next").expand(actions.shape[0], *at_cut.batch_size)
        next_value[cut] = loss.critic_values(state, actions).mean((0, 1))
    reward = next_td.get("reward")
    if reward_scale:
        reward = reward / reward_scale
    return critic_calibration(value.unsqueeze(-1), reward, next_td.get("done"), gamma,
                              truncated=truncated, next_value=next_value.unsqueeze(-1))


def load_rldt_run(path: str | Path, device: torch.device) -> tuple[DictConfig, FlowPolicy, FlowPolicy,
                                                                  ChunkQEnsembleLoss, dict]:
    """An ``examples/rldt_gym.py`` checkpoint: its config, the base and the fine-tuned policy, the loss.

    Args:
        path: the run's ``checkpoint.pt``.
        device: where the modules go.

    Returns:
        ``(cfg, base, fine_tuned, loss, checkpoint)``: ``base`` is the run's starting policy, as
        shipped; ``fine_tuned`` has the same normalisation and the run's actor weights (the loss's
        actor: for SWFP the :class:`StepwiseFlowActor`, base and blocks); ``loss`` holds the run's
        critic.
    """
    checkpoint = read_checkpoint(path, "rldt_gym")
    # checkpoints written before a config value existed take its current default
    cfg = OmegaConf.merge(OmegaConf.load(Path(__file__).parent / "config" / "rldt_gym.yaml"),
                          checkpoint["config"])
    base = load_base_policy(cfg, device, cfg.rldt.num_steps)
    fine_tuned = load_base_policy(cfg, device, cfg.rldt.num_steps)
    loss, _, _ = make_offpolicy_loss(fine_tuned.actor, make_rldt_critic(fine_tuned, cfg, device), cfg)
    loss.load_state_dict(checkpoint["loss"])
    if loss.actor_network is not fine_tuned.actor:  # SWFP: the cascade on the base
        fine_tuned = dataclasses.replace(fine_tuned, actor=loss.actor_network)
    return cfg, base, fine_tuned, loss, checkpoint


def make_rldt_optimizers(loss: ChunkQEnsembleLoss, cfg: DictConfig):
    """Adam for the actor with its linear lr warm-up, AdamW for the Q ensemble. SWFP's actor
    optimiser holds only the blocks' parameters (the base is frozen), at ``swfp.block_lr``."""
    if isinstance(loss, SWFPLoss):
        actor_optim = torch.optim.Adam(loss.block_parameters(), lr=cfg.swfp.block_lr)
    else:
        actor_optim = torch.optim.Adam(loss.actor_network_params.values(True, True), lr=cfg.optim.actor_lr)
    actor_warmup = torch.optim.lr_scheduler.LambdaLR(
        actor_optim, lambda step: min(1.0, (step + 1) / max(cfg.optim.actor_warmup_steps, 1))
    )
    critic_optim = torch.optim.AdamW(loss.qvalue_network_params.values(True, True),
                                     lr=cfg.optim.critic_lr, weight_decay=cfg.optim.critic_weight_decay)
    return actor_optim, actor_warmup, critic_optim


def make_rldt_collector(base: FlowPolicy, cfg: DictConfig, seed: int, total_chunks: int,
                        actor: FlowActor | None = None):
    """:func:`make_collector` running the actor with RLDT's landing-point exploration, for at least
    ``total_chunks`` chunk transitions, rounded up to whole batches (:func:`frames_covering`: an
    env-step budget, given as ``total_chunks``, is always covered).

    For SWFP, ``actor`` is the loss's :class:`StepwiseFlowActor` and collects alone: the base's
    ``x0 ~ N(0, I)`` through the cascade is its exploration (landing-point noise lives on the base's
    chain, which the blocks come after)."""
    frames_per_batch = cfg.env.num_envs * cfg.collector.chunks_per_env
    if cfg.get("method") == "swfp":
        if not isinstance(actor, StepwiseFlowActor):
            raise TypeError("method=swfp collects with the loss's StepwiseFlowActor: pass actor=loss.actor_network.")
        policy = actor
    else:
        policy = LandingPointExploration(base.actor, min_step=cfg.rldt.min_step)
    return make_collector(
        cfg, policy,
        policy_env_maker(base, cfg, torch.device(cfg.device)), seed,
        frames_per_batch=frames_per_batch, total_frames=frames_covering(total_chunks, frames_per_batch),
    )
