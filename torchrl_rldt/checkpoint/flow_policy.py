# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
"""Deprecated: the flow- and DDPM-policy files are :mod:`torchrl_rldt.checkpoint.policy_files`.

This module re-exports them and warns once on import; it will be removed.
"""
from __future__ import annotations

import warnings

from torchrl_rldt.checkpoint.policy_files import (
    DDPMPolicy,
    FlowPolicy,
    load_ddpm_policy,
    load_flow_policy,
    save_ddpm_policy,
    save_flow_policy,
)

__all__ = ["DDPMPolicy", "FlowPolicy", "load_ddpm_policy", "load_flow_policy", "save_ddpm_policy",
           "save_flow_policy"]

warnings.warn(
    "torchrl_rldt.checkpoint.flow_policy is deprecated: it holds DDPM policy files too; import "
    "from torchrl_rldt.checkpoint (or torchrl_rldt.checkpoint.policy_files).",
    DeprecationWarning,
    stacklevel=2,
)
