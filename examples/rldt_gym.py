"""RLDT: online RL fine-tuning of a pretrained flow-matching policy on EnvPool MuJoCo.

RLDT ("Reinforcement Learning for Flow-Matching Policies with Density Transport", arXiv
2606.08602) with TorchRL pieces: a ``Collector`` over an ``EnvPoolEnv`` executing action
chunks with the landing-point exploration, a replay buffer of chunk transitions, ``RLDTLoss``
(SVGD-transported policy loss, a Q ensemble with Polyak targets). Starts from the shipped base
policy of the task, evaluates it, fine-tunes, and ends with base against fine-tuned return.
``method=qam`` runs QAM (``QAMLoss``, arXiv 2601.14234) in the same loop: the same critic,
collection and schedule, the actor trained by adjoint matching. ``method=swfp`` runs SWFP as we
read its abstract (``SWFPLoss``, arXiv 2510.15388; ``docs/swfp.md``): the same critic and schedule,
a cascade of small flow blocks on the frozen base trained one per stage (``StageUpdater``), which
collects without landing-point noise (the base's x0 ~ N(0, I) is its exploration).

    python examples/rldt_gym.py
    python examples/rldt_gym.py task=Walker2d-v5 collector.total_env_steps=300_000
    python examples/rldt_gym.py method=qam
    python examples/rldt_gym.py method=swfp
    python examples/rldt_gym.py resume=outputs/rldt_gym/Hopper-v5/<run>/checkpoint.pt

Writes into the run directory: ``checkpoint.pt`` (atomically, every ``checkpoint.every_batches``
batches, on Ctrl-C and at the end), the logger's files, ``learning_curve.png`` and
``summary.json`` (through :class:`torchrl_rldt.trainers.TrainingRun`).
"""
from __future__ import annotations

import collections
import sys

import hydra
import torch
from omegaconf import DictConfig

from torchrl_rldt.trainers import RewardScale, TrainingRun, refuse_renamed_keys
from torchrl_rldt.objectives.diagnostics import policy_term_gradients
from rldt_utils import (
    check_rldt_config,
    collected_calibration,
    make_offpolicy_loss,
    make_rldt_collector,
    make_rldt_critic,
    make_rldt_optimizers,
)
from utils import (
    apply_per_task_config,
    collected_chunks,
    end_slices_at_the_last_write,
    load_base_policy,
    make_policy_chunk_env,
    make_replay_buffer,
)


@hydra.main(version_base="1.3", config_path="config", config_name="rldt_gym")
def main(cfg: DictConfig) -> None:
    # --- everything that can be refused is checked before any work ---------------------------
    apply_per_task_config(cfg)
    check_rldt_config(cfg)
    device = torch.device(cfg.device)
    run = TrainingRun.from_hydra(
        "rldt_gym", cfg,
        counters={"env_steps": 0, "chunks": 0, "batches": 0, "critic_updates": 0, "actor_updates": 0},
        # checkpoints written before the QAM switch are RLDT runs
        identity={"task": cfg.task, "method": cfg.method}, identity_defaults={"method": "rldt"},
    )
    base = load_base_policy(cfg, device, cfg.rldt.num_steps)
    torch.manual_seed(cfg.seed)

    # --- environments, actor, critic, loss, optimisers, buffer --------------------------------
    counters = run.counters
    eval_env = make_policy_chunk_env(base, cfg, cfg.eval.episodes, run.env_seed("eval"), device)
    final_env = make_policy_chunk_env(base, cfg, cfg.eval.final_episodes, run.env_seed("final"), device)
    chunk_len = base.actor.model.chunk_len
    loss, target_updater, policy_updater = make_offpolicy_loss(base.actor, make_rldt_critic(base, cfg, device), cfg)
    actor = loss.actor_network  # the base actor itself for RLDT and QAM, SWFP's cascade on it
    title = {"rldt": "RLDT", "qam": "QAM", "swfp": "SWFP"}[cfg.method]
    max_grad_norm = cfg.qam.max_grad_norm if cfg.method == "qam" else None
    actor_optim, actor_warmup, critic_optim = make_rldt_optimizers(loss, cfg)
    # no default batch size: the critic and the actor sample batches of their own sizes;
    # TD(lambda) samples slices of consecutive transitions, stored per env
    slices = cfg.critic.value_estimator == "td_lambda"
    replay_buffer = make_replay_buffer(cfg.buffer.size, None, device,
                                       slice_len=cfg.buffer.slice_len if slices else None)
    run.track(loss=loss, actor_optim=actor_optim, actor_warmup=actor_warmup, critic_optim=critic_optim,
              **({"policy_updater": policy_updater} if policy_updater is not None else {}))
    if run.restore_buffer(replay_buffer) and slices:
        end_slices_at_the_last_write(replay_buffer)
    run.evaluate_base(final_env, base.actor, chunk_len=chunk_len)
    saved_buffer = replay_buffer if cfg.checkpoint.save_replay_buffer else None
    # kept in run.extra, so that a resumed run goes on with the same scale
    reward_scale = RewardScale(cfg.optim.reward_scale_rate, cfg.optim.reward_scale_every_batches,
                               state=run.extra)
    round_size = cfg.buffer.batch_size * cfg.schedule.critic_steps // cfg.schedule.target_action_reuse
    # the learner's forward passes in bfloat16 (its backward follows); weights and optimisers stay fp32
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.learner_precision == "bf16")

    # the latest collector batches, in time order per env: their episodes calibrate the critic
    calibrate = cfg.eval.calibration_batches > 0 and cfg.collector.kind != "multi_async"
    recent_batches = collections.deque(maxlen=cfg.eval.calibration_batches if calibrate else 0)

    # --- training loop ------------------------------------------------------------------------
    # as many chunks as env steps remain: every chunk holds at least one, so the budget is reached
    collector = make_rldt_collector(base, cfg, run.env_seed("train"),
                                    cfg.collector.total_env_steps - counters["env_steps"], actor=actor)
    try:
        with run.loop(total_env_steps=cfg.collector.total_env_steps, description=f"{title} {cfg.task}",
                      replay_buffer=saved_buffer):
            for batch in map(collected_chunks, run.collected(collector)):
                steps = int(batch["next", "chunk_steps"].sum())
                reward = batch["next", "reward"]
                counters["env_steps"] += steps
                counters["chunks"] += batch.numel()
                counters["batches"] += 1
                if cfg.critic.bootstrap:  # each env's trajectories train one ensemble member
                    member = torch.arange(batch.shape[0], device=batch.device) % cfg.critic.num_qvalue_nets
                    batch["critic_member"] = member.unsqueeze(-1).expand(batch.shape)
                replay_buffer.extend(batch if slices else batch.reshape(-1))
                reward_scale.update(reward)  # the reference's: an EMA of mean |r| (dense rewards)

                metrics = {}
                # the actor is fixed during the critic steps: with target_action_reuse > 1 its
                # samples at s' are drawn once on one round batch that the steps take windows of
                round_batch = None
                with run.timed("critic"):
                    if cfg.schedule.target_action_reuse > 1:
                        with autocast:
                            round_batch = loss.sample_target_actions(replay_buffer.sample(round_size))
                    for _ in range(cfg.schedule.critic_steps):
                        if round_batch is None:
                            sample = replay_buffer.sample(cfg.buffer.batch_size)
                        else:  # slices end early at episode ends: the round batch can be shorter
                            window = min(cfg.buffer.batch_size, round_batch.shape[0])
                            start = int(torch.randint(round_batch.shape[0] - window + 1, ()))
                            sample = round_batch[start:start + window]
                        sample["next", "reward"] = reward_scale(sample["next", "reward"])
                        with autocast:
                            critic_loss, critic_info = loss.qvalue_loss(sample)
                        run.check_finite("the critic loss", critic_loss)
                        critic_optim.zero_grad()
                        critic_loss.backward()
                        critic_optim.step()
                        target_updater.step()
                        counters["critic_updates"] += 1
                        metrics["loss_qvalue"] = critic_loss.item()
                        metrics["critic_batch_size"] = sample.shape[0]  # transitions: short slices shrink it
                        predicted = critic_info["state_action_value"]
                        metrics["q_mean"] = predicted.mean().item()
                        # how far apart the ensemble's members are (the spread the min acts on)
                        metrics["q_member_gap"] = (predicted.max(0).values - predicted.min(0).values).mean().item()
                after_warmup = counters["batches"] - cfg.schedule.critic_warmup_batches
                if after_warmup > 0 and after_warmup % cfg.schedule.actor_every_batches == 0:
                    with run.timed("actor"):
                        for _ in range(cfg.schedule.actor_steps):
                            with autocast:
                                terms = loss.actor_loss(replay_buffer.sample(cfg.schedule.actor_batch_size))
                            actor_loss = sum(terms[key] for key in loss.POLICY_TERMS)
                            run.check_finite("the actor loss", actor_loss)
                            actor_optim.zero_grad()
                            actor_loss.backward()
                            if max_grad_norm is not None:
                                torch.nn.utils.clip_grad_norm_(actor_optim.param_groups[0]["params"],
                                                               max_grad_norm)
                            actor_optim.step()
                            actor_warmup.step()
                            if policy_updater is not None:  # RLDT's reference, QAM's base, SWFP's stage
                                policy_updater.step()
                            counters["actor_updates"] += 1
                            metrics.update({key: value.item() for key, value in terms.items()})
                    run.update_policy_weights(collector)  # to the workers of a multi-process collector

                metrics["env_steps_per_second"] = counters["env_steps"] / max(run.wall_seconds, 1e-9)
                metrics["action_abs_mean"] = batch["action"].abs().mean().item()  # executed, normalised
                recent_batches.append(batch)
                returns = run.evaluate_periodically(eval_env, actor, chunk_len=chunk_len)
                if returns is not None:
                    metrics["eval_return"] = returns["mean"]
                    # what an actor step follows: the drive against the trust region, and how much
                    # two independent batches agree on the drive (on an RNG of its own: training
                    # draws the same numbers with or without it)
                    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                        metrics.update(policy_term_gradients(
                            loss, *(replay_buffer.sample(cfg.schedule.actor_batch_size) for _ in range(2))))
                    if calibrate:
                        with autocast:
                            calibration = collected_calibration(loss, recent_batches, cfg.optim.gamma,
                                                                reward_scale.value)
                        metrics.update({f"critic_{key}": calibration[key] for key in
                                        ("correlation", "bias", "value_mean", "return_mean")})
                run.log(metrics, steps, batch)
                if counters["batches"] % cfg.checkpoint.every_batches == 0:
                    run.save(saved_buffer)
                if run.stop_requested:
                    return run.interrupted(saved_buffer)
    finally:
        run.shutdown_collector(collector)

    # --- final evaluation, checkpoint, curve and summary -------------------------------------
    run.finish(final_env, actor, chunk_len=chunk_len, title=title, replay_buffer=saved_buffer,
               summary={"method": cfg.method})


if __name__ == "__main__":
    refuse_renamed_keys(sys.argv[1:])
    main()
