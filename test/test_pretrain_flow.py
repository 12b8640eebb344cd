# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
"""examples/pretrain_flow.py end to end at a tiny size: a flow base and a DDPM base."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensordict import TensorDict
from torchrl.envs.utils import ExplorationType, set_exploration_type

from torchrl_rldt.checkpoint import load_ddpm_policy, load_flow_policy
from torchrl_rldt.modules import DPPOActor

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "pretrain_flow.py"
TINY = ["train.steps=20", "train.eval_every=0", "train.batch_size=16", "eval.final_episodes=2",
        "eval.max_env_steps=40", "model.hidden_dim=16", "model.num_layers=2", "num_threads=1"]


def pretrain(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "task=Hopper-v5", f"out.checkpoint={tmp_path / 'base.pt'}",
         f"out.manifest={tmp_path / 'manifest.json'}", f"hydra.run.dir={tmp_path / 'run'}", *TINY,
         *overrides],
        capture_output=True, text=True, timeout=300,
    )


@pytest.mark.parametrize("policy", ["flow", "ddpm"])
def test_pretrains_a_loadable_base_and_records_it(tmp_path, policy):
    result = pretrain(tmp_path, f"policy={policy}", "ddpm.num_steps=5")
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    entry = manifest["Hopper-v5"] if policy == "flow" else manifest["ddpm"]["Hopper-v5"]
    assert list(manifest) == (["Hopper-v5"] if policy == "flow" else ["ddpm"])
    assert entry["returns"]["deterministic"]["episodes"] == 2 and entry["train_steps"] == 20
    assert entry["command"].startswith("python examples/pretrain_flow.py task=Hopper-v5")
    assert f"policy={policy}" in entry["command"]
    observation = TensorDict(observation=torch.randn(3, 11), batch_size=[3])
    if policy == "flow":
        loaded = load_flow_policy(tmp_path / "base.pt", task="Hopper-v5", chunk_len=4)
        assert loaded.actor.model.num_steps == 8 and "euler_steps" in entry
        actor = loaded.actor
    else:
        loaded = load_ddpm_policy(tmp_path / "base.pt", task="Hopper-v5", chunk_len=4)
        assert loaded.model.num_steps == 5 and entry["denoising_steps"] == 5
        actor = DPPOActor(loaded.model, finetuned_steps=5)
    with set_exploration_type(ExplorationType.RANDOM):
        assert actor(observation)["action"].shape == (3, 4, 3)


def test_unknown_policy_is_refused(tmp_path):
    result = pretrain(tmp_path, "policy=gaussian")
    assert result.returncode != 0 and "policy must be flow or ddpm" in result.stderr
    assert not (tmp_path / "base.pt").exists()


def test_data_given_as_a_file_is_refused_with_its_spelling(tmp_path):
    result = pretrain(tmp_path, "data=data/hopper-v5-medium.npz")
    assert result.returncode != 0
    assert "pass the file as data.source=data/hopper-v5-medium.npz" in result.stderr, result.stderr[-3000:]


@pytest.mark.parametrize("content", [b"", b"{not json", b"[1, 2]"])
def test_a_broken_manifest_is_refused_before_the_training(tmp_path, content):
    (tmp_path / "manifest.json").write_bytes(content)
    result = pretrain(tmp_path)
    assert result.returncode != 0
    assert f"{tmp_path / 'manifest.json'} is not a readable manifest" in result.stderr, result.stderr[-3000:]
    assert not (tmp_path / "base.pt").exists()
    assert (tmp_path / "manifest.json").read_bytes() == content
