# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
"""The run harness: checkpoints it refuses, and what a resumed run gets back."""
from __future__ import annotations

import argparse

import pytest
import torch
from omegaconf import OmegaConf

from torchrl_rldt.checkpoint import save_checkpoint
from torchrl_rldt.harness import TrainingRun, apply_task_config


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
    with pytest.raises(ValueError, match="layout version 1; this torchrl-rldt reads version 2"):
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


if __name__ == "__main__":
    args, unknown = argparse.ArgumentParser().parse_known_args()
    pytest.main([__file__, "--capture", "no", "--exitfirst"] + unknown)
