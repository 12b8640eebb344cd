# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
"""``patches/torchrl-0.14.1-envpool.patch`` fixes upstream's ``MultiThreadedEnv``.

The patch is applied to a copy of the installed ``torchrl/envs/libs/envpool.py``,
which is imported under another module name: the installed torchrl is untouched.
The checks mirror those of ``TestEnvPoolEnv`` in ``test_envs.py``.
"""
from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
import sys

import pytest
import torch
import torchrl
from conftest import ROOT
from test_envs import _hopper_oracle_errors
from torchrl.collectors import Collector
from torchrl.envs import DoubleToFloat, InitTracker, TransformedEnv
from torchrl.envs.utils import check_env_specs

PATCH = ROOT / "patches" / "torchrl-0.14.1-envpool.patch"
TARGET = "torchrl/envs/libs/envpool.py"
PATCHED_MODULE_NAME = "_torchrl_envpool_patched"


def _apply_patch(patch, directory):
    """Applies a ``-p1`` unified diff to the files under ``directory``.

    Uses ``git apply`` in a throwaway repository (a directory of its own, so that an
    enclosing checkout cannot change how paths are read), or ``patch`` without git.

    Args:
        patch (Path): the patch file.
        directory (Path): the root that the patch's ``a/`` and ``b/`` paths are relative to.

    Returns:
        the name of the tool used, or ``None`` if neither git nor patch is installed.

    Raises:
        AssertionError: if the patch does not apply cleanly.
    """
    if shutil.which("git") is not None:
        subprocess.run(["git", "init", "-q", str(directory)], check=True, capture_output=True)
        command = ["git", "apply", "--verbose", str(patch)]
    elif shutil.which("patch") is not None:
        command = ["patch", "-p1", "--forward", "--batch", "-i", str(patch)]
    else:
        return None
    result = subprocess.run(command, cwd=directory, capture_output=True, text=True)
    assert result.returncode == 0, (
        f"{patch.name} does not apply to torchrl {torchrl.__version__}'s {TARGET} "
        f"({' '.join(command[:2])}):\n{result.stdout}{result.stderr}"
    )
    return command[0]


@pytest.fixture(scope="module")
def upstream():
    """The installed, unpatched ``torchrl.envs.libs.envpool`` module."""
    from torchrl.envs.libs import envpool

    return envpool


@pytest.fixture(scope="module")
def patched(upstream, tmp_path_factory):
    """``torchrl.envs.libs.envpool`` with the patch applied, under another module name."""
    root = tmp_path_factory.mktemp("torchrl")
    target = root / TARGET
    target.parent.mkdir(parents=True)
    shutil.copyfile(upstream.__file__, target)
    if _apply_patch(PATCH, root) is None:
        pytest.skip("neither git nor patch is installed")
    spec = importlib.util.spec_from_file_location(PATCHED_MODULE_NAME, target)
    module = importlib.util.module_from_spec(spec)
    sys.modules[PATCHED_MODULE_NAME] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(PATCHED_MODULE_NAME, None)


@pytest.fixture
def without_gym_and_treevalue(monkeypatch):
    """Makes ``import gym`` and ``import treevalue`` fail, whether they are installed or not."""
    monkeypatch.setitem(sys.modules, "gym", None)
    monkeypatch.setitem(sys.modules, "treevalue", None)


def _hopper(module, num_envs=2, **create_env_kwargs):
    """Builds a ``MultiThreadedEnv`` of envpool's Hopper-v5.

    Args:
        module: the envpool module of torchrl to take ``MultiThreadedEnv`` from.
        num_envs (int): the number of envs. Defaults to 2.
        **create_env_kwargs: passed on to ``envpool.make``; ``seed`` is 0 unless given.

    Returns:
        the env.
    """
    return module.MultiThreadedEnv(
        num_envs, "Hopper-v5", create_env_kwargs={"seed": 0, **create_env_kwargs}
    )


def _assert_real_transitions(data):
    """Checks that every transition of ``data`` is one that Hopper-v5's dynamics produce.

    Args:
        data (TensorDictBase): Hopper transitions of batch size ``[envs, time]``.

    Raises:
        AssertionError: if a replayed transition differs by 1e-4 or more.
    """
    obs_err, rew_err = _hopper_oracle_errors(
        data["observation"].reshape(-1, 11),
        data["action"].reshape(-1, 3),
        data["next", "observation"].reshape(-1, 11),
        data["next", "reward"].reshape(-1),
    )
    assert len(obs_err) > 0.9 * data.numel()
    assert obs_err.max() < 1e-4 and rew_err.max() < 1e-4


class TestUnpatchedUpstream:
    def test_fails_without_legacy_gym(self, upstream, without_gym_and_treevalue):
        # the specs are converted under the legacy gym backend, whose import fails
        # (were gym installed, its conversion registry would not know the gymnasium
        # spaces that envpool>=1 returns)
        with pytest.raises(ImportError, match="gym"):
            _hopper(upstream)

    def test_defects_that_the_patch_removes(self, upstream, patched):
        # the override that records envpool's auto-reset step as a transition
        assert "step_and_maybe_reset" in vars(upstream.MultiThreadedEnvWrapper)
        assert "step_and_maybe_reset" not in vars(patched.MultiThreadedEnvWrapper)
        # reward and done specs of shape [N] (the specs are built under gymnasium here)
        spec_builder = patched.MultiThreadedEnvWrapper._make_specs
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(upstream.MultiThreadedEnvWrapper, "_make_specs", spec_builder)
            env = _hopper(upstream)
        assert env.reward_spec.shape == (2,)
        assert env.full_done_spec["done"].shape == (2,)


class TestPatchedMultiThreadedEnv:
    def test_specs(self, patched, without_gym_and_treevalue):
        env = _hopper(patched)
        check_env_specs(env)
        assert env.batch_size == torch.Size([2])
        assert env.observation_spec["observation"].shape == (2, 11)
        assert env.action_spec.shape == (2, 3)
        assert env.reward_spec.shape == (2, 1)
        for key in ("done", "terminated", "truncated"):
            assert env.full_done_spec[key].shape == (2, 1)
        td = env.rand_step(env.reset())
        assert td["next", "reward"].shape == (2, 1)
        assert td["next", "terminated"].shape == (2, 1)
        env.reset(td["next"].clone().set("_reset", torch.tensor([[True], [False]])))

    def test_dict_observation_task(self, patched, without_gym_and_treevalue):
        # a dm_control task: envpool>=1 returns a dict of arrays, no TreeValue
        env = patched.MultiThreadedEnv(2, "CheetahRun-v1", create_env_kwargs={"seed": 0})
        assert set(env.observation_spec.keys()) == {"position", "velocity"}
        td = env.rand_step(env.reset())["next"].clone()
        velocity = td["velocity"].clone()
        out = env.reset(td.set("_reset", torch.tensor([[True], [False]])))
        assert (out["velocity"][0] != velocity[0]).any()
        assert (out["velocity"][1] == velocity[1]).all()

    def test_no_fake_transition_across_episode_ends(self, patched):
        torch.manual_seed(0)
        rollout = _hopper(patched).rollout(200, break_when_any_done=False)
        done = rollout["next", "done"].squeeze(-1)
        assert done[:, :-1].sum() >= 5, "the rollout should cross several episode ends"
        reward = rollout["next", "reward"].squeeze(-1)
        # envpool's auto-reset step (reward exactly 0) never follows an episode end
        assert (reward[:, 1:][done[:, :-1]] != 0).all()
        assert (reward != 0).all()
        # the terminal observation is not overwritten by the next reset observation
        final = rollout["next", "observation"][:, :-1][done[:, :-1]]
        first = rollout["observation"][:, 1:][done[:, :-1]]
        assert (final != first).any(-1).all()
        # after an end, the episode restarts near the initial pose (z = 1.25)
        assert ((first[:, 0] - 1.25).abs() < 0.01).all()
        # elsewhere next observation t == observation t+1
        continuing = ~done[:, :-1]
        torch.testing.assert_close(
            rollout["next", "observation"][:, :-1][continuing],
            rollout["observation"][:, 1:][continuing],
        )
        # every recorded transition is a real one: gymnasium's Hopper, started from
        # the recorded state, reaches the recorded next state with the recorded reward
        _assert_real_transitions(rollout)

    def test_double_to_float_across_episode_ends(self, patched):
        torch.manual_seed(0)
        env = TransformedEnv(_hopper(patched), DoubleToFloat())
        rollout = env.rollout(200, break_when_any_done=False)
        assert rollout.shape == (2, 200)
        assert rollout["next", "done"].sum() >= 5
        assert rollout["observation"].dtype == torch.float32
        assert rollout["next", "observation"].dtype == torch.float32

    def test_collector_with_init_tracker(self, patched):
        torch.manual_seed(0)
        env = TransformedEnv(_hopper(patched), InitTracker())
        collector = Collector(env, None, frames_per_batch=200, total_frames=400)
        batches = list(collector)
        collector.shutdown()
        assert len(batches) == 2
        data = torch.cat(batches, dim=1)
        assert data["is_init"].shape == (2, 200, 1)
        done = data["next", "done"].squeeze(-1)
        assert done[:, :-1].sum() >= 5
        is_init = data["is_init"].squeeze(-1)
        assert is_init[:, 0].all()
        assert torch.equal(is_init[:, 1:], done[:, :-1])
        assert (data["next", "reward"] != 0).all()
        _assert_real_transitions(data)

    def test_partial_reset(self, patched):
        env = _hopper(patched)
        td = env.reset()
        reset_obs = td["observation"].clone()
        # a partial reset right after a reset leaves the data handed out by the first one alone
        env.reset(td.clone().set("_reset", torch.tensor([[False], [True]])))
        torch.testing.assert_close(td["observation"], reset_obs)
        for _ in range(5):
            td = env.step(td.set("action", torch.full((2, 3), 0.5, dtype=torch.float64)))
            stepped = td
            td = td["next"].clone()
        last_obs = stepped["next", "observation"].clone()
        out = env.reset(td.set("_reset", torch.tensor([[True], [False]])))
        assert out["done"].shape == (2, 1)
        # only env 0 restarted, near the initial pose; env 1 is where it was
        assert (out["observation"][0] != last_obs[0]).any()
        assert (out["observation"][0, 0] - 1.25).abs() < 0.01
        torch.testing.assert_close(out["observation"][1], last_obs[1])
        # the data handed out earlier is not the env's buffer: the reset left it as it was
        torch.testing.assert_close(stepped["next", "observation"], last_obs)
        # and the stepping goes on from there, for both envs
        nxt = env.step(out.set("action", torch.zeros(2, 3, dtype=torch.float64)))["next"]
        obs_err, rew_err = _hopper_oracle_errors(
            out["observation"], out["action"], nxt["observation"], nxt["reward"].squeeze(-1)
        )
        assert obs_err.max() < 1e-4 and rew_err.max() < 1e-4

    def test_terminated_vs_truncated(self, patched):
        # a Hopper standing still until the time limit: truncated, not terminated
        env = _hopper(patched, max_episode_steps=25)
        still = torch.zeros(2, 3, dtype=torch.float64)
        rollout = env.rollout(30, lambda td: td.set("action", still), break_when_any_done=False)
        assert not rollout["next", "done"][:, :24].any()
        assert rollout["next", "truncated"][:, 24].all()
        assert not rollout["next", "terminated"].any()
        # the rollout went on with a reset, not with envpool's auto-reset step
        assert rollout["next", "reward"][:, 25].ne(0).all()
        # a Hopper driven hard falls over: terminated, not truncated
        env = _hopper(patched)
        push = torch.tensor([[1.0, -1.0, 1.0]], dtype=torch.float64).expand(2, 3)
        rollout = env.rollout(100, lambda td: td.set("action", push.clone()))
        assert rollout["next", "terminated"][:, -1].any()
        assert not rollout["next", "truncated"].any()
        torch.testing.assert_close(
            rollout["next", "done"], rollout["next", "terminated"] | rollout["next", "truncated"]
        )


if __name__ == "__main__":
    args, unknown = argparse.ArgumentParser().parse_known_args()
    pytest.main([__file__, "--capture", "no", "--exitfirst"] + unknown)
