"""Losses: flow-matching behaviour cloning, RLDT and the baselines (ReinFlow, FPO / FPO++)."""
from __future__ import annotations

from torchrl_rldt.objectives.flow_bc import FlowMatchingBCLoss
from torchrl_rldt.objectives.fpo import FPOLoss
from torchrl_rldt.objectives.reinflow import ReinFlowLoss
from torchrl_rldt.objectives.rldt import RLDTLoss

__all__ = ["FPOLoss", "FlowMatchingBCLoss", "RLDTLoss", "ReinFlowLoss"]
