# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
"""examples/ppo_gym.py (ReinFlow, FPO++) end to end at a tiny size."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from torchrl_rldt.checkpoint import save_ddpm_policy
from torchrl_rldt.envs import NormalizationStats
from torchrl_rldt.modules import DDPMChunkModel, VelocityMLP

from test_rldt_gym import make_base

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "ppo_gym.py"
TINY = [
    "env.num_envs=2", "env.max_episode_steps=40", "collector.chunks_per_env=8",
    "collector.total_env_steps=200", "ppo.epochs=1", "ppo.minibatch_size=8",
    "ppo.critic_hidden=[16]", "ppo.critic_warmup_iterations=1", "eval.every_env_steps=100",
    "eval.episodes=2", "eval.final_episodes=2", "logger.progress_bar=false", "num_threads=1",
]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return make_base(tmp_path_factory.mktemp("base") / "hopper-tiny.pt")


@pytest.fixture(scope="module")
def ddpm_base(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = DDPMChunkModel(VelocityMLP(11, 3, chunk_len=4, hidden_dim=32, num_layers=2), 3, 6,
                           chunk_len=4, low=-1.0, high=1.0)
    return save_ddpm_policy(
        tmp_path_factory.mktemp("base") / "hopper-tiny-ddpm.pt", model, task="Hopper-v5",
        observation_stats=NormalizationStats(torch.zeros(11), torch.ones(11)),
        action_stats=NormalizationStats(torch.zeros(3), torch.ones(3)),
    )


# where each method's fine-tuned network sits in the checkpoint, and its weights in the base file
NETWORKS = {
    "reinflow": ("actor_network_params.flow_actor.model.velocity_network.", "velocity_state_dict"),
    "fpo": ("actor_network_params.model.velocity_network.", "velocity_state_dict"),
    "dppo": ("actor_network_params.model.denoising_network.", "denoising_state_dict"),
}


def run(run_dir: Path, base: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), f"base_checkpoint={base}", f"hydra.run.dir={run_dir}", *TINY,
         *overrides],
        capture_output=True, text=True, timeout=300,
    )


@pytest.mark.parametrize("method", ["reinflow", "fpo", "dppo"])
def test_smoke_trains_the_actor_and_resumes(tmp_path, base, ddpm_base, method):
    run_dir = tmp_path / method
    overrides = [f"method={method}"]
    if method == "dppo":
        base = ddpm_base
        overrides.append("dppo.finetuned_steps=3")  # of its 6 denoising steps
    result = run(run_dir, base, *overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["counters"]["env_steps"] >= 200 and summary["counters"]["iterations"] == 4
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    prefix, weights = NETWORKS[method]
    base_weights = torch.load(base, weights_only=True)[weights]
    # the fine-tuned network moved after the critic warm-up iteration
    moved = [not torch.equal(state["loss"][prefix + name], value)
             for name, value in base_weights.items() if not name.endswith("frequencies")]
    assert any(moved)
    if method == "dppo":  # the frozen copy that denoises the first T - K steps did not
        assert all(torch.equal(state["loss"]["actor_network_params.base_network." + name], value)
                   for name, value in base_weights.items() if not name.endswith("frequencies"))
    assert state["counters"] == summary["counters"]
    # resuming a finished run with a larger budget continues from its counters
    result = run(run_dir, base, *overrides, "collector.total_env_steps=300",
                 f"resume={run_dir / 'checkpoint.pt'}")
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = json.loads((run_dir / "summary.json").read_text())
    assert resumed["counters"]["iterations"] == 6
    assert resumed["history"][: len(summary["history"]) - 1] == summary["history"][:-1]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["method=ppo"], "method must be reinflow, fpo or dppo"),
        (["method=dppo", "dppo.gamma_denoising=0"], "dppo.gamma_denoising must be"),
        (["ppo.actor_lr=-1"], "ppo.actor_lr must be a finite number > 0.0"),
        (["reinflow.max_std=0.05"], "reinflow.max_std must be a finite number >= 0.1"),
    ],
)
def test_bad_input_is_refused_before_any_work(tmp_path, base, overrides, message):
    result = run(tmp_path / "run", base, *overrides)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr[-3000:]
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


@pytest.mark.parametrize("kind", ["multi_sync", "ray"])
def test_collection_in_several_processes(tmp_path, base, kind):
    result = run(tmp_path / "run", base, "method=reinflow", f"collector.kind={kind}",
                 "collector.num_workers=2")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    # the same batches as in one process: one env per worker, 8 chunks each, 4 iterations
    assert summary["counters"]["updates"] > 0 and summary["counters"]["iterations"] == 4


def test_dppo_fine_tunes_at_most_the_base_denoising_steps(tmp_path, ddpm_base):
    result = run(tmp_path / "run", ddpm_base, "method=dppo", "dppo.finetuned_steps=7")
    assert result.returncode != 0
    assert "dppo.finetuned_steps=7 exceeds the 6 denoising steps" in result.stderr, result.stderr[-3000:]
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
