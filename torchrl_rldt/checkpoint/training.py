"""Training checkpoints, paired atomically with the replay buffer they were written with."""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from torchrl_rldt.checkpoint.atomic import atomic_save, fsync_directory

__all__ = ["load_checkpoint_buffer", "save_checkpoint"]


def save_checkpoint(state: dict, path: str | Path, replay_buffer: Any = None) -> Path:
    """Atomically writes a training checkpoint and, optionally, the replay buffer it goes with.

    The buffer is dumped (``replay_buffer.dumps``) into a new directory beside ``path``, named
    ``<file name>.buffer-<nanoseconds>``; the checkpoint, written next with :func:`atomic_save`,
    records that name under ``"replay_buffer_dir"`` (``None`` without a buffer); older dumps are
    removed last. A kill at any moment thus leaves a checkpoint and exactly the buffer it was
    written with (an unfinished dump is never referenced); the dump's files are flushed to disk
    before the checkpoint names them, and the temporary files of a writer that was killed are
    removed. Read both back with
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
    if replay_buffer is not None:
        directory = path.with_name(f"{path.name}.buffer-{time.time_ns()}")
        replay_buffer.dumps(directory)
        _fsync_tree(directory)
        state["replay_buffer_dir"] = directory.name
    atomic_save(state, path)
    for old in path.parent.glob(f"{path.name}.buffer-*"):
        if old.name != state["replay_buffer_dir"]:
            shutil.rmtree(old, ignore_errors=True)
    return path


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
