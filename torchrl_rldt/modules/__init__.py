"""Policy modules: the flow-matching actor and its default velocity network."""
from __future__ import annotations

from torchrl_rldt.modules.flow import FlowActor, SinusoidalTimeEmbedding, VelocityMLP

__all__ = ["FlowActor", "SinusoidalTimeEmbedding", "VelocityMLP"]
