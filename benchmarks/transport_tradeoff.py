"""What RLDT's RBF kernel gives beyond a smaller step: reward against mode retention on the two-peak bandit.

The base of ``examples/bandit_2d.py`` (a flow policy pretrained on a wide Gaussian) is fine-tuned
by ``RLDTLoss`` actor steps only, with the bandit's true reward as the critic (a parameter-free
``Q(s, a) = r(a)``, so that no critic error enters), a frozen reference, and for every kernel
(RBF normalised by ``K`` as the reference, RBF normalised by the kernel mass, delta) a range of
transport weights ``rl_coeff``. Each run reports the mean reward of the fine-tuned policy's
stochastic samples, the share of them near each peak, and its effective step: the mean transport
norm over the mean critic-gradient norm, times ``rl_coeff`` (1 for the delta kernel at weight 1).
Comparing kernels at matched effective step separates what the kernel does from how far a step
goes.

    python benchmarks/transport_tradeoff.py
    python benchmarks/transport_tradeoff.py --seeds 0 1 --weights 0.5 1 2 --actor-steps 300

Writes ``benchmarks/results/transport_tradeoff.{json,md,png}``.
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from tensordict import TensorDict  # noqa: E402
from tensordict.nn import TensorDictModule  # noqa: E402
from torch import nn  # noqa: E402

from torchrl_rldt.envs import PeaksBanditEnv  # noqa: E402
from torchrl_rldt.modules import SVGDTransport  # noqa: E402
from torchrl_rldt.objectives import RLDTLoss  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# kernel name -> SVGDTransport arguments
KERNELS = {
    "rbf": {"kernel": "rbf"},
    "rbf_kernel_mass": {"kernel": "rbf", "normalization": "kernel_mass"},
    "delta": {"kernel": "delta"},
}


def load_bandit_example():
    """``examples/bandit_2d.py`` as a module: its base pretraining and evaluation are reused."""
    spec = importlib.util.spec_from_file_location("bandit_2d", ROOT / "examples" / "bandit_2d.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TrueReward(nn.Module):
    """``Q(s, a) = r(a)``, the bandit's reward: a critic without error (its one parameter is unused
    by the value, so that the loss has parameters to copy into its ensemble)."""

    def __init__(self, env: PeaksBanditEnv) -> None:
        super().__init__()
        self.reward = env.reward  # a bound method: the env is not registered as a submodule
        self.unused = nn.Parameter(torch.zeros(()))

    def forward(self, observation: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.reward(action.squeeze(-2)).unsqueeze(-1) + 0 * self.unused


def finetune(base, env, kernel: str, weight: float, args) -> tuple[object, dict]:
    actor = copy.deepcopy(base)
    critic = TensorDictModule(TrueReward(env), in_keys=["observation", "action"],
                              out_keys=["state_action_value"])
    loss = RLDTLoss(actor, critic, num_qvalue_nets=1, num_particles=args.particles,
                    transport=SVGDTransport(**KERNELS[kernel]), rl_coeff=weight,
                    consistency_coeff=args.consistency_coefff, reference_coeff=args.reference_coefff)
    optim = torch.optim.Adam(loss.actor_network_params.values(True, True), lr=args.actor_lr)
    states = TensorDict(observation=torch.zeros(args.states, 1), batch_size=[args.states])
    ratios = []
    for _ in range(args.actor_steps):
        terms = loss.actor_loss(states)
        optim.zero_grad()
        sum(terms[key] for key in RLDTLoss.POLICY_TERMS).backward()
        optim.step()
        ratios.append((terms["transport_norm"] / terms["q_gradient_norm"].clamp_min(1e-12)).item())
    # the weighted field against the critic's gradient, over the run
    return actor, {"effective_step": weight * statistics.mean(ratios)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--kernels", nargs="+", default=list(KERNELS), choices=list(KERNELS))
    parser.add_argument("--weights", type=float, nargs="+", default=[1 / 6, 1 / 3, 1, 2, 6])
    parser.add_argument("--actor-steps", type=int, default=1200)
    parser.add_argument("--actor-lr", type=float, default=1e-3)
    parser.add_argument("--states", type=int, default=128)
    parser.add_argument("--particles", type=int, default=8)
    parser.add_argument("--consistency-coeff", type=float, default=0.5)
    parser.add_argument("--reference-coeff", type=float, default=0.2)
    parser.add_argument("--name", default="transport_tradeoff")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    bandit = load_bandit_example()
    cfg = OmegaConf.load(ROOT / "examples" / "config" / "bandit_2d.yaml")
    env = PeaksBanditEnv(1)
    started = time.time()

    runs = []
    for seed in args.seeds:
        torch.manual_seed(seed)
        base = bandit.pretrain_base(cfg, torch.device("cpu"))
        base_result, _ = bandit.evaluate(base, env, cfg)
        runs.append({"seed": seed, "kernel": "base", "weight": 0.0, **base_result, "effective_step": 0.0})
        for kernel in args.kernels:
            for weight in args.weights:
                torch.manual_seed(seed + 1)
                actor, info = finetune(base, env, kernel, weight, args)
                result, _ = bandit.evaluate(actor, env, cfg)
                runs.append({"seed": seed, "kernel": kernel, "weight": weight, **result, **info})
                print(f"seed {seed} {kernel:16s} weight {weight:.3g}: reward {result['mean_reward']:.2f}, "
                      f"near the peaks {result['share_near_each_peak'][0]:.2f} / "
                      f"{result['share_near_each_peak'][1]:.2f}, effective step {info['effective_step']:.3f}",
                      flush=True)

    def averaged(kernel: str, weight: float) -> dict:
        rows = [run for run in runs if run["kernel"] == kernel and run["weight"] == weight]
        return {"reward": statistics.mean(run["mean_reward"] for run in rows),
                # the smaller of the two peaks' shares: both modes kept when it is near half
                "weaker_peak_share": statistics.mean(min(run["share_near_each_peak"]) for run in rows),
                "any_peak_share": statistics.mean(run["share_near_any_peak"] for run in rows),
                "effective_step": statistics.mean(run["effective_step"] for run in rows)}

    table = {kernel: {f"{weight:.4g}": averaged(kernel, weight) for weight in args.weights}
             for kernel in args.kernels}
    command = "python benchmarks/transport_tradeoff.py " + " ".join(sys.argv[1:])
    lines = [
        f"Two-peak bandit, true reward as the critic, frozen reference (weight {args.reference_coeff}), "
        f"consistency {args.consistency_coeff}, {args.actor_steps} actor steps at lr {args.actor_lr:g} on "
        f"{args.states} states x {args.particles} particles; seeds {args.seeds} (means over seeds). "
        f"Weaker peak: the smaller of the two shares of samples within {cfg.eval.near_radius} of a peak "
        f"(0.5 each when both modes are kept equally, 0 when one is lost).",
        "",
        "| kernel | rl_coeff | effective step | reward | weaker peak | near any peak |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for kernel, by_weight in table.items():
        for weight, row in by_weight.items():
            lines.append(f"| {kernel} | {weight} | {row['effective_step']:.3f} | {row['reward']:.2f} | "
                         f"{row['weaker_peak_share']:.2f} | {row['any_peak_share']:.2f} |")
    lines += ["", f"Made by `{command}` ({(time.time() - started) / 60:.1f} min on one thread).", ""]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.md").write_text("\n".join(lines))
    (args.out / f"{args.name}.json").write_text(json.dumps(
        {"settings": {key: value for key, value in vars(args).items() if key != "out"},
         "runs": runs, "table": table, "command": command}, indent=2, default=str) + "\n")

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for kernel, by_weight in table.items():
        steps = [row["effective_step"] for row in by_weight.values()]
        axes[0].plot(steps, [row["reward"] for row in by_weight.values()], marker="o", label=kernel)
        axes[1].plot(steps, [row["weaker_peak_share"] for row in by_weight.values()], marker="o", label=kernel)
    for ax, label in zip(axes, ("mean reward", "share near the weaker peak")):
        ax.set_xscale("log")
        ax.set_xlabel("effective step (rl_coeff x transport norm / critic-gradient norm)")
        ax.set_ylabel(label)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(args.out / f"{args.name}.png", dpi=100)
    plt.close(fig)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
