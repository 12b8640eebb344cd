# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
from __future__ import annotations

import argparse

import gymnasium as gym
import numpy as np
import pytest
import torch
from tensordict import TensorDict
from torchrl.collectors import Collector
from torchrl.data import Composite, Unbounded
from torchrl.envs import Compose, EnvBase, InitTracker, RewardSum, StepCounter, TransformedEnv
from torchrl.envs.utils import check_env_specs

from torchrl_rldt.envs import (
    ActionChunkEnv,
    EnvPoolEnv,
    NormalizationStats,
    PeaksBanditEnv,
    normalization_transforms,
)

GYM_TASKS = {"Hopper-v5": (11, 3), "Walker2d-v5": (17, 6), "HalfCheetah-v5": (17, 6)}


class CounterEnv(EnvBase):
    """Counts steps (observation) and ends env i's episode at step ``lengths[i]``, reward 1 per
    step. It steps every env whatever ``"_step"`` says, and ``done`` is ``count == length``: a
    finished env stepped again reads not done, as batch-locked envs that ignore the mask do."""

    def __init__(self, lengths):
        super().__init__(batch_size=torch.Size([len(lengths)]))
        self.lengths = torch.tensor(lengths).unsqueeze(-1)
        batch = self.batch_size
        self.observation_spec = Composite(observation=Unbounded((*batch, 1)), shape=batch)
        self.action_spec = Unbounded((*batch, 1))
        self.reward_spec = Unbounded((*batch, 1))
        self.count = torch.zeros(*batch, 1)

    def _reset(self, tensordict=None, **kwargs):
        self.count = torch.zeros(*self.batch_size, 1)
        not_done = torch.zeros(*self.batch_size, 1, dtype=torch.bool)
        return TensorDict(observation=self.count.clone(), done=not_done, terminated=not_done.clone(),
                          batch_size=self.batch_size)

    def _step(self, tensordict):
        self.count = self.count + 1
        done = self.count == self.lengths
        return TensorDict(observation=self.count.clone(), reward=torch.ones(*self.batch_size, 1),
                          done=done, terminated=done.clone(), batch_size=self.batch_size)

    def _set_seed(self, seed):
        pass


def _hopper_oracle_errors(observation, action, next_observation, reward):
    """Replays each transition in gymnasium's Hopper-v5 from the recorded state.

    Hopper's dynamics do not depend on the x position that its observation drops,
    so (qpos[1:], qvel) = observation determines the next observation and reward.
    Returns the largest observation and reward mismatch of every transition.
    """
    sim = gym.make("Hopper-v5").unwrapped
    sim.reset(seed=0)
    obs_err, rew_err = [], []
    for o, a, next_o, r in zip(
        observation.double().numpy(),
        action.double().numpy(),
        next_observation.double().numpy(),
        reward.double().numpy(),
    ):
        # the observation clips velocities to +-10: such a state is not recoverable
        if np.abs(o[5:]).max() >= 10:
            continue
        sim.set_state(np.concatenate([[0.0], o[:5]]), o[5:])
        expected_o, expected_r, *_ = sim.step(a)
        obs_err.append(np.abs(expected_o - next_o).max())
        rew_err.append(abs(expected_r - r))
    sim.close()
    return np.asarray(obs_err), np.asarray(rew_err)


class TestEnvPoolEnv:
    @pytest.mark.parametrize("task", sorted(GYM_TASKS))
    def test_specs(self, task):
        obs_dim, act_dim = GYM_TASKS[task]
        env = EnvPoolEnv(task, 3, seed=0)
        check_env_specs(env)
        assert env.batch_size == torch.Size([3])
        assert env.observation_spec["observation"].shape == (3, obs_dim)
        assert env.observation_spec["observation"].dtype == torch.float32
        assert env.action_spec.shape == (3, act_dim)
        assert env.action_spec.dtype == torch.float32
        task_space = gym.make(task).action_space
        torch.testing.assert_close(
            env.action_spec.space.low[0], torch.as_tensor(task_space.low, dtype=torch.float32)
        )
        torch.testing.assert_close(
            env.action_spec.space.high[0], torch.as_tensor(task_space.high, dtype=torch.float32)
        )
        assert env.reward_spec.shape == (3, 1)
        for key in ("done", "terminated", "truncated"):
            assert env.full_done_spec[key].shape == (3, 1)
        td = env.rand_step(env.reset())
        assert td["observation"].dtype == torch.float32
        assert td["next", "reward"].shape == (3, 1)
        assert td["next", "terminated"].shape == (3, 1)

    def test_dict_observation_task(self):
        # a dm_control task: envpool returns a dict of float64 arrays
        env = EnvPoolEnv("CheetahRun-v1", 2, seed=0)
        check_env_specs(env)
        assert set(env.observation_spec.keys()) == {"position", "velocity"}
        assert env.observation_spec["velocity"].dtype == torch.float32

    def test_unknown_task_lists_close_matches(self):
        with pytest.raises(ValueError, match="Close matches: .*Hopper-v5"):
            EnvPoolEnv("Hoper-v5", 2)
        with pytest.raises(ValueError, match="num_envs"):
            EnvPoolEnv("Hopper-v5", 0)

    def test_bad_action_steps_nothing(self):
        env = EnvPoolEnv("Hopper-v5", 2, seed=1)
        reference = EnvPoolEnv("Hopper-v5", 2, seed=1)
        td, reference_td = env.reset(), reference.reset()
        with pytest.raises(ValueError, match=r"shape \(2, 3\)"):
            env.step(td.set("action", torch.zeros(2, 4)))
        with pytest.raises(ValueError, match=r"shape \(2, 3\)"):
            env.step(td.set("action", torch.zeros(2, 3, 1)))
        with pytest.raises(TypeError, match="torch.float32"):
            env.step(td.set("action", torch.zeros(2, 3, dtype=torch.float64)))
        action = torch.full((2, 3), 0.3)
        out = env.step(td.set("action", action))
        expected = reference.step(reference_td.set("action", action))
        # the refused calls left the simulation where it was
        torch.testing.assert_close(out["next", "observation"], expected["next", "observation"])

    def test_step_after_episode_end_needs_reset(self):
        env = EnvPoolEnv("Hopper-v5", 1, seed=0, max_episode_steps=2)
        td = env.reset().set("action", torch.zeros(1, 3))
        td = env.step(td)
        td = env.step(td["next"].clone().set("action", torch.zeros(1, 3)))
        assert td["next", "truncated"].all()
        with pytest.raises(RuntimeError, match="must be reset"):
            env.step(td["next"].clone().set("action", torch.zeros(1, 3)))
        with pytest.raises(RuntimeError, match="must be reset"):
            EnvPoolEnv("Hopper-v5", 1).step(TensorDict(action=torch.zeros(1, 3), batch_size=[1]))

    def test_no_fake_transition_across_episode_ends(self):
        env = EnvPoolEnv("Hopper-v5", 4, seed=3)
        # uniform random actions topple the Hopper in ~10-30 steps
        rollout = env.rollout(250, break_when_any_done=False)
        done = rollout["next", "done"].squeeze(-1)
        assert done.sum() > 20, "the rollout should cross many episode ends"
        reward = rollout["next", "reward"].squeeze(-1)
        assert (reward != 0).all()
        # every recorded transition is a real one: gymnasium's Hopper, started from
        # the recorded state, reaches the recorded next state with the recorded reward
        obs_err, rew_err = _hopper_oracle_errors(
            rollout["observation"].reshape(-1, 11),
            rollout["action"].reshape(-1, 3),
            rollout["next", "observation"].reshape(-1, 11),
            rollout["next", "reward"].reshape(-1),
        )
        assert len(obs_err) > 900
        assert obs_err.max() < 1e-4 and rew_err.max() < 1e-4
        # only the finished envs restart: elsewhere next observation t == observation t+1
        continuing = ~done[:, :-1]
        torch.testing.assert_close(
            rollout["next", "observation"][:, :-1][continuing],
            rollout["observation"][:, 1:][continuing],
        )
        # after an end, the episode restarts near the initial pose (z = 1.25)
        restarted = rollout["observation"][:, 1:][done[:, :-1]]
        assert ((restarted[:, 0] - 1.25).abs() < 0.01).all()
        assert (restarted[:, 1:5].abs() < 0.01).all()

    @pytest.mark.parametrize("info_keys", [(), ("x_velocity",)])
    def test_step_and_maybe_reset_matches_generic_path(self, info_keys):
        # the env's own step-and-reset gives what TorchRL's generic step, step_mdp and
        # partial reset give, on terminations and truncations alike
        def make():
            return EnvPoolEnv("Hopper-v5", 4, seed=5, max_episode_steps=17, info_keys=info_keys)

        fast, generic = make(), make()
        actions = torch.rand(120, 4, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1
        td_fast, td_generic = fast.reset(), generic.reset()
        terminated = truncated = 0
        for action in actions:
            step_fast, td_fast = fast.step_and_maybe_reset(td_fast.set("action", action))
            step_generic, td_generic = EnvBase._step_and_maybe_reset(
                generic, td_generic.set("action", action.clone())
            )
            assert (step_fast == step_generic).all() and (td_fast == td_generic).all()
            assert set(td_fast.keys(True)) == set(td_generic.keys(True))
            terminated += int(step_fast["next", "terminated"].sum())
            truncated += int(step_fast["next", "truncated"].sum())
            # the reset rows replace the root's entries, not the transition's
            assert not td_fast["done"].any()
        assert terminated > 5 and truncated > 5

    def test_terminated_vs_truncated(self):
        # a Hopper driven hard falls over: terminated, not truncated
        env = EnvPoolEnv("Hopper-v5", 2, seed=0)
        td = env.reset()
        push = torch.tensor([[1.0, -1.0, 1.0]]).expand(2, 3).contiguous()
        for _ in range(100):
            td = env.step(td.set("action", push))
            if td["next", "done"].all():
                break
            td = td["next"].clone()
        assert td["next", "terminated"].all() and not td["next", "truncated"].any()
        # a Hopper standing still until the time limit: truncated, not terminated
        env = EnvPoolEnv("Hopper-v5", 2, seed=0, max_episode_steps=25)
        rollout = env.rollout(25, lambda td: td.set("action", torch.zeros(2, 3)))
        assert not rollout["next", "done"][:, :-1].any()
        assert rollout["next", "truncated"][:, -1].all()
        assert not rollout["next", "terminated"].any()

    def test_seeding(self):
        def run(seed, n=60):
            env = EnvPoolEnv("Hopper-v5", 3, seed=seed)
            torch.manual_seed(123)
            return env.rollout(n, break_when_any_done=False)

        a, b, c = run(7), run(7), run(8)
        assert (a == b).all()
        assert not (a["observation"] == c["observation"]).all()
        env = EnvPoolEnv("Hopper-v5", 3, seed=8)
        env.set_seed(7)
        torch.manual_seed(123)
        assert (env.rollout(60, break_when_any_done=False) == a).all()
        # seeds past envpool's int32 range: the constructor and set_seed agree
        big = 2**30 + 7
        first = EnvPoolEnv("Hopper-v5", 3, seed=big).reset()["observation"]
        reseeded = EnvPoolEnv("Hopper-v5", 3, seed=0)
        reseeded.set_seed(big)
        torch.testing.assert_close(reseeded.reset()["observation"], first)
        torch.testing.assert_close(EnvPoolEnv("Hopper-v5", 3, seed=7).reset()["observation"], first)
        assert EnvPoolEnv("Hopper-v5", 3, seed=2**40).reset()["observation"].shape == (3, 11)

    def test_partial_step_mask(self):
        env = EnvPoolEnv("Hopper-v5", 3, seed=0)
        td = env.reset()
        obs0 = td["observation"].clone()
        mask = torch.tensor([True, False, True])
        td = env.step(td.set("action", torch.full((3, 3), 0.5)).set("_step", mask))
        assert (td["next", "observation"][1] == obs0[1]).all()
        assert td["next", "reward"][1].item() == 0.0
        assert (td["next", "observation"][mask] != obs0[mask]).any(-1).all()
        assert (td["next", "reward"][mask] != 0).all()

    def test_transformed_env(self):
        env = TransformedEnv(
            EnvPoolEnv("Hopper-v5", 3, seed=0),
            Compose(StepCounter(), InitTracker(), RewardSum()),
        )
        check_env_specs(env)
        rollout = env.rollout(120, break_when_any_done=False)
        done = rollout["next", "done"].squeeze(-1)
        assert done.any()
        # episode_reward is the running sum of the episode's rewards
        for i in range(3):
            ends = done[i].nonzero().squeeze(-1).tolist()
            start = 0
            for end in ends:
                total = rollout["next", "reward"][i, start : end + 1].sum()
                torch.testing.assert_close(rollout["next", "episode_reward"][i, end, 0], total)
                assert rollout["next", "step_count"][i, end, 0] == end + 1 - start
                if end + 1 < done.shape[1]:
                    assert rollout["is_init"][i, end + 1]
                start = end + 1

    def test_collector(self):
        env = TransformedEnv(
            EnvPoolEnv("Hopper-v5", 4, seed=0),
            Compose(StepCounter(), InitTracker(), RewardSum()),
        )
        collector = Collector(env, None, frames_per_batch=400, total_frames=1200)
        batches = list(collector)
        collector.shutdown()
        assert len(batches) == 3
        data = torch.cat(batches, dim=1)
        assert data.shape == (4, 300)
        done = data["next", "done"].squeeze(-1)
        assert done.sum() > 10
        assert (data["next", "reward"] != 0).all()
        obs_err, rew_err = _hopper_oracle_errors(
            data["observation"].reshape(-1, 11),
            data["action"].reshape(-1, 3),
            data["next", "observation"].reshape(-1, 11),
            data["next", "reward"].reshape(-1),
        )
        assert obs_err.max() < 1e-4 and rew_err.max() < 1e-4
        # the collector's step counts restart at 1 after each reset
        first = data["is_init"].squeeze(-1)
        assert (data["next", "step_count"][first] == 1).all()


class TestActionChunkEnv:
    def test_chunk_equals_single_steps(self):
        H, n_chunks = 4, 30
        check_env_specs(ActionChunkEnv(EnvPoolEnv("Hopper-v5", 3, seed=5), chunk_len=H))
        chunked = ActionChunkEnv(EnvPoolEnv("Hopper-v5", 3, seed=5), chunk_len=H)
        assert chunked.action_spec.shape == (3, H, 3)
        single = EnvPoolEnv("Hopper-v5", 3, seed=5)
        rollout = chunked.rollout(n_chunks, break_when_any_done=False)
        assert rollout.shape == (3, n_chunks)
        assert rollout["next", "reward"].shape == (3, n_chunks, 1)
        # replay the executed actions one step at a time on a same-seed env
        td = single.reset()
        for c in range(n_chunks):
            reward = torch.zeros(3, 1)
            alive = torch.ones(3, dtype=torch.bool)
            steps = torch.zeros(3, dtype=torch.long)
            for k in range(H):
                td.set("action", rollout["action"][:, c, k]).set("_step", alive.clone())
                td = single.step(td)
                reward += td["next", "reward"] * alive.unsqueeze(-1)
                steps += alive
                alive &= ~td["next", "done"].squeeze(-1)
                td = td["next"].clone()
                if not alive.any():
                    break
            nxt = rollout["next"][:, c]
            torch.testing.assert_close(nxt["reward"], reward)
            torch.testing.assert_close(nxt["observation"], td["observation"])
            assert (nxt["chunk_steps"].squeeze(-1) == steps).all()
            assert (nxt["terminated"] == td["terminated"]).all()
            if td["done"].any():
                td = single.reset(td.set("_reset", td["done"].clone()))
        done = rollout["next", "done"].squeeze(-1)
        assert done.any()
        # an episode that ends inside a chunk stops there
        assert (rollout["next", "chunk_steps"][done] < H).any()
        assert (rollout["next", "chunk_steps"][~done] == H).all()

    def test_single_env_with_transforms(self):
        # with one env every episode end finishes the whole batch inside a chunk:
        # the transforms after the chunk must still see that last transition
        obs_stats = NormalizationStats(torch.zeros(11), torch.full((11,), 2.0))
        act_stats = NormalizationStats(torch.zeros(3), torch.full((3,), 0.5))
        env = TransformedEnv(
            ActionChunkEnv(EnvPoolEnv("Hopper-v5", 1, seed=0), chunk_len=4),
            Compose(normalization_transforms(obs_stats, act_stats), InitTracker(), RewardSum()),
        )
        check_env_specs(env)
        rollout = env.rollout(40, break_when_any_done=False)
        done = rollout["next", "done"].squeeze()
        assert done.sum() >= 2
        ends = done.nonzero().squeeze(-1).tolist()
        start = 0
        for end in ends:
            total = rollout["next", "reward"][0, start : end + 1].sum()
            torch.testing.assert_close(rollout["next", "episode_reward"][0, end, 0], total)
            start = end + 1
        # observations are normalised everywhere, the last one of an episode too
        assert (rollout["next", "observation"][..., 0] - 0.625).abs().max() < 0.1

    def test_bad_chunk(self):
        env = ActionChunkEnv(EnvPoolEnv("Hopper-v5", 2, seed=0), chunk_len=4)
        td = env.reset()
        with pytest.raises(ValueError, match="chunk_len"):
            env.step(td.set("action", torch.zeros(2, 3, 3)))
        with pytest.raises(ValueError, match="chunk_len must be a positive int"):
            ActionChunkEnv(EnvPoolEnv("Hopper-v5", 2), chunk_len=0)

    def test_an_env_that_ignores_the_step_mask(self):
        # env 0 ends its episode at the chunk's 2nd step, env 1 at its 4th; CounterEnv keeps
        # stepping env 0 (count 3, 4: done turns False again), the chunk must not see it
        env = ActionChunkEnv(CounterEnv([2, 4]), chunk_len=4)
        td = env.step(env.reset().set("action", torch.zeros(2, 4, 1)))["next"]
        assert td["observation"].squeeze(-1).tolist() == [2.0, 4.0]
        assert td["done"].squeeze(-1).tolist() == [True, True]
        assert td["reward"].squeeze(-1).tolist() == [2.0, 4.0]
        assert td["chunk_steps"].squeeze(-1).tolist() == [2, 4]

    def test_to_moves_the_inner_env(self, monkeypatch):
        inner = EnvPoolEnv("Hopper-v5", 2, seed=0)
        env = ActionChunkEnv(inner, chunk_len=4)
        moved = []
        monkeypatch.setattr(inner, "to", lambda device: moved.append(torch.device(device)) or inner)
        assert env.to("cpu") is env
        assert moved == [torch.device("cpu")]

    def test_collector_one_transition_per_chunk(self):
        env = ActionChunkEnv(EnvPoolEnv("Hopper-v5", 4, seed=0), chunk_len=4)
        collector = Collector(env, None, frames_per_batch=80, total_frames=160)
        data = torch.cat(list(collector), dim=1)
        collector.shutdown()
        assert data.shape == (4, 40)
        assert data["action"].shape == (4, 40, 4, 3)
        assert data["next", "chunk_steps"].sum() > 4 * 40 * 3


class TestPeaksBanditEnv:
    def test_specs_and_peaks_given_as_a_list(self):
        env = PeaksBanditEnv(3, peaks=[[0.0, 0.0], [1.0, 1.0]])
        check_env_specs(env)
        assert env.done_spec.device == env.device
        td = env.reset().set("action", torch.tensor([[[0.0, 0.0]], [[1.0, 1.0]], [[3.0, -3.0]]]))
        reward = env.step(td)["next", "reward"].squeeze(-1)
        assert reward[0] == reward[1] > 1.0 and reward[2] < 1e-6
        assert env.step(td)["next", "done"].all()


class TestNormalization:
    def test_policy_acts_in_normalised_space(self):
        obs_stats = NormalizationStats(torch.linspace(0.0, 1.0, 11), torch.linspace(1.0, 3.0, 11))
        act_stats = NormalizationStats(torch.tensor([0.1, -0.2, 0.0]), torch.tensor([0.5, 0.25, 1.0]))
        def make_env():
            return TransformedEnv(
                EnvPoolEnv("Hopper-v5", 2, seed=4), normalization_transforms(obs_stats, act_stats)
            )

        check_env_specs(make_env())
        env, raw = make_env(), EnvPoolEnv("Hopper-v5", 2, seed=4)
        td, raw_td = env.reset(), raw.reset()
        torch.testing.assert_close(td["observation"], obs_stats.normalize(raw_td["observation"]))
        action = torch.tensor([[1.0, -1.0, 0.5], [0.0, 2.0, -1.0]])
        td = env.step(td.set("action", action))
        raw_td = raw.step(raw_td.set("action", act_stats.denormalize(action)))
        torch.testing.assert_close(
            td["next", "observation"], obs_stats.normalize(raw_td["next", "observation"])
        )
        # the policy's action is kept in normalised space in the recorded data
        torch.testing.assert_close(td["action"], action)
        torch.testing.assert_close(
            env.action_spec.space.high[0], act_stats.normalize(torch.ones(3))
        )

    def test_stats_from_data(self):
        data = torch.randn(1000, 5) * torch.arange(1.0, 6.0) + 3.0
        standard = NormalizationStats.from_data(data)
        normalised = standard.normalize(data)
        torch.testing.assert_close(normalised.mean(0), torch.zeros(5), atol=1e-5, rtol=0)
        torch.testing.assert_close(normalised.std(0), torch.ones(5), atol=1e-5, rtol=0)
        minmax = NormalizationStats.from_data(data, "minmax")
        normalised = minmax.normalize(data)
        torch.testing.assert_close(normalised.amin(0), -torch.ones(5))
        torch.testing.assert_close(normalised.amax(0), torch.ones(5))
        torch.testing.assert_close(minmax.denormalize(normalised), data)
        restored = NormalizationStats.from_state_dict(minmax.state_dict())
        assert (restored.loc == minmax.loc).all() and (restored.scale == minmax.scale).all()
        constant = NormalizationStats.from_data(torch.ones(10, 2))
        assert (constant.scale > 0).all()
        with pytest.raises(ValueError, match="mode"):
            NormalizationStats.from_data(data, "zscore")
        with pytest.raises(ValueError, match="strictly positive"):
            NormalizationStats(torch.zeros(2), torch.tensor([1.0, 0.0]))


if __name__ == "__main__":
    args, unknown = argparse.ArgumentParser().parse_known_args()
    pytest.main([__file__, "--capture", "no", "--exitfirst"] + unknown)
