"""Losses: flow-matching behaviour cloning, RLDT and the baselines (QAM, ReinFlow, FPO / FPO++, DPPO,
SWFP as we read its abstract)."""
from __future__ import annotations

from torchrl_rldt.objectives.critic import ChunkQEnsembleLoss
from torchrl_rldt.objectives.dppo import DDPMChunkBCLoss, DPPOLoss
from torchrl_rldt.objectives.flow_bc import FlowMatchingBCLoss
from torchrl_rldt.objectives.fpo import FPOLoss
from torchrl_rldt.objectives.qam import QAMLoss
from torchrl_rldt.objectives.reinflow import ReinFlowLoss
from torchrl_rldt.objectives.rldt import RLDTLoss
from torchrl_rldt.objectives.swfp import SWFPLoss
from torchrl_rldt.objectives.updaters import BaseEMAUpdater, ReferenceUpdater, StageUpdater

__all__ = [
    "BaseEMAUpdater",
    "ChunkQEnsembleLoss",
    "DDPMChunkBCLoss",
    "DPPOLoss",
    "FPOLoss",
    "FlowMatchingBCLoss",
    "QAMLoss",
    "RLDTLoss",
    "ReferenceUpdater",
    "ReinFlowLoss",
    "SWFPLoss",
    "StageUpdater",
]
