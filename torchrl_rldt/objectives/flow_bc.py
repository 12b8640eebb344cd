# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
"""Flow-matching behaviour cloning: the pretraining loss of a flow policy."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase, TensorDictParams
from tensordict.nn import dispatch
from tensordict.utils import NestedKey
from torchrl.objectives import LossModule

from torchrl_rldt.modules import FlowActor
from torchrl_rldt.objectives._validation import check_reduction
from torchrl_rldt.objectives.functional import cfm_loss, flow_interpolant

__all__ = ["FlowMatchingBCLoss"]


class FlowMatchingBCLoss(LossModule):
    """Conditional flow-matching loss for pretraining a :class:`~torchrl_rldt.modules.FlowActor`.

    With ``t ~ U[0, 1]``, ``z ~ N(0, I)`` and the demonstration chunk ``a``,
    ``x_t = (1 - t) z + t a`` and the loss is ``|| v(x_t, t | s) - (a - z) ||^2``,
    summed over the chunk and action dimensions, then reduced over the batch.

    Reference: Lipman et al., "Flow Matching for Generative Modeling",
    arXiv 2210.02747; the pretraining loss of RLDT (arXiv 2606.08602; ``docs/algorithm.md``,
    "Pretraining").

    Args:
        actor_network (FlowActor): the flow policy to train.

    Keyword Args:
        reduction (str, optional): ``"mean"``, ``"sum"`` or ``"none"``.
            Defaults to ``"mean"``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl_rldt.modules import FlowActor, FlowModel, VelocityMLP
        >>> from torchrl_rldt.objectives import FlowMatchingBCLoss
        >>> actor = FlowActor(FlowModel(VelocityMLP(11, 3, chunk_len=4, hidden_dim=32), 3, chunk_len=4))
        >>> loss = FlowMatchingBCLoss(actor)
        >>> data = TensorDict(observation=torch.randn(8, 11), action=torch.randn(8, 4, 3),
        ...                   batch_size=[8])
        >>> loss(data)["loss_flow_bc"].shape
        torch.Size([])
        >>> loss(observation=data["observation"], action=data["action"]).shape
        torch.Size([])
    """

    @dataclass
    class _AcceptedKeys:
        """Keys of the input tensordict; change them with :meth:`set_keys`.

        Attributes:
            observation (NestedKey): the conditioning observation. Defaults to the actor's
                ``observation_key`` (``"observation"``).
            action (NestedKey): the demonstration action chunk [*B, H, A]. Defaults to the
                actor's ``action_key`` (``"action"``).
        """

        observation: NestedKey = "observation"
        action: NestedKey = "action"

    default_keys = _AcceptedKeys
    tensor_keys: _AcceptedKeys
    default_value_estimator = None
    actor_network: FlowActor
    actor_network_params: TensorDictParams
    target_actor_network_params: TensorDictParams

    def __init__(self, actor_network: FlowActor, *, reduction: str | None = None) -> None:
        if not isinstance(actor_network, FlowActor):
            raise TypeError(
                f"actor_network must be a FlowActor, got {type(actor_network).__name__}."
            )
        reduction = check_reduction(reduction)
        super().__init__()
        self._out_keys = None
        self.reduction = reduction
        self.convert_to_functional(actor_network, "actor_network")
        # the actor's own keys are the loss's defaults, as in the package's other losses
        self.set_keys(observation=actor_network.observation_key, action=actor_network.action_key)

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        pass

    @property
    def in_keys(self) -> list[NestedKey]:
        return [self.tensor_keys.observation, self.tensor_keys.action]

    @property
    def out_keys(self) -> list[str]:
        if self._out_keys is None:
            self._out_keys = ["loss_flow_bc"]
        return self._out_keys

    @out_keys.setter
    def out_keys(self, values) -> None:
        self._out_keys = values

    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDict:
        action = tensordict.get(self.tensor_keys.action)
        observation = tensordict.get(self.tensor_keys.observation)
        model = self.actor_network.model
        if action.shape[-2:] != model.action_shape:
            raise ValueError(
                f"the action chunk at {self.tensor_keys.action!r} has trailing shape "
                f"{tuple(action.shape[-2:])}, the actor expects {tuple(model.action_shape)}."
            )
        noise = torch.randn_like(action)
        time = torch.rand(action.shape[:-2], device=action.device)
        with self.actor_network_params.to_module(self.actor_network):
            velocity = model.velocity(observation, flow_interpolant(noise, action, time), time)
        loss = cfm_loss(velocity, noise, action)
        return TensorDict(loss_flow_bc=self._reduce_loss(loss, tensordict))
