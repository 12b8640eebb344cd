"""On-policy baselines for flow and diffusion policies (ReinFlow, FPO++, DPPO) on EnvPool MuJoCo,
from the shipped bases.

The same environments and evaluation as ``examples/rldt_gym.py``, with a method switch:
``method=reinflow`` (``NoisyFlowActor`` + ``ReinFlowLoss``, arXiv 2505.22094) or ``method=fpo``
(``FlowActor`` + ``FPOLoss``, FPO++ by default, arXiv 2507.21053 / 2602.02481), both from the
shipped flow base; ``method=dppo`` (``DPPOActor`` + ``DPPOLoss``, arXiv 2409.00588) from the
shipped DDPM base of the same data (``examples/pretrain_flow.py policy=ddpm``). Each iteration
collects ``num_envs x chunks_per_env`` chunk transitions with a TorchRL ``Collector``, computes
GAE, and takes ``epochs`` passes of mini-batch PPO updates.

    python examples/ppo_gym.py method=reinflow
    python examples/ppo_gym.py method=fpo collector.total_env_steps=200000
    python examples/ppo_gym.py method=dppo

Writes into the run directory: ``checkpoint.pt`` (atomically after every iteration: a kill loses
at most the iteration under way; ``resume=<checkpoint.pt>`` continues), the logger's files and
``summary.json``.
"""
from __future__ import annotations


import hydra
import torch
from omegaconf import DictConfig
from torchrl.modules import MLP, ValueOperator
from torchrl.objectives import ValueEstimators

from torchrl_rldt.trainers import ConfigCheck, RewardScale, TrainingRun
from torchrl_rldt.modules import DPPOActor, FlowNoiseMLP, NoisyFlowActor
from torchrl_rldt.objectives import DPPOLoss, FPOLoss, ReinFlowLoss
from utils import (
    apply_per_task_config,
    check_collector_config,
    collected_chunks,
    frames_covering,
    load_base_policy,
    make_collector,
    make_policy_chunk_env,
    policy_env_maker,
)


def check_config(cfg: DictConfig) -> None:
    """Refuses invalid hyper-parameters with a message naming the value, before any work."""
    check = ConfigCheck(cfg)
    check.need(cfg.method in ("reinflow", "fpo", "dppo"),
               f"method must be reinflow, fpo or dppo, got {cfg.method!r}")
    for name in ("collector.chunks_per_env", "ppo.epochs", "ppo.minibatch_size", "reinflow.num_steps",
                 "fpo.num_steps", "fpo.num_cfm_samples", "dppo.finetuned_steps"):
        check.positive_int(name)
    check.integer("ppo.critic_warmup_iterations", minimum=0)
    for name in ("ppo.actor_lr", "ppo.critic_lr", "reinflow.min_std", "reinflow.clip_epsilon",
                 "fpo.clip_epsilon", "dppo.clip_epsilon", "dppo.min_sampling_std",
                 "dppo.min_log_prob_std", "dppo.noise_clip"):
        check.number(name, 0.0, open_low=True)
    for name in ("ppo.gamma", "ppo.lmbda"):
        check.number(name, 0.0, 1.0)
    check.number("dppo.gamma_denoising", 0.0, 1.0, open_low=True)
    if cfg.dppo.first_step_clip_epsilon is not None:
        check.number("dppo.first_step_clip_epsilon", 0.0, open_low=True)
    check.number("dppo.clip_epsilon_growth", 0.0, open_low=True)
    check.number("reinflow.entropy_coeff", 0.0)
    check.number("reinflow.max_std", cfg.reinflow.min_std)
    if cfg.ppo.reward_scale_rate is not None:
        check.number("ppo.reward_scale_rate", 0.0, 1.0, open_low=True)
    check.need(cfg.fpo.variant in ("fpo++", "fpo"), f"fpo.variant must be fpo++ or fpo, got {cfg.fpo.variant!r}")
    check_collector_config(check)
    check.common()
    check.done()


@hydra.main(version_base="1.3", config_path="config", config_name="ppo_gym")
def main(cfg: DictConfig) -> None:
    apply_per_task_config(cfg)
    check_config(cfg)
    device = torch.device(cfg.device)
    run = TrainingRun.from_hydra(
        "ppo_gym", cfg,
        identity={"task": cfg.task, "method": cfg.method},
        counters={"env_steps": 0, "iterations": 0, "updates": 0},
    )
    if cfg.method == "dppo":
        base = load_base_policy(cfg, device, kind="ddpm")
        model = base.model
        if cfg.dppo.finetuned_steps > model.num_steps:
            raise ValueError(f"dppo.finetuned_steps={cfg.dppo.finetuned_steps} exceeds the "
                             f"{model.num_steps} denoising steps of the base policy {base.task}.")
        observation_dim = model.denoising_network.config["observation_dim"]
    else:
        base = load_base_policy(cfg, device, cfg[cfg.method].num_steps)
        actor, model = base.actor, base.actor.model
        observation_dim = model.velocity_network.config["observation_dim"]
    torch.manual_seed(cfg.seed)

    # --- policy, critic, loss ------------------------------------------------------------------
    critic = ValueOperator(
        MLP(in_features=observation_dim, out_features=1, num_cells=list(cfg.ppo.critic_hidden),
            activation_class=torch.nn.Mish),
        in_keys=["observation"],
    ).to(device)
    if cfg.method == "reinflow":
        noise = FlowNoiseMLP(observation_dim, model.action_dim, chunk_len=model.chunk_len,
                             min_std=cfg.reinflow.min_std, max_std=cfg.reinflow.max_std)
        policy = NoisyFlowActor(actor, noise.to(device), average_log_prob=True)
        loss = ReinFlowLoss(policy, critic, clip_epsilon=cfg.reinflow.clip_epsilon,
                            entropy_coeff=cfg.reinflow.entropy_coeff)
    elif cfg.method == "fpo":
        policy = actor
        loss = FPOLoss(actor, critic, num_cfm_samples=cfg.fpo.num_cfm_samples,
                       variant=cfg.fpo.variant, clip_epsilon=cfg.fpo.clip_epsilon)
    else:
        # evaluated with DPPO's evaluation sampler (the deterministic exploration type)
        policy = actor = DPPOActor(model, finetuned_steps=cfg.dppo.finetuned_steps,
                                   min_sampling_std=cfg.dppo.min_sampling_std,
                                   min_log_prob_std=cfg.dppo.min_log_prob_std,
                                   noise_clip=cfg.dppo.noise_clip)
        loss = DPPOLoss(policy, critic, clip_epsilon=cfg.dppo.clip_epsilon,
                        first_step_clip_epsilon=cfg.dppo.first_step_clip_epsilon,
                        clip_epsilon_growth=cfg.dppo.clip_epsilon_growth,
                        gamma_denoising=cfg.dppo.gamma_denoising)
    loss.make_value_estimator(ValueEstimators.GAE, gamma=cfg.ppo.gamma, lmbda=cfg.ppo.lmbda)
    actor_optim = torch.optim.Adam(loss.actor_network_params.values(True, True), lr=cfg.ppo.actor_lr)
    critic_optim = torch.optim.Adam(loss.critic_network_params.values(True, True), lr=cfg.ppo.critic_lr)
    run.track(loss=loss, actor_optim=actor_optim, critic_optim=critic_optim)
    # kept in run.extra, so that a resumed run goes on with the same scale
    reward_scale = RewardScale(cfg.ppo.reward_scale_rate, state=run.extra)

    counters = run.counters
    eval_env = make_policy_chunk_env(base, cfg, cfg.eval.episodes, run.env_seed("eval"), device)
    final_env = make_policy_chunk_env(base, cfg, cfg.eval.final_episodes, run.env_seed("final"), device)
    run.evaluate_base(final_env, actor, chunk_len=model.chunk_len)

    # --- training loop: collect, GAE, epochs of mini-batch PPO ---------------------------------
    frames_per_batch = cfg.env.num_envs * cfg.collector.chunks_per_env
    remaining = cfg.collector.total_env_steps - counters["env_steps"]
    collector = make_collector(cfg, policy, policy_env_maker(base, cfg, device), run.env_seed("train"),
                               frames_per_batch=frames_per_batch,
                               total_frames=frames_covering(remaining, frames_per_batch))
    try:
        with run.loop(total_env_steps=cfg.collector.total_env_steps, description=f"{cfg.method} {cfg.task}"):
            for batch in map(collected_chunks, run.collected(collector)):
                steps = int(batch["next", "chunk_steps"].sum())
                counters["env_steps"] += steps
                counters["iterations"] += 1
                reward = batch["next", "reward"]
                reward_scale.update(reward)
                batch["next", "reward"] = reward_scale(reward)
                with torch.no_grad():
                    loss.value_estimator(batch, params=loss.critic_network_params,
                                         target_params=loss.target_critic_network_params)
                    if cfg.method == "fpo":
                        loss.record_cfm_losses(batch)
                data = batch.reshape(-1)
                train_actor = counters["iterations"] > cfg.ppo.critic_warmup_iterations
                metrics = {}
                with run.timed("update"):
                    for _ in range(cfg.ppo.epochs):
                        for index in torch.randperm(data.numel(), device=device).split(cfg.ppo.minibatch_size):
                            terms = loss(data[index])
                            total = terms["loss_critic"] + (
                                sum(value for key, value in terms.items() if key.startswith("loss_")
                                    and key != "loss_critic") if train_actor else 0.0)
                            run.check_finite("the loss", total)
                            actor_optim.zero_grad()
                            critic_optim.zero_grad()
                            total.backward()
                            critic_optim.step()
                            if train_actor:
                                actor_optim.step()
                            counters["updates"] += 1
                run.update_policy_weights(collector)  # to the workers of a multi-process collector
                metrics.update({key: value.item() for key, value in terms.items() if value.numel() == 1})
                returns = run.evaluate_periodically(eval_env, actor, chunk_len=model.chunk_len)
                if returns is not None:
                    metrics["eval_return"] = returns["mean"]
                run.log(metrics, steps, batch)
                run.save()  # every iteration: a kill loses at most the iteration under way
                if run.stop_requested:
                    return run.interrupted()
    finally:
        run.shutdown_collector(collector)

    run.finish(final_env, actor, chunk_len=model.chunk_len, title=cfg.method,
               summary={"method": cfg.method})


if __name__ == "__main__":
    main()
