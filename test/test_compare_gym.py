# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
"""benchmarks/compare_gym.py: the per-method overrides and the gathered outputs."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import load_script

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
compare_gym = load_script("benchmarks/compare_gym.py")
parse_overrides = compare_gym.parse_overrides


def test_steps_to_threshold_is_the_first_evaluation_that_reaches_it():
    history = [{"env_steps": 0, "mean": 1000.0}, {"env_steps": 20, "mean": 3100.0},
               {"env_steps": 40, "mean": 2900.0}, {"env_steps": 60, "mean": 3500.0}]
    assert compare_gym.steps_to_threshold(history, 3000) == 20
    assert compare_gym.steps_to_threshold(history, 3500) == 60
    assert compare_gym.steps_to_threshold(history, 4000) is None


def test_every_method_has_a_place_in_the_run_order():
    assert sorted(compare_gym.LONGEST_FIRST) == sorted(compare_gym.METHODS)


def test_overrides_go_to_every_method_or_to_the_one_named():
    overrides = parse_overrides(
        ["eval.episodes=2", "sac:env.chunk_len=4", "fpo:logger.backend=null", "ppo.x=a:b"],
        ["rldt", "sac"],
    )
    assert overrides == {"rldt": ["eval.episodes=2", "ppo.x=a:b"],
                         "sac": ["eval.episodes=2", "env.chunk_len=4", "ppo.x=a:b"]}


@pytest.mark.parametrize("setting, message", [("sacc:env.chunk_len=4", "unknown method 'sacc'"),
                                              ("eval.episodes", "expected [METHOD:]KEY=VALUE")])
def test_bad_overrides_are_refused(setting, message):
    with pytest.raises(SystemExit, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_overrides([setting], ["sac"])


def test_runs_skips_finished_runs_and_gathers_them(tmp_path):
    """Two methods at a tiny size; a second call with the same budget runs nothing again."""
    command = [
        sys.executable, str(BENCHMARKS / "compare_gym.py"), "--methods", "fpo", "sac", "--seeds", "0",
        "--env-steps", "160", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out"),
        "--set", "env.max_episode_steps=40", "--set", "env.num_envs=2", "--set", "eval.episodes=2",
        "--set", "eval.final_episodes=2", "--set", "eval.every_env_steps=80",
        "--set", "fpo:collector.chunks_per_env=8", "--set", "fpo:ppo.minibatch_size=8",
        "--set", "sac:collector.frames_per_batch=16", "--set", "sac:collector.init_random_env_steps=32",
        "--set", "sac:sac.batch_size=16", "--set", "sac:sac.buffer_size=1000", "--set", "sac:sac.utd_ratio=0.25",
    ]
    first = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    out = tmp_path / "out"
    with open(out / "compare_gym_hopper-v5.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert {row["method"] for row in rows} == {"fpo", "sac"}
    report = json.loads((out / "compare_gym_hopper-v5.json").read_text())
    assert "load average at the runs' starts and ends ranged from" in (out / "compare_gym_hopper-v5.md").read_text()
    for method in ("fpo", "sac"):
        run = report["methods"][method]["per_seed"]["0"]
        assert run["counters"]["env_steps"] >= 160
        assert len(run["load_average"]) == 2
        # the learner's diagnostics at their last logged values, e.g. the losses
        assert {"fpo": "loss_objective", "sac": "loss_qvalue"}[method] in run["last_logged"]
        # the curve starts at 0 env steps and ends with the final evaluation
        curve = [row for row in rows if row["method"] == method]
        assert int(curve[0]["env_steps"]) == 0
        assert float(curve[-1]["return_mean"]) == pytest.approx(run["final"]["mean"], abs=0.01)
    assert "| FPO++ |" in (out / "compare_gym_hopper-v5.md").read_text()
    assert (out / "compare_gym_hopper-v5.png").stat().st_size > 0
    second = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0 and " seed 0: " not in second.stdout
    # the same runs gathered again with a threshold: every run reaches -1e9 at its first evaluation
    gathered = subprocess.run(command + ["--threshold=-1e9"], capture_output=True, text=True,
                              timeout=300)
    assert gathered.returncode == 0 and " seed 0: " not in gathered.stdout
    table = (out / "compare_gym_hopper-v5.md").read_text()
    assert "| env steps to -1e+09 |" in table and "| 0 +- 0 (1/1) |" in table
    assert json.loads((out / "compare_gym_hopper-v5.json").read_text())["methods"]["fpo"][
        "env_steps_to_threshold"] == [0]
    # a larger budget extends both runs from their checkpoints; a smaller one is refused
    budget = command.index("--env-steps") + 1
    extended = subprocess.run(command[:budget] + ["240"] + command[budget + 1:], capture_output=True,
                              text=True, timeout=300)
    assert extended.returncode == 0, extended.stderr[-3000:]
    assert extended.stdout.count("resume=") == 2
    report = json.loads((out / "compare_gym_hopper-v5.json").read_text())
    assert all(report["methods"][m]["per_seed"]["0"]["counters"]["env_steps"] >= 240 for m in ("fpo", "sac"))
    smaller = subprocess.run(command[:budget] + ["80"] + command[budget + 1:], capture_output=True,
                             text=True, timeout=300)
    assert smaller.returncode != 0 and "more than --env-steps 80" in smaller.stderr


def test_a_run_directory_of_other_options_is_not_reused(tmp_path):
    run_dir = tmp_path / "runs" / "compare_gym_hopper-v5" / "sac-seed0"
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text(json.dumps(
        {"command": "python examples/sac_gym.py task=Hopper-v5 seed=0 sac.lr=1e-3 "
                    "collector.total_env_steps=160", "counters": {"env_steps": 160}}))
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "compare_gym.py"), "--methods", "sac", "--seeds", "0",
         "--env-steps", "160", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "not of the options asked for" in result.stderr


def test_metaworld_runs_each_method_with_its_sparse_config(tmp_path):
    """RLDT-Delta and ReinFlow on Meta-World at a tiny size: success rates, the sparse configs."""
    command = [
        sys.executable, str(BENCHMARKS / "compare_gym.py"), "--task", "MetaWorld/PickPlace-v3",
        "--methods", "rldt_delta", "reinflow", "--seeds", "0", "--env-steps", "128",
        "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out"),
        "--set", "env.max_episode_steps=24", "--set", "env.num_envs=2", "--set", "eval.episodes=2",
        "--set", "eval.final_episodes=2", "--set", "eval.every_env_steps=64",
        "--set", "rldt_delta:collector.chunks_per_env=4", "--set", "rldt_delta:schedule.critic_warmup_batches=1",
        "--set", "rldt_delta:schedule.critic_steps=1", "--set", "rldt_delta:schedule.actor_batch_size=4",
        "--set", "rldt_delta:buffer.batch_size=16", "--set", "rldt_delta:critic.hidden_dim=16",
        "--set", "rldt_delta:buffer.slice_len=4",
        "--set", "reinflow:collector.chunks_per_env=8", "--set", "reinflow:ppo.minibatch_size=8",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "out"
    report = json.loads((out / "compare_gym_metaworld-pickplace-v3.json").read_text())
    for method in ("rldt_delta", "reinflow"):
        run = report["methods"][method]["per_seed"]["0"]
        assert 0.0 <= run["final"]["mean"] <= 1.0  # a success rate
    table = (out / "compare_gym_metaworld-pickplace-v3.md").read_text()
    assert "success rate (stochastic)" in table and "| RLDT-Delta |" in table
    delta = json.loads((tmp_path / "runs" / "compare_gym_metaworld-pickplace-v3" / "rldt_delta-seed0"
                        / "summary.json").read_text())
    assert "rldt.kernel=delta" in delta["command"]
    state = torch.load(tmp_path / "runs" / "compare_gym_metaworld-pickplace-v3" / "rldt_delta-seed0"
                       / "checkpoint.pt", weights_only=True)
    assert state["config"]["critic"]["value_estimator"] == "td_lambda"
    assert state["config"]["rldt"]["kernel"] == "delta"


def test_ablation_variants_and_the_last_logged_value(tmp_path):
    ablation = load_script("benchmarks/ablation.py")
    assert ablation.parse_variant("base=") == ("base", [])
    assert ablation.parse_variant("big=a.b=1 c=2") == ("big", ["a.b=1", "c=2"])
    for text, message in [("=a=1", "expected NAME=OVERRIDES"), ("x=a", "'a' is not a KEY=VALUE")]:
        with pytest.raises(SystemExit, match=message):
            ablation.parse_variant(text)
    scalars = tmp_path / "run" / "rldt_gym" / "scalars"
    scalars.mkdir(parents=True)
    (scalars / "q_mean.csv").write_text("100,1.5\n200,2.5\n")
    assert ablation.last_logged(tmp_path / "run", "q_mean") == 2.5
    assert ablation.last_logged(tmp_path / "run", "q_member_gap") is None
    (scalars / "q_member_gap.csv").write_text("")
    compare_gym = load_script("benchmarks/compare_gym.py")
    assert compare_gym.last_logged_scalars(tmp_path / "run") == {"q_mean": 2.5}
    history = [{"env_steps": 0, "mean": 10.0}, {"env_steps": 20, "mean": 30.0},
               {"env_steps": 40, "mean": 20.0}]
    assert ablation.best_evaluation({"history": history}) == {"mean": 30.0, "env_steps": 20}


def test_gym_table_puts_the_tasks_side_by_side(tmp_path):
    def report(seeds, env_steps, finals):
        per_seed = {str(seed): {"start": {"mean": 1000.0}, "final": {"mean": final}}
                    for seed, final in zip(seeds, finals)}
        return {"seeds": seeds, "env_steps": env_steps, "command": "python benchmarks/compare_gym.py",
                "methods": {"rldt": {"start_mean": 1000.0, "final_mean": sum(finals) / len(finals),
                                     "per_seed": per_seed}}}

    (tmp_path / "compare_gym_hopper-v5.json").write_text(json.dumps(report([1, 2], 300, [3000.0, 900.0])))
    (tmp_path / "compare_gym_walker2d-v5.json").write_text(json.dumps(report([1, 2], 300, [1100.0, 1300.0])))
    command = [sys.executable, str(BENCHMARKS / "gym_table.py"), "--tasks", "Hopper-v5", "Walker2d-v5",
               "--results", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    table = (tmp_path / "gym_table.md").read_text()
    # mean, standard deviation of the seeds' finals, seeds above their start
    assert "| RLDT | 1000 -> 1950 +- 1485 (1/2) | 1000 -> 1200 +- 141 (2/2) |" in table
    (tmp_path / "compare_gym_walker2d-v5.json").write_text(json.dumps(report([1, 2], 100, [1100.0, 1300.0])))
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "differ in seeds or env steps" in result.stderr



def test_gym_table_reports_metaworld_in_both_sampling_modes(tmp_path):
    def run(start, final, by_mode):
        record = {"start": {"mean": start, "episodes": 100}, "final": {"mean": final, "episodes": 100},
                  "wall_seconds": 600.0, "start_by_mode": None, "final_by_mode": None}
        if by_mode:
            record["start_by_mode"] = {"stochastic": {"mean": start}, "deterministic": {"mean": 0.9}}
            record["final_by_mode"] = {"stochastic": {"mean": final}, "deterministic": {"mean": 1.0}}
        return record

    def report(methods):
        return {"seeds": [3000, 4000], "env_steps": 500, "command": "python benchmarks/compare_gym.py",
                "methods": {method: {"per_seed": {"3000": run(0.4, finals[0], by_mode),
                                                  "4000": run(0.2, finals[1], by_mode)}}
                            for method, (finals, by_mode) in methods.items()}}

    paired = {"rldt": ([0.8, 0.6], True), "reinflow": ([0.5, 0.1], True)}
    (tmp_path / "compare_gym_metaworld-assembly-v3_heldout.json").write_text(json.dumps(report(paired)))
    (tmp_path / "compare_gym_metaworld-pickplace-v3_heldout.json").write_text(
        json.dumps(report({"rldt": ([0.9, 0.7], True)})))  # ReinFlow missing on this task
    command = [sys.executable, str(BENCHMARKS / "gym_table.py"), "--tasks", "MetaWorld/Assembly-v3",
               "MetaWorld/PickPlace-v3", "--methods", "rldt", "reinflow", "--suffix", "_heldout",
               "--results", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    table = (tmp_path / "gym_table_heldout.md").read_text()
    stochastic, deterministic = table.split("Deterministic:")
    assert "| RLDT | 0.30 -> 0.70 +- 0.14 (2/2) | 0.30 -> 0.80 +- 0.14 (2/2) |" in stochastic
    assert "| ReinFlow | 0.30 -> 0.30 +- 0.28 (1/2) | - |" in stochastic
    assert "| RLDT | 0.90 -> 1.00 +- 0.00 (2/2) | 0.90 -> 1.00 +- 0.00 (2/2) |" in deterministic
    assert "same initial states" in table

    # runs made before both modes were measured: the stochastic headline, no deterministic table
    (tmp_path / "compare_gym_metaworld-pickplace-v3_heldout.json").write_text(
        json.dumps(report({"rldt": ([0.9, 0.7], False)})))
    assert subprocess.run(command, capture_output=True, text=True, timeout=60).returncode == 0
    table = (tmp_path / "gym_table_heldout.md").read_text()
    assert "Deterministic:" in table  # Assembly's runs have both modes
    assert "| RLDT | 0.90 -> 1.00 +- 0.00 (2/2) | - |" in table.split("Deterministic:")[1]
    assert "different episodes" in table

    mixed = [*command[:3], "Hopper-v5", *command[4:]]
    result = subprocess.run(mixed, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "separate tables" in result.stderr
