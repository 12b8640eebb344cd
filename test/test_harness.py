# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
"""The run harness: checkpoints it refuses, and what a resumed run gets back."""
from __future__ import annotations

import argparse

import pytest
import torch
from omegaconf import OmegaConf
from tensordict import TensorDict

from torchrl_rldt.checkpoint.training import CHECKPOINT_VERSION
from torchrl_rldt.checkpoint import save_checkpoint
from torchrl_rldt.trainers import RewardScale, TrainingRun, apply_task_config, env_seed


def config(task="Hopper-v5"):
    return OmegaConf.create({
        "task": task, "seed": 0, "device": "cpu", "env": {"max_episode_steps": 100},
        "eval": {"every_env_steps": 10},
        "logger": {"backend": None, "progress_bar": False},
    })


def test_resume_restores_modules_counters_extra_rng_and_wall_clock(tmp_path):
    run = TrainingRun("demo", config(), output_dir=tmp_path, counters={"env_steps": 0, "updates": 0})
    net = torch.nn.Linear(3, 2)
    run.track(net=net)
    with run.loop(total_env_steps=10, description="demo"):
        run.counters["env_steps"] += 10
        run.extra["reward_scale"] = 2.5
    path = run.save()
    expected_draw = torch.rand(3)  # the draw that follows the saved RNG state
    resumed = TrainingRun("demo", config(), output_dir=tmp_path / "unused", resume=path)
    other = torch.nn.Linear(3, 2)
    assert resumed.track(net=other)
    assert torch.equal(other.weight, net.weight)
    assert resumed.counters == {"env_steps": 10, "updates": 0}
    assert resumed.extra == {"reward_scale": 2.5}
    assert torch.equal(torch.rand(3), expected_draw)
    assert resumed.run_dir == tmp_path
    # the loop's wall-clock goes on from where the saved run stopped, not from 0
    assert resumed.wall_seconds == pytest.approx(torch.load(path, weights_only=True)["wall_seconds"])
    assert resumed.wall_seconds > 0


def test_refuses_another_example_another_task_and_older_layouts(tmp_path):
    path = TrainingRun("demo", config(), output_dir=tmp_path).save()
    with pytest.raises(ValueError, match="is not a torchrl_rldt.other checkpoint"):
        TrainingRun("other", config(), output_dir=tmp_path, resume=path)
    with pytest.raises(ValueError, match="task=Hopper-v5; this run has task=Walker2d-v5"):
        TrainingRun("demo", config("Walker2d-v5"), output_dir=tmp_path, resume=path)
    old = tmp_path / "old.pt"
    save_checkpoint({"format": "torchrl_rldt.demo", "task": "Hopper-v5", "counters": {}}, old)
    with pytest.raises(ValueError, match=f"layout version 1; this torchrl-rldt reads version {CHECKPOINT_VERSION}"):
        TrainingRun("demo", config(), output_dir=tmp_path, resume=old)
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        TrainingRun("demo", config(), output_dir=tmp_path, resume=tmp_path / "missing.pt")


def test_non_finite_values_stop_the_run_with_the_last_checkpoint(tmp_path, caplog):
    run = TrainingRun("demo", config(), output_dir=tmp_path)
    run.save()
    with pytest.raises(SystemExit) as stop:
        with run.loop(total_env_steps=10, description="demo"):
            run.check_finite("the critic loss", torch.tensor(float("nan")))
    assert stop.value.code == 1
    assert "the critic loss is not finite at 0 env steps" in caplog.text
    assert f"resume={tmp_path / 'checkpoint.pt'}" in caplog.text


def test_task_config_sets_its_values_unless_the_command_line_does(tmp_path):
    def config():
        return OmegaConf.create({"task": "HalfCheetah-v5", "seed": 0,
                                 "schedule": {"reanchor_every": 32, "steps": 1, "lr": 1.0}})

    path = tmp_path / "halfcheetah-v5.yaml"
    path.write_text("schedule:\n  reanchor_every: null\n  steps: 2\n  lr: 0.5\n")
    cfg = config()
    assert apply_task_config(cfg, path, ["seed=3", "+schedule.steps=5", "~schedule.lr"]) == [
        "schedule.reanchor_every=None"]
    assert cfg.schedule == {"reanchor_every": None, "steps": 1, "lr": 1.0}
    cfg = config()
    assert apply_task_config(cfg, tmp_path / "walker2d-v5.yaml", []) == []  # no file: no change
    assert cfg == config()
    path.write_text("schedule:\n  reanchor_evry: null\n")
    with pytest.raises(KeyError, match="sets 'schedule.reanchor_evry', which the config does not have"):
        apply_task_config(config(), path, [])



def test_a_resumed_csv_log_holds_each_step_once(tmp_path):
    cfg = config()
    cfg.logger.backend = "csv"
    run = TrainingRun("demo", cfg, output_dir=tmp_path)
    with run.loop(total_env_steps=30, description="demo"):
        for value in (1.0, 2.0):
            run.counters["env_steps"] += 10
            run.log({"loss": value}, 10)
        run.save()  # at 20 env steps
        run.counters["env_steps"] += 10
        run.log({"loss": 3.0}, 10)  # 30: logged, then the process is killed
    scalars = tmp_path / "demo" / "scalars" / "loss.csv"
    with open(scalars, "a") as handle:
        handle.write("4")  # a row the kill tore
    resumed = TrainingRun("demo", cfg, output_dir=tmp_path / "unused", resume=tmp_path / "checkpoint.pt")
    with resumed.loop(total_env_steps=30, description="demo"):
        resumed.counters["env_steps"] += 10
        resumed.log({"loss": 3.5}, 10)
    assert scalars.read_text().splitlines() == ["10,1.0", "20,2.0", "30,3.5"]


def test_a_kill_in_the_final_evaluation_loses_no_training_and_it_runs_once(tmp_path, monkeypatch):
    def finished_run(resume=None):
        run = TrainingRun("demo", config(), output_dir=tmp_path, resume=resume)
        if resume is None:
            run.extra["base_returns"] = {"mean": 1.0, "std": 0.0, "episodes": 2}
            run.counters["env_steps"] = 100  # the whole budget trained, nothing saved yet
        return run

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    run = finished_run()
    monkeypatch.setattr(run, "evaluate_in_both_modes", killed)
    with pytest.raises(KeyboardInterrupt):
        run.finish(None, None, chunk_len=1, title="demo")
    checkpoint = tmp_path / "checkpoint.pt"
    assert torch.load(checkpoint, weights_only=True)["counters"]["env_steps"] == 100

    resumed = finished_run(resume=checkpoint)
    evaluations = []

    def evaluate_in_both_modes(*args, **kwargs):
        returns = {"mean": 2.0, "std": 0.5, "episodes": 2}
        evaluations.append(returns)
        resumed.history.append({"env_steps": resumed.counters["env_steps"], **returns})
        return {"deterministic": returns, "stochastic": {"mean": 1.5, "std": 0.5, "episodes": 2}}

    monkeypatch.setattr(resumed, "evaluate_in_both_modes", evaluate_in_both_modes)
    final = {"mean": 2.0, "std": 0.5, "episodes": 2}
    assert resumed.finish(None, None, chunk_len=1, title="demo")["final"] == final
    # killed again before the summary was read: the saved final evaluation is not run again
    again = finished_run(resume=checkpoint)
    monkeypatch.setattr(again, "evaluate_in_both_modes", killed)
    report = again.finish(None, None, chunk_len=1, title="demo")
    assert report["final"] == final and len(evaluations) == 1
    assert report["final_by_mode"]["stochastic"]["mean"] == 1.5
    assert [entry["env_steps"] for entry in report["history"]] == [100]


def test_a_resume_with_another_config_is_refused(tmp_path, caplog):
    cfg = config()
    cfg.optim = {"actor_lr": 1e-4}
    path = TrainingRun("demo", cfg, output_dir=tmp_path).save()
    changed = config()
    changed.optim = {"actor_lr": 3e-4}
    with pytest.raises(ValueError, match="optim.actor_lr: 0.0001 in the checkpoint, 0.0003 now"):
        TrainingRun("demo", changed, output_dir=tmp_path, resume=path)
    # the budget, the device and what is reported may change; a key the checkpoint predates warns
    free = config()
    free.optim = {"actor_lr": 1e-4}
    free.logger.progress_bar = True
    free.num_threads = 2
    free.critic = {"hidden_dim": 256}
    TrainingRun("demo", free, output_dir=tmp_path, resume=path)
    assert "predates the config keys critic.hidden_dim" in caplog.text


def test_checkpoint_errors_say_what_to_pass(tmp_path):
    with pytest.raises(FileNotFoundError, match="is a directory; resume= takes the checkpoint file"):
        TrainingRun("demo", config(), output_dir=tmp_path, resume=tmp_path)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot be read as a checkpoint"):
        TrainingRun("demo", config(), output_dir=tmp_path, resume=garbage)
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(2), tensor)
    with pytest.raises(ValueError, match="found 'Tensor'"):
        TrainingRun("demo", config(), output_dir=tmp_path, resume=tensor)
    path = TrainingRun("sac_gym", config(), output_dir=tmp_path).save()
    with pytest.raises(ValueError, match="written by examples/sac_gym.py"):
        TrainingRun("demo", config(), output_dir=tmp_path, resume=path)
    resumed = TrainingRun("sac_gym", config(), output_dir=tmp_path, resume=path)
    with pytest.raises(KeyError, match="holds no state for 'critic'"):
        resumed.track(critic=torch.nn.Linear(2, 2))


def test_sigterm_stops_after_the_batch_as_ctrl_c(tmp_path):
    import os
    import signal

    before = signal.getsignal(signal.SIGTERM)
    run = TrainingRun("demo", config(), output_dir=tmp_path)
    with run.loop(total_env_steps=10, description="demo"):
        os.kill(os.getpid(), signal.SIGTERM)
        assert run.stop_requested
    assert signal.getsignal(signal.SIGTERM) == before


def test_one_episode_has_no_spread():
    from torchrl_rldt.envs import PeaksBanditEnv
    from torchrl_rldt.envs import episode_returns

    class Origin(torch.nn.Module):
        def forward(self, tensordict):
            return tensordict.set("action", torch.zeros(1, 1, 2))

    returns = episode_returns(PeaksBanditEnv(1), Origin(), max_env_steps=1, chunk_len=1)
    assert returns["episodes"] == 1 and returns["std"] == 0.0


def test_resumed_training_envs_never_start_from_an_evaluation_s_states(tmp_path):
    # pools of n envs seeded s use the seeds s, ..., s + n - 1
    seed, train_envs, eval_envs, final_envs = 1, 64, 20, 100
    evaluation = set(range(env_seed(seed, "eval"), env_seed(seed, "eval") + eval_envs))
    evaluation |= set(range(env_seed(seed, "final"), env_seed(seed, "final") + final_envs))
    assert len(evaluation) == eval_envs + final_envs
    for env_steps in range(0, 500_000, 16):
        start = env_seed(seed, "train", env_steps)
        assert evaluation.isdisjoint(range(start, start + train_envs)), env_steps
    assert env_seed(seed, "train") == seed  # a fresh run's training envs are seeded as the run
    assert env_seed(seed, "train", 20_000) not in range(seed, seed + train_envs)  # no replay

    run = TrainingRun("demo", config(), output_dir=tmp_path)
    run.counters["env_steps"] += 20_000
    resumed = TrainingRun("demo", config(), output_dir=tmp_path / "unused", resume=run.save())
    assert resumed.env_seed("train") == env_seed(0, "train", 20_000)
    assert (resumed.env_seed("eval"), resumed.env_seed("final")) == (env_seed(0, "eval"), env_seed(0, "final"))
    with pytest.raises(ValueError, match="'test' is not one of"):
        env_seed(seed, "test")


def test_collected_stops_at_the_budget_and_a_finished_run_collects_nothing(tmp_path):
    drawn = []

    def collector():
        for index in range(100):
            drawn.append(index)
            yield TensorDict({"observation": torch.full((10, 3), float(index))}, [10])

    run = TrainingRun("demo", config(), output_dir=tmp_path)
    with run.loop(total_env_steps=30, description="demo"):
        for _ in run.collected(collector()):
            run.counters["env_steps"] += 10
    assert drawn == [0, 1, 2] and run.counters["env_steps"] == 30
    resumed = TrainingRun("demo", config(), output_dir=tmp_path / "unused", resume=run.save())
    drawn.clear()
    with resumed.loop(total_env_steps=30, description="demo"):
        assert list(resumed.collected(collector())) == [] and drawn == []
    # a larger budget on resume collects the rest
    with resumed.loop(total_env_steps=50, description="demo"):
        for _ in resumed.collected(collector()):
            resumed.counters["env_steps"] += 10
    assert resumed.counters["env_steps"] == 50


def test_recorded_data_never_starts_from_a_run_s_evaluation_states():
    """make_dataset.py's recording envs (data seed 0, up to 64 envs) share no seed with the
    evaluation envs of a run at any of the tuning or held-out seeds (the data were once recorded
    on seed + 20000, the final evaluation's seeds)."""
    recorded = set(range(env_seed(0, "record"), env_seed(0, "record") + 64))
    for seed in (0, 1, 1000, 2000, 3000, 4000, 5000):
        for role, envs in (("eval", 50), ("final", 100), ("train", 64)):
            assert recorded.isdisjoint(range(env_seed(seed, role), env_seed(seed, role) + envs)), (seed, role)


def test_periodic_evaluation_outside_the_loop(tmp_path):
    """The schedule of evaluations exists from construction (it was set only by loop())."""
    run = TrainingRun("demo", config(), output_dir=tmp_path)
    assert run.evaluate_periodically(None, None, chunk_len=1) is None  # before the first due point


def test_reward_scale_updates_on_its_period_and_resumes_from_its_state():
    state = {}
    scale = RewardScale(0.5, every_batches=2, state=state)
    assert scale(torch.tensor([3.0])).item() == 3.0  # nothing collected: unscaled
    assert scale.update(torch.tensor([2.0, -2.0])) == 2.0  # the first batch sets it
    assert scale.update(torch.tensor([4.0])) == 0.5 * 2.0 + 0.5 * 4.0  # batch 2: the pending mean
    assert scale.update(torch.tensor([8.0])) == 3.0  # batch 3: pending, not yet applied
    resumed = RewardScale(0.5, every_batches=2, state=dict(state))  # e.g. run.extra after a resume
    assert resumed.update(torch.tensor([0.0])) == 0.5 * 3.0 + 0.5 * (8.0 + 0.0) / 2
    assert RewardScale(None).update(torch.tensor([5.0])) is None
    with pytest.raises(ValueError, match="rate must be in"):
        RewardScale(0.0)
    with pytest.raises(ValueError, match="every_batches must be an integer >= 1"):
        RewardScale(0.1, every_batches=0)


if __name__ == "__main__":
    args, unknown = argparse.ArgumentParser().parse_known_args()
    pytest.main([__file__, "--capture", "no", "--exitfirst"] + unknown)
