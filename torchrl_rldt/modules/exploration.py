# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
"""RLDT's rollout exploration: noise scaled by how much the last flow steps still move the action."""
from __future__ import annotations

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from tensordict.utils import NestedKey
from torchrl.data import Composite
from torchrl_rldt.modules.flow import FixedKeysMixin, FlowActor, is_deterministic_exploration
from torchrl_rldt.modules.stepwise_flow import StepwiseFlowActor

__all__ = ["LandingPointExploration"]


class LandingPointExploration(FixedKeysMixin, TensorDictModuleBase):
    """A collection policy around a :class:`FlowActor` with RLDT's exploration noise.

    Under a random exploration type (TorchRL collectors' default) it samples the chunk
    ``a = x_N`` from noise, draws for each env a late step ``i ~ U{min_step .. N - 1}``, and
    writes ``a + ||a - a_hat(x_{t_i}, t_i)|| * eps`` with ``eps ~ N(0, I)`` (clamped to the
    actor's bounds): the noise is large where the flow is still moving the action late in the
    chain and vanishes where it has settled. Under DETERMINISTIC (and MODE, MEAN, MEDIAN) it is
    the actor alone, sampling from ``x0 = 0`` without noise.

    Reference: RLDT, arXiv 2606.08602 (``docs/algorithm.md``, "Exploration"; ``min_extrp`` in
    the authors' code).

    The keys are the actor's (``in_keys``, ``out_keys`` and :attr:`spec` follow it, read-only):
    build the :class:`FlowActor` with the keys wanted, then wrap it.

    Args:
        actor (FlowActor): the flow actor; its keys are this module's keys.
        min_step (int, optional): the earliest step ``m`` of the landing point (reference: 6 with
            N = 8). Must be below the actor's ``num_steps`` when the module runs. Defaults to ``6``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.envs.utils import ExplorationType, set_exploration_type
        >>> from torchrl_rldt.modules import FlowActor, FlowModel, LandingPointExploration, VelocityMLP
        >>> actor = FlowActor(FlowModel(VelocityMLP(11, 3, chunk_len=4, hidden_dim=32), 3, 8, chunk_len=4))
        >>> policy = LandingPointExploration(actor, min_step=6)
        >>> obs = TensorDict(observation=torch.randn(5, 11), batch_size=[5])
        >>> policy(obs.clone())["action"].shape
        torch.Size([5, 4, 3])
        >>> with set_exploration_type(ExplorationType.DETERMINISTIC):
        ...     torch.equal(policy(obs.clone())["action"], actor(obs.clone())["action"])
        True
    """

    def __init__(self, actor: FlowActor, min_step: int = 6) -> None:
        super().__init__()
        if not isinstance(actor, FlowActor):
            raise TypeError(f"actor must be a FlowActor, got {type(actor).__name__}.")
        if isinstance(actor, StepwiseFlowActor):  # its blocks come after the base's chain
            raise TypeError("LandingPointExploration explores along a flow's own chain; a "
                            "StepwiseFlowActor's blocks come after it: collect with the actor itself.")
        if type(min_step) is not int or min_step < 0:  # bool is an int too
            raise ValueError(f"min_step must be an integer >= 0, got {min_step!r}.")
        self.actor = actor
        self.min_step = min_step

    _fixed_keys_hint = "wrap a FlowActor built with other in_keys/out_keys"

    def _fixed_in_keys(self) -> list[NestedKey]:
        return self.actor.in_keys

    def _fixed_out_keys(self) -> list[NestedKey]:
        return self.actor.out_keys

    @property
    def spec(self) -> Composite:
        """The actor's output spec: the explored action is clamped to the same bounds."""
        return self.actor.spec

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Writes the (explored) action chunk into ``tensordict``."""
        if is_deterministic_exploration():
            return self.actor(tensordict)
        model = self.actor.model
        num_steps = model.num_steps
        if self.min_step >= num_steps:
            raise ValueError(
                f"min_step={self.min_step} must be below the actor's num_steps={num_steps}."
            )
        observation = tensordict.get(self.actor.observation_key)
        _, chain = model.sample(observation, self.actor.initial_noise(tensordict), return_chain=True)
        step = torch.randint(self.min_step, num_steps, chain.shape[:-3], device=chain.device)
        _, landing = model.chain_landing(observation, chain, step)
        final = chain[..., -1, :, :]
        scale = (final - landing).flatten(-2).norm(dim=-1)[..., None, None]
        tensordict.set(self.actor.action_key, model.clamp(final + scale * torch.randn_like(final)))
        if self.actor.chain_key is not None:
            tensordict.set(self.actor.chain_key, chain)
        return tensordict
