"""The ``make_*`` factories of the example scripts (the training loops stay in the scripts; what
every run needs besides its loop is :mod:`torchrl_rldt.harness`)."""
from __future__ import annotations

import functools
import math
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from tensordict import TensorDictBase
from tensordict.nn import NormalParamExtractor, TensorDictModule
from torch import nn
from torchrl.collectors import Collector, MultiAsyncCollector, MultiSyncCollector
from torchrl.data import LazyTensorStorage, SliceSampler, TensorDictReplayBuffer
from torchrl.envs import EnvBase, ExplorationType, TransformedEnv
from torchrl.modules import MLP, ProbabilisticActor, TanhNormal, ValueOperator
from torchrl.objectives import SACLoss, SoftUpdate, ValueEstimators

from torchrl_rldt.checkpoint import DDPMPolicy, FlowPolicy, load_ddpm_policy, load_flow_policy
from torchrl_rldt.envs import EnvPoolEnv, is_metaworld_task, make_chunk_env
from torchrl_rldt.envs.metaworld import METAWORLD_EPISODE_STEPS
from torchrl_rldt.harness import (
    ConfigCheck,
    NonFiniteError,
    apply_task_config,
    episode_returns,
    read_checkpoint,
)
from torchrl_rldt.modules import ChunkQValueMLP, FlowActor, LandingPointExploration, SVGDTransport
from torchrl_rldt.objectives import BaseEMAUpdater, ChunkQEnsembleLoss, QAMLoss, ReferenceUpdater, RLDTLoss
from torchrl_rldt.objectives.calibration import critic_calibration

REPO_ROOT = Path(__file__).resolve().parents[1]


def repo_path(path: str | Path) -> Path:
    """``path`` as given when absolute, else relative to the repository root."""
    path = Path(path)
    return path if path.is_absolute() else REPO_ROOT / path


def task_slug(task: str) -> str:
    """The file-name form of a task id: ``"Hopper-v5"`` -> ``"hopper-v5"``,
    ``"MetaWorld/PickPlace-v3"`` -> ``"metaworld-pickplace-v3"``."""
    return task.lower().replace("/", "-")


is_metaworld = is_metaworld_task  # short name in the examples


def time_limit(task: str, configured: int | None) -> int:
    """``configured`` when set, else the task's own time limit (Meta-World 500, MuJoCo 1000)."""
    if configured is not None:
        return configured
    return METAWORLD_EPISODE_STEPS if is_metaworld(task) else 1000


def default_data_path(task: str) -> str:
    """Where the data set of ``task`` is: demonstrations for Meta-World, medium data otherwise."""
    return f"data/{task_slug(task)}-{'demos' if is_metaworld(task) else 'medium'}.npz"


def apply_per_task_config(cfg: DictConfig) -> list[str]:
    """The values ``cfg.task`` needs beyond the example's defaults, from
    ``examples/config/per_task/<config name>/<task slug>.yaml`` when it exists (e.g.
    ``per_task/rldt_gym/halfcheetah-v5.yaml``); the command line still wins. Call it first."""
    from hydra.core.hydra_config import HydraConfig

    hydra_config = HydraConfig.get()
    path = (REPO_ROOT / "examples" / "config" / "per_task" / hydra_config.job.config_name
            / f"{task_slug(cfg.task)}.yaml")
    return apply_task_config(cfg, path, hydra_config.overrides.task)


def make_env(task: str, num_envs: int, seed: int, device: str | torch.device = "cpu") -> EnvPoolEnv:
    """One EnvPool env of ``num_envs`` copies of ``task``."""
    return EnvPoolEnv(task, num_envs, seed=seed, device=device)


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


def make_replay_buffer(
    size: int, batch_size: int | None, device: str | torch.device, *, slice_len: int | None = None
) -> TensorDictReplayBuffer:
    """A FIFO replay buffer kept on ``device`` (``batch_size`` None: given to ``sample``).

    Uniform over transitions (extend it with flat batches), or, with ``slice_len``, over slices
    of up to ``slice_len`` consecutive transitions of one env (TorchRL's ``SliceSampler`` on a
    ``[num_envs, time]`` storage: extend it with the collector's ``[num_envs, T]`` batches). A
    slice ends at an episode end or after ``slice_len`` steps, where the sampler marks it done
    (and truncated): what TD(lambda) targets need.
    """
    if slice_len is None:
        return TensorDictReplayBuffer(
            storage=LazyTensorStorage(size, device=device), batch_size=batch_size
        )
    return TensorDictReplayBuffer(
        storage=LazyTensorStorage(size, device=device, ndim=2),
        sampler=SliceSampler(slice_len=slice_len, end_key=("next", "done"), strict_length=False),
        batch_size=batch_size,
    )


def end_slices_at_the_last_write(replay_buffer: TensorDictReplayBuffer) -> None:
    """Marks each env's last stored step of a slice buffer (:func:`make_replay_buffer` with
    ``slice_len``) done and truncated.

    A resumed run's collector starts new episodes, and its first batch is stored right after each
    env's last step: without an end there, slices (and their TD(lambda) targets) would run from
    the interrupted episode into an unrelated one. The storage is ``[time, num_envs]``, written
    along time at the writer's cursor.
    """
    if len(replay_buffer) == 0:
        return
    storage = replay_buffer.storage
    last = (replay_buffer.writer.state_dict()["_cursor"] - 1) % storage.shape[0]
    step = storage[last]
    for key in (("next", "done"), ("next", "truncated")):
        step.set(key, torch.ones_like(step.get(key)))
    storage.set(last, step)


# --- RLDT fine-tuning (examples/rldt_gym.py) -------------------------------------------------

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
        positive_int(name, minimum=0)
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
    for name in ("rldt.rl_coef", "rldt.consistency_coef", "rldt.reference_coef", "rldt.temperature_coef"):
        number(name, 0.0)
    need(cfg.rldt.kernel in ("rbf", "delta"), f"rldt.kernel must be rbf or delta, got {cfg.rldt.kernel!r}")
    check.one_of("rldt.field_normalization", ("particles", "kernel_mass"))
    if cfg.rldt.bandwidth is not None:
        number("rldt.bandwidth", 0.0, open_low=True)
    if cfg.rldt.temperature != "adaptive":
        number("rldt.temperature", 0.0)
    check.one_of("method", ("rldt", "qam"))
    if cfg.method == "qam":
        for name in ("qam.inverse_temperature", "qam.base_constraint_coef"):
            number(name, 0.0)
        number("qam.base_ema", 0.0, 1.0)
        positive_int("qam.base_update_every")
        if cfg.qam.max_grad_norm is not None:
            number("qam.max_grad_norm", 0.0, open_low=True)
        check.one_of("qam.clamp_final_action", (False, True))
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
    positive_int("rldt.min_step", minimum=0)
    if isinstance(cfg.rldt.min_step, int) and isinstance(cfg.rldt.num_steps, int):
        need(cfg.rldt.min_step < cfg.rldt.num_steps,
             f"rldt.min_step ({cfg.rldt.min_step}) must be < rldt.num_steps ({cfg.rldt.num_steps})")
    check.common()
    check.done()


def check_collector_config(check: ConfigCheck) -> None:
    """``collector.kind`` and, for several workers, ``collector.num_workers`` against ``env.num_envs``."""
    cfg = check.cfg
    check.one_of("collector.kind", ("single", "multi_sync", "multi_async", "ray"))
    if cfg.collector.kind == "single":
        return
    check.positive_int("collector.num_workers")
    workers, envs = cfg.collector.num_workers, cfg.env.num_envs
    if isinstance(workers, int) and isinstance(envs, int) and workers >= 1:
        check.need(envs % workers == 0,
                   f"env.num_envs ({envs}) must be a multiple of collector.num_workers ({workers}): "
                   f"each worker runs env.num_envs / num_workers envs")
    if cfg.collector.kind == "ray":
        import importlib.util

        check.need(importlib.util.find_spec("ray") is not None,
                   "collector.kind=ray needs Ray: pip install 'torchrl-rldt[distributed]' (or pip install ray)")
    if cfg.collector.kind == "multi_async" and OmegaConf.select(cfg, "critic.value_estimator") == "td_lambda":
        check.need(False, "collector.kind=multi_async yields one worker's envs per batch, which breaks "
                          "the per-env trajectories that critic.value_estimator=td_lambda samples "
                          "slices of; use collector.kind=multi_sync")


def load_base_policy(cfg: DictConfig, device: torch.device, num_steps: int | None = None, *,
                     kind: str = "flow") -> FlowPolicy | DDPMPolicy:
    """The pretrained policy of ``cfg.task``: a flow policy sampling with ``num_steps`` Euler
    steps (``kind="flow"``), or a DDPM policy (``kind="ddpm"``, DPPO's; its steps are its own).

    Errors name a missing file or a mismatch (task, dimensions, chunks longer than an episode).
    """
    path = repo_path(cfg.base_checkpoint or f"checkpoints/{task_slug(cfg.task)}-{kind}-base.pt")
    policy_option = "" if kind == "flow" else f" policy={kind}"
    if not path.is_file() and is_metaworld(cfg.task):
        data = repo_path(default_data_path(cfg.task))
        raise FileNotFoundError(
            f"no base policy for {cfg.task} at {path}. " + (
                f"Pretrain one on {data}: python examples/pretrain_flow.py{policy_option} "
                f"task={cfg.task}"
                if data.is_file() else
                f"There are no demonstrations for it either ({data}): record them with "
                f"python examples/record_demos.py task={cfg.task}, then pretrain with "
                f"python examples/pretrain_flow.py{policy_option} task={cfg.task}.")
        )
    if kind == "flow":
        policy = load_flow_policy(path, task=cfg.task, device=device)
    else:
        policy = load_ddpm_policy(path, task=cfg.task, device=device)
    if policy.chunk_len > cfg.env.max_episode_steps:
        raise ValueError(
            f"the base policy's chunks ({policy.chunk_len} actions) are longer than an episode "
            f"(env.max_episode_steps={cfg.env.max_episode_steps})."
        )
    if num_steps is not None:
        policy.actor.model.num_steps = num_steps
    return policy


def make_policy_chunk_env(policy: FlowPolicy | DDPMPolicy, cfg: DictConfig, num_envs: int, seed: int,
                          device: torch.device) -> TransformedEnv:
    """A chunk env of ``cfg.task`` in ``policy``'s normalised spaces, with its chunk length."""
    return policy_env_maker(policy, cfg, device)(num_envs, seed)


def returns_by_sampling_mode(env: EnvBase, policy: FlowPolicy, cfg: DictConfig, seed: int) -> dict:
    """One episode per env of ``env`` in each sampling mode: deterministic (x0 = 0) and stochastic.

    ``env`` is reseeded with ``seed`` before each mode, so that two policies measured with the
    same seed start from the same initial states (paired episodes).
    """
    modes = {"deterministic": ExplorationType.DETERMINISTIC, "stochastic": ExplorationType.RANDOM}
    returns = {}
    for mode, exploration in modes.items():
        env.set_seed(seed)
        returns[mode] = episode_returns(env, policy.actor, max_env_steps=cfg.env.max_episode_steps,
                                        chunk_len=policy.actor.model.chunk_len, exploration_type=exploration)
    return returns


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
) -> tuple[ChunkQEnsembleLoss, SoftUpdate, ReferenceUpdater | BaseEMAUpdater | None]:
    """The loss of ``cfg.method`` (RLDT or QAM) with its critic's value estimator (TD(0) or
    TD(lambda)), the Polyak updater of the critic's targets, and the updater of the policy that
    the actor terms are anchored to (RLDT's reference, QAM's base; ``None`` when it stays the
    pretrained one), to step after each actor update."""
    target_clip = None if cfg.critic.target_clip is None else tuple(cfg.critic.target_clip)
    if cfg.method == "qam":
        loss = QAMLoss(
            actor,
            critic,
            num_qvalue_nets=cfg.critic.num_qvalue_nets,
            num_target_samples=cfg.critic.num_target_samples,
            inverse_temperature=cfg.qam.inverse_temperature,
            base_constraint_coef=cfg.qam.base_constraint_coef,
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
        rl_coef=cfg.rldt.rl_coef,
        consistency_coef=cfg.rldt.consistency_coef,
        reference_coef=cfg.rldt.reference_coef,
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
        actor); ``loss`` holds the run's critic.
    """
    checkpoint = read_checkpoint(path, "rldt_gym")
    # checkpoints written before a config value existed take its current default
    cfg = OmegaConf.merge(OmegaConf.load(Path(__file__).parent / "config" / "rldt_gym.yaml"),
                          checkpoint["config"])
    base = load_base_policy(cfg, device, cfg.rldt.num_steps)
    fine_tuned = load_base_policy(cfg, device, cfg.rldt.num_steps)
    loss, _, _ = make_offpolicy_loss(fine_tuned.actor, make_rldt_critic(fine_tuned, cfg, device), cfg)
    loss.load_state_dict(checkpoint["loss"])
    return cfg, base, fine_tuned, loss, checkpoint


def make_rldt_optimizers(loss: ChunkQEnsembleLoss, cfg: DictConfig):
    """Adam for the actor with its linear lr warm-up, AdamW for the Q ensemble."""
    actor_optim = torch.optim.Adam(loss.actor_network_params.values(True, True), lr=cfg.optim.actor_lr)
    actor_warmup = torch.optim.lr_scheduler.LambdaLR(
        actor_optim, lambda step: min(1.0, (step + 1) / max(cfg.optim.actor_warmup_steps, 1))
    )
    critic_optim = torch.optim.AdamW(loss.qvalue_network_params.values(True, True),
                                     lr=cfg.optim.critic_lr, weight_decay=cfg.optim.critic_weight_decay)
    return actor_optim, actor_warmup, critic_optim


# a worker's envs are seeded apart from the others' (and from the evaluation envs)
WORKER_SEED_STRIDE = 100_003


def make_collector(cfg: DictConfig, policy, make_env, seed: int, *, frames_per_batch: int,
                   total_frames: int, **kwargs):
    """TorchRL's collector of ``cfg.collector.kind`` for ``policy`` on envs built by ``make_env``.

    Args:
        cfg: the example's config (``collector.kind``, ``collector.num_workers``,
            ``collector.ray_address``, ``env.num_envs``, ``device``).
        policy: the collecting policy (with its exploration module, which travels with it).
        make_env: ``make_env(num_envs, seed)`` builds an env; picklable for the workers, e.g. a
            ``functools.partial`` of :func:`torchrl_rldt.envs.make_chunk_env`.
        seed: the seed of the (first worker's) envs.

    Keyword Args:
        frames_per_batch, total_frames: as TorchRL's collectors (a batch holds
            ``frames_per_batch`` chunks whatever the kind); more ``kwargs`` go to every collector.

    ``single``: one ``Collector`` over one pool of ``env.num_envs`` envs. ``multi_sync`` and
    ``multi_async``: ``MultiSyncCollector`` / ``MultiAsyncCollector`` over
    ``collector.num_workers`` processes, each with its own pool of ``env.num_envs / num_workers``
    envs seeded apart (all workers' envs in a batch for ``multi_sync``, one worker's for
    ``multi_async``). ``ray``: TorchRL's ``RayCollector``, ``num_workers`` Ray actors of one CPU
    each, on the cluster at ``collector.ray_address`` (``null``: a local Ray instance on loopback);
    its batches go through :func:`collected_chunks`. After an update of the policy,
    ``collector.update_policy_weights_()`` sends its weights to the workers (a no-op in one
    process).
    """
    common = dict(frames_per_batch=frames_per_batch, total_frames=total_frames, device=cfg.device,
                  storing_device=cfg.device, **kwargs)
    kind = cfg.collector.kind
    if kind == "single":
        return Collector(make_env(cfg.env.num_envs, seed), policy, **common)
    workers = cfg.collector.num_workers
    env_makers = [functools.partial(make_env, cfg.env.num_envs // workers, seed + worker * WORKER_SEED_STRIDE)
                  for worker in range(workers)]
    if kind == "multi_sync":
        # workers' batches side by side along the env dimension: [num_envs, chunks]
        return MultiSyncCollector(env_makers, policy, cat_results=0, **common)
    if kind == "multi_async":
        return MultiAsyncCollector(env_makers, policy, **common)
    from torchrl.collectors.distributed import RayCollector

    # one Collector per Ray actor, one CPU each; a batch stacks them: [workers, envs, chunks]
    address = cfg.collector.ray_address
    return RayCollector(
        env_makers, policy, collector_class=Collector, num_collectors=workers, sync=True,
        ray_init_config={"address": address, "include_dashboard": False} if address is not None else {
            "address": "local", "include_dashboard": False, "num_cpus": workers,
            "_node_ip_address": "127.0.0.1"},  # a local instance on loopback
        remote_configs={"num_cpus": 1, "num_gpus": 1 if torch.device(cfg.device).type == "cuda" else 0},
        **common,
    )


def policy_env_maker(policy: FlowPolicy | DDPMPolicy, cfg: DictConfig, device: torch.device):
    """``make_env(num_envs, seed)``: chunk envs of ``cfg.task`` in ``policy``'s normalised spaces
    (picklable, for :func:`make_collector`'s workers)."""
    return functools.partial(make_chunk_env, cfg.task, chunk_len=policy.chunk_len,
                             transforms=policy.env_transforms(),
                             max_episode_steps=cfg.env.max_episode_steps, device=device)


def frames_covering(env_steps: int, frames_per_batch: int) -> int:
    """A collector's ``total_frames`` that is sure to cover ``env_steps`` more env steps.

    A frame (a chunk transition) holds at least one env step, fewer than the chunk's length when
    an episode ends inside it, so ``env_steps`` frames, rounded up to whole batches, always reach
    the budget; the training loop stops on its env-step count before the collector runs out. A
    finite budget rather than TorchRL's ``-1`` (no limit), which ``RayCollector`` does not run.
    """
    return max(1, math.ceil(max(env_steps, 1) / frames_per_batch)) * frames_per_batch


def make_rldt_collector(base: FlowPolicy, cfg: DictConfig, seed: int, total_chunks: int):
    """:func:`make_collector` running the actor with RLDT's landing-point exploration, for at least
    ``total_chunks`` chunk transitions, rounded up to whole batches (:func:`frames_covering`: an
    env-step budget, given as ``total_chunks``, is always covered)."""
    frames_per_batch = cfg.env.num_envs * cfg.collector.chunks_per_env
    return make_collector(
        cfg, LandingPointExploration(base.actor, min_step=cfg.rldt.min_step),
        policy_env_maker(base, cfg, torch.device(cfg.device)), seed,
        frames_per_batch=frames_per_batch, total_frames=frames_covering(total_chunks, frames_per_batch),
    )


def collected_chunks(batch: TensorDictBase) -> TensorDictBase:
    """A collector's batch as ``[envs, chunks]`` (a Ray collector stacks its workers in front)."""
    return batch.reshape(-1, batch.shape[-1]) if batch.ndim > 2 else batch
