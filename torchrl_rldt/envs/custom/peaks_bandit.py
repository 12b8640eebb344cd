# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
"""A two-dimensional multi-peak bandit as a TorchRL environment (one-step episodes)."""
from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Bounded, Categorical, Composite, Unbounded
from torchrl.envs import EnvBase

__all__ = ["PeaksBanditEnv"]


class PeaksBanditEnv(EnvBase):
    """A batch of one-step bandits whose reward is a sum of Gaussian bumps over a 2-D action.

    ``r(a) = sum_p exp(-||a - p||^2 / (2 width^2))``: the optimal stochastic policy puts its mass
    on the peaks, a unimodal one can cover only one of them. Each step ends the episode
    (``terminated``), so the TD target of a critic is the reward itself. The observation is a
    constant zero of size 1; the action is a chunk of one 2-D action, ``[*B, 1, 2]``.

    Args:
        num_envs: the batch size.
        peaks: the peak centres, ``[P, 2]``. Defaults to ``[[-1.5, 0.5], [1.5, -0.5]]``.
        width: the bump standard deviation. Defaults to ``0.35``.
        bound: the action box ``[-bound, bound]^2``. Defaults to ``3.0``.
        device: where tensors live. Defaults to ``"cpu"``.

    Examples:
        >>> import torch
        >>> from torchrl_rldt.envs import PeaksBanditEnv
        >>> env = PeaksBanditEnv(4)
        >>> td = env.reset()
        >>> td["action"] = env.peaks[:1].expand(4, 1, 2)
        >>> env.step(td)["next", "reward"].squeeze(-1)
        tensor([1., 1., 1., 1.])
    """

    def __init__(
        self,
        num_envs: int,
        peaks: torch.Tensor | None = None,
        width: float = 0.35,
        bound: float = 3.0,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__(batch_size=torch.Size([num_envs]), device=device)
        peaks = torch.tensor([[-1.5, 0.5], [1.5, -0.5]]) if peaks is None else torch.as_tensor(peaks)
        if peaks.ndim != 2 or peaks.shape[-1] != 2:
            raise ValueError(f"peaks must have shape [P, 2], got {tuple(peaks.shape)}.")
        if width <= 0:
            raise ValueError(f"width must be positive, got {width}.")
        self.register_buffer("peaks", peaks.to(device=self.device, dtype=torch.float32))
        self.width = width
        batch = self.batch_size
        self.observation_spec = Composite(
            observation=Unbounded((*batch, 1), device=self.device), shape=batch
        )
        self.action_spec = Bounded(-bound, bound, (*batch, 1, 2), device=self.device)
        self.reward_spec = Unbounded((*batch, 1), device=self.device)
        done = Categorical(2, (*batch, 1), dtype=torch.bool, device=self.device)
        self.done_spec = Composite(done=done, terminated=done.clone(), truncated=done.clone(),
                                   shape=batch, device=self.device)

    def reward(self, action: torch.Tensor) -> torch.Tensor:
        """The reward of actions ``[..., 2]`` (any leading shape)."""
        sq_dist = (action.unsqueeze(-2) - self.peaks).pow(2).sum(-1)
        return torch.exp(-0.5 * sq_dist / self.width**2).sum(-1)

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDict:
        shape = self.batch_size
        false = torch.zeros((*shape, 1), dtype=torch.bool, device=self.device)
        return TensorDict(
            observation=torch.zeros((*shape, 1), device=self.device),
            done=false, terminated=false.clone(), truncated=false.clone(),
            batch_size=shape, device=self.device,
        )

    def _step(self, tensordict: TensorDictBase) -> TensorDict:
        action = tensordict.get("action").reshape(*tensordict.shape, 2)
        shape = tensordict.shape
        true = torch.ones((*shape, 1), dtype=torch.bool, device=self.device)
        return TensorDict(
            observation=torch.zeros((*shape, 1), device=self.device),
            reward=self.reward(action).unsqueeze(-1),
            done=true, terminated=true.clone(), truncated=~true,
            batch_size=shape, device=self.device,
        )

    def _set_seed(self, seed: int | None) -> None:
        """The bandit is deterministic: nothing to seed."""
