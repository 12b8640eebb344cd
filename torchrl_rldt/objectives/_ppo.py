# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
"""What the package's ``ClipPPOLoss`` subclasses that write their own ``forward`` share with it."""
from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.objectives import ClipPPOLoss


def refuse_ratio_sized_value_clip(loss_name: str, kwargs: dict) -> None:
    """Refuses ``clip_value=True``, which ``ClipPPOLoss`` turns into a clip of the value updates at
    ``clip_epsilon``: a ratio clip (0.01 to 0.05 in these losses) that all but stops the critic.

    Args:
        loss_name (str): the loss, for the message.
        kwargs (dict): the keyword arguments that go on to ``ClipPPOLoss``.

    Raises:
        ValueError: ``kwargs["clip_value"] is True``.
    """
    if kwargs.get("clip_value") is True:
        raise ValueError(
            f"{loss_name} takes clip_value as a float (e.g. clip_value=0.2): True would clip the "
            "value updates at clip_epsilon, the ratio clip."
        )


def check_advantage_shape(advantage: torch.Tensor, batch_shape: torch.Size, key) -> None:
    """Checks that ``advantage`` is ``[*B, 1]``: one value per sample with a trailing dimension.

    A ``[*B]`` advantage would broadcast against the per-sample ratios (``[*B, K]``) instead of
    the batch and give a loss silently averaged over the wrong pairs.

    Args:
        advantage (torch.Tensor): the advantage the surrogate is about to use.
        batch_shape (torch.Size): the samples' batch shape ``[*B]``.
        key (NestedKey): where the advantage was read, for the message.

    Raises:
        ValueError: any other shape.
    """
    expected = tuple(batch_shape) + (1,)
    if tuple(advantage.shape) != expected:
        raise ValueError(
            f"the advantage at {key!r} has shape {tuple(advantage.shape)}, expected {expected}: "
            "one value per sample with a trailing dimension of 1 (add it with "
            "advantage.unsqueeze(-1))."
        )


def critic_out_keys(loss: ClipPPOLoss) -> list[str]:
    """The output keys of ``ClipPPOLoss``'s critic part (what :func:`finish_ppo_output` adds).

    Args:
        loss (ClipPPOLoss): the loss.
    """
    if not loss._has_critic:
        return []
    keys = ["loss_critic"]
    if loss.clip_value:
        keys.append("value_clip_fraction")
    if loss.log_explained_variance:
        keys.append("explained_variance")
    return keys


def finish_ppo_output(loss: ClipPPOLoss, out: TensorDict, tensordict: TensorDictBase) -> TensorDict:
    """The end of ``ClipPPOLoss.forward``: the critic's terms added (with a critic), the ``loss_*``
    terms reduced (``_reduce_loss``, without their trailing dimension), other entries as they are,
    and the weakrefs cleared (a no-op unless under ``torch.compile``).

    Args:
        loss (ClipPPOLoss): the loss whose critic and reduction apply.
        out (TensorDict): its unreduced policy terms and statistics.
        tensordict (TensorDictBase): the batch, for the critic and the reduction's weights and mask.

    Returns:
        The reduced output.
    """
    if loss._has_critic:
        loss_critic, value_clip_fraction, explained_variance = loss.loss_critic(tensordict)
        out.set("loss_critic", loss_critic)
        if value_clip_fraction is not None:
            out.set("value_clip_fraction", value_clip_fraction)
        if explained_variance is not None:
            out.set("explained_variance", explained_variance)
    out = out.named_apply(
        lambda name, value: loss._reduce_loss(value, tensordict).squeeze(-1)
        if name.startswith("loss_")
        else value,
    )
    loss._clear_weakrefs(tensordict, out, "actor_network_params", "critic_network_params",
                         "target_actor_network_params", "target_critic_network_params")
    return out
