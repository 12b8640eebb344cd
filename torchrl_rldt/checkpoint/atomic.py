"""Atomic file writes: a crash or a kill leaves the previous file (or none), never a partial one."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, BinaryIO, Callable

import torch

__all__ = ["atomic_save", "atomic_write", "atomic_write_text", "fsync_directory"]


def fsync_directory(path: str | Path) -> None:
    """Flushes a directory's entries (the renames and removals in it) to disk.

    A rename is durable only once its directory is: without this, a power loss can bring back
    the file the rename replaced. A no-op where directories cannot be opened (Windows).

    Args:
        path (str or Path): the directory.
    """
    if not hasattr(os, "O_DIRECTORY"):
        return
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], Any]) -> Path:
    """Calls ``write`` on a temporary file beside ``path``, flushes it to disk, then renames it
    (and flushes the rename).

    Args:
        path (str or Path): the destination; parent directories are created.
        write (callable): writes the content into the binary file object it is given.

    Returns:
        The path written.

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from torchrl_rldt.checkpoint import atomic_write
        >>> path = atomic_write(Path(tempfile.mkdtemp()) / "a.bin", lambda f: f.write(b"abc"))
        >>> path.read_bytes()
        b'abc'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_directory(path.parent)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj)`` to ``path`` through :func:`atomic_write`.

    Args:
        obj: what to save.
        path (str or Path): the destination; parent directories are created.

    Returns:
        The path written.
    """
    return atomic_write(path, lambda handle: torch.save(obj, handle))


def atomic_write_text(text: str, path: str | Path) -> Path:
    """Writes UTF-8 ``text`` to ``path`` through :func:`atomic_write`.

    Args:
        text (str): the content.
        path (str or Path): the destination; parent directories are created.

    Returns:
        The path written.
    """
    return atomic_write(path, lambda handle: handle.write(text.encode()))
