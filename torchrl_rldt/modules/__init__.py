"""Policy modules: the flow-matching actor, its velocity network, the SVGD transport and
ReinFlow's noisy chain."""
from __future__ import annotations

from torchrl_rldt.modules.critic import ChunkQValueMLP
from torchrl_rldt.modules.exploration import LandingPointExploration
from torchrl_rldt.modules.flow import FlowActor, SinusoidalTimeEmbedding, VelocityMLP
from torchrl_rldt.modules.noisy_flow import FlowNoiseMLP, NoisyFlowActor
from torchrl_rldt.modules.transport import SVGDTransport

__all__ = [
    "ChunkQValueMLP",
    "FlowActor",
    "FlowNoiseMLP",
    "LandingPointExploration",
    "NoisyFlowActor",
    "SVGDTransport",
    "SinusoidalTimeEmbedding",
    "VelocityMLP",
]
