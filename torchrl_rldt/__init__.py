"""torchrl-rldt: online RL fine-tuning of flow-matching policies, built on TorchRL."""
from __future__ import annotations

__version__ = "0.1.0"
