"""Why QAM barely moves on Hopper-v5: two measurements of ``QAMLoss`` on the shipped base.

QAM (arXiv 2601.14234) fine-tunes the flow by regressing ``v - v_base`` onto a target carried back
from the critic's action-gradient by the lean adjoint. Both measurements use the shipped Hopper-v5
flow base, 256 states of its data set, and a linear critic ``Q(s, a) = <W s, a>`` whose
action-gradient has the norm logged by the Gym runs (``--gradient-norm``, 0.9 per chunk):

1. **Precision.** After the actor has moved from its base by a given amount (every weight shifted by
   ``+-shift``; one Adam step at lr 2e-5 moves a weight by about 2e-5), the gap ``v - v_base`` at
   ``t = 0.5`` in fp32 and under bfloat16 autocast, their correlation, and the cosine between the
   fp32 and the bfloat16 gradients of the adjoint-matching loss. ``QAMLoss.actor_loss`` itself
   always runs in fp32; this calls its body under autocast to show what bfloat16 would do.
2. **The adjoint's direction against the number of Euler steps N.** The cosine between each step's
   adjoint ``a_k`` and the terminal ``a_N = -lambda dQ/da`` (a smooth flow keeps them aligned), and
   the first-order change of the deterministic (``x_0 = 0``) action that the loss's fixed point
   ``v - v_base = -sigma_k^2 a_k / 2`` makes, projected on ``dQ/da``, against the ideal tilt
   ``lambda g^T Sigma g`` of ``pi_base exp(lambda Q)`` (``Sigma``: the base's per-dimension action
   variance at the state, from 64 samples). The shift of step ``k`` is the one at the state's SDE
   sample, applied along the deterministic path: a first-order, ``x``-independent approximation.

    python benchmarks/qam_diagnostics.py --out benchmarks/results/qam_diagnostics

Writes ``<out>.json`` and ``<out>.md``. Seconds on one core.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
from pathlib import Path

import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn

from torchrl_rldt.checkpoint import load_flow_policy
from torchrl_rldt.data import load_offline_dataset
from torchrl_rldt.objectives import QAMLoss
from torchrl_rldt.objectives.qam import memoryless_noise_std

ROOT = Path(__file__).resolve().parents[1]


class LinearStateCritic(nn.Module):
    """``Q(s, a) = <W s, a>``: its action-gradient ``W s`` depends on the state only."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)

    def forward(self, observation: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return (action.flatten(-2) * (observation @ self.weight.T)).sum(-1, keepdim=True)


def make_loss(actor, observations: torch.Tensor, gradient_norm: float, inverse_temperature: float,
              full_precision_actor_loss: bool = True) -> QAMLoss:
    """A QAMLoss whose critic's action-gradient has mean norm ``gradient_norm`` on ``observations``."""
    model = actor.model
    weight = torch.randn(model.chunk_len * model.action_dim, observations.shape[-1])
    weight *= gradient_norm / (observations @ weight.T).norm(dim=-1).mean()
    critic = TensorDictModule(LinearStateCritic(weight), ["observation", "action"], ["state_action_value"])
    return QAMLoss(actor, critic, inverse_temperature=inverse_temperature,
                   clamp_final_action=False, full_precision_actor_loss=full_precision_actor_loss)


def precision(policy, observations, gradient_norm, shifts) -> list[dict]:
    """The bfloat16 rounding of ``v - v_base`` against its size, after shifting every weight."""
    # the actor loss follows the autocast context below (the loss's default runs it in fp32)
    loss = make_loss(policy.actor, observations, gradient_norm, inverse_temperature=0.3,
                     full_precision_actor_loss=False)
    params = [param for param in loss.actor_network_params.values(True, True) if param.requires_grad]
    start = [param.detach().clone() for param in params]
    batch = TensorDict({"observation": observations}, [observations.shape[0]])
    noise = torch.randn(observations.shape[0], policy.chunk_len, policy.actor.model.action_dim)
    rows = []
    for shift in shifts:
        torch.manual_seed(1)
        with torch.no_grad():
            for param, value in zip(params, start):
                param.copy_(value + shift * torch.randn_like(value).sign())
        gaps, gradients = {}, {}
        for name, enabled in (("fp32", False), ("bf16", True)):
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
                gaps[name] = (loss._velocity(loss.actor_network_params, observations, noise, 0.5).float()
                              - loss._velocity(loss.base_actor_network_params, observations, noise, 0.5).float())
            torch.manual_seed(5)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
                terms = loss.actor_loss(batch)
            gradients[name] = torch.cat([g.flatten() for g in torch.autograd.grad(terms["loss_adjoint"], params)])
        correlation = (torch.corrcoef(torch.stack([gaps["fp32"].flatten(), gaps["bf16"].flatten()]))[0, 1].item()
                       if shift else None)
        rows.append({
            "shift": shift,
            "gap_fp32": gaps["fp32"].flatten(-2).norm(dim=-1).mean().item(),
            "gap_bf16": gaps["bf16"].flatten(-2).norm(dim=-1).mean().item(),
            "gap_correlation": correlation,
            "gradient_cosine": torch.nn.functional.cosine_similarity(gradients["fp32"], gradients["bf16"], dim=0).item(),
        })
        with torch.no_grad():
            for param, value in zip(params, start):
                param.copy_(value)
    return rows


def adjoint_direction(policy, observations, gradient_norm, inverse_temperature, num_steps) -> dict:
    """How well the adjoint of an ``num_steps``-step flow keeps the critic's direction."""
    model = policy.actor.model
    model.num_steps = num_steps
    loss = make_loss(policy.actor, observations, gradient_norm, inverse_temperature)
    batch = TensorDict({"observation": observations}, [observations.shape[0]])
    with torch.no_grad():
        samples = model.sample(observations.expand(64, *observations.shape))
        variance = samples.var(0)
    trajectory = loss.adjoint_trajectory(batch)
    terminal = -inverse_temperature * trajectory.critic_gradient
    cosine = torch.nn.functional.cosine_similarity(trajectory.adjoint.flatten(-2),
                                                   terminal.flatten(-2).expand_as(trajectory.adjoint.flatten(-2)), dim=-1)
    step = 1.0 / num_steps
    sigma = memoryless_noise_std(trajectory.times, step).view(-1, 1, 1, 1)
    fixed_point_gap = -sigma.pow(2) / 2 * trajectory.adjoint  # where L_adj is zero
    with torch.no_grad():  # the deterministic action with and without the fixed-point shift
        base = model.integrate(observations, torch.zeros_like(terminal)).chain[..., -1, :, :]
        tilted = torch.zeros_like(terminal)
        for k in range(num_steps):
            tilted = model.step_mean(observations, tilted, k * step) + step * fixed_point_gap[k]
    gradient = trajectory.critic_gradient
    return {
        "num_steps": num_steps,
        "cosine_per_step": cosine.mean(-1).tolist(),
        "negative_fraction_per_step": (cosine < 0).float().mean(-1).tolist(),
        "fixed_point_gap": fixed_point_gap.flatten(-2).norm(dim=-1).mean().item(),
        "deterministic_action_change": (tilted - base).flatten(-2).norm(dim=-1).mean().item(),
        "q_gain_first_order": ((tilted - base) * gradient).sum((-2, -1)).mean().item(),
        "q_gain_ideal": (inverse_temperature * variance * gradient.pow(2)).sum((-2, -1)).mean().item(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="checkpoints/hopper-v5-flow-base.pt")
    parser.add_argument("--data", default="data/hopper-v5-medium.npz")
    parser.add_argument("--states", type=int, default=256)
    parser.add_argument("--gradient-norm", type=float, default=0.9,
                        help="mean |dQ/da| per chunk (Hopper QAM runs log 0.9-1.2 as q_gradient_norm)")
    parser.add_argument("--inverse-temperatures", type=float, nargs="+", default=[0.3, 3.0])
    parser.add_argument("--num-steps", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--shifts", type=float, nargs="+", default=[0.0, 2e-5, 2e-4, 2e-3])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "qam_diagnostics")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)

    policy = load_flow_policy(ROOT / args.base)
    data = load_offline_dataset(ROOT / args.data)
    index = torch.randperm(data.shape[0])[: args.states]
    observations = policy.observation_stats.normalize(data["observation"][index].float())
    trained_steps = policy.actor.model.num_steps

    precision_rows = precision(policy, observations, args.gradient_norm, args.shifts)
    direction_rows = []
    for inverse_temperature in args.inverse_temperatures:
        for num_steps in args.num_steps:
            torch.manual_seed(args.seed)
            row = adjoint_direction(policy, observations, args.gradient_norm, inverse_temperature, num_steps)
            direction_rows.append({"inverse_temperature": inverse_temperature, **row})
    policy.actor.model.num_steps = trained_steps

    results = {"base": args.base, "states": args.states, "gradient_norm": args.gradient_norm,
               "seed": args.seed, "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
               "precision": precision_rows, "adjoint_direction": direction_rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")

    lines = [
        f"QAMLoss on the shipped Hopper-v5 base ({args.base}), {args.states} data-set states, a linear "
        f"critic with |dQ/da| = {args.gradient_norm} per chunk (seed {args.seed}).",
        "",
        "**1. bfloat16 against the size of v - v_base** (every actor weight shifted by +-shift from the "
        "base; one Adam step at lr 2e-5 moves a weight by ~2e-5):",
        "",
        "| shift | mean norm of v - v_base (fp32) | seen in bf16 | correlation | cosine, fp32 vs bf16 gradient of L_adj |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in precision_rows:
        correlation = "-" if row["gap_correlation"] is None else f"{row['gap_correlation']:.2f}"
        lines.append(f"| {row['shift']:g} | {row['gap_fp32']:.4f} | {row['gap_bf16']:.4f} | {correlation} | "
                     f"{row['gradient_cosine']:.2f} |")
    lines += [
        "",
        "**2. The adjoint's direction against the Euler steps N** (cosine of a_k with a_N, mean over "
        "states, averaged over the steps, and the fraction of (state, step) pairs below 0; the "
        "deterministic action's change at the loss's fixed point, and its first-order Q gain against "
        "the ideal tilt lambda g^T Sigma g):",
        "",
        "| lambda | N | mean cosine(a_k, a_N) | worst step | negative | fixed-point norm of v - v_base | action change per chunk | Q gain | ideal Q gain |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in direction_rows:
        cosines = row["cosine_per_step"]
        lines.append(
            f"| {row['inverse_temperature']:g} | {row['num_steps']} | {statistics.mean(cosines):.2f} | "
            f"{min(cosines):.2f} | {statistics.mean(row['negative_fraction_per_step']):.2f} | "
            f"{row['fixed_point_gap']:.3f} | {row['deterministic_action_change']:.3f} | "
            f"{row['q_gain_first_order']:.4f} | {row['q_gain_ideal']:.4f} |")
    lines += ["", f"Made by `python benchmarks/qam_diagnostics.py` ({results['machine']}, torch {torch.__version__})."]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
