"""Time per actor step and per critic step of ``RLDTLoss`` against TorchRL's ``SACLoss`` (and
``SWFPLoss``, our reading of SWFP's abstract) on CPU.

A step is the loss forward, the backward and the Adam step of the part it trains (for the
critic also the Polyak update of the targets). Both losses use the same critic (an ensemble of
2 MLPs of 3 x 256, SiLU, over the observation and the flat action chunk), the same batch size
and Hopper-v5's sizes (11-D observation, 3-D action, chunks of H = 4; SAC acts on the flat
12-D chunk so that the critics are identical). RLDT's actor is the reference flow network
(3 x 512 residual MLP, N = 8 Euler steps, K = 8 particles); SAC's is a TanhNormal MLP of
3 x 256. Sizes:

- ``reference``: the paper's policy step on ~6.3k states (docs/algorithm.md), here
  6272 states for both the actor and the critic step;
- ``default``: our CPU default, 256 states per mini-batch.

SWFP (``examples/rldt_gym.py method=swfp``, its config's defaults: the same base flow and critic,
8 blocks of 2 x 64 with 2 Euler steps each, 8 draws per state, the exact block log-determinant) is
measured at its first stage (``swfp_*``: the base, then the one active block) and its last
(``swfp_*_last_stage``: the base, the 7 earlier blocks without gradient, then the active one).

RLDT's steps are also measured in the learner's two cheaper forms (``examples/rldt_gym.py``):
``bf16`` (forward passes under bfloat16 autocast, ``learner_precision=bf16``) and, for the critic,
``reuse R`` (the TD target's policy samples drawn once for a round of ``critic_steps`` steps on
windows of one batch, ``schedule.target_action_reuse=R``; the round's cost divided by its steps).

Each step's floating-point work is counted once with ``torch.utils.flop_counter`` and divided by
its median time: the achieved GFLOP/s, set against this machine's GEMM peak measured in the same
run (a ``[2048, 512] x [512, 512]`` matmul at the same thread count, fp32 and bf16). Steps are
interleaved and the median kept, so that a load on the machine hits all alike; the load average is
recorded beside the figures. Writes ``benchmarks/results/loss_cost.json`` and
``benchmarks/results/loss_cost.md``.

    python benchmarks/loss_cost.py
    python benchmarks/loss_cost.py --sizes default --repeats 5 --profile
    python benchmarks/loss_cost.py --sizes default --losses rldt swfp
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from tensordict import TensorDict
from tensordict.nn import NormalParamExtractor, TensorDictModule
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry
from torchrl.data import Bounded
from torchrl.modules import MLP, ProbabilisticActor, TanhNormal, ValueOperator
from torchrl.objectives import SACLoss, SoftUpdate

from torchrl_rldt.modules import ChunkQValueMLP, FlowActor, FlowModel, StepwiseFlowActor, VelocityMLP
from torchrl_rldt.objectives import RLDTLoss, SWFPLoss

RESULTS = Path(__file__).resolve().parent / "results"
OBSERVATION_DIM, ACTION_DIM, CHUNK_LEN = 11, 3, 4
SIZES = {"reference": 6272, "default": 256}
CRITIC_WIDTH, CRITIC_LAYERS = 256, 3
CRITIC_STEPS = 16  # critic steps per collector batch in examples/rldt_gym.py, one round


def make_batch(batch_size: int) -> TensorDict:
    observation = torch.randn(batch_size, OBSERVATION_DIM)
    return TensorDict(
        {
            "observation": observation,
            "action": torch.rand(batch_size, CHUNK_LEN, ACTION_DIM) * 2 - 1,
            "next": {
                "observation": torch.randn(batch_size, OBSERVATION_DIM),
                "reward": torch.randn(batch_size, 1),
                "done": torch.zeros(batch_size, 1, dtype=torch.bool),
                "terminated": torch.zeros(batch_size, 1, dtype=torch.bool),
            },
        },
        batch_size=[batch_size],
    )


def make_critic() -> ValueOperator:
    return ValueOperator(
        ChunkQValueMLP(OBSERVATION_DIM, ACTION_DIM, chunk_len=CHUNK_LEN, hidden_dim=CRITIC_WIDTH,
                       num_layers=CRITIC_LAYERS),
        in_keys=["observation", "action"],
    )


def make_rldt(reuse: int) -> tuple[RLDTLoss, dict]:
    actor = FlowActor(FlowModel(
        VelocityMLP(OBSERVATION_DIM, ACTION_DIM, chunk_len=CHUNK_LEN), ACTION_DIM, num_steps=8,
        chunk_len=CHUNK_LEN, low=-1.0, high=1.0,
    ))
    loss = RLDTLoss(actor, make_critic(), num_particles=8)
    loss.make_value_estimator(gamma=0.99)
    updater = SoftUpdate(loss, tau=0.005)
    actor_optim = torch.optim.Adam(loss.actor_network_params.values(True, True), lr=2e-5)
    critic_optim = torch.optim.AdamW(loss.qvalue_network_params.values(True, True), lr=1e-3)

    def actor_step(batch):
        terms = loss.actor_loss(batch)
        total = terms["loss_rl"] + terms["loss_consistency"] + terms["loss_reference"]
        actor_optim.zero_grad()
        total.backward()
        actor_optim.step()

    def critic_step(batch):
        value, _ = loss.qvalue_loss(batch)
        critic_optim.zero_grad()
        value.backward()
        critic_optim.step()
        updater.step()

    bf16 = torch.autocast("cpu", dtype=torch.bfloat16)

    def in_bf16(step):
        def run(batch):
            with bf16:
                step(batch)
        return run

    def reused_critic_round(batch):
        """One round: target samples for CRITIC_STEPS / reuse batches, then CRITIC_STEPS steps."""
        size = batch.shape[0]
        round_batch = loss.sample_target_actions(batch.expand(CRITIC_STEPS // reuse, size).reshape(-1).clone())
        for step in range(CRITIC_STEPS):
            start = (step * size) % round_batch.shape[0]
            critic_step(round_batch[start:start + size])

    return loss, {
        "actor": actor_step, "critic": critic_step,
        "actor_bf16": in_bf16(actor_step), "critic_bf16": in_bf16(critic_step),
        f"critic_reuse{reuse}": reused_critic_round,
        f"critic_reuse{reuse}_bf16": in_bf16(reused_critic_round),
    }


def make_swfp(reuse: int) -> tuple[SWFPLoss, dict]:
    """SWFP with examples/config/rldt_gym.yaml's swfp defaults, at its first and at its last stage."""
    base = FlowActor(FlowModel(
        VelocityMLP(OBSERVATION_DIM, ACTION_DIM, chunk_len=CHUNK_LEN), ACTION_DIM, num_steps=8,
        chunk_len=CHUNK_LEN, low=-1.0, high=1.0,
    ))
    blocks = [VelocityMLP(OBSERVATION_DIM, ACTION_DIM, chunk_len=CHUNK_LEN, hidden_dim=64, num_layers=2,
                          activation=nn.Mish) for _ in range(8)]
    actor = StepwiseFlowActor(base, blocks, block_steps=2)
    loss = SWFPLoss(actor, make_critic(), num_samples=8, entropy_coeff=1e-3, jko_step=0.1)
    loss.make_value_estimator(gamma=0.99)
    updater = SoftUpdate(loss, tau=0.005)
    actor_optim = torch.optim.Adam(loss.block_parameters(), lr=1e-3)
    critic_optim = torch.optim.AdamW(loss.qvalue_network_params.values(True, True), lr=1e-3)

    def actor_step(batch):
        terms = loss.actor_loss(batch)
        total = sum(terms[key] for key in SWFPLoss.POLICY_TERMS)
        actor_optim.zero_grad()
        total.backward()
        actor_optim.step()

    def critic_step(batch):
        value, _ = loss.qvalue_loss(batch)
        critic_optim.zero_grad()
        value.backward()
        critic_optim.step()
        updater.step()

    def at_stage(step, index):
        def run(batch):
            actor.set_active_block(index)
            step(batch)
        return run

    def in_bf16(step):
        def run(batch):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                step(batch)
        return run

    last = actor.num_blocks - 1
    return loss, {
        "actor": at_stage(actor_step, 0), "critic": at_stage(critic_step, 0),
        "critic_bf16": at_stage(in_bf16(critic_step), 0),
        "actor_last_stage": at_stage(actor_step, last), "critic_last_stage": at_stage(critic_step, last),
    }


def make_sac() -> tuple[SACLoss, dict]:
    flat_action = CHUNK_LEN * ACTION_DIM
    policy = nn.Sequential(
        MLP(in_features=OBSERVATION_DIM, out_features=2 * flat_action,
            num_cells=[CRITIC_WIDTH] * CRITIC_LAYERS, activation_class=nn.ReLU),
        NormalParamExtractor(),
    )
    actor = ProbabilisticActor(
        TensorDictModule(policy, in_keys=["observation"], out_keys=["loc", "scale"]),
        in_keys=["loc", "scale"],
        spec=Bounded(-1.0, 1.0, (flat_action,)),
        distribution_class=TanhNormal,
        return_log_prob=True,
    )
    # The same network as ChunkQValueMLP: torchrl's MLP concatenates its inputs.
    qvalue = ValueOperator(
        MLP(in_features=OBSERVATION_DIM + flat_action, out_features=1,
            num_cells=[CRITIC_WIDTH] * CRITIC_LAYERS, activation_class=nn.SiLU),
        in_keys=["observation", "action"],
    )
    loss = SACLoss(actor, qvalue, num_qvalue_nets=2, loss_function="l2", delay_qvalue=True)
    loss.make_value_estimator(gamma=0.99)
    updater = SoftUpdate(loss, tau=0.005)
    actor_optim = torch.optim.Adam(loss.actor_network_params.values(True, True), lr=3e-4)
    critic_optim = torch.optim.Adam(loss.qvalue_network_params.values(True, True), lr=3e-4)

    def actor_step(batch):
        actor_loss, _ = loss.actor_loss(batch)
        actor_optim.zero_grad()
        actor_loss.backward()
        actor_optim.step()

    def critic_step(batch):
        value, _ = loss.qvalue_v2_loss(batch)  # SAC without a V network
        critic_optim.zero_grad()
        value.backward()
        critic_optim.step()
        updater.step()

    return loss, {"actor": actor_step, "critic": critic_step}


def flat_chunks(batch: TensorDict) -> TensorDict:
    """The same batch with flat ``[B, H * A]`` actions, as SAC takes them."""
    batch = batch.clone()
    batch["action"] = batch["action"].flatten(-2)
    return batch


def gemm_peak(dtype: torch.dtype, repeats: int) -> float:
    """GFLOP/s of a ``[2048, 512] x [512, 512]`` matmul in ``dtype`` (median of ``repeats``)."""
    a, b = torch.randn(2048, 512, dtype=dtype), torch.randn(512, 512, dtype=dtype)
    times = []
    for _ in range(repeats + 2):
        start = time.perf_counter()
        for _ in range(10):
            a @ b
        times.append((time.perf_counter() - start) / 10)
    return 2 * 2048 * 512 * 512 / statistics.median(times[2:]) / 1e9


class FlopCount(TorchDispatchMode):
    """Adds up the operations of every op that ``torch.utils.flop_counter`` has a formula for
    (matmuls, convolutions, attention). ``FlopCounterMode`` itself tracks modules with backward
    hooks, which ``torch.autograd.grad`` inside RLDT's actor step does not support."""

    def __init__(self) -> None:
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.flops += formula(*args, **kwargs, out_val=out)
        return out


def count_flops(step, batch) -> int:
    """Floating-point operations of one call of ``step`` (see :class:`FlopCount`)."""
    with FlopCount() as counter:
        step(batch)
    return counter.flops


LOSSES = {"rldt": make_rldt, "sac": lambda reuse: make_sac(), "swfp": make_swfp}


def measure(size_name: str, batch_size: int, repeats: int, warmup: int, reuse: int,
            peaks: dict[str, float], losses: list[str]) -> dict:
    torch.manual_seed(0)
    batch = make_batch(batch_size)
    steps = {}
    for name in losses:
        step_batch = flat_chunks(batch) if name == "sac" else batch
        steps.update({f"{name}_{step_name}": (step, step_batch)
                      for step_name, step in LOSSES[name](reuse)[1].items()})
    times = {name: [] for name in steps}
    for repeat in range(warmup + repeats):
        for name, (step, step_batch) in steps.items():
            start = time.perf_counter()
            step(step_batch)
            elapsed = time.perf_counter() - start
            if repeat >= warmup:
                times[name].append(elapsed)
    result = {"batch_size": batch_size, "steps": {}}
    for name, (step, step_batch) in steps.items():
        seconds = statistics.median(times[name])
        flops = count_flops(step, step_batch)
        # a reused-target round is CRITIC_STEPS critic steps: report per step
        per_round = CRITIC_STEPS if "reuse" in name else 1
        peak = peaks["bf16"] if name.endswith("bf16") else peaks["fp32"]
        result["steps"][name] = {
            "ms": 1e3 * seconds / per_round,
            "gflop": flops / per_round / 1e9,
            "gflops_per_second": flops / seconds / 1e9,
            "fraction_of_peak": flops / seconds / 1e9 / peak,
        }
    # RLDT's steps against SAC's (actor_ratio, critic_ratio), SWFP's against SAC's and RLDT's
    pairs = (("rldt", "sac", "{part}_ratio"), ("swfp", "sac", "swfp_{part}_vs_sac"),
             ("swfp", "rldt", "swfp_{part}_vs_rldt"))
    for name, reference, key in pairs:
        if name in losses and reference in losses:
            for part in ("actor", "critic"):
                result[key.format(part=part)] = (result["steps"][f"{name}_{part}"]["ms"]
                                                 / result["steps"][f"{reference}_{part}"]["ms"])
    return result


def profile_actor_step(batch_size: int, path: Path) -> str:
    torch.manual_seed(0)
    steps = make_rldt(reuse=1)[1]
    batch = make_batch(batch_size)
    steps["actor"](batch)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(5):
            steps["actor"](batch)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
    path.write_text(table + "\n")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--repeats", type=int, default=7, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--reuse", type=int, default=4, help="target_action_reuse of the reused-critic row")
    parser.add_argument("--losses", nargs="+", default=list(LOSSES), choices=list(LOSSES),
                        help="the losses to measure (the RLDT/SAC ratios need both)")
    parser.add_argument("--profile", action="store_true", help="profile RLDT's actor step (default size)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.reuse < 1 or CRITIC_STEPS % args.reuse:
        raise SystemExit(f"--reuse must divide the {CRITIC_STEPS} critic steps of a round, got {args.reuse}")
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)

    load_before = os.getloadavg()
    peaks = {"fp32": gemm_peak(torch.float32, args.repeats), "bf16": gemm_peak(torch.bfloat16, args.repeats)}
    rows = {name: measure(name, SIZES[name], args.repeats, args.warmup, args.reuse, peaks, args.losses)
            for name in args.sizes}
    peaks_after = {"fp32": gemm_peak(torch.float32, args.repeats), "bf16": gemm_peak(torch.bfloat16, args.repeats)}
    report = {
        "rows": rows,
        "gemm_peak_gflops": {"before": peaks, "after": peaks_after},
        "setup": {
            "observation_dim": OBSERVATION_DIM, "action_dim": ACTION_DIM, "chunk_len": CHUNK_LEN,
            "rldt_actor": "VelocityMLP 3 x 512, N = 8, K = 8", "sac_actor": "TanhNormal MLP 3 x 256",
            "swfp_actor": "the RLDT actor frozen + 8 blocks VelocityMLP 2 x 64 (Mish), 2 Euler steps each, "
                          "8 draws per state, exact log-determinant",
            "losses": args.losses,
            "critic": f"2 x MLP {CRITIC_LAYERS} x {CRITIC_WIDTH} SiLU",
            "threads": args.threads, "repeats": args.repeats, "warmup": args.warmup,
            "critic_steps_per_round": CRITIC_STEPS, "target_action_reuse": args.reuse,
        },
        "machine": {
            "cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "load_average_before": load_before, "load_average_after": os.getloadavg(),
            "torch": torch.__version__,
        },
        "command": "python benchmarks/loss_cost.py " + " ".join(sys.argv[1:]),
    }
    (args.out / "loss_cost.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["| size | batch | step | ms | GFLOP | GFLOP/s | of the GEMM peak |", "|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        for step, figures in row["steps"].items():
            lines.append(f"| {name} | {row['batch_size']} | {step} | {figures['ms']:.1f} | {figures['gflop']:.2f} "
                         f"| {figures['gflops_per_second']:.1f} | {figures['fraction_of_peak']:.0%} |")
    lines.append("")
    lines.append(
        f"{args.threads} torch thread(s), median of {args.repeats} steps; GEMM peak (fp32 / bf16) "
        f"{peaks['fp32']:.0f} / {peaks['bf16']:.0f} GFLOP/s before, {peaks_after['fp32']:.0f} / "
        f"{peaks_after['bf16']:.0f} after; load average {load_before[0]:.1f} before, "
        f"{report['machine']['load_average_after'][0]:.1f} after. `critic_reuse{args.reuse}`: per critic "
        f"step of a round of {CRITIC_STEPS} with the target samples drawn once for {CRITIC_STEPS // args.reuse} batches.")
    (args.out / "loss_cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if args.profile:
        print(profile_actor_step(SIZES["default"], args.out / "loss_cost_profile.txt"))


if __name__ == "__main__":
    main()
