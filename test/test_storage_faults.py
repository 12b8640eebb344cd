# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
"""Storage faults: a writer process killed at every point of a checkpoint write, a full disk
under the checkpoint, its replay-buffer dump, the log and the summary."""
from __future__ import annotations

import atexit
import errno
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from tensordict import TensorDict
from torchrl.data import LazyTensorStorage, ReplayBuffer

from torchrl_rldt.checkpoint import load_checkpoint_buffer, save_checkpoint
from torchrl_rldt.trainers import StorageFault, TrainingRun
from torchrl_rldt.trainers.run import _exit_without_finalizing
from test_faults import harness_run as faults_harness_run

# A writer that saves a checkpoint of 40 transitions, then one of 70 and is killed (SIGKILL, by
# itself) at its KILL_AT-th flush to disk or removal of an old dump: the points between every
# file of the dump, before and after the checkpoint's rename. KILL_AT=0: counts those points.
WRITER = textwrap.dedent("""
    import os, shutil, signal, sys
    import torch
    from tensordict import TensorDict
    from torchrl.data import LazyTensorStorage, ReplayBuffer
    from torchrl_rldt.checkpoint import save_checkpoint
    import torchrl_rldt.checkpoint.training as training

    path, kill_at = sys.argv[1], int(sys.argv[2])
    buffer = ReplayBuffer(storage=LazyTensorStorage(100))
    buffer.extend(TensorDict({"reward": torch.arange(40.0)}, [40]))
    save_checkpoint({"transitions": 40}, path, buffer)
    buffer.extend(TensorDict({"reward": torch.arange(40.0, 70.0)}, [30]))
    points = 0

    def point(function):
        def wrapped(*args, **kwargs):
            global points
            points += 1
            if points == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return function(*args, **kwargs)
        return wrapped

    os.fsync = point(os.fsync)
    training.shutil.rmtree = point(shutil.rmtree)
    save_checkpoint({"transitions": 70}, path, buffer)
    print(points)
""")


def restored(path: Path) -> tuple[int, torch.Tensor]:
    state = torch.load(path, weights_only=True)
    buffer = ReplayBuffer(storage=LazyTensorStorage(100))
    assert load_checkpoint_buffer(state, path, buffer)
    return state["transitions"], buffer.storage[: len(buffer)]["reward"]


def test_a_writer_killed_at_any_point_leaves_a_checkpoint_and_its_own_buffer(tmp_path):
    def write(directory: Path, kill_at: int) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", WRITER, str(directory / "checkpoint.pt"), str(kill_at)],
                              capture_output=True, text=True, timeout=120)

    counted = write(tmp_path / "count", 0)
    assert counted.returncode == 0, counted.stderr
    points = int(counted.stdout.split()[-1])
    assert points >= 5  # the dump's files and directories, the checkpoint, the rename, the old dump
    outcomes = set()
    for kill_at in range(1, points + 1):
        directory = tmp_path / f"killed-at-{kill_at}"
        killed = write(directory, kill_at)
        assert killed.returncode == -9, (kill_at, killed.stderr)
        transitions, rewards = restored(directory / "checkpoint.pt")
        # the checkpoint on disk is whole, and the buffer it names is the one it was written with
        assert torch.equal(rewards, torch.arange(float(transitions))), kill_at
        outcomes.add(transitions)
        # the next write removes what the killed one left: its temporary file and dump
        buffer = ReplayBuffer(storage=LazyTensorStorage(100))
        buffer.extend(TensorDict({"reward": torch.arange(5.0)}, [5]))
        save_checkpoint({"transitions": 5}, directory / "checkpoint.pt", buffer)
        assert sorted(p.name for p in directory.iterdir() if p.name != "checkpoint.pt") == [
            torch.load(directory / "checkpoint.pt", weights_only=True)["replay_buffer_dir"]]
    assert outcomes == {40, 70}  # killed before the rename: the old checkpoint; after: the new


def full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def harness_run(tmp_path: Path, backend=None) -> TrainingRun:
    run = faults_harness_run(tmp_path, backend=backend)
    run.track(net=torch.nn.Linear(2, 2))
    return run


def filled_buffer(size: int) -> ReplayBuffer:
    buffer = ReplayBuffer(storage=LazyTensorStorage(100))
    buffer.extend(TensorDict({"reward": torch.arange(float(size))}, [size]))
    return buffer


def _partial_dump(directory, *args, **kwargs):
    Path(directory).mkdir(parents=True)
    (Path(directory) / "storage.memmap").write_bytes(b"\0" * 64)
    full_disk()


def _partial_checkpoint(obj, handle, *args, **kwargs):
    handle.write(b"PK\x03\x04 a torn zip")
    full_disk()


@pytest.mark.parametrize("where", ["buffer dump", "checkpoint file"])
def test_a_full_disk_keeps_the_previous_checkpoint_and_says_how_to_resume(tmp_path, monkeypatch, where):
    run = harness_run(tmp_path)
    run.counters["env_steps"] = 100
    run.save(filled_buffer(40))
    before = sorted(path.name for path in tmp_path.iterdir())
    run.counters["env_steps"] = 200
    buffer = filled_buffer(70)
    if where == "buffer dump":
        monkeypatch.setattr(buffer, "dumps", _partial_dump)
    else:
        monkeypatch.setattr(torch, "save", _partial_checkpoint)
    with pytest.raises(StorageFault) as fault:
        run.save(buffer)
    monkeypatch.undo()
    message = str(fault.value)
    assert f"could not write the checkpoint {tmp_path / 'checkpoint.pt'} and its replay buffer" in message
    assert "No space left on device" in message
    assert "The checkpoint at 100 env steps is kept as it was" in message
    assert f"resume={tmp_path / 'checkpoint.pt'}" in message
    # nothing of the failed write is left, and the previous checkpoint loads with its buffer
    assert sorted(path.name for path in tmp_path.iterdir()) == before
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    restored_buffer = ReplayBuffer(storage=LazyTensorStorage(100))
    assert load_checkpoint_buffer(state, tmp_path / "checkpoint.pt", restored_buffer)
    assert state["counters"] == {"env_steps": 100} and len(restored_buffer) == 40


def test_a_full_disk_before_any_checkpoint_says_so(tmp_path, monkeypatch):
    run = harness_run(tmp_path)
    monkeypatch.setattr(torch, "save", _partial_checkpoint)
    with pytest.raises(StorageFault, match="No checkpoint was written yet; free space and start the run again"):
        run.save()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where", ["checkpoint", "log"])
def test_a_full_disk_in_the_loop_ends_the_run_with_exit_code_1(tmp_path, monkeypatch, caplog, where):
    run = harness_run(tmp_path, backend="csv")
    with run.loop(total_env_steps=100, description="demo"):
        run.counters["env_steps"] = 10
        run.log({"loss": 1.0}, 10)
        run.save()
    with pytest.raises(SystemExit) as stop, run.loop(total_env_steps=100, description="demo"):
        run.counters["env_steps"] = 20
        if where == "checkpoint":
            monkeypatch.setattr(torch, "save", _partial_checkpoint)
            run.save()
        else:
            monkeypatch.setattr(run._logger, "log_scalar", full_disk)
            run.log({"loss": 2.0}, 10)
    monkeypatch.undo()
    # the run's process ends at exit without finalising: not pytest's
    atexit.unregister(_exit_without_finalizing)
    assert stop.value.code == 1
    assert "No space left on device" in caplog.text
    assert "The checkpoint at 10 env steps is kept as it was" in caplog.text
    assert f"resume={tmp_path / 'checkpoint.pt'}" in caplog.text
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["counters"] == {"env_steps": 10}


def test_a_log_row_torn_by_a_kill_is_dropped_on_resume(tmp_path):
    run = harness_run(tmp_path, backend="csv")
    with run.loop(total_env_steps=100, description="demo"):
        for steps in (10, 20):
            run.counters["env_steps"] = steps
            run.log({"loss": float(steps)}, 10)
        run.save()
        run.counters["env_steps"] = 30
        run.log({"loss": 30.0}, 10)
    log_file = next(tmp_path.rglob("loss.csv"))
    log_file.write_text(log_file.read_text() + "40,4")  # a row the kill tore
    resumed = TrainingRun("demo", run.config, output_dir=tmp_path, resume=tmp_path / "checkpoint.pt")
    resumed.track(net=torch.nn.Linear(2, 2))
    with resumed.loop(total_env_steps=100, description="demo"):
        pass
    steps = [float(line.split(",")[0]) for line in log_file.read_text().splitlines()]
    assert steps == [10, 20]  # the rows after the checkpoint and the torn one, gone


def test_no_room_for_the_dump_is_refused_before_writing(tmp_path, monkeypatch):
    """A memory-mapped write to a full disk kills the process with SIGBUS (no ENOSPC, no message):
    the room for the dump is checked first."""
    import shutil

    run = harness_run(tmp_path)
    run.counters["env_steps"] = 100
    run.save(filled_buffer(40))
    before = sorted(path.name for path in tmp_path.iterdir())
    run.counters["env_steps"] = 200
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 100, 100))
    with pytest.raises(StorageFault, match=r"No space left on device: the checkpoint and its replay buffer need "
                                           r"~\d+ MiB, 0 MiB are free\. The checkpoint at 100 env steps is kept"):
        run.save(filled_buffer(70))
    assert sorted(path.name for path in tmp_path.iterdir()) == before
