"""Private TorchRL / tensordict helpers used by this package, imported in one place.

They are not public API upstream: if a release renames one, only this file changes.
"""
from __future__ import annotations

from tensordict import TensorDict

# TensorDict construction without per-entry validation, for hot paths whose
# entries are built with the right batch size and device by construction.
new_tensordict_unsafe = TensorDict._new_unsafe

__all__ = ["new_tensordict_unsafe"]
