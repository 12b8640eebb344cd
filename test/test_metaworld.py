# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
"""Meta-World through EnvPool with a sparse success reward: success ends the episode once, a
time-out truncates, and no transition follows an episode end without a reset."""
from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
from tensordict import TensorDict
from torchrl.collectors import Collector
from torchrl.envs import Compose, InitTracker, RewardSum, TransformedEnv

from torchrl_rldt.envs import ActionChunkEnv, EnvPoolEnv, MetaWorldExpert, make_metaworld_env
from torchrl_rldt.envs import evaluate_policy

TASK = "MetaWorld/PickPlace-v3"


@pytest.mark.metaworld_experts
def test_scripted_success_ends_the_episode_with_reward_one_exactly_once():
    env = make_metaworld_env(TASK, num_envs=3, seed=0)
    rollout = env.rollout(500, MetaWorldExpert(TASK), break_when_any_done=False,
                          break_when_all_done=True)
    done = rollout["next", "done"].squeeze(-1)
    first_done = done.float().argmax(1)
    for env_index, end in enumerate(first_done.tolist()):
        assert done[env_index, end]
        episode = rollout[env_index, : end + 1]
        # reward 1 on the success step only, which terminates (no time-out) the episode
        assert episode["next", "reward"].squeeze(-1).tolist() == [0.0] * end + [1.0]
        assert episode["next", "success"][-1].item() == 1.0
        assert (episode["next", "success"][:-1] == 0).all()
        assert episode["next", "terminated"][-1].item() and not episode["next", "truncated"][-1].item()
        assert not episode["next", "done"][:-1].any()
    assert evaluate_policy(env, MetaWorldExpert(TASK), max_steps=500)["return"].tolist() == [1.0] * 3


def test_time_out_truncates_without_terminating():
    env = make_metaworld_env(TASK, num_envs=2, seed=1, max_episode_steps=20)
    still = torch.zeros(2, 4)
    rollout = env.rollout(20, lambda td: td.set("action", still), break_when_any_done=False)
    last = rollout[:, -1]["next"]
    assert last["truncated"].all() and not last["terminated"].any() and last["done"].all()
    assert not rollout[:, :-1]["next", "done"].any()
    assert (rollout["next", "reward"] == 0).all()  # a sparse reward: no success, nothing


@pytest.mark.metaworld_experts
def test_collector_resets_after_success_and_records_no_fake_transition():
    # chunks of 4 expert actions, 4 envs, long enough for several successes per env
    class ChunkExpert(MetaWorldExpert):
        def forward(self, tensordict):
            tensordict = super().forward(tensordict)
            action = tensordict.get("action")
            return tensordict.set("action", action.unsqueeze(-2).expand(*action.shape[:-1], 4, 4))

    env = TransformedEnv(ActionChunkEnv(make_metaworld_env(TASK, num_envs=4, seed=2), chunk_len=4),
                         Compose(InitTracker(), RewardSum()))
    collector = Collector(env, ChunkExpert(TASK), frames_per_batch=4 * 100, total_frames=4 * 100)
    batch = next(iter(collector))
    collector.shutdown()
    done = batch["next", "done"].squeeze(-1)  # [4 envs, 100 chunks]
    terminated = batch["next", "terminated"].squeeze(-1)
    reward = batch["next", "reward"].squeeze(-1)
    assert terminated.sum() >= 4  # the repeated first action of each chunk still succeeds
    # every success is paid once, and only success is paid
    assert torch.equal(reward, terminated.float())
    # the transition after an episode end starts a new episode from a reset
    after = torch.zeros_like(done)
    after[:, 1:] = done[:, :-1]
    assert batch["is_init"].squeeze(-1)[after].all()
    assert torch.equal(batch["next", "episode_reward"].squeeze(-1)[done], reward[done])
    # a chunk that ends in success executed up to the success step only
    steps = batch["next", "chunk_steps"].squeeze(-1)
    assert (steps[~done] == 4).all() and (steps[done] <= 4).all()


@pytest.mark.metaworld_experts
def test_info_keys_are_checked_against_the_task():
    with pytest.raises(ValueError, match="reports no info entries \\['sucess'\\]; it reports"):
        EnvPoolEnv(TASK, 2, seed=0, info_keys=("sucess",))
    with pytest.raises(ValueError, match="MetaWorld/<Task>-v3"):
        make_metaworld_env("Hopper-v5", 2)
    with pytest.raises(ValueError, match="no scripted policy"):
        MetaWorldExpert("MetaWorld/NoSuchTask-v3")


def _expert_noise(expert, observation, steps):
    """The noise ``expert`` adds over ``steps`` calls at the fixed ``observation`` ``[B, 39]``, on
    the action components the noiseless expert keeps well inside the bounds (no clipping)."""
    clean = MetaWorldExpert(TASK)(TensorDict(observation=observation, batch_size=[len(observation)]))
    clean = clean["action"]
    noise = torch.stack([
        expert(TensorDict(observation=observation, batch_size=[len(observation)]))["action"] - clean
        for _ in range(steps)
    ])  # [steps, B, 4]
    return noise[:, clean.abs() < 0.9]  # [steps, components]


@pytest.fixture(scope="module")
def observation():
    return make_metaworld_env(TASK, num_envs=4, seed=0).reset()["observation"]


@pytest.mark.metaworld_experts
def test_expert_noise_defaults_to_the_same_iid_draws(observation):
    noise = _expert_noise(MetaWorldExpert(TASK, noise_std=0.01, seed=3), observation, 400)
    default = _expert_noise(MetaWorldExpert(TASK, noise_std=0.01, noise_correlation=0.0, seed=3),
                            observation, 400)
    assert torch.equal(noise, default)
    # today's draws: noise_std times the generator's standard normals, one [B, 4] block per step
    draws = 0.01 * np.random.default_rng(3).standard_normal((400, 4, 4))
    clean = MetaWorldExpert(TASK)(TensorDict(observation=observation, batch_size=[4]))["action"]
    expected = torch.as_tensor(draws, dtype=torch.float32)[:, clean.abs() < 0.9]
    torch.testing.assert_close(noise, expected, atol=1e-6, rtol=0)
    lag_one = torch.corrcoef(torch.stack([noise[:-1].flatten(), noise[1:].flatten()]))[0, 1]
    assert abs(lag_one) < 0.1


@pytest.mark.metaworld_experts
def test_expert_noise_correlation_is_an_ar1_process_of_the_same_spread(observation):
    noise = _expert_noise(MetaWorldExpert(TASK, noise_std=0.01, noise_correlation=0.9, seed=0),
                          observation, 1500)
    lag_one = torch.corrcoef(torch.stack([noise[:-1].flatten(), noise[1:].flatten()]))[0, 1]
    lag_ten = torch.corrcoef(torch.stack([noise[:-10].flatten(), noise[10:].flatten()]))[0, 1]
    assert 0.85 < lag_one < 0.95 and 0.2 < lag_ten < 0.5  # 0.9 and 0.9 ** 10 = 0.35
    assert 0.008 < noise.std().item() < 0.012  # stationary: each component keeps noise_std
    # each env has a process of its own
    assert abs(torch.corrcoef(noise.T).fill_diagonal_(0).abs().max()) < 0.35


@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5])
def test_expert_refuses_a_noise_correlation_outside_zero_one(value):
    with pytest.raises(ValueError, match="noise_correlation must be in \\[0, 1\\)"):
        MetaWorldExpert(TASK, noise_std=0.1, noise_correlation=value)


if __name__ == "__main__":
    args, unknown = argparse.ArgumentParser().parse_known_args()
    pytest.main([__file__, "--capture", "no", "--exitfirst"] + unknown)


@pytest.mark.metaworld_experts
def test_record_demos_writes_a_loadable_data_set_and_its_manifest(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    from torchrl_rldt.data import load_offline_dataset

    script = Path(__file__).resolve().parents[1] / "examples" / "record_demos.py"
    result = subprocess.run(
        [sys.executable, str(script), f"hydra.run.dir={tmp_path / 'run'}", f"out_dir={tmp_path}",
         "num_envs=4", "num_episodes=6", "noise_std=0.7", "keep=all"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((tmp_path / "metaworld-pickplace-v3-demos.json").read_text())
    data = load_offline_dataset(str(tmp_path / "metaworld-pickplace-v3-demos.npz"))
    assert data.shape[0] == manifest["num_transitions"] and manifest["num_episodes"] == 6
    terminated, truncated = data["next", "terminated"], data["next", "truncated"]
    # every kept episode ends once: at success (reward 1) or at the time limit (a failure)
    assert int(terminated.sum() + truncated.sum()) == 6
    assert torch.equal(data["next", "reward"].squeeze(-1) == 1, terminated.squeeze(-1))
    assert manifest["kept_success_rate"] == pytest.approx(terminated.float().sum().item() / 6)
    assert manifest["command"].startswith("python examples/record_demos.py ")
    assert manifest["expert"]["noise_correlation"] == 0.0


def test_record_demos_refuses_a_noise_correlation_of_one(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "examples" / "record_demos.py"
    result = subprocess.run(
        [sys.executable, str(script), f"hydra.run.dir={tmp_path / 'run'}", f"out_dir={tmp_path}",
         "noise_correlation=1.0"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0 and "noise_correlation must be < 1" in result.stderr
    assert not list(tmp_path.glob("*.npz"))
