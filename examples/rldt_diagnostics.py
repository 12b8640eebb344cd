"""Diagnostics of an ``examples/rldt_gym.py`` checkpoint against its base policy.

Re-evaluates the base and the fine-tuned policy on fresh episodes in both sampling modes
(``--episodes 0`` skips this), compares the two flows on data states (the spread of the actions
sampled from x0 ~ N(0, I), how straight their chains are, the share of clamped components, how far
fine-tuning moved the action of each noise draw), and
probes the critic there: mean Q, the gap between ensemble members, and the cosine between the
members' action-gradients at policy samples. With ``--buffer``, on the states of the saved replay
buffer: the critic's calibration, the agreement of the transport term's gradients across batches,
Q's dependence on the action, and each policy term's gradient norm under either kernel. Writes a
JSON file.

    python examples/rldt_diagnostics.py outputs/rldt_gym/<run>/checkpoint.pt \
        --data data/halfcheetah-v5-medium.npz --out benchmarks/results/rldt_diagnostics.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from tensordict import TensorDict

from torchrl_rldt.data import load_offline_dataset
from torchrl_rldt.envs import returns_by_sampling_mode
from torchrl_rldt.checkpoint.training import load_checkpoint_buffer
from torchrl_rldt.objectives.calibration import critic_calibration

import rldt_utils
import utils


@torch.no_grad()
def flow_statistics(model, observation: torch.Tensor, samples: int, seed: int = 0) -> dict:
    """How the flow maps noise to actions at ``observation`` (``[B, D]``), from ``samples`` draws each.

    ``action_spread``: the standard deviation of a sampled action component across x0 draws at one
    state, averaged over components and states (what stochastic evaluation explores).
    ``landing_drift``: the mean squared distance, per component, from the landing point predicted
    at each Euler step to the chain's end (0 for straight chains; what the consistency term lowers).
    ``clamped_share``: the share of sampled components at the action bounds.
    The draws come from ``seed``: two flows given the same seed map the same noise, so their actions
    can be compared draw by draw.
    """
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn((samples, observation.shape[0], *model.action_shape), generator=generator)
    states = observation.expand(samples, *observation.shape)
    chain = model.integrate(states, noise).chain  # [S, B, N + 1, H, A]
    action = model.clamp(chain[..., -1, :, :])
    steps = chain.shape[-3] - 1
    drift = [
        (model.chain_landing(states, chain, torch.full(chain.shape[:2], k))[1] - chain[..., -1, :, :])
        .pow(2).mean().item()
        for k in range(steps)
    ]
    return {
        "actions": action,
        "action_spread": action.std(dim=0).mean().item(),
        "landing_drift": sum(drift) / steps,
        "landing_drift_per_step": drift,
        "clamped_share": ((action <= model.low) | (action >= model.high)).float().mean().item(),
    }


@torch.no_grad()
def buffer_calibration(path: Path, checkpoint: dict, cfg, loss) -> dict:
    """The critic's Q at the stored chunk transitions against their episodes' discounted returns.

    Returns the report and the stored states (a flat TensorDict of the critic's state inputs).
    """
    if cfg.critic.value_estimator != "td_lambda":
        raise SystemExit("--buffer needs a run whose replay buffer stores each env's transitions in "
                         "order (critic.value_estimator=td_lambda)")
    replay_buffer = utils.make_replay_buffer(cfg.buffer.size, None, "cpu", slice_len=cfg.buffer.slice_len)
    if not load_checkpoint_buffer(checkpoint, path, replay_buffer):
        raise SystemExit(f"{path} was saved without its replay buffer (checkpoint.save_replay_buffer=false)")
    storage = replay_buffer.storage
    rows, capacity = len(storage) // storage.shape[1], storage.shape[0]
    transitions = storage[:rows]  # [time, env]; once full, the oldest row is at the write cursor
    if rows == capacity:
        transitions = torch.cat([transitions[replay_buffer.write_count % capacity:],
                                 transitions[: replay_buffer.write_count % capacity]])
    transitions = transitions.transpose(0, 1)  # [env, time]
    state = transitions.select(*loss._critic_state_keys())
    q = loss._q_values(state, transitions["action"], loss.qvalue_network_params)  # [E, env, time]
    reward, done = transitions["next", "reward"], transitions["next", "done"]
    report = {}
    for name, value in (("ensemble_mean", q.mean(0)), ("ensemble_min", q.min(0).values)):
        report[name] = critic_calibration(value.unsqueeze(-1), reward, done, cfg.optim.gamma)
    report["transitions"] = transitions.numel()
    return report, transitions.reshape(-1).select(*loss._critic_state_keys())


@torch.no_grad()
def q_action_dependence(loss, states, num_states: int = 1000, samples: int = 16) -> dict:
    """How much the critic's value changes with the action at a state, against across states.

    ``q_std_across_actions``: the standard deviation of the ensemble-mean Q over ``samples``
    policy actions at one state, averaged over states; ``q_std_across_states``: that of the
    per-state mean. RLDT follows the action-gradient, so a small first figure means a weak signal.
    """
    states = states[torch.randperm(states.shape[0])[:num_states]]
    observation = states.get(loss.tensor_keys.observation)
    actions = loss._sample(observation.expand(samples, *observation.shape))  # [S, B, H, A]
    q = loss._q_values(states.expand(samples, *states.batch_size), actions,
                       loss.qvalue_network_params).mean(0)  # [S, B]
    return {"states": states.shape[0], "samples": samples,
            "q_std_across_actions": q.std(0).mean().item(),
            "q_std_across_states": q.mean(0).std().item()}


def rl_gradient_agreement(loss, states, batch_sizes=(128, 1024), pairs: int = 3) -> dict:
    """The cosine between the transport term's parameter gradients on independent state batches.

    Near 0: one batch's step is mostly noise, which Adam's moment estimates then average away.
    """
    params = [p for p in loss.actor_network_params.values(True, True) if p.requires_grad]
    report = {}
    for size in batch_sizes:
        cosines, norms = [], []
        for _ in range(pairs):
            gradients = []
            for _ in range(2):
                batch = states[torch.randint(states.shape[0], (size,))]
                gradient = torch.autograd.grad(loss.actor_loss(batch)["loss_rl"], params, allow_unused=True)
                gradients.append(torch.cat([g.flatten() for g in gradient if g is not None]))
            cosines.append(torch.nn.functional.cosine_similarity(*gradients, dim=0).item())
            norms.append(gradients[0].norm().item())
        report[str(size)] = {"cosine_mean": sum(cosines) / pairs, "cosines": cosines,
                             "gradient_norm_mean": sum(norms) / pairs}
    return report


def policy_term_gradients(loss, states, batch_size: int = 1024, draws: int = 3) -> dict:
    """The norm of each policy term's gradient on the actor's parameters, for either kernel.

    At the same parameters and states, the RBF field ``1/K sum_j k(a_i, a_j) g_j`` is a fraction
    of the critic gradient that the delta field passes on whole, while the trust-region term is the
    same: the ratio of the two gradients is how much each step follows the critic.
    """
    params = [p for p in loss.actor_network_params.values(True, True) if p.requires_grad]
    kernel = loss.transport.kernel
    report = {}
    try:
        for name in ("rbf", "delta"):
            loss.transport.kernel = name
            norms = {"loss_rl": [], "loss_reference": [], "transport_norm": [], "q_gradient_norm": []}
            for draw in range(draws):
                torch.manual_seed(draw)
                terms = loss.actor_loss(states[torch.randint(states.shape[0], (batch_size,))])
                for key in ("loss_rl", "loss_reference"):
                    gradient = torch.autograd.grad(terms[key], params, retain_graph=True, allow_unused=True)
                    norms[key].append(torch.cat([g.flatten() for g in gradient if g is not None]).norm().item())
                for key in ("transport_norm", "q_gradient_norm"):
                    norms[key].append(terms[key].item())
            mean = {f"{key}_mean": sum(values) / draws for key, values in norms.items()}
            mean["rl_to_reference_gradient_ratio"] = mean["loss_rl_mean"] / mean["loss_reference_mean"]
            report[name] = mean
    finally:
        loss.transport.kernel = kernel
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data", type=Path, required=True, help="a data set of the same task")
    parser.add_argument("--episodes", type=int, default=20, help="per sampling mode; 0: no evaluation")
    parser.add_argument("--samples", type=int, default=16, help="x0 draws per state for the flow statistics")
    parser.add_argument("--states", type=int, default=1000, help="data states for the critic probe")
    parser.add_argument("--seed", type=int, default=12345, help="seed of the evaluation envs")
    parser.add_argument("--buffer", action="store_true",
                        help="also set the critic against the Monte-Carlo returns of the episodes in the "
                             "replay buffer saved with the checkpoint (a run with "
                             "checkpoint.save_replay_buffer=true and per-env storage: "
                             "critic.value_estimator=td_lambda)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.manual_seed(0)

    if args.episodes < 0 or args.samples < 2:
        raise SystemExit("--episodes must be >= 0 and --samples >= 2")
    cfg, base, fine_tuned, loss, checkpoint = rldt_utils.load_rldt_run(args.checkpoint, torch.device("cpu"))
    if cfg.method == "swfp":
        raise SystemExit(f"{args.checkpoint} is an SWFP run: these diagnostics read one flow's Euler chain "
                         "(landing points, transport), which SWFP's cascade of blocks does not have")
    env = (utils.make_policy_chunk_env(base, cfg, args.episodes, args.seed, torch.device("cpu"))
           if args.episodes else None)
    report = {"checkpoint": str(args.checkpoint), "counters": checkpoint["counters"], "returns": {}}

    data = load_offline_dataset(str(args.data))
    stride = max(1, data.shape[0] // args.states)
    observation = base.observation_stats.normalize(data["observation"][::stride][: args.states])
    report["flow"] = {}
    for name, policy in (("base", base), ("fine_tuned", fine_tuned)):
        report["flow"][name] = flow_statistics(policy.actor.model, observation, args.samples)
        if env is not None:
            report["returns"][name] = returns_by_sampling_mode(
                env, policy.actor, seed=args.seed, max_env_steps=cfg.env.max_episode_steps,
                chunk_len=policy.actor.model.chunk_len)
    # the same noise through both flows: how far fine-tuning moved each sampled action
    report["flow"]["fine_tuned"]["displacement_rms"] = (
        (report["flow"]["fine_tuned"]["actions"] - report["flow"]["base"]["actions"]).pow(2).mean().sqrt().item()
    )
    for statistics in report["flow"].values():
        del statistics["actions"]

    with torch.no_grad():
        action = base.actor.model.sample(observation)  # x0 ~ N(0, I)
    action.requires_grad_(True)
    state = TensorDict(observation=observation, batch_size=observation.shape[:-1])
    q = loss._q_values(state, action, loss.qvalue_network_params.detach())  # [E, B]
    gradients = [torch.autograd.grad(q[e].sum(), action, retain_graph=True)[0].flatten(-2)
                 for e in range(q.shape[0])]
    cosine = torch.nn.functional.cosine_similarity(gradients[0], gradients[1], dim=-1)
    report["critic"] = {
        "states": observation.shape[0],
        "mean_q": q.mean().item(),
        "mean_member_gap": (q[0] - q[1]).abs().mean().item(),
        "gradient_norms": [g.norm(dim=-1).mean().item() for g in gradients],
        "member_gradient_cosine_mean": cosine.mean().item(),
        "member_gradient_cosine_median": cosine.median().item(),
        "share_negative_cosine": (cosine < 0).float().mean().item(),
        "reward_abs_mean": checkpoint["extra"].get("reward_abs_mean"),
        "gamma": cfg.optim.gamma,
    }
    if args.buffer:
        report["calibration"], states = buffer_calibration(args.checkpoint, checkpoint, cfg, loss)
        report["rl_gradient_agreement"] = rl_gradient_agreement(loss, states)
        report["q_action_dependence"] = q_action_dependence(loss, states)
        report["policy_term_gradients"] = policy_term_gradients(loss, states)
    report["command"] = "python examples/rldt_diagnostics.py " + " ".join(sys.argv[1:])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({key: report[key] for key in ("returns", "flow", "critic", "calibration",
                                                       "rl_gradient_agreement", "q_action_dependence",
                                                       "policy_term_gradients") if key in report},
                     indent=1))


if __name__ == "__main__":
    main()
