"""Policy modules: the flow model and actor, its velocity network, the SVGD transport, RLDT's
exploration and ReinFlow's noisy chain."""
from __future__ import annotations

from torchrl_rldt.modules.critic import ChunkQValueMLP
from torchrl_rldt.modules.exploration import LandingPointExploration
from torchrl_rldt.modules.flow import (
    FlowActor,
    FlowChain,
    FlowModel,
    SinusoidalTimeEmbedding,
    VelocityMLP,
)
from torchrl_rldt.modules.noisy_flow import FlowChainDistribution, FlowNoiseMLP, NoisyFlowActor
from torchrl_rldt.modules.transport import SVGDTransport, svgd_field

__all__ = [
    "ChunkQValueMLP",
    "FlowActor",
    "FlowChain",
    "FlowChainDistribution",
    "FlowModel",
    "FlowNoiseMLP",
    "LandingPointExploration",
    "NoisyFlowActor",
    "SVGDTransport",
    "SinusoidalTimeEmbedding",
    "VelocityMLP",
    "svgd_field",
]
