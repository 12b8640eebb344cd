"""Policy modules: the flow model and actor, its velocity network, the SVGD transport, RLDT's
exploration, ReinFlow's noisy chain, DPPO's DDPM chunk policy and SWFP's cascade of flow blocks."""
from __future__ import annotations

from torchrl_rldt.modules.critic import ChunkQValueMLP
from torchrl_rldt.modules.diffusion import DDPMChunkModel, DPPOActor, cosine_beta_schedule
from torchrl_rldt.modules.exploration import LandingPointExploration
from torchrl_rldt.modules.flow import (
    FlowActor,
    FlowChain,
    FlowModel,
    SinusoidalTimeEmbedding,
    VelocityMLP,
)
from torchrl_rldt.modules.noisy_flow import FlowChainDistribution, FlowNoiseMLP, NoisyFlowActor
from torchrl_rldt.modules.stepwise_flow import StepwiseFlowActor
from torchrl_rldt.modules.transport import SVGDTransport, svgd_field

__all__ = [
    "ChunkQValueMLP",
    "DDPMChunkModel",
    "DPPOActor",
    "FlowActor",
    "FlowChain",
    "FlowChainDistribution",
    "FlowModel",
    "FlowNoiseMLP",
    "LandingPointExploration",
    "NoisyFlowActor",
    "SVGDTransport",
    "SinusoidalTimeEmbedding",
    "StepwiseFlowActor",
    "VelocityMLP",
    "cosine_beta_schedule",
    "svgd_field",
]
