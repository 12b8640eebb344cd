# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
from __future__ import annotations

import argparse

import pytest
import torch
from tensordict import TensorDict
from torchrl.envs.utils import ExplorationType, set_exploration_type

from torchrl.data import LazyTensorStorage, ReplayBuffer

from torchrl_rldt.checkpoint import (
    atomic_save,
    load_checkpoint_buffer,
    load_ddpm_policy,
    load_flow_policy,
    save_checkpoint,
    save_ddpm_policy,
    save_flow_policy,
)
from torchrl_rldt.envs import NormalizationStats
from torchrl_rldt.modules import DDPMChunkModel, DPPOActor, FlowActor, FlowModel, VelocityMLP

OBS, ACT, H = 11, 3, 4


def make_policy_file(path, task="Hopper-v5"):
    network = VelocityMLP(OBS, ACT, chunk_len=H, hidden_dim=32, num_layers=2, activation=torch.nn.Mish)
    actor = FlowActor(FlowModel(network, ACT, 6, chunk_len=H, low=-torch.ones(ACT), high=torch.ones(ACT)))
    save_flow_policy(
        path,
        actor,
        task=task,
        observation_stats=NormalizationStats(torch.randn(OBS), torch.rand(OBS) + 0.5),
        action_stats=NormalizationStats(torch.zeros(ACT), torch.ones(ACT)),
        metadata={"returns": {"deterministic": {"mean": 1234.5}}},
    )
    return actor


class TestFlowPolicyCheckpoint:
    def test_round_trip_acts_identically(self, tmp_path):
        path = tmp_path / "policy.pt"
        actor = make_policy_file(path)
        raw = torch.load(path, weights_only=True)  # nothing but weights-only types inside
        assert raw["task"] == "Hopper-v5"
        policy = load_flow_policy(path, task="Hopper-v5", observation_dim=OBS, action_dim=ACT,
                                  chunk_len=H)
        assert policy.actor.model.num_steps == 6 and isinstance(
            policy.actor.model.velocity_network.activation, torch.nn.Mish)
        assert policy.metadata["returns"]["deterministic"]["mean"] == 1234.5
        obs = TensorDict(observation=torch.randn(5, OBS), batch_size=[5])
        with set_exploration_type(ExplorationType.DETERMINISTIC):
            torch.testing.assert_close(policy.actor(obs.clone())["action"], actor(obs.clone())["action"])
        transforms = policy.env_transforms()
        assert len(transforms) == 2

    @pytest.mark.parametrize(
        "expectation, message",
        [
            ({"task": "Walker2d-v5"}, "task 'Hopper-v5', but 'Walker2d-v5'"),
            ({"observation_dim": 17}, "observation_dim 11, but 17"),
            ({"action_dim": 6}, "action_dim 3, but 6"),
            ({"chunk_len": 8}, "chunk_len 4, but 8"),
        ],
    )
    def test_mismatch_names_the_field(self, tmp_path, expectation, message):
        make_policy_file(tmp_path / "policy.pt")
        with pytest.raises(ValueError, match=message):
            load_flow_policy(tmp_path / "policy.pt", **expectation)

    def test_missing_and_foreign_files(self, tmp_path):
        with pytest.raises(FileNotFoundError, match="pretrain_flow.py"):
            load_flow_policy(tmp_path / "nope.pt")
        torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
        with pytest.raises(ValueError, match="not a torchrl-rldt flow-policy checkpoint"):
            load_flow_policy(tmp_path / "other.pt")
        torch.save(torch.nn.Linear(2, 2), tmp_path / "pickled.pt")  # a pickled module
        with pytest.raises(ValueError, match="weights_only"):
            load_flow_policy(tmp_path / "pickled.pt")

    def test_custom_network_is_refused_at_save(self, tmp_path):
        actor = FlowActor(FlowModel(torch.nn.Identity(), ACT, chunk_len=H))
        stats = NormalizationStats(torch.zeros(ACT), torch.ones(ACT))
        with pytest.raises(TypeError, match="VelocityMLP"):
            save_flow_policy(tmp_path / "p.pt", actor, task="Hopper-v5", observation_stats=stats,
                             action_stats=stats)

    def test_atomic_save_keeps_the_old_file_when_the_write_fails(self, tmp_path):
        path = tmp_path / "state.pt"
        atomic_save({"step": 1}, path)

        class Unpicklable:
            def __reduce__(self):
                raise RuntimeError("killed mid-write")

        with pytest.raises(RuntimeError, match="killed mid-write"):
            atomic_save({"step": 2, "bad": Unpicklable()}, path)
        assert torch.load(path, weights_only=True) == {"step": 1}
        assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]


def make_ddpm_file(path, task="Hopper-v5"):
    network = VelocityMLP(OBS, ACT, chunk_len=H, hidden_dim=32, num_layers=2, activation=torch.nn.Mish)
    betas = torch.linspace(1e-4, 0.05, 7)  # not the default schedule: it must be stored
    model = DDPMChunkModel(network, ACT, 7, chunk_len=H, betas=betas, denoised_clip_value=2.0,
                           final_action_clip_value=1.5, low=-torch.ones(ACT), high=torch.ones(ACT))
    save_ddpm_policy(
        path,
        model,
        task=task,
        observation_stats=NormalizationStats(torch.randn(OBS), torch.rand(OBS) + 0.5),
        action_stats=NormalizationStats(torch.zeros(ACT), torch.ones(ACT)),
        metadata={"denoising_steps": 7},
    )
    return model


class TestDDPMPolicyCheckpoint:
    def test_round_trip_denoises_identically(self, tmp_path):
        path = tmp_path / "ddpm.pt"
        model = make_ddpm_file(path)
        policy = load_ddpm_policy(path, task="Hopper-v5", observation_dim=OBS, action_dim=ACT,
                                  chunk_len=H)
        loaded = policy.model
        assert (loaded.num_steps, loaded.denoised_clip_value, loaded.final_action_clip_value) == (
            7, 2.0, 1.5)
        torch.testing.assert_close(loaded.betas, model.betas)
        torch.testing.assert_close(loaded.high, model.high)
        assert policy.metadata == {"denoising_steps": 7}
        obs = TensorDict(observation=torch.randn(5, OBS), batch_size=[5])
        for module in (model, loaded):  # the same DDPM sample from the same noise
            torch.manual_seed(0)
            with set_exploration_type(ExplorationType.RANDOM):
                out = DPPOActor(module, finetuned_steps=3)(obs.clone())
            if module is model:
                expected = out
        torch.testing.assert_close(out["action"], expected["action"])
        torch.testing.assert_close(out["sample_log_prob"], expected["sample_log_prob"])
        assert len(policy.env_transforms()) == 2

    def test_mismatch_and_the_other_kind_of_file(self, tmp_path):
        make_ddpm_file(tmp_path / "ddpm.pt")
        make_policy_file(tmp_path / "flow.pt")
        with pytest.raises(ValueError, match="chunk_len 4, but 8.*policy=ddpm"):
            load_ddpm_policy(tmp_path / "ddpm.pt", chunk_len=8)
        with pytest.raises(ValueError, match="read it with load_flow_policy"):
            load_ddpm_policy(tmp_path / "flow.pt")
        with pytest.raises(ValueError, match="read it with load_ddpm_policy"):
            load_flow_policy(tmp_path / "ddpm.pt")
        with pytest.raises(FileNotFoundError, match="pretrain_flow.py policy=ddpm"):
            load_ddpm_policy(tmp_path / "nope.pt")
        with pytest.raises(TypeError, match="DDPMChunkModel"):
            save_ddpm_policy(tmp_path / "x.pt", FlowModel(VelocityMLP(OBS, ACT), ACT), task="Hopper-v5",
                             observation_stats=NormalizationStats(torch.zeros(OBS), torch.ones(OBS)),
                             action_stats=NormalizationStats(torch.zeros(ACT), torch.ones(ACT)))


if __name__ == "__main__":
    args, unknown = argparse.ArgumentParser().parse_known_args()
    pytest.main([__file__, "--capture", "no", "--exitfirst"] + unknown)


class TestTrainingCheckpoint:
    @staticmethod
    def buffer_with(values) -> ReplayBuffer:
        buffer = ReplayBuffer(storage=LazyTensorStorage(100))
        if len(values):
            buffer.extend(TensorDict({"x": torch.as_tensor(values)}, [len(values)]))
        return buffer

    def test_the_buffer_read_back_is_the_one_saved_with_the_checkpoint(self, tmp_path):
        path = tmp_path / "run" / "checkpoint.pt"
        save_checkpoint({"step": 1}, path, self.buffer_with([1.0, 2.0]))
        save_checkpoint({"step": 2}, path, self.buffer_with([1.0, 2.0, 3.0]))
        # a dump killed half-way is never referenced, and the next save removes it
        (tmp_path / "run" / "checkpoint.pt.buffer-1").mkdir()
        state = torch.load(path, weights_only=True)
        restored = self.buffer_with([])
        assert state["step"] == 2 and load_checkpoint_buffer(state, path, restored)
        assert restored[:]["x"].tolist() == [1.0, 2.0, 3.0]
        save_checkpoint({"step": 3}, path, self.buffer_with([4.0]))
        assert len(list((tmp_path / "run").glob("checkpoint.pt.buffer-*"))) == 1

    def test_without_a_buffer_nothing_is_loaded_and_old_dumps_go(self, tmp_path):
        path = tmp_path / "checkpoint.pt"
        save_checkpoint({"step": 1}, path, self.buffer_with([1.0]))
        save_checkpoint({"step": 2}, path)
        restored = self.buffer_with([])
        assert not load_checkpoint_buffer(torch.load(path, weights_only=True), path, restored)
        assert len(restored) == 0 and not list(tmp_path.glob("checkpoint.pt.buffer-*"))

    def test_the_dump_is_on_disk_before_the_checkpoint_names_it(self, tmp_path, monkeypatch):
        import os

        synced, real_fsync = [], os.fsync
        monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}"))
                            or real_fsync(fd))
        path = tmp_path / "checkpoint.pt"
        stale = tmp_path / ".checkpoint.pt.1.tmp"  # what a writer killed mid-write left
        stale.write_bytes(b"partial")
        save_checkpoint({"step": 1}, path, self.buffer_with([1.0, 2.0]))
        dump = next(tmp_path.glob("checkpoint.pt.buffer-*"))
        files = [str(f) for f in dump.rglob("*") if f.is_file()]
        assert files and set(files) <= set(synced)
        # the dump's files before the checkpoint, and the renamed checkpoint's directory after it
        checkpoint_write = synced.index(str(tmp_path / f".checkpoint.pt.{os.getpid()}.tmp"))
        assert max(synced.index(f) for f in files) < checkpoint_write
        assert synced[-1] == str(tmp_path) and not stale.exists()

    def test_a_checkpoint_copied_without_its_buffer_is_refused_by_name(self, tmp_path):
        path = tmp_path / "checkpoint.pt"
        save_checkpoint({"step": 1}, path, self.buffer_with([1.0]))
        copy = tmp_path / "elsewhere" / "checkpoint.pt"
        copy.parent.mkdir()
        copy.write_bytes(path.read_bytes())
        with pytest.raises(FileNotFoundError, match="was saved with its replay buffer in .*checkpoint.pt.buffer-"):
            load_checkpoint_buffer(torch.load(copy, weights_only=True), copy, self.buffer_with([]))
