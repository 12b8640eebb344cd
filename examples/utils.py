"""Factories shared by the example scripts (the training loops stay in the scripts)."""
from __future__ import annotations

import math
from numbers import Real
from pathlib import Path

import torch
from omegaconf import DictConfig
from tensordict import TensorDictBase
from tensordict.nn import NormalParamExtractor, TensorDictModule, TensorDictModuleBase
from torch import nn
from torchrl.collectors import Collector
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
from torchrl.envs import (
    Compose,
    EnvBase,
    ExplorationType,
    InitTracker,
    RewardSum,
    StepCounter,
    TransformedEnv,
)
from torchrl.modules import MLP, ProbabilisticActor, TanhNormal, ValueOperator
from torchrl.objectives import SACLoss, SoftUpdate

from torchrl_rldt.checkpoint import FlowPolicy, load_flow_policy
from torchrl_rldt.envs import ActionChunkEnv, EnvPoolEnv, check_task_id, evaluate_policy
from torchrl_rldt.modules import ChunkQValueMLP, FlowActor, LandingPointExploration, SVGDTransport
from torchrl_rldt.objectives import RLDTLoss

REPO_ROOT = Path(__file__).resolve().parents[1]


def repo_path(path: str | Path) -> Path:
    """``path`` as given when absolute, else relative to the repository root."""
    path = Path(path)
    return path if path.is_absolute() else REPO_ROOT / path


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
        FloatingPointError: the loss is not finite; nothing was updated.
    """
    terms = loss(batch)
    # SACLoss detaches what each term must not train, so one backward serves all three.
    total = terms["loss_qvalue"] + terms["loss_actor"] + terms["loss_alpha"]
    if not torch.isfinite(total):
        raise FloatingPointError(f"non-finite SAC loss ({total.item()})")
    for optim in optimizers.values():
        optim.zero_grad()
    total.backward()
    for optim in optimizers.values():
        optim.step()
    target_updater.step()
    return terms


def make_replay_buffer(
    size: int, batch_size: int | None, device: str | torch.device
) -> TensorDictReplayBuffer:
    """A uniform FIFO replay buffer kept on ``device`` (``batch_size`` None: given to ``sample``)."""
    return TensorDictReplayBuffer(
        storage=LazyTensorStorage(size, device=device), batch_size=batch_size
    )


# --- RLDT fine-tuning (examples/rldt_gym.py) -------------------------------------------------


class ConfigCheck:
    """Collects every problem of a config, then refuses it at once with all the reasons."""

    def __init__(self, cfg: DictConfig) -> None:
        check_task_id(cfg.task)  # first: an unknown task makes every other message moot
        self.cfg, self.problems = cfg, []

    def need(self, condition: bool, message: str) -> None:
        if not condition:
            self.problems.append(message)

    def positive_int(self, name: str, minimum: int = 1) -> None:
        value = cfg_get(self.cfg, name)
        self.need(isinstance(value, int) and not isinstance(value, bool) and value >= minimum,
                  f"{name} must be an integer >= {minimum}, got {value!r}")

    def number(self, name: str, low: float, high: float = math.inf, open_low: bool = False) -> None:
        value = cfg_get(self.cfg, name)
        ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
        ok = ok and (value > low if open_low else value >= low) and value <= high
        bound = f"> {low}" if open_low else f">= {low}"
        self.need(ok, f"{name} must be a finite number {bound}"
                  + (f" and <= {high}" if high < math.inf else "") + f", got {value!r}")

    def common(self) -> None:
        """What every fine-tuning example shares: env and evaluation sizes, the logger, the device."""
        for name in ("env.num_envs", "env.max_episode_steps", "collector.total_env_steps",
                     "eval.every_env_steps", "eval.episodes", "eval.final_episodes", "num_threads"):
            self.positive_int(name)
        self.need(self.cfg.logger.backend in (None, "csv", "tensorboard", "wandb"),
                  f"logger.backend must be csv, tensorboard, wandb or null, got {self.cfg.logger.backend!r}")
        if str(self.cfg.device).startswith("cuda"):
            self.need(torch.cuda.is_available(),
                      f"device={self.cfg.device} but CUDA is not available; use device=cpu")

    def done(self) -> None:
        if self.problems:
            raise ValueError("invalid configuration:\n  - " + "\n  - ".join(self.problems))


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
                 "optim.actor_warmup_steps"):
        positive_int(name, minimum=0)
    if cfg.schedule.reanchor_every is not None:
        positive_int("schedule.reanchor_every")
    for name in ("optim.actor_lr", "optim.critic_lr"):
        number(name, 0.0, open_low=True)
    number("optim.gamma", 0.0, 1.0)
    number("optim.tau", 0.0, 1.0, open_low=True)
    if cfg.optim.reward_scale_rate is not None:
        number("optim.reward_scale_rate", 0.0, 1.0, open_low=True)
    for name in ("rldt.rl_coef", "rldt.consistency_coef", "rldt.reference_coef", "rldt.temperature_coef"):
        number(name, 0.0)
    need(cfg.rldt.kernel in ("rbf", "delta"), f"rldt.kernel must be rbf or delta, got {cfg.rldt.kernel!r}")
    if cfg.rldt.bandwidth is not None:
        number("rldt.bandwidth", 0.0, open_low=True)
    if cfg.rldt.temperature != "adaptive":
        number("rldt.temperature", 0.0)
    need(cfg.rldt.rl_objective in ("inner_product", "regression"),
         f"rldt.rl_objective must be inner_product or regression, got {cfg.rldt.rl_objective!r}")
    positive_int("rldt.min_step", minimum=0)
    if isinstance(cfg.rldt.min_step, int) and isinstance(cfg.rldt.num_steps, int):
        need(cfg.rldt.min_step < cfg.rldt.num_steps,
             f"rldt.min_step ({cfg.rldt.min_step}) must be < rldt.num_steps ({cfg.rldt.num_steps})")
    check.common()
    check.done()


def cfg_get(cfg: DictConfig, dotted: str):
    """``cfg.a.b`` for ``"a.b"``."""
    value = cfg
    for part in dotted.split("."):
        value = value[part]
    return value


def load_base_policy(cfg: DictConfig, device: torch.device, num_steps: int) -> FlowPolicy:
    """The pretrained flow policy of ``cfg.task``, sampling with ``num_steps`` Euler steps.

    Errors name a missing file or a mismatch (task, dimensions, chunks longer than an episode).
    """
    path = repo_path(cfg.base_checkpoint or f"checkpoints/{cfg.task.lower()}-flow-base.pt")
    policy = load_flow_policy(path, task=cfg.task, device=device)
    chunk_len = policy.actor.chunk_len
    if chunk_len > cfg.env.max_episode_steps:
        raise ValueError(
            f"the base policy's chunks ({chunk_len} actions) are longer than an episode "
            f"(env.max_episode_steps={cfg.env.max_episode_steps})."
        )
    policy.actor.num_steps = num_steps
    return policy


def make_chunk_env(
    task: str, num_envs: int, seed: int, chunk_len: int, transforms: Compose, *,
    max_episode_steps: int, device: str | torch.device = "cpu",
) -> TransformedEnv:
    """EnvPool ``task`` executing action chunks, behind ``transforms`` (e.g. a policy's normalisation).

    One step is one chunk; ``("next", "reward")`` is the chunk's summed reward and
    ``"episode_reward"`` the running return.
    """
    env = EnvPoolEnv(task, num_envs, seed=seed, device=device, max_episode_steps=max_episode_steps)
    for transform in (InitTracker(), StepCounter(), RewardSum()):
        transforms.append(transform)
    return TransformedEnv(ActionChunkEnv(env, chunk_len), transforms)


def episode_returns(
    env: EnvBase, actor: TensorDictModuleBase, *, max_env_steps: int,
    exploration_type: ExplorationType, chunk_len: int | None = None,
) -> dict:
    """Mean and standard deviation of one episode per env of a chunk env (see ``evaluate_policy``).

    ``chunk_len`` (actions per env step of ``env``) defaults to the actor's ``chunk_len``.
    """
    max_chunks = math.ceil(max_env_steps / (chunk_len or actor.chunk_len))
    result = evaluate_policy(env, actor, max_steps=max_chunks, exploration_type=exploration_type)
    returns = result["return"]
    return {
        "mean": returns.mean().item(),
        "std": returns.std().item(),
        "episodes": returns.numel(),
        "mean_length": result["length"].float().mean().item(),
    }


def deterministic_returns(env: EnvBase, actor: TensorDictModuleBase, cfg: DictConfig,
                          chunk_len: int | None = None) -> dict:
    """``episode_returns`` of the deterministic policy within ``cfg.env.max_episode_steps``.

    Deterministic: a flow actor from x0 = 0; a TanhNormal actor takes the squashed Gaussian mean.
    ``chunk_len`` as in :func:`episode_returns`.
    """
    return episode_returns(env, actor, max_env_steps=cfg.env.max_episode_steps,
                           exploration_type=ExplorationType.DETERMINISTIC, chunk_len=chunk_len)


def record_returns(history: list, env: EnvBase, actor: TensorDictModuleBase, cfg: DictConfig, *,
                   env_steps: int, wall_seconds: float, chunk_len: int | None = None) -> dict:
    """``deterministic_returns``, also appended to ``history`` as a point of the learning curve."""
    returns = deterministic_returns(env, actor, cfg, chunk_len)
    history.append({"env_steps": env_steps, "wall_seconds": wall_seconds, **returns})
    return returns


def make_policy_chunk_env(policy: FlowPolicy, cfg: DictConfig, num_envs: int, seed: int,
                          device: torch.device) -> TransformedEnv:
    """A chunk env of ``cfg.task`` in ``policy``'s normalised spaces, with its chunk length."""
    return make_chunk_env(cfg.task, num_envs, seed, policy.actor.chunk_len, policy.env_transforms(),
                          max_episode_steps=cfg.env.max_episode_steps, device=device)


def load_run_state(cfg: DictConfig, device: torch.device, checkpoint_format: str,
                   **identity) -> tuple[Path | None, dict | None]:
    """The checkpoint named by ``cfg.resume`` (``None, None`` without one), checked before any work.

    Refuses a missing file, a checkpoint of another example (``checkpoint_format``) and one whose
    entries differ from ``identity`` (e.g. ``task=...``), naming the difference.
    """
    if not cfg.resume:
        return None, None
    path = repo_path(cfg.resume)
    if not path.is_file():
        raise FileNotFoundError(f"resume={cfg.resume}: no such checkpoint ({path}).")
    state = torch.load(path, map_location=device, weights_only=True)
    if state.get("format") != checkpoint_format:
        raise ValueError(f"{path} is not a {checkpoint_format} checkpoint.")
    saved = {key: state.get(key) for key in identity}
    if saved != identity:
        raise ValueError(
            f"{path} is a run with " + " ".join(f"{k}={v}" for k, v in saved.items())
            + "; this run has " + " ".join(f"{k}={v}" for k, v in identity.items()) + "."
        )
    return path, state


def rng_state(device: torch.device) -> dict:
    """The torch (and, on CUDA, the CUDA) random state, for a checkpoint."""
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state() if device.type == "cuda" else None}


def restore_rng_state(rng: dict, device: torch.device) -> None:
    """Restores what :func:`rng_state` saved."""
    torch.set_rng_state(rng["torch"])
    if device.type == "cuda" and rng.get("cuda") is not None:
        torch.cuda.set_rng_state(rng["cuda"])


def make_rldt_critic(policy: FlowPolicy, cfg: DictConfig, device: torch.device) -> ValueOperator:
    """One Q(observation, chunk) network; RLDTLoss makes the ensemble and its targets."""
    actor = policy.actor
    network = ChunkQValueMLP(
        actor.velocity_network.config["observation_dim"], actor.action_dim,
        chunk_len=actor.chunk_len, hidden_dim=cfg.critic.hidden_dim, num_layers=cfg.critic.num_layers,
    )
    return ValueOperator(network, in_keys=["observation", "action"]).to(device)


def make_rldt_loss(actor: FlowActor, critic: ValueOperator, cfg: DictConfig) -> tuple[RLDTLoss, SoftUpdate]:
    """RLDTLoss with its SVGD transport, TD(0) estimator and the Polyak updater of its targets."""
    transport = SVGDTransport(
        cfg.rldt.kernel,
        bandwidth=cfg.rldt.bandwidth,
        temperature=cfg.rldt.temperature,
        temperature_coef=cfg.rldt.temperature_coef,
    )
    loss = RLDTLoss(
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
    )
    loss.make_value_estimator(gamma=cfg.optim.gamma)
    return loss, SoftUpdate(loss, tau=cfg.optim.tau)


def make_rldt_collector(env: EnvBase, actor: FlowActor, cfg: DictConfig, total_chunks: int) -> Collector:
    """A Collector running the actor with RLDT's landing-point exploration."""
    frames_per_batch = cfg.env.num_envs * cfg.collector.chunks_per_env
    return Collector(
        env,
        LandingPointExploration(actor, min_step=cfg.rldt.min_step),
        frames_per_batch=frames_per_batch,
        total_frames=max(1, math.ceil(total_chunks / frames_per_batch)) * frames_per_batch,
        device=cfg.device,
        storing_device=cfg.device,
    )
