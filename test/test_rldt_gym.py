# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
"""examples/rldt_gym.py end to end at a tiny size: outputs, resumption, Ctrl-C, bad input."""
from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, load_script
from tensordict import TensorDict
from torchrl.modules import ValueOperator

from torchrl_rldt.checkpoint import load_flow_policy, save_flow_policy
from torchrl_rldt.envs import NormalizationStats, episode_returns, returns_by_sampling_mode
from torchrl_rldt.modules import ChunkQValueMLP, FlowActor, FlowModel, VelocityMLP
from torchrl_rldt.objectives import RLDTLoss

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "rldt_gym.py"
TINY = [
    "env.num_envs=4", "env.max_episode_steps=60", "collector.chunks_per_env=4",
    "schedule.critic_warmup_batches=1", "schedule.critic_steps=4", "schedule.actor_steps=1",
    "schedule.actor_every_batches=1",
    "schedule.actor_batch_size=8", "buffer.batch_size=32", "critic.hidden_dim=32",
    "eval.every_env_steps=100", "eval.episodes=2", "eval.final_episodes=2",
    "logger.progress_bar=false", "num_threads=1",
]


def make_base(path: Path, task: str = "Hopper-v5", observation_dim: int = 11, action_dim: int = 3):
    torch.manual_seed(0)
    network = VelocityMLP(observation_dim, action_dim, chunk_len=4, hidden_dim=32, num_layers=2)
    actor = FlowActor(FlowModel(network, action_dim, 8, chunk_len=4, low=-1.0, high=1.0))
    return save_flow_policy(
        path, actor, task=task,
        observation_stats=NormalizationStats(torch.zeros(observation_dim), torch.ones(observation_dim)),
        action_stats=NormalizationStats(torch.zeros(action_dim), torch.ones(action_dim)),
    )


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return make_base(tmp_path_factory.mktemp("base") / "hopper-tiny.pt")


def command(run_dir: Path, base: Path, *overrides: str) -> list[str]:
    return [sys.executable, str(SCRIPT), f"base_checkpoint={base}", f"hydra.run.dir={run_dir}",
            *TINY, *overrides]


def run(run_dir: Path, base: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(command(run_dir, base, *overrides), capture_output=True, text=True,
                          timeout=300)


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def test_smoke_writes_everything(tmp_path, base):
    result = run(tmp_path / "run", base, "collector.total_env_steps=300")
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "run"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["counters"]["env_steps"] >= 300
    assert summary["counters"]["actor_updates"] > 0
    assert summary["history"][0]["env_steps"] == 0  # the base policy
    assert summary["history"][-1] == {**summary["final"], "env_steps": summary["counters"]["env_steps"],
                                      "wall_seconds": summary["history"][-1]["wall_seconds"]}
    assert "fine-tuned" in result.stderr + result.stdout
    # the start and the end in both sampling modes, the configured one being the curve's
    for key, configured in (("base_by_mode", "base"), ("final_by_mode", "final")):
        assert set(summary[key]) == {"deterministic", "stochastic"}
        assert summary[key]["deterministic"] == summary[configured]
        assert summary[key]["stochastic"]["episodes"] == summary[configured]["episodes"]
    for scalar in ("gradient_norm_loss_rl", "gradient_norm_loss_reference", "drive_to_anchor_gradient_ratio",
                   "drive_gradient_cosine"):  # what the actor steps followed, at every evaluation
        assert (run_dir / "rldt_gym" / "scalars" / f"{scalar}.csv").is_file(), scalar
    # where the loop's time went: every phase measured, and they add up to its wall-clock
    phases = summary["phase_seconds"]
    assert set(phases) == {"collection", "critic", "actor", "evaluation", "other"}
    assert all(phases[phase] > 0 for phase in ("collection", "critic", "actor", "evaluation"))
    assert sum(phases.values()) >= summary["history"][-1]["wall_seconds"] - 0.5
    # the machine's load when the loop started and when it ended, beside those timings
    assert len(summary["load_average"]) == 2 and all(load >= 0 for load in summary["load_average"])
    assert (run_dir / "learning_curve.png").stat().st_size > 0
    for scalar in ("loss_qvalue", "q_member_gap", "action_abs_mean", "transport_norm",
                   "critic_correlation", "critic_bias"):
        assert (run_dir / "rldt_gym" / "scalars" / f"{scalar}.csv").is_file(), scalar
    checkpoint = load_checkpoint(run_dir / "checkpoint.pt")  # weights_only=True reads it
    assert checkpoint["counters"] == summary["counters"]

    # the fine-tuned actor, exported, loads as a base does and holds the run's weights
    exported, manifest = tmp_path / "fine-tuned.pt", tmp_path / "manifest.json"
    export = subprocess.run(
        [sys.executable, str(SCRIPT.parent / "export_policy.py"), str(run_dir / "checkpoint.pt"),
         "--out", str(exported), "--episodes", "2", "--manifest", str(manifest)],
        capture_output=True, text=True, timeout=300,
    )
    assert export.returncode == 0, export.stderr[-3000:]
    policy = load_flow_policy(exported, task="Hopper-v5", observation_dim=11)
    prefix = "actor_network_params.model.velocity_network."
    weights = policy.actor.model.velocity_network.state_dict()
    assert weights and set(weights) <= {key[len(prefix):] for key in checkpoint["loss"] if key.startswith(prefix)}
    for name, value in weights.items():
        torch.testing.assert_close(value, checkpoint["loss"][prefix + name], rtol=0, atol=0)
    base_weights = load_flow_policy(base).actor.model.velocity_network.state_dict()
    assert any(not torch.equal(value, base_weights[name]) for name, value in weights.items())
    entry = json.loads(manifest.read_text())["fine_tuned"]["fine-tuned.pt"]
    assert entry["task"] == "Hopper-v5" and entry["counters"] == summary["counters"]
    assert entry == {"task": "Hopper-v5", **policy.metadata}
    assert {mode: result["episodes"] for mode, result in entry["returns"]["fine_tuned"].items()} == {
        "deterministic": 2, "stochastic": 2}


def test_policies_are_compared_on_paired_episodes(base):
    """Two evaluations with one seed start from the same states: a deterministic policy gets the
    same returns twice (export_policy.py measures the base and the fine-tuned policy so)."""
    from omegaconf import OmegaConf

    utils = load_script("examples/utils.py")
    cfg = OmegaConf.create({"task": "Hopper-v5", "env": {"max_episode_steps": 30}})
    policy = load_flow_policy(base)
    env = utils.make_policy_chunk_env(policy, cfg, 3, 123, torch.device("cpu"))
    first, second = (returns_by_sampling_mode(env, policy.actor, seed=123, max_env_steps=30, chunk_len=4)
                     for _ in range(2))
    assert first["deterministic"] == second["deterministic"]
    unpaired = episode_returns(env, policy.actor, max_env_steps=30, chunk_len=4)
    assert unpaired["mean"] != first["deterministic"]["mean"]  # the next episodes differ


def test_resume_reaches_the_same_counters(tmp_path, base):
    straight = run(tmp_path / "straight", base, "collector.total_env_steps=400")
    assert straight.returncode == 0, straight.stderr[-3000:]
    first = run(tmp_path / "split", base, "collector.total_env_steps=200",
                "checkpoint.save_replay_buffer=true")
    assert first.returncode == 0, first.stderr[-3000:]
    before = load_checkpoint(tmp_path / "split" / "checkpoint.pt")
    resumed = run(tmp_path / "elsewhere", base, "collector.total_env_steps=400",
                  f"resume={tmp_path / 'split' / 'checkpoint.pt'}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = load_checkpoint(tmp_path / "split" / "checkpoint.pt")  # resumed in its own directory
    expected = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")["counters"]
    counters = after["counters"]
    for key in ("batches", "critic_updates", "actor_updates", "chunks"):
        assert counters[key] == expected[key], (key, counters, expected)
    assert counters["env_steps"] >= 400
    # Nothing finished is lost: the evaluations of the first part are still in the history.
    assert after["history"][: len(before["history"])] == before["history"]
    assert "resumed" in resumed.stderr + resumed.stdout
    # a finished run resumed again trains nothing and reuses its final evaluation
    again = run(tmp_path / "again", base, "collector.total_env_steps=400",
                f"resume={tmp_path / 'split' / 'checkpoint.pt'}")
    assert again.returncode == 0, again.stderr[-3000:]
    final = load_checkpoint(tmp_path / "split" / "checkpoint.pt")
    assert final["counters"] == counters and final["history"] == after["history"]


def test_qam_trains_in_the_same_loop_and_resumes_only_as_qam(tmp_path, base):
    result = run(tmp_path / "qam", base, "method=qam", "collector.total_env_steps=300")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "qam" / "summary.json").read_text())
    assert summary["method"] == "qam" and summary["counters"]["actor_updates"] > 0
    scalars = tmp_path / "qam" / "rldt_gym" / "scalars"
    for scalar in ("loss_adjoint", "loss_base_constraint", "loss_qvalue"):
        assert (scalars / f"{scalar}.csv").is_file(), scalar
    assert not (scalars / "loss_rl.csv").exists()
    checkpoint = load_checkpoint(tmp_path / "qam" / "checkpoint.pt")
    assert checkpoint["method"] == "qam"
    # an RLDT run does not resume a QAM checkpoint (nor the other way round)
    refused = run(tmp_path / "rldt", base, "collector.total_env_steps=600",
                  f"resume={tmp_path / 'qam' / 'checkpoint.pt'}")
    assert refused.returncode != 0 and "method=qam" in refused.stderr, refused.stderr[-3000:]


SWFP_TINY = ["method=swfp", "swfp.num_blocks=3", "swfp.updates_per_stage=2", "swfp.block_hidden_dim=16"]


def test_swfp_trains_in_the_same_loop_resumes_and_summarises(tmp_path, base):
    """SWFP (our reading of its abstract): the cascade collects, is evaluated and checkpointed; a
    resumed run reaches the straight run's counters and stage; its export is refused."""
    straight = run(tmp_path / "straight", base, *SWFP_TINY, "collector.total_env_steps=400")
    assert straight.returncode == 0, straight.stderr[-3000:]
    summary = json.loads((tmp_path / "straight" / "summary.json").read_text())
    assert summary["method"] == "swfp" and summary["counters"]["actor_updates"] > 0
    assert summary["history"][0]["env_steps"] == 0 and len(summary["history"]) >= 3
    assert set(summary["final_by_mode"]) == {"deterministic", "stochastic"}
    assert "SWFP" in straight.stderr + straight.stdout
    scalars = tmp_path / "straight" / "rldt_gym" / "scalars"
    for scalar in ("loss_value", "loss_entropy", "loss_transport", "loss_qvalue", "active_block",
                   "transport_distance", "gradient_norm_loss_value", "critic_correlation"):
        assert (scalars / f"{scalar}.csv").is_file(), scalar
    assert not (scalars / "loss_rl.csv").exists()

    checkpoint = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    updates = checkpoint["counters"]["actor_updates"]
    assert checkpoint["method"] == "swfp" and checkpoint["policy_updater"] == {"steps": updates}
    loss_state = checkpoint["loss"]
    assert int(loss_state["actor_network_params.active_block"]) == min(updates // 2, 2)
    # the base is frozen: its weights are the shipped ones; the first block has moved off the identity
    prefix = "actor_network_params.model.velocity_network."
    for name, value in load_flow_policy(base).actor.model.velocity_network.state_dict().items():
        torch.testing.assert_close(loss_state[prefix + name], value, rtol=0, atol=0)
    assert loss_state["actor_network_params.blocks.0.output_layer.weight"].abs().sum() > 0

    first = run(tmp_path / "split", base, *SWFP_TINY, "collector.total_env_steps=200",
                "checkpoint.save_replay_buffer=true")
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = run(tmp_path / "elsewhere", base, *SWFP_TINY, "collector.total_env_steps=400",
                  f"resume={tmp_path / 'split' / 'checkpoint.pt'}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed" in resumed.stderr + resumed.stdout
    after = load_checkpoint(tmp_path / "split" / "checkpoint.pt")
    for key in ("batches", "critic_updates", "actor_updates", "chunks"):
        assert after["counters"][key] == checkpoint["counters"][key], key
    assert after["policy_updater"] == checkpoint["policy_updater"]
    assert torch.equal(after["loss"]["actor_network_params.active_block"], loss_state["actor_network_params.active_block"])

    export = subprocess.run(
        [sys.executable, str(SCRIPT.parent / "export_policy.py"), str(tmp_path / "straight" / "checkpoint.pt"),
         "--out", str(tmp_path / "swfp.pt"), "--episodes", "1", "--manifest", "none"],
        capture_output=True, text=True, timeout=300,
    )
    assert export.returncode != 0 and "SWFP run" in export.stderr, export.stderr[-3000:]


def test_ctrl_c_writes_a_checkpoint_and_exits_cleanly(tmp_path, base):
    run_dir = tmp_path / "run"
    process = subprocess.Popen(
        command(run_dir, base, "collector.total_env_steps=100000", "checkpoint.every_batches=2"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    deadline = time.monotonic() + 240
    while not (run_dir / "checkpoint.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert (run_dir / "checkpoint.pt").exists()
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output[-3000:]
    assert "interrupted" in output
    assert load_checkpoint(run_dir / "checkpoint.pt")["counters"]["batches"] >= 2


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["optim.actor_lr=-1e-4"], "optim.actor_lr must be a finite number > 0.0"),
        (["rldt.num_particles=0"], "rldt.num_particles must be an integer >= 1"),
        (["rldt.rl_coeff=-1"], "rldt.rl_coeff must be a finite number >= 0.0"),
        (["rldt.rl_coef=6"], "rldt.rl_coef was renamed rldt.rl_coeff (TorchRL's name for a loss weight): "
                             "use rldt.rl_coeff=6"),
        (["rldt.min_step=true"], "rldt.min_step must be an integer >= 0, got True"),
        (["env.max_episode_steps=2"], "longer than an episode"),
        (["task=Hoper-v5"], "Close matches: Hopper-v5"),
        (["base_checkpoint=/nonexistent/base.pt"], "/nonexistent/base.pt"),
        (["critic.value_estimator=td_lambda", "buffer.slice_len=3"],
         "schedule.actor_batch_size (8) must be a multiple of buffer.slice_len (3)"),
        (["critic.value_estimator=td3"], "critic.value_estimator must be one of td0, td_lambda"),
        (["schedule.target_action_reuse=3"], "schedule.target_action_reuse (3) must divide"),
        (["learner_precision=fp16"], "learner_precision must be one of fp32, bf16"),
        (["method=sac"], "method must be one of rldt, qam, swfp"),
        (["method=swfp", "swfp.jko_step=0"], "swfp.jko_step must be a finite number > 0.0"),
        (["method=swfp", "swfp.num_blocks=0"], "swfp.num_blocks must be an integer >= 1"),
        (["method=qam", "qam.base_ema=1.5"], "qam.base_ema must be a finite number"),
        (["method=qam", "qam.clamp_final_action=1"], "qam.clamp_final_action must be one of"),
        (["collector.kind=multi_sync", "collector.num_workers=3"],
         "env.num_envs (4) must be a multiple of collector.num_workers (3)"),
        (["collector.kind=multi_async", "critic.value_estimator=td_lambda", "buffer.slice_len=4"],
         "use collector.kind=multi_sync"),
    ],
)
def test_bad_input_is_refused_before_any_work(tmp_path, base, overrides, message):
    result = run(tmp_path / "run", base, *overrides)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr[-3000:]
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_checkpoint_of_another_task_is_refused(tmp_path):
    other = make_base(tmp_path / "walker.pt", task="Walker2d-v5", observation_dim=17, action_dim=6)
    result = run(tmp_path / "run", other)
    assert result.returncode != 0
    assert "Walker2d-v5" in result.stderr and "Hopper-v5" in result.stderr, result.stderr[-3000:]


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(tmp_path, base):
    run_dir = tmp_path / "run"
    # One critic step per batch: batch 1 ends with huge but finite weights and is checkpointed,
    # batch 2's critic loss overflows.
    result = run(run_dir, base, "collector.total_env_steps=2000", "checkpoint.every_batches=1",
                 "schedule.critic_steps=1", "schedule.target_action_reuse=1", "optim.critic_lr=1e30")
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    assert "is not finite" in output and "last good checkpoint" in output, output[-3000:]
    checkpoint = load_checkpoint(run_dir / "checkpoint.pt")
    assert checkpoint["counters"]["batches"] >= 1
    assert all(torch.isfinite(value).all() for value in checkpoint["loss"].values()
               if isinstance(value, torch.Tensor) and value.is_floating_point())


def test_metaworld_sparse_config_trains_with_td_lambda_on_trajectory_slices(tmp_path):
    base = make_base(tmp_path / "pickplace.pt", task="MetaWorld/PickPlace-v3", observation_dim=39,
                     action_dim=4)
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--config-name", "rldt_metaworld", f"base_checkpoint={base}",
         f"hydra.run.dir={run_dir}", *TINY, "env.max_episode_steps=40",
         "collector.total_env_steps=400", "buffer.slice_len=4", "checkpoint.save_replay_buffer=true",
         # target samples drawn once per round batch of 4 x 32 / 2 = 64 transitions (16 slices)
         "schedule.critic_steps=4", "schedule.target_action_reuse=2", "learner_precision=bf16",
         "critic.bootstrap=true"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["counters"]["actor_updates"] > 0
    assert summary["counters"]["critic_updates"] == 4 * summary["counters"]["batches"]
    # critic.bootstrap: every stored transition names the member of its env (env i -> i mod 2)
    from tensordict import TensorDict

    stored = TensorDict.load_memmap(next(run_dir.glob("checkpoint.pt.buffer-*")) / "storage")
    member = stored["critic_member"][: summary["counters"]["chunks"] // 4]  # [time, env]: 4 envs
    assert torch.equal(member, (torch.arange(member.shape[-1]) % 2).expand_as(member))
    # stochastic evaluation of a success reward: returns are success rates in [0, 1]
    assert all(0.0 <= point["mean"] <= 1.0 for point in summary["history"])
    assert "random return" in result.stderr + result.stdout
    assert summary["command"].startswith("python examples/rldt_gym.py --config-name rldt_metaworld ")
    checkpoint = load_checkpoint(run_dir / "checkpoint.pt")
    assert checkpoint["config"]["critic"]["value_estimator"] == "td_lambda"
    assert checkpoint["config"]["optim"]["gamma"] == 0.999
    scalars = run_dir / "rldt_gym" / "scalars"
    assert (scalars / "loss_qvalue.csv").is_file()


def test_critic_windows_stay_inside_a_round_batch_shortened_by_episode_ends(tmp_path):
    """Slices end at episode ends, so a round batch holds fewer transitions than asked for."""
    base = make_base(tmp_path / "pickplace.pt", task="MetaWorld/PickPlace-v3", observation_dim=39,
                     action_dim=4)
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--config-name", "rldt_metaworld", f"base_checkpoint={base}",
         f"hydra.run.dir={run_dir}", *TINY, "collector.total_env_steps=400", "buffer.slice_len=4",
         # one-chunk episodes: slices of 1 transition where 4 are asked for, so a round batch of
         # 4 x 32 / 2 = 64 asked transitions holds 16, fewer than a critic batch of 32
         "env.max_episode_steps=4", "schedule.critic_steps=4", "schedule.target_action_reuse=2"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    sizes = [float(row[-1]) for row in csv.reader(open(run_dir / "rldt_gym" / "scalars" / "critic_batch_size.csv"))
             if row]
    assert sizes and all(0 < size < 32 for size in sizes)  # the whole short round batch, never empty


def test_a_resumed_slice_buffer_ends_each_env_stream_at_the_seam():
    """After a resume the collector starts new episodes: a slice must not run from an env's
    last stored step into the first step of the new stream."""
    utils = load_script("examples/utils.py")
    buffer = utils.make_replay_buffer(12, None, "cpu", slice_len=4)

    def extend(first):  # 2 envs x 3 steps, no episode end
        false = torch.zeros(2, 3, 1, dtype=torch.bool)
        buffer.extend(TensorDict({"step": torch.arange(3).expand(2, 3) + first,
                                  "next": {"done": false, "truncated": false.clone()}}, [2, 3]))

    def joins():  # a slice that goes on from step 2 to step 3 (the sampler ends slices done)
        sample = buffer.sample(400)
        steps, done = sample["step"].tolist(), sample["next", "done"].squeeze(-1).tolist()
        return sum(steps[i] == 2 and steps[i + 1] == 3 and not done[i] for i in range(len(steps) - 1))

    extend(0)
    utils.end_slices_at_the_last_write(buffer)  # the resume: steps 0-2 saved, 3-5 come after
    extend(3)
    assert joins() == 0
    # without the end, the sampler joins the two streams (what the helper prevents)
    buffer.empty()
    extend(0)
    extend(3)
    assert joins() > 0


def test_a_task_picks_up_its_own_values_below_the_command_line(tmp_path):
    """HalfCheetah-v5's file (examples/config/per_task/rldt_gym/) sets the frozen reference."""
    base = make_base(tmp_path / "halfcheetah-tiny.pt", "HalfCheetah-v5", 17, 6)
    for name, extra, expected in (("own", [], None), ("overridden", ["schedule.reanchor_every=4"], 4)):
        result = run(tmp_path / name, base, "task=HalfCheetah-v5", "collector.total_env_steps=100",
                     *extra)
        assert result.returncode == 0, result.stderr[-3000:]
        config = load_checkpoint(tmp_path / name / "checkpoint.pt")["config"]
        assert config["schedule"]["reanchor_every"] == expected
    assert "halfcheetah-v5.yaml for this task: schedule.reanchor_every=None" in (
        tmp_path / "own" / "rldt_gym.log").read_text()


def test_metaworld_task_without_demonstrations_names_the_recording_command(tmp_path):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--config-name", "rldt_metaworld", "task=MetaWorld/Hammer-v3",
         f"hydra.run.dir={tmp_path / 'run'}", *TINY],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode != 0
    assert "python examples/record_demos.py task=MetaWorld/Hammer-v3" in result.stderr, result.stderr[-3000:]


def test_reward_scale_is_updated_once_every_so_many_batches(tmp_path, base):
    result = run(tmp_path / "run", base, "collector.total_env_steps=300", "optim.reward_scale_every_batches=3")
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    batches = checkpoint["counters"]["batches"]
    assert batches >= 3
    # the first batch seeds the scale; after that the means of 3 batches at a time go in together
    assert len(checkpoint["extra"]["reward_abs_pending"]) == batches % 3
    assert checkpoint["extra"]["reward_abs_mean"] > 0


@pytest.mark.parametrize("kind", ["multi_sync", "multi_async", "ray"])
def test_multi_process_collectors_gather_real_transitions_with_the_learners_weights(base, kind):
    from omegaconf import OmegaConf

    utils, rldt_utils = load_script("examples/utils.py"), load_script("examples/rldt_utils.py")
    cfg = OmegaConf.load(ROOT / "examples" / "config" / "rldt_gym.yaml")
    cfg.base_checkpoint, cfg.env.num_envs, cfg.env.max_episode_steps = str(base), 4, 60
    cfg.collector.chunks_per_env, cfg.collector.kind, cfg.collector.num_workers = 4, kind, 2
    policy = utils.load_base_policy(cfg, torch.device("cpu"), 8)
    collector = rldt_utils.make_rldt_collector(policy, cfg, seed=0, total_chunks=1_000)
    batches = []
    try:
        for batch in map(utils.collected_chunks, collector):
            batches.append(batch)
            if len(batches) == 2:  # what the learner does after an actor update
                policy.actor.model.low.fill_(0.5)
                policy.actor.model.high.fill_(0.5)
                collector.update_policy_weights_()
            if len(batches) == 6:
                break
    finally:
        collector.shutdown()
        if kind == "ray":  # the local Ray instance the collector started (on loopback)
            import ray

            ray.shutdown()
    # one batch: 16 chunks, all envs side by side (multi_sync, ray) or one worker's 2 envs (multi_async)
    assert {tuple(batch.shape) for batch in batches} == ({(2, 8)} if kind == "multi_async" else {(4, 4)})
    for batch in batches:
        # every transition continues the previous one unless an episode ended in between
        done = batch["next", "done"][:, :-1, 0]
        continues = (batch["next", "observation"][:, :-1] == batch["observation"][:, 1:]).all(-1)
        assert (continues | done).all()
        assert ((batch["next", "chunk_steps"] == 4) | batch["next", "done"]).all()
    assert not (batches[0]["action"] == 0.5).all()  # the base's own actions
    assert (batches[-1]["action"] == 0.5).all()  # the learner's bounds reached every worker


def test_a_multi_process_collector_carries_swfps_blocks_and_stage(base):
    """The workers run the cascade, and a weight update brings them its blocks and its active block."""
    from omegaconf import OmegaConf

    utils, rldt_utils = load_script("examples/utils.py"), load_script("examples/rldt_utils.py")
    cfg = OmegaConf.load(ROOT / "examples" / "config" / "rldt_gym.yaml")
    cfg.base_checkpoint, cfg.env.num_envs, cfg.env.max_episode_steps = str(base), 4, 60
    cfg.collector.chunks_per_env, cfg.collector.kind, cfg.collector.num_workers = 4, "multi_sync", 2
    cfg.method, cfg.swfp.num_blocks, cfg.swfp.block_hidden_dim = "swfp", 2, 8
    policy = utils.load_base_policy(cfg, torch.device("cpu"), 8)
    actor = rldt_utils.make_swfp_actor(policy.actor, cfg)
    with pytest.raises(TypeError, match="StepwiseFlowActor"):
        rldt_utils.make_rldt_collector(policy, cfg, seed=0, total_chunks=1_000)
    collector = rldt_utils.make_rldt_collector(policy, cfg, seed=0, total_chunks=1_000, actor=actor)
    batches = []
    try:
        for batch in map(utils.collected_chunks, collector):
            batches.append(batch)
            if len(batches) == 2:  # the second block pushes every action to the upper bound, once active
                with torch.no_grad():
                    actor.blocks[1].output_layer.bias.fill_(100.0)
                actor.advance_block()
                collector.update_policy_weights_()
            if len(batches) == 5:
                break
    finally:
        collector.shutdown()
    assert not (batches[0]["action"] == 1.0).all()
    assert (batches[-1]["action"] == 1.0).all()


@pytest.mark.parametrize("config_name, clamps", [("rldt_gym", True), ("rldt_metaworld", False)])
def test_qam_takes_the_critic_gradient_where_the_reference_of_its_setting_does(config_name, clamps):
    """The reference port clamps the final action before the critic's gradient on Gym, not on
    manipulation (``clip_adj``)."""
    from hydra import compose, initialize_config_dir

    from torchrl_rldt.objectives import QAMLoss

    rldt_utils = load_script("examples/rldt_utils.py")
    with initialize_config_dir(config_dir=str(ROOT / "examples" / "config"), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=["method=qam"])
    model = FlowModel(VelocityMLP(3, 2, chunk_len=2, hidden_dim=8), 2, 4, chunk_len=2, low=-1.0, high=1.0)
    critic = ValueOperator(ChunkQValueMLP(3, 2, chunk_len=2, hidden_dim=8), in_keys=["observation", "action"])
    loss, _, _ = rldt_utils.make_offpolicy_loss(FlowActor(model), critic, cfg)
    assert isinstance(loss, QAMLoss) and loss.clamp_final_action is clamps


@pytest.mark.parametrize("kind", ["multi_sync", "ray"])
def test_one_config_value_moves_training_to_several_processes(tmp_path, base, kind):
    result = run(tmp_path / "run", base, "collector.total_env_steps=300", f"collector.kind={kind}",
                 "collector.num_workers=2")
    assert result.returncode == 0, result.stderr[-3000:]
    counters = json.loads((tmp_path / "run" / "summary.json").read_text())["counters"]
    assert counters["actor_updates"] > 0 and counters["chunks"] == 16 * counters["batches"]


def test_collected_calibration_bootstraps_time_outs_with_the_critic():
    # a critic that says 2 everywhere, against two envs' batches: env 0 ends (terminated) at its
    # third chunk, env 1 is cut by the time limit at its fourth
    rldt_utils = load_script("examples/rldt_utils.py")
    model = FlowModel(VelocityMLP(3, 2, chunk_len=2, hidden_dim=8), 2, 4, chunk_len=2, low=-1.0, high=1.0)
    critic = ValueOperator(ChunkQValueMLP(3, 2, chunk_len=2, hidden_dim=8), in_keys=["observation", "action"])
    loss = RLDTLoss(FlowActor(model), critic, num_particles=2)
    with torch.no_grad():
        for name, param in loss.qvalue_network_params.items(True, True):
            param.zero_()
            if name[-1] == "bias" and param.shape[-1] == 1:  # the output layer's bias
                param.fill_(2.0)
    assert (loss.critic_values(TensorDict(observation=torch.randn(5, 3), action=torch.rand(5, 2, 2),
                                          batch_size=[5])) == 2.0).all()
    terminated = torch.tensor([[0, 0, 1, 0], [0, 0, 0, 0]]).bool().unsqueeze(-1)
    truncated = torch.tensor([[0, 0, 0, 0], [0, 0, 0, 1]]).bool().unsqueeze(-1)
    transitions = TensorDict({
        "observation": torch.randn(2, 4, 3), "action": torch.rand(2, 4, 2, 2),
        "next": {"observation": torch.randn(2, 4, 3), "reward": torch.ones(2, 4, 1),
                 "terminated": terminated, "truncated": truncated, "done": terminated | truncated},
    }, batch_size=[2, 4])
    gamma = 0.5
    report = rldt_utils.collected_calibration(loss, [transitions[:, :2], transitions[:, 2:]], gamma,
                                         reward_scale=2.0)
    # returns of rewards 1 / 2: env 0 (3 chunks, terminated), env 1 (4 chunks, then gamma x 2)
    env0 = [0.5 * (1 + gamma + gamma**2), 0.5 * (1 + gamma), 0.5]
    env1 = [0.5 * sum(gamma**k for k in range(4 - t)) + gamma ** (4 - t) * 2.0 for t in range(4)]
    assert report["steps"] == 7 and report["value_mean"] == pytest.approx(2.0)
    assert report["return_mean"] == pytest.approx(sum(env0 + env1) / 7)


def test_frames_covering_reaches_any_env_step_budget():
    utils = load_script("examples/utils.py")
    # every frame holds at least one env step: the budget in frames, rounded up to whole batches
    assert utils.frames_covering(300, 64) == 320
    assert utils.frames_covering(320, 64) == 320
    assert utils.frames_covering(0, 64) == 64  # a finished run still gets a (finite) collector


@pytest.mark.parametrize("script, config_name, task, expected", [
    ("rldt_gym.py", None, "MetaWorld/Assembly-v3", "--config-name rldt_metaworld task=MetaWorld/Assembly-v3"),
    ("ppo_gym.py", None, "MetaWorld/Assembly-v3", "--config-name ppo_metaworld task=MetaWorld/Assembly-v3"),
    ("rldt_gym.py", "rldt_metaworld", "Hopper-v5", "--config-name rldt_gym task=Hopper-v5"),
])
def test_a_task_under_the_other_kind_of_config_is_refused_with_its_command(tmp_path, script, config_name,
                                                                         task, expected):
    result = subprocess.run(
        [sys.executable, str(SCRIPT.with_name(script)), *(["--config-name", config_name] if config_name else []),
         f"task={task}", f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode != 0
    assert f"Run it with its config: python examples/{script} {expected}" in result.stderr, result.stderr[-3000:]
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
