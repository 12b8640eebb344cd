# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
"""What the PPO-style loss tests (ReinFlow, FPO) add to a batch of collected samples."""
from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase


def add_transition(data: TensorDictBase, observation_dim: int, advantage: float | None = None):
    """Adds a random ``"next"`` step and, if given, a constant advantage with its value target."""
    batch = data.batch_size[0]
    data["next"] = TensorDict(
        observation=torch.randn(batch, observation_dim), reward=torch.randn(batch, 1),
        done=torch.zeros(batch, 1, dtype=torch.bool), terminated=torch.zeros(batch, 1, dtype=torch.bool),
        batch_size=[batch],
    )
    if advantage is not None:
        # a precomputed advantage comes with its value target, as GAE writes both
        data["advantage"] = torch.full((batch, 1), float(advantage))
        data["value_target"] = torch.zeros(batch, 1)
    return data
