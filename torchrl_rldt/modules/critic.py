# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
"""Q networks over an observation and an action chunk."""
from __future__ import annotations

import torch
from torch import nn
from torchrl.modules import MLP

__all__ = ["ChunkQValueMLP"]


class ChunkQValueMLP(nn.Module):
    """``Q(s, a_{1:H})``: an MLP over the observation and the flattened action chunk.

    The reference Gym critic of RLDT (arXiv 2606.08602, section 5): 3 hidden layers of 256 with
    SiLU. Wrap it in a ``torchrl.modules.ValueOperator`` with
    ``in_keys=["observation", "action"]`` to use it in a loss.

    Args:
        observation_dim: size of the (flat) observation.
        action_dim: size of one action.
        chunk_len: actions per chunk ``H``. Defaults to ``1``.
        hidden_dim: width of the hidden layers. Defaults to ``256``.
        num_layers: number of hidden layers. Defaults to ``3``.
        activation: activation class of the hidden layers. Defaults to :class:`torch.nn.SiLU`.

    Examples:
        >>> import torch
        >>> from torchrl.modules import ValueOperator
        >>> from torchrl_rldt.modules import ChunkQValueMLP
        >>> critic = ValueOperator(ChunkQValueMLP(11, 3, chunk_len=4), in_keys=["observation", "action"])
        >>> critic.module(torch.randn(5, 11), torch.randn(5, 4, 3)).shape
        torch.Size([5, 1])
    """

    def __init__(
        self,
        observation_dim: int,
        action_dim: int,
        *,
        chunk_len: int = 1,
        hidden_dim: int = 256,
        num_layers: int = 3,
        activation: type[nn.Module] = nn.SiLU,
    ) -> None:
        super().__init__()
        if min(observation_dim, action_dim, chunk_len, hidden_dim, num_layers) < 1:
            raise ValueError("all sizes of ChunkQValueMLP must be positive.")
        self.chunk_len, self.action_dim = chunk_len, action_dim
        self.mlp = MLP(
            in_features=observation_dim + chunk_len * action_dim,
            out_features=1,
            num_cells=[hidden_dim] * num_layers,
            activation_class=activation,
        )

    def forward(self, observation: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """``Q`` of shape ``[*B, 1]`` for observations ``[*B, O]`` and chunks ``[*B, H, A]``."""
        if action.shape[-2:] != (self.chunk_len, self.action_dim):
            raise ValueError(
                f"expected action chunks of trailing shape ({self.chunk_len}, {self.action_dim}), "
                f"got {tuple(action.shape)}."
            )
        return self.mlp(torch.cat([observation, action.flatten(-2)], -1))
