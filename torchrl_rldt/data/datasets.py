"""D4RL-style offline data sets: files, TorchRL replay buffers and action-chunk views.

A data set on disk is a ``.npz`` archive with D4RL's arrays (``observations``, ``actions``,
``rewards``, ``next_observations``, ``terminals``, ``timeouts``), one row per env step, episodes
contiguous. In memory it is a TensorDict with the layout of TorchRL's
``D4RLExperienceReplay`` / ``MinariExperienceReplay`` samples (``"observation"``, ``"action"``,
``("next", "observation" | "reward" | "terminated" | "truncated" | "done")``), so everything
downstream (:func:`action_chunks`, the pretraining script) takes a regenerated file and a
hub data set alike.
"""
from __future__ import annotations

import hashlib
import io
import logging
import zipfile
from pathlib import Path

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import LazyTensorStorage, ReplayBuffer, TensorDictReplayBuffer

from torchrl_rldt.checkpoint.atomic import atomic_write

__all__ = [
    "D4RL_KEYS",
    "action_chunks",
    "d4rl_arrays",
    "describe_dataset_file",
    "load_d4rl_dataset",
    "load_offline_dataset",
    "make_offline_replay_buffer",
    "save_d4rl_dataset",
    "transitions_from_buffer",
]

logger = logging.getLogger(__name__)

D4RL_KEYS = ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts")


def d4rl_arrays(transitions: TensorDictBase) -> dict[str, np.ndarray]:
    """D4RL arrays from a flat TensorDict of transitions in TorchRL's layout.

    Args:
        transitions: a TensorDict of batch shape ``[N]`` with ``"observation"``, ``"action"``
            and ``("next", "observation" | "reward" | "terminated" | "truncated")``, consecutive
            rows of an episode in order.

    Returns:
        A dict of numpy arrays keyed by :data:`D4RL_KEYS`: float32 observations, actions and
        rewards (``rewards`` and the flags have shape ``[N]``), bool ``terminals`` and
        ``timeouts``.
    """
    if transitions.batch_dims != 1:
        raise ValueError(
            f"d4rl_arrays expects a flat TensorDict of transitions (one batch dimension), got "
            f"batch_size={tuple(transitions.batch_size)}; reshape(-1) it in episode order first."
        )

    def as_numpy(key, dtype):
        return transitions.get(key).detach().cpu().reshape(transitions.shape[0], -1).numpy().astype(dtype)

    return {
        "observations": as_numpy("observation", np.float32),
        "actions": as_numpy("action", np.float32),
        "rewards": as_numpy(("next", "reward"), np.float32)[:, 0],
        "next_observations": as_numpy(("next", "observation"), np.float32),
        "terminals": as_numpy(("next", "terminated"), bool)[:, 0],
        "timeouts": as_numpy(("next", "truncated"), bool)[:, 0],
    }


def _check_arrays(arrays: dict, source: str) -> int:
    missing = [key for key in D4RL_KEYS if key not in arrays]
    if missing:
        raise KeyError(
            f"{source}: missing D4RL arrays {missing}; a data set needs all of {list(D4RL_KEYS)}."
        )
    num = len(arrays["observations"])
    for key in D4RL_KEYS:
        if len(arrays[key]) != num:
            raise ValueError(
                f"{source}: {key!r} has {len(arrays[key])} rows but 'observations' has {num}."
            )
    if arrays["observations"].shape != arrays["next_observations"].shape:
        raise ValueError(
            f"{source}: observations {arrays['observations'].shape} and next_observations "
            f"{arrays['next_observations'].shape} differ in shape."
        )
    for key in ("observations", "actions", "next_observations"):
        array = np.asarray(arrays[key])
        if array.ndim < 2 or not np.issubdtype(array.dtype, np.number):
            raise ValueError(f"{source}: {key!r} must be a numeric array [N, dim], got shape "
                             f"{array.shape} and dtype {array.dtype}.")
    for key in ("rewards", "terminals", "timeouts"):
        # one value per transition: [N] or [N, 1]; a wider array would pass for N rows of a vector
        if np.shape(arrays[key])[1:] not in ((), (1,)):
            raise ValueError(f"{source}: {key!r} must have shape [N] or [N, 1] (one value per "
                             f"transition), got {np.shape(arrays[key])}.")
    for key in ("terminals", "timeouts"):
        flags = np.asarray(arrays[key])
        if flags.dtype != bool and not np.isin(flags, (0, 1)).all():
            raise ValueError(f"{source}: {key!r} must be booleans or 0/1, got values such as "
                             f"{np.unique(flags)[:5].tolist()}.")
    return num


def save_d4rl_dataset(path: str | Path, arrays: dict[str, np.ndarray]) -> Path:
    """Writes D4RL arrays to a compressed ``.npz`` file, atomically.

    The archive is LZMA-compressed (``numpy.load`` reads it as any ``.npz``); it is written to a
    temporary file next to ``path`` and renamed, so an interrupted write leaves no partial file.

    Args:
        path: the destination ``.npz`` file; parent directories are created.
        arrays: the arrays of :data:`D4RL_KEYS` (extra arrays are stored too).

    Returns:
        The path written.
    """
    path = Path(path)
    _check_arrays(arrays, str(path))

    def write(handle) -> None:
        with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_LZMA) as archive:
            for key, value in arrays.items():
                buffer = io.BytesIO()
                np.save(buffer, np.ascontiguousarray(value), allow_pickle=False)
                archive.writestr(f"{key}.npy", buffer.getvalue())

    return atomic_write(path, write)


def describe_dataset_file(path: str | Path, arrays: dict[str, np.ndarray]) -> dict:
    """What a manifest records of a written data-set file: name, sha256, size, transitions.

    Args:
        path: the file written by :func:`save_d4rl_dataset`.
        arrays: the arrays it holds.
    """
    path = Path(path)
    return {
        "file": path.name,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "bytes": path.stat().st_size,
        "num_transitions": int(len(arrays["rewards"])),
    }


def load_d4rl_dataset(path: str | Path, device: str | torch.device = "cpu") -> TensorDict:
    """Loads a D4RL ``.npz`` file into a TensorDict in TorchRL's offline-data layout.

    Args:
        path: a ``.npz`` file with the arrays of :data:`D4RL_KEYS` (as written by
            :func:`save_d4rl_dataset` or ``examples/make_dataset.py``).
        device: where the tensors go.

    Returns:
        A TensorDict of batch shape ``[N]`` with ``"observation"``, ``"action"`` and
        ``("next", "observation" | "reward" | "terminated" | "truncated" | "done")``; rewards and
        flags have a trailing dimension of 1, as TorchRL envs and ``D4RLExperienceReplay`` have.

    Examples:
        >>> import numpy as np, tempfile, os
        >>> from torchrl_rldt.data import load_d4rl_dataset, save_d4rl_dataset
        >>> n = 5
        >>> arrays = dict(observations=np.zeros((n, 3), np.float32),
        ...     actions=np.zeros((n, 2), np.float32), rewards=np.ones(n, np.float32),
        ...     next_observations=np.zeros((n, 3), np.float32),
        ...     terminals=np.eye(n, dtype=bool)[-1], timeouts=np.zeros(n, bool))
        >>> path = save_d4rl_dataset(os.path.join(tempfile.mkdtemp(), "toy.npz"), arrays)
        >>> data = load_d4rl_dataset(path)
        >>> data["next", "reward"].shape, bool(data["next", "done"][-1])
        (torch.Size([5, 1]), True)
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"No data set at {path}. Regenerate it with `python examples/make_dataset.py "
            f"task=<Task-v5>` or pass the path of an existing .npz file."
        )
    arrays = _read_npz(path)
    num = _check_arrays(arrays, str(path))

    def tensor(key, dtype):
        return torch.as_tensor(arrays[key]).to(device=device, dtype=dtype).reshape(num, -1)

    terminated = tensor("terminals", torch.bool)
    truncated = tensor("timeouts", torch.bool)
    return TensorDict(
        {
            "observation": tensor("observations", torch.float32),
            "action": tensor("actions", torch.float32),
            "next": {
                "observation": tensor("next_observations", torch.float32),
                "reward": tensor("rewards", torch.float32),
                "terminated": terminated,
                "truncated": truncated,
                "done": terminated | truncated,
            },
        },
        batch_size=[num],
        device=device,
    )


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of the ``.npz`` archive at ``path``; anything else (another format, a truncated
    or corrupted archive) raises a ``ValueError`` that names the file."""
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ValueError("it holds one array, not an .npz archive of named arrays")
        with archive:
            return {key: archive[key] for key in archive.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        # numpy reads any other file as a pickle, which it refuses with advice that does not apply
        reason = "not an .npz archive" if "pickled" in str(error) else error
        raise ValueError(
            f"{path} is not a readable .npz data set ({reason}). Regenerate it (examples/make_dataset.py, "
            f"examples/record_demos.py) or pass an .npz file written by save_d4rl_dataset."
        ) from error


def make_offline_replay_buffer(
    data: TensorDictBase, batch_size: int, *, device: str | torch.device | None = None
) -> TensorDictReplayBuffer:
    """A TorchRL replay buffer that holds all of ``data`` and samples uniformly from it.

    Args:
        data: a flat TensorDict of transitions (for example from :func:`load_d4rl_dataset`, or
            :func:`action_chunks` of it).
        batch_size: the size of each sample.
        device: where the storage lives; defaults to ``data``'s device.

    Returns:
        A ``TensorDictReplayBuffer`` over a ``LazyTensorStorage`` of exactly ``len(data)`` rows.
    """
    storage = LazyTensorStorage(data.shape[0], device=device if device is not None else data.device)
    buffer = TensorDictReplayBuffer(storage=storage, batch_size=batch_size)
    buffer.extend(data)
    return buffer


def action_chunks(data: TensorDictBase, chunk_len: int) -> TensorDict:
    """Pairs each observation with the next ``chunk_len`` actions of its episode.

    A window starts at every step whose episode goes on for at least ``chunk_len`` steps (no
    window crosses an episode end, none is padded); the windows of an episode's last
    ``chunk_len - 1`` steps are dropped. Episode ends are read from the done flags alone: a data
    set whose ends are not flagged gives windows that cross episodes (the loaders of this module
    flag every end).

    Args:
        data: a flat TensorDict of consecutive transitions with ``"observation"``, ``"action"``
            and ``("next", "done")`` (or ``("next", "terminated")`` and
            ``("next", "truncated")``), as from :func:`load_d4rl_dataset`.
        chunk_len: H, the actions per chunk.

    Returns:
        A TensorDict of batch shape ``[M]`` with ``"observation"`` ``[M, obs_dim]`` and
        ``"action"`` ``[M, chunk_len, action_dim]``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl_rldt.data import action_chunks
        >>> done = torch.tensor([0, 0, 1, 0, 0, 0, 1], dtype=torch.bool).unsqueeze(-1)
        >>> data = TensorDict({"observation": torch.arange(7.).unsqueeze(-1),
        ...     "action": torch.arange(7.).unsqueeze(-1), "next": {"done": done}}, [7])
        >>> chunks = action_chunks(data, 2)
        >>> chunks["action"].squeeze(-1).tolist()
        [[0.0, 1.0], [1.0, 2.0], [3.0, 4.0], [4.0, 5.0], [5.0, 6.0]]
    """
    if chunk_len < 1:
        raise ValueError(f"chunk_len must be >= 1, got {chunk_len}.")
    if data.batch_dims != 1:
        raise ValueError(
            f"action_chunks expects a flat TensorDict of transitions, got batch_size="
            f"{tuple(data.batch_size)}."
        )
    keys = data.keys(True)
    if ("next", "done") in keys:
        done = data["next", "done"]
    else:
        done = data["next", "terminated"] | data["next", "truncated"]
    if data.shape[0] == 0:
        raise ValueError("action_chunks got no transitions (an empty data set).")
    done = done.reshape(-1).clone()
    # The last row ends the stream whatever its flags say: no window may run past it.
    done[-1] = True
    num = done.shape[0]
    # A window [i, i + H) is valid when no episode ends inside [i, i + H - 1).
    ends_before = torch.cat([done.new_zeros(1, dtype=torch.long), done.long().cumsum(0)])
    starts = torch.arange(max(num - chunk_len + 1, 0), device=done.device)
    valid = ends_before[starts + chunk_len - 1] - ends_before[starts] == 0
    starts = starts[valid]
    if starts.numel() == 0:
        ends = done.nonzero().squeeze(-1)
        longest = int(torch.diff(ends, prepend=ends.new_full((1,), -1)).max())
        raise ValueError(
            f"no episode of the data set lasts chunk_len={chunk_len} steps (the longest lasts "
            f"{longest}): lower chunk_len, or check the data's done flags."
        )
    window = starts.unsqueeze(-1) + torch.arange(chunk_len, device=done.device)
    action = data["action"]
    return TensorDict(
        {"observation": data["observation"][starts], "action": action[window]},
        batch_size=[starts.shape[0]],
        device=data.device,
    )


_TRANSITION_KEYS = (
    "observation",
    "action",
    ("next", "observation"),
    ("next", "reward"),
    ("next", "terminated"),
    ("next", "truncated"),
    ("next", "done"),
)


def transitions_from_buffer(buffer: ReplayBuffer) -> TensorDict:
    """Every transition of an offline TorchRL replay buffer, in this module's layout.

    Reads the storage of a ``D4RLExperienceReplay``, ``MinariExperienceReplay`` (or any replay
    buffer whose storage holds flat transitions in TorchRL's layout) and keeps the keys that
    :func:`action_chunks` and the pretraining script use, with rewards and flags of shape
    ``[N, 1]``.

    Args:
        buffer: the replay buffer.

    Returns:
        A TensorDict of batch shape ``[N]`` in storage order.
    """
    data = buffer[:]
    if data.batch_dims != 1:
        raise ValueError(
            f"expected flat transitions in the buffer's storage, got batch_size="
            f"{tuple(data.batch_size)} (was the data set built with split_trajs=True?)."
        )
    keys = set(data.keys(True, True))
    if ("next", "done") not in keys and {("next", "terminated"), ("next", "truncated")} <= keys:
        data.set(("next", "done"), data["next", "terminated"] | data["next", "truncated"])
    if ("next", "truncated") not in keys and ("next", "done") in keys:
        # D4RL files without time-outs: every done that is not a termination is a cut.
        data.set(("next", "truncated"), data["next", "done"] & ~data["next", "terminated"])
    missing = [key for key in _TRANSITION_KEYS if key not in data.keys(True, True)]
    if missing:
        raise KeyError(f"the buffer's transitions lack {missing}; found {sorted(map(str, keys))}.")
    out = TensorDict(batch_size=data.batch_size, device=data.device)
    for key in _TRANSITION_KEYS:
        value = data.get(key)
        if key[-1] in ("reward", "terminated", "truncated", "done") and value.ndim == 1:
            value = value.unsqueeze(-1)
        out.set(key, value.clone())
    return out


def load_offline_dataset(
    source: str | Path, *, root: str | Path | None = None, device: str | torch.device = "cpu"
) -> TensorDict:
    """Loads a data set from a file or from TorchRL's D4RL / Minari data sets.

    Args:
        source: a path to a ``.npz`` file (see :func:`load_d4rl_dataset`), or
            ``"d4rl:<dataset id>"`` (e.g. ``"d4rl:hopper-medium-v2"``) for TorchRL's
            ``D4RLExperienceReplay``, or ``"minari:<dataset id>"`` (e.g.
            ``"minari:mujoco/hopper/medium-v0"``) for ``MinariExperienceReplay``. The hub
            sources download on first use (internet, and ``h5py`` / ``minari`` installed).
        root: where TorchRL keeps downloaded hub data sets; TorchRL's default when ``None``.
        device: where the tensors go.

    Returns:
        The transitions, as :func:`load_d4rl_dataset` returns them.
    """
    source = str(source)
    kind, _, dataset_id = source.partition(":")
    if kind == "d4rl" and dataset_id:
        from torchrl.data.datasets import D4RLExperienceReplay

        buffer = D4RLExperienceReplay(
            dataset_id, batch_size=1, root=root, direct_download=True, terminate_on_end=True
        )
    elif kind == "minari" and dataset_id:
        from torchrl.data.datasets import MinariExperienceReplay

        buffer = MinariExperienceReplay(dataset_id, batch_size=1, root=root)
    else:
        if dataset_id and not Path(source).exists() and "/" not in kind and len(kind) > 1:
            # "d4r1:hopper-medium-v2" is a typo, not a file name
            raise ValueError(f"{source!r}: unknown data set kind {kind!r}; use 'd4rl:<id>', "
                             "'minari:<id>' or the path of an .npz file.")
        return load_d4rl_dataset(source, device=device)
    return transitions_from_buffer(buffer).to(device)
