# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from torchrl_rldt.data import (
    D4RL_KEYS,
    action_chunks,
    d4rl_arrays,
    load_d4rl_dataset,
    load_offline_dataset,
    make_offline_replay_buffer,
    save_d4rl_dataset,
)
from torchrl_rldt.envs import EnvPoolEnv


@pytest.fixture(scope="module")
def hopper_transitions():
    """Random-action transitions of 3 Hopper envs, flattened env by env (episodes contiguous)."""
    torch.manual_seed(0)
    env = EnvPoolEnv("Hopper-v5", 3, seed=0)
    rollout = env.rollout(120, break_when_any_done=False)  # [3, 120], several episode ends
    rollout["next", "truncated"][:, -1] = True  # each env's stream ends mid-episode: a cut
    rollout["next", "done"][:, -1] = True
    return rollout.reshape(-1)


class TestD4RLFiles:
    def test_round_trip_through_file_and_replay_buffer(self, hopper_transitions, tmp_path):
        arrays = d4rl_arrays(hopper_transitions)
        assert set(arrays) == set(D4RL_KEYS)
        assert arrays["rewards"].shape == (360,) and arrays["terminals"].dtype == bool
        path = save_d4rl_dataset(tmp_path / "hopper.npz", arrays)
        assert not list(tmp_path.glob("*.tmp"))
        data = load_d4rl_dataset(path)
        assert data.shape == (360,)
        for key in ("observation", "action", ("next", "observation"), ("next", "reward"),
                    ("next", "terminated"), ("next", "truncated"), ("next", "done")):
            torch.testing.assert_close(data[key], hopper_transitions[key].to(data[key].dtype))
        # consecutive rows of an episode chain up: next observation == following observation
        same_episode = ~data["next", "done"][:-1, 0]
        assert same_episode.sum() > 300
        torch.testing.assert_close(
            data["next", "observation"][:-1][same_episode], data["observation"][1:][same_episode]
        )
        assert data["next", "terminated"].sum() > 3  # random Hopper falls: real terminations
        buffer = make_offline_replay_buffer(data, batch_size=32)
        assert len(buffer) == 360
        sample = buffer.sample()
        assert sample.shape == (32,) and sample["next", "reward"].shape == (32, 1)

    def test_bad_files_are_refused_with_the_reason(self, tmp_path):
        with pytest.raises(FileNotFoundError, match="make_dataset.py"):
            load_d4rl_dataset(tmp_path / "missing.npz")
        with pytest.raises(ValueError, match="unknown data set kind 'd4r1'; use 'd4rl:<id>'"):
            load_offline_dataset("d4r1:hopper-medium-v2")
        with pytest.raises(FileNotFoundError, match="make_dataset.py"):
            load_offline_dataset(str(tmp_path / "missing.npz"))
        arrays = {key: np.zeros((4, 2), np.float32) for key in D4RL_KEYS}
        arrays.pop("timeouts")
        np.savez(tmp_path / "partial.npz", **arrays)
        with pytest.raises(KeyError, match="timeouts"):
            load_d4rl_dataset(tmp_path / "partial.npz")
        arrays["timeouts"] = np.zeros(3, bool)
        with pytest.raises(ValueError, match="'timeouts' has 3 rows"):
            save_d4rl_dataset(tmp_path / "ragged.npz", arrays)

    @pytest.mark.parametrize("name, write, reason", [
        ("notes.txt", lambda path: path.write_text("observations, actions"), "not an .npz archive"),
        ("one.npy", lambda path: np.save(path, np.zeros(3)), "it holds one array, not an .npz archive"),
        ("truncated.npz", lambda path: path.write_bytes(b"PK\x03\x04" + b"\0" * 20), "file is not a zip file"),
    ])
    def test_a_file_that_is_not_an_npz_archive_is_refused_by_name(self, tmp_path, name, write, reason):
        path = tmp_path / name
        write(path)
        with pytest.raises(ValueError, match=rf"{path} is not a readable \.npz data set \((?i:{reason})"):
            load_offline_dataset(str(path))

    @pytest.mark.parametrize("key, value, message", [
        ("rewards", np.zeros((4, 3), np.float32), r"'rewards' must have shape \[N\] or \[N, 1\]"),
        ("terminals", np.full(4, 0.5), "'terminals' must be booleans or 0/1"),
        ("observations", np.zeros(4, np.float32), r"'observations' must be a numeric array \[N, dim\]"),
        ("actions", np.array([["a"]] * 4), "'actions' must be a numeric array"),
    ])
    def test_arrays_of_the_wrong_shape_or_type_are_refused(self, tmp_path, key, value, message):
        arrays = {key: np.zeros((4, 2), np.float32) for key in ("observations", "actions",
                                                                  "next_observations")}
        arrays.update(rewards=np.zeros(4, np.float32), terminals=np.zeros(4, bool),
                      timeouts=np.array([0, 0, 0, 1]))  # 0/1 integers are flags too
        assert save_d4rl_dataset(tmp_path / "good.npz", arrays).is_file()
        arrays[key] = value
        if key == "observations":
            arrays["next_observations"] = value
        with pytest.raises(ValueError, match=message):
            save_d4rl_dataset(tmp_path / "bad.npz", arrays)


class TestActionChunks:
    def test_windows_stay_inside_episodes(self, hopper_transitions):
        chunk_len = 4
        chunks = action_chunks(hopper_transitions, chunk_len)
        done = hopper_transitions["next", "done"][:, 0].tolist()
        actions = hopper_transitions["action"]
        expected = [
            i for i in range(len(done) - chunk_len + 1) if not any(done[i:i + chunk_len - 1])
        ]
        assert chunks.shape == (len(expected),)
        torch.testing.assert_close(chunks["observation"], hopper_transitions["observation"][expected])
        torch.testing.assert_close(
            chunks["action"], torch.stack([actions[i:i + chunk_len] for i in expected])
        )

    def test_chunk_len_one_is_every_transition(self, hopper_transitions):
        chunks = action_chunks(hopper_transitions, 1)
        assert chunks.shape == hopper_transitions.shape
        assert chunks["action"].shape == (360, 1, 3)

    def test_invalid_chunk_len(self, hopper_transitions):
        with pytest.raises(ValueError, match="chunk_len must be >= 1"):
            action_chunks(hopper_transitions, 0)
        with pytest.raises(ValueError, match="no transitions"):
            action_chunks(hopper_transitions[:0], 4)
        # episodes of 2 and 3 steps hold no window of 4: an error, not an empty data set
        short = hopper_transitions[:5].clone()
        short["next", "done"] = torch.tensor([0, 1, 0, 0, 1], dtype=torch.bool).unsqueeze(-1)
        with pytest.raises(ValueError, match=r"chunk_len=4 steps \(the longest lasts 3\)"):
            action_chunks(short, 4)


class TestTorchRLOfflineDataSets:
    """TorchRL's D4RL and Minari data sets, read from a local root in TorchRL's stored layout.

    Downloading and converting the hub files is TorchRL's code and needs internet: it is not
    exercised here. What is: that our loader reads what those classes serve.
    """

    def _torchrl_layout(self, transitions):
        data = transitions.select(
            "observation", "action", ("next", "observation"), ("next", "reward"),
            ("next", "terminated"), ("next", "truncated"), ("next", "done"),
        ).clone()
        for key in ("done", "terminated", "truncated"):
            data.set(key, torch.zeros_like(data["next", key]))
        return data

    def test_d4rl_experience_replay_root(self, hopper_transitions, tmp_path):
        self._torchrl_layout(hopper_transitions).memmap(tmp_path / "hopper-medium-v2")
        data = load_offline_dataset("d4rl:hopper-medium-v2", root=tmp_path)
        assert data.shape == (360,)
        torch.testing.assert_close(data["next", "observation"], hopper_transitions["next", "observation"])
        torch.testing.assert_close(data["next", "done"], hopper_transitions["next", "done"])
        assert action_chunks(data, 4).shape[0] > 0

    def test_minari_experience_replay_root(self, hopper_transitions, tmp_path):
        dataset_id = "mujoco/hopper/medium-v0"
        self._torchrl_layout(hopper_transitions).memmap(tmp_path / dataset_id)
        box = {"type": "Box", "dtype": "float32"}
        metadata = {  # the spaces as MinariExperienceReplay stores them after a download
            "observation_space": {**box, "shape": [11], "low": [-1e9] * 11, "high": [1e9] * 11},
            "action_space": {**box, "shape": [3], "low": [-1.0] * 3, "high": [1.0] * 3},
        }
        (tmp_path / dataset_id / "env_metadata.json").write_text(json.dumps(metadata))
        data = load_offline_dataset(f"minari:{dataset_id}", root=tmp_path)
        torch.testing.assert_close(data["action"], hopper_transitions["action"])
        torch.testing.assert_close(data["next", "reward"], hopper_transitions["next", "reward"])


if __name__ == "__main__":
    args, unknown = argparse.ArgumentParser().parse_known_args()
    pytest.main([__file__, "--capture", "no", "--exitfirst"] + unknown)
