# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
"""What the package's ``ClipPPOLoss`` subclasses that write their own ``forward`` share with it."""
from __future__ import annotations

from tensordict import TensorDict, TensorDictBase
from torchrl.objectives import ClipPPOLoss


def finish_ppo_output(loss: ClipPPOLoss, out: TensorDict, tensordict: TensorDictBase) -> TensorDict:
    """The end of ``ClipPPOLoss.forward``: the ``loss_*`` terms reduced (``_reduce_loss``, without
    their trailing dimension), other entries as they are, and the weakrefs cleared (a no-op unless
    under ``torch.compile``).

    Args:
        loss (ClipPPOLoss): the loss whose reduction applies.
        out (TensorDict): its unreduced terms and statistics.
        tensordict (TensorDictBase): the batch, for the reduction's weights and mask.

    Returns:
        The reduced output.
    """
    out = out.named_apply(
        lambda name, value: loss._reduce_loss(value, tensordict).squeeze(-1)
        if name.startswith("loss_")
        else value,
    )
    loss._clear_weakrefs(tensordict, out, "actor_network_params", "critic_network_params",
                         "target_actor_network_params", "target_critic_network_params")
    return out
