"""Time per actor step and per critic step of ``RLDTLoss`` against TorchRL's ``SACLoss`` on CPU.

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

Steps of the two methods are interleaved and the median kept, so that a load on the machine
hits both alike; the load average is recorded beside the figures. Writes
``benchmarks/results/loss_cost.json`` and ``benchmarks/results/loss_cost.md``.

    python benchmarks/loss_cost.py
    python benchmarks/loss_cost.py --sizes default --repeats 5 --profile
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from tensordict import TensorDict
from tensordict.nn import NormalParamExtractor, TensorDictModule
from torch import nn
from torchrl.data import Bounded
from torchrl.modules import MLP, ProbabilisticActor, TanhNormal, ValueOperator
from torchrl.objectives import SACLoss, SoftUpdate

from torchrl_rldt.modules import ChunkQValueMLP, FlowActor, FlowModel, VelocityMLP
from torchrl_rldt.objectives import RLDTLoss

RESULTS = Path(__file__).resolve().parent / "results"
OBSERVATION_DIM, ACTION_DIM, CHUNK_LEN = 11, 3, 4
SIZES = {"reference": 6272, "default": 256}
CRITIC_WIDTH, CRITIC_LAYERS = 256, 3


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


def make_rldt() -> tuple[RLDTLoss, dict]:
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

    return loss, {"actor": actor_step, "critic": critic_step}


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


def measure(size_name: str, batch_size: int, repeats: int, warmup: int) -> dict:
    torch.manual_seed(0)
    batch = make_batch(batch_size)
    methods = {"rldt": (make_rldt()[1], batch), "sac": (make_sac()[1], flat_chunks(batch))}
    times = {(method, part): [] for method in methods for part in ("actor", "critic")}
    for repeat in range(warmup + repeats):
        for (method, part), record in times.items():
            steps, method_batch = methods[method]
            start = time.perf_counter()
            steps[part](method_batch)
            elapsed = time.perf_counter() - start
            if repeat >= warmup:
                record.append(elapsed)
    result = {"batch_size": batch_size}
    for (method, part), record in times.items():
        result[f"{method}_{part}_ms"] = 1e3 * statistics.median(record)
    for part in ("actor", "critic"):
        result[f"{part}_ratio"] = result[f"rldt_{part}_ms"] / result[f"sac_{part}_ms"]
    return result


def profile_actor_step(batch_size: int, path: Path) -> str:
    torch.manual_seed(0)
    steps = make_rldt()[1]
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
    parser.add_argument("--profile", action="store_true", help="profile RLDT's actor step (default size)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)

    load_before = os.getloadavg()
    rows = {name: measure(name, SIZES[name], args.repeats, args.warmup) for name in args.sizes}
    report = {
        "rows": rows,
        "setup": {
            "observation_dim": OBSERVATION_DIM, "action_dim": ACTION_DIM, "chunk_len": CHUNK_LEN,
            "rldt_actor": "VelocityMLP 3 x 512, N = 8, K = 8", "sac_actor": "TanhNormal MLP 3 x 256",
            "critic": f"2 x MLP {CRITIC_LAYERS} x {CRITIC_WIDTH} SiLU",
            "threads": args.threads, "repeats": args.repeats, "warmup": args.warmup,
        },
        "machine": {
            "cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "load_average_before": load_before, "load_average_after": os.getloadavg(),
            "torch": torch.__version__,
        },
        "command": "python benchmarks/loss_cost.py",
    }
    (args.out / "loss_cost.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "| size | batch | RLDT actor ms | SAC actor ms | actor ratio | RLDT critic ms | SAC critic ms | critic ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        lines.append(
            f"| {name} | {row['batch_size']} | {row['rldt_actor_ms']:.1f} | {row['sac_actor_ms']:.1f} "
            f"| {row['actor_ratio']:.1f} | {row['rldt_critic_ms']:.1f} | {row['sac_critic_ms']:.1f} "
            f"| {row['critic_ratio']:.1f} |"
        )
    lines.append("")
    lines.append(f"{args.threads} torch threads, median of {args.repeats} steps; load average "
                 f"{load_before[0]:.1f} before, {report['machine']['load_average_after'][0]:.1f} after.")
    (args.out / "loss_cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if args.profile:
        print(profile_actor_step(SIZES["default"], args.out / "loss_cost_profile.txt"))


if __name__ == "__main__":
    main()
