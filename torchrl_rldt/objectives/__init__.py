"""Losses: flow-matching behaviour cloning, and in time RLDT and the baselines."""
from __future__ import annotations

from torchrl_rldt.objectives.flow_bc import FlowMatchingBCLoss
from torchrl_rldt.objectives.reinflow import ReinFlowLoss
from torchrl_rldt.objectives.rldt import RLDTLoss

__all__ = ["FlowMatchingBCLoss", "RLDTLoss", "ReinFlowLoss"]
