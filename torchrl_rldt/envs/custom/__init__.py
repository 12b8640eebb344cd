"""Small environments written for this package (toy problems for examples and tests)."""
from __future__ import annotations

from torchrl_rldt.envs.custom.peaks_bandit import PeaksBanditEnv

__all__ = ["PeaksBanditEnv"]
