"""Policy modules: the flow-matching actor, its velocity network and the SVGD transport."""
from __future__ import annotations

from torchrl_rldt.modules.critic import ChunkQValueMLP
from torchrl_rldt.modules.exploration import LandingPointExploration
from torchrl_rldt.modules.flow import FlowActor, SinusoidalTimeEmbedding, VelocityMLP
from torchrl_rldt.modules.transport import SVGDTransport

__all__ = [
    "ChunkQValueMLP",
    "FlowActor",
    "LandingPointExploration",
    "SVGDTransport",
    "SinusoidalTimeEmbedding",
    "VelocityMLP",
]
