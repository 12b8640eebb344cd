# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
"""The ``>>>`` examples of the public docstrings run and print what they show."""
from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "torchrl_rldt.envs.libs.envpool",
    "torchrl_rldt.envs.chunk",
    "torchrl_rldt.envs.transforms",
    "torchrl_rldt.envs.custom.peaks_bandit",
    "torchrl_rldt.envs.factory",
    pytest.param("torchrl_rldt.envs.metaworld", marks=pytest.mark.metaworld_experts),
    "torchrl_rldt.envs.evaluation",
    "torchrl_rldt.trainers.run",
    "torchrl_rldt.trainers.config",
    "torchrl_rldt.trainers.reporting",
    "torchrl_rldt.data.datasets",
    "torchrl_rldt.checkpoint.atomic",
    "torchrl_rldt.checkpoint.training",
    "torchrl_rldt.checkpoint.policy_files",
    "torchrl_rldt.modules.flow",
    "torchrl_rldt.modules.critic",
    "torchrl_rldt.modules.transport",
    "torchrl_rldt.modules.exploration",
    "torchrl_rldt.modules.noisy_flow",
    "torchrl_rldt.modules.diffusion",
    "torchrl_rldt.modules.stepwise_flow",
    "torchrl_rldt.objectives.reinflow",
    "torchrl_rldt.objectives.fpo",
    "torchrl_rldt.objectives.flow_bc",
    "torchrl_rldt.objectives.calibration",
    "torchrl_rldt.objectives.functional",
    "torchrl_rldt.objectives.critic",
    "torchrl_rldt.objectives.rldt",
    "torchrl_rldt.objectives.qam",
    "torchrl_rldt.objectives.dppo",
    "torchrl_rldt.objectives.swfp",
    "torchrl_rldt.objectives.updaters",
    "torchrl_rldt.objectives.diagnostics",
]


@pytest.mark.parametrize("module_name", MODULES)
def test_docstring_examples(module_name):
    module = importlib.import_module(module_name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
    assert result.attempted > 0, f"{module_name} has no docstring example"
    assert result.failed == 0
