# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
"""examples/sac_gym.py (SAC from scratch) end to end at a tiny size."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "sac_gym.py"
TINY = [
    "env.num_envs=2", "env.max_episode_steps=40", "collector.frames_per_batch=16",
    "collector.init_random_env_steps=32", "collector.total_env_steps=128", "sac.batch_size=16",
    "sac.buffer_size=1000", "sac.hidden_sizes=[16,16]", "sac.utd_ratio=0.25",
    "eval.every_env_steps=64", "eval.episodes=2", "eval.final_episodes=2",
    "checkpoint.every_env_steps=64", "logger.progress_bar=false",
]


def run(run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), f"hydra.run.dir={run_dir}", *TINY, *overrides],
                          capture_output=True, text=True, timeout=300)


def test_collection_in_several_processes(tmp_path):
    result = run(tmp_path / "run", "env.chunk_len=4", "collector.kind=multi_sync", "collector.num_workers=2")
    assert result.returncode == 0, result.stderr[-3000:]
    counters = json.loads((tmp_path / "run" / "summary.json").read_text())["counters"]
    assert counters["env_steps"] >= 128 and counters["updates"] > 0
    assert counters["frames"] % 16 == 0  # whole batches of collector.frames_per_batch chunks


@pytest.mark.parametrize("chunk_len", [1, 4])
def test_smoke_trains_and_resumes(tmp_path, chunk_len):
    run_dir = tmp_path / f"chunk{chunk_len}"
    result = run(run_dir, f"env.chunk_len={chunk_len}")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    counters = summary["counters"]
    assert counters["env_steps"] >= 128 and counters["frames"] * chunk_len >= counters["env_steps"]
    assert counters["updates"] > 0
    assert [point["env_steps"] for point in summary["history"]][0] == 0
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert state["counters"] == counters and state["chunk_len"] == chunk_len
    # SAC's automatic target entropy is minus the action dimensions of one env (Hopper: 3 per
    # action, H x 3 per chunk), however many envs the action spec was taken from
    assert state["loss"]["_target_entropy"].item() == -3 * chunk_len
    # resuming with a larger budget continues from the counters and the saved replay buffer
    result = run(run_dir, f"env.chunk_len={chunk_len}", "collector.total_env_steps=192",
                 f"resume={run_dir / 'checkpoint.pt'}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"({counters['frames']} transitions in the buffer)" in result.stdout
    resumed = json.loads((run_dir / "summary.json").read_text())
    assert resumed["counters"]["env_steps"] >= 192
    assert resumed["counters"]["updates"] > counters["updates"]
    assert resumed["history"][: len(summary["history"]) - 1] == summary["history"][:-1]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["sac.lr=0"], "sac.lr must be a finite number > 0.0"),
        (["sac.hidden_sizes=[16,32]"], "sac.hidden_sizes needs equal sizes"),
        (["task=Hoper-v5"], "Hopper-v5"),
    ],
)
def test_bad_input_is_refused_before_any_work(tmp_path, overrides, message):
    result = run(tmp_path / "run", *overrides)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr[-3000:]
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
