# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
"""RLDT end to end on the two-peak bandit of ``examples/bandit_2d.py``, at a tiny budget."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import load_script
from hydra import compose, initialize_config_dir

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def bandit_2d():
    return load_script("examples/bandit_2d.py")


def tiny_config(*overrides):
    with initialize_config_dir(config_dir=str(EXAMPLES / "config"), version_base="1.3"):
        return compose(
            config_name="bandit_2d",
            # A small budget: fewer pulls and iterations, a larger actor step and a looser
            # trust region than the example's defaults.
            overrides=["num_envs=128", "base.steps=400", "rldt.iterations=20", "rldt.batch_size=128",
                       "rldt.actor_lr=1e-2", "rldt.reference_coeff=0.05", "eval.samples=2000",
                       *overrides],
        )


def test_rldt_raises_bandit_reward_and_keeps_both_peaks(bandit_2d):
    cfg = tiny_config()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    device = torch.device("cpu")
    env = bandit_2d.PeaksBanditEnv(1)
    base = bandit_2d.pretrain_base(cfg, device)
    before, _ = bandit_2d.evaluate(base, env, cfg)
    torch.manual_seed(1)
    after, _ = bandit_2d.evaluate(bandit_2d.finetune(base, "rbf", cfg, device), env, cfg)
    # The wide base puts only a few percent of its samples near each peak.
    assert before["mean_reward"] < 0.12
    assert after["mean_reward"] > before["mean_reward"] + 0.3, (before, after)
    # Mass stays near both peaks rather than collapsing onto one.
    share = torch.tensor(after["share_near_each_peak"])
    assert (share > 0.15).all(), (before, after)
