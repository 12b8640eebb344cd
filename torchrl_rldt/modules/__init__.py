"""modules."""
from __future__ import annotations
