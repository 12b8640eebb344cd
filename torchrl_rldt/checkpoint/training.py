"""Training checkpoints, paired atomically with the replay buffer they were written with."""
from __future__ import annotations

import errno
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from torchrl_rldt.checkpoint.atomic import atomic_save, fsync_directory

__all__ = [
    "CHECKPOINT_VERSION",
    "load_checkpoint_buffer",
    "read_checkpoint",
    "restore_rng_state",
    "rng_state",
    "save_checkpoint",
]


def save_checkpoint(state: dict, path: str | Path, replay_buffer: Any = None) -> Path:
    """Atomically writes a training checkpoint and, optionally, the replay buffer it goes with.

    The buffer is dumped (``replay_buffer.dumps``) into a new directory beside ``path``, named
    ``<file name>.buffer-<nanoseconds>``; the checkpoint, written next with :func:`atomic_save`,
    records that name under ``"replay_buffer_dir"`` (``None`` without a buffer); older dumps are
    removed last. A kill at any moment thus leaves a checkpoint and exactly the buffer it was
    written with (an unfinished dump is never referenced); the dump's files are flushed to disk
    before the checkpoint names them, and the temporary files of a writer that was killed are
    removed. A write that fails (``OSError``, e.g. a full disk) removes what it wrote and
    re-raises: the previous checkpoint and its dump stay as they were. Read both back with
    ``torch.load(path, weights_only=True)`` and :func:`load_checkpoint_buffer`.

    Args:
        state: what to save; only what ``torch.load(..., weights_only=True)`` reads. Its key
            ``"replay_buffer_dir"`` is set here.
        path: the checkpoint file; its parent is created.
        replay_buffer: a TorchRL replay buffer to save with it, or ``None``.

    Returns:
        The checkpoint path.

    Examples:
        >>> import tempfile, torch
        >>> from pathlib import Path
        >>> from tensordict import TensorDict
        >>> from torchrl.data import LazyTensorStorage, ReplayBuffer
        >>> from torchrl_rldt.checkpoint import load_checkpoint_buffer, save_checkpoint
        >>> buffer = ReplayBuffer(storage=LazyTensorStorage(10))
        >>> _ = buffer.extend(TensorDict({"reward": torch.arange(4.0)}, [4]))
        >>> path = Path(tempfile.mkdtemp()) / "checkpoint.pt"
        >>> _ = save_checkpoint({"steps": 4}, path, buffer)
        >>> restored = ReplayBuffer(storage=LazyTensorStorage(10))
        >>> load_checkpoint_buffer(torch.load(path, weights_only=True), path, restored)
        True
        >>> len(restored)
        4
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # atomic_write's, of a killed process
        if stale.name != f".{path.name}.{os.getpid()}.tmp":
            stale.unlink(missing_ok=True)
    state = {**state, "replay_buffer_dir": None}
    directory = None
    previous = _inode(path)
    try:
        if replay_buffer is not None:
            _check_room(path, replay_buffer)
            directory = path.with_name(f"{path.name}.buffer-{time.time_ns()}")
            replay_buffer.dumps(directory)
            _fsync_tree(directory)
            state["replay_buffer_dir"] = directory.name
        atomic_save(state, path)
    except BaseException:
        # a failed write (a full disk) leaves the previous checkpoint and its dump as they were
        if directory is not None and _inode(path) == previous:  # not once the new file names it
            shutil.rmtree(directory, ignore_errors=True)
        raise
    for old in path.parent.glob(f"{path.name}.buffer-*"):
        if old.name != state["replay_buffer_dir"]:
            shutil.rmtree(old, ignore_errors=True)
    return path


def _check_room(path: Path, replay_buffer: Any) -> None:
    """Raises ``OSError(ENOSPC)`` when the disk has no room for the buffer's dump and the checkpoint
    beside the previous ones. The dump is written through memory maps, and a memory-mapped write
    to a full disk does not fail with ENOSPC: the kernel kills the process with SIGBUS, with no
    message and nothing saved."""
    previous = [sum(file.stat().st_size for file in old.rglob("*") if file.is_file())
                for old in path.parent.glob(f"{path.name}.buffer-*")]
    try:
        dump = max(previous) if previous else int(replay_buffer.storage._storage.bytes())
    except Exception:  # noqa: BLE001 - a storage that cannot say its size: no estimate, no check
        return
    needed = dump + (path.stat().st_size if path.exists() else 0)
    free = shutil.disk_usage(path.parent).free
    if free < needed * 1.05:
        raise OSError(errno.ENOSPC, f"No space left on device: the checkpoint and its replay buffer need "
                                    f"~{needed / 2**20:.0f} MiB, {free / 2**20:.0f} MiB are free")


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


def _fsync_tree(directory: Path) -> None:
    """Flushes every file below ``directory``, and the directories, to disk."""
    for root, _, files in os.walk(directory):
        for name in files:
            with open(os.path.join(root, name), "rb") as handle:
                os.fsync(handle.fileno())
        fsync_directory(root)


def load_checkpoint_buffer(state: dict, path: str | Path, replay_buffer: Any) -> bool:
    """Loads into ``replay_buffer`` the dump that the checkpoint ``state`` (read from ``path``) names.

    Args:
        state: the loaded checkpoint, as written by :func:`save_checkpoint`.
        path: the checkpoint file it was read from.
        replay_buffer: the (empty) replay buffer to fill.

    Returns:
        ``True`` when a buffer was loaded, ``False`` when the checkpoint was saved without one.

    Raises:
        FileNotFoundError: the checkpoint names a dump that is not beside it (e.g. the checkpoint
            file was copied alone).
    """
    name = state.get("replay_buffer_dir")
    if name is None:
        return False
    directory = Path(path).with_name(name)
    if not directory.is_dir():
        raise FileNotFoundError(
            f"{path} was saved with its replay buffer in {directory}, which does not exist; copy "
            f"that directory beside the checkpoint, or start a new run."
        )
    replay_buffer.loads(directory)
    return True


# version 2: the run-harness layout (modules by name, "extra", "wall_seconds"), FlowActor.model;
# version 3: the losses without their actor-update count (ReferenceUpdater, BaseEMAUpdater)
# version 4: the loss weights as buffers (rl_coeff, consistency_coeff, reference_coeff,
# base_constraint_coeff) in the losses' state dicts
CHECKPOINT_VERSION = 4


def read_checkpoint(path: str | Path, name: str, *, map_location: Any = "cpu") -> dict:
    """Reads a training checkpoint of ``examples/<name>.py`` and checks that this code can use it.

    Args:
        path (str or Path): the ``checkpoint.pt`` file.
        name (str): the example that must have written it, e.g. ``"rldt_gym"``.

    Keyword Args:
        map_location: where tensors are loaded. Defaults to ``"cpu"``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: another example's checkpoint, or one of an older layout (written before
            torchrl-rldt's run harness), which cannot be resumed.
    """
    path = Path(path)
    if path.is_dir():
        raise FileNotFoundError(f"{path} is a directory; resume= takes the checkpoint file, "
                                f"e.g. {path / 'checkpoint.pt'}.")
    if not path.is_file():
        raise FileNotFoundError(f"no such checkpoint: {path}.")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # a torn copy, another file type: say which file
        raise ValueError(f"{path} cannot be read as a checkpoint ({type(error).__name__}: "
                         f"{error}).") from error
    found = state.get("format") if isinstance(state, dict) else type(state).__name__
    if found != f"torchrl_rldt.{name}":
        writer = (f", written by examples/{found.split('.', 1)[1]}.py"
                  if isinstance(found, str) and found.startswith("torchrl_rldt.") else "")
        raise ValueError(f"{path} is not a torchrl_rldt.{name} checkpoint (found {found!r}"
                         f"{writer}); resume it with the script that wrote it.")
    if state.get("version") != CHECKPOINT_VERSION:
        raise ValueError(
            f"{path} has checkpoint layout version {state.get('version', 1)}; this torchrl-rldt "
            f"reads version {CHECKPOINT_VERSION} (its modules and keys changed since). Start a new "
            f"run, or use the torchrl-rldt release that wrote it."
        )
    return state


def rng_state(device: torch.device | str) -> dict:
    """The torch (and, on CUDA, that device's) random state, for a checkpoint."""
    device = torch.device(device)
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def restore_rng_state(rng: dict, device: torch.device | str) -> None:
    """Restores what :func:`rng_state` saved (also from a checkpoint loaded onto a GPU)."""
    device = torch.device(device)
    # torch's setters take CPU byte tensors, whatever map_location the checkpoint was read with
    torch.set_rng_state(rng["torch"].cpu())
    if device.type == "cuda" and rng.get("cuda") is not None:
        torch.cuda.set_rng_state(rng["cuda"].cpu(), device)
