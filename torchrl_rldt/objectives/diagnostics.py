# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
"""What an actor step follows: the sizes of the policy terms' gradients and their agreement."""
from __future__ import annotations

import torch
from tensordict import TensorDictBase

from torchrl_rldt.objectives.critic import ChunkQEnsembleLoss

__all__ = ["policy_term_gradients"]


def _flat_gradient(value: torch.Tensor, params: list[torch.Tensor], retain_graph: bool) -> torch.Tensor:
    if not value.requires_grad:  # a term of weight 0, or one that does not reach the actor
        return params[0].new_zeros(sum(param.numel() for param in params))
    gradients = torch.autograd.grad(value, params, retain_graph=retain_graph, allow_unused=True)
    return torch.cat([(torch.zeros_like(param) if gradient is None else gradient).flatten()
                      for gradient, param in zip(gradients, params)])


def policy_term_gradients(
    loss: ChunkQEnsembleLoss,
    batch: TensorDictBase,
    other_batch: TensorDictBase,
    *,
    drive_term: str | None = None,
    anchor_term: str | None = None,
) -> dict[str, float]:
    """The gradient of each weighted policy term on the actor's parameters, at one step.

    An actor step of RLDT (or QAM) follows the sum of its policy terms: one that drives the
    policy up the critic (RLDT's ``loss_rl``, QAM's ``loss_adjoint``) and one that holds it near
    an anchor policy (``loss_reference``, ``loss_base_constraint``). Adam rescales the sum, not
    the balance between them, so the ratio of their gradients' norms says how much of a step
    follows the critic. The drive's gradient on two independent batches also says how much of
    it is signal: their cosine is near 1 when one batch's step points where the next one's does,
    near 0 when it is mostly noise that Adam's moment estimates average away.

    The loss is called twice (it moves nothing: the anchors move with their updaters), in full
    precision, and no gradient is left on the parameters.

    Args:
        loss (ChunkQEnsembleLoss): an :class:`~torchrl_rldt.objectives.RLDTLoss` or
            :class:`~torchrl_rldt.objectives.QAMLoss` (anything with ``actor_loss`` and
            ``POLICY_TERMS``).
        batch (TensorDictBase): states, as the actor step samples them.
        other_batch (TensorDictBase): independent states of the same size.

    Keyword Args:
        drive_term (str, optional): the term that follows the critic. Defaults to the first of
            ``loss.POLICY_TERMS``.
        anchor_term (str, optional): the trust-region term. Defaults to the last of
            ``loss.POLICY_TERMS``.

    Returns:
        ``gradient_norm_<term>`` for each policy term (on ``batch``),
        ``drive_to_anchor_gradient_ratio`` and ``drive_gradient_cosine`` (between the two
        batches), as floats.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.modules import ValueOperator
        >>> from torchrl_rldt.modules import ChunkQValueMLP, FlowActor, FlowModel, VelocityMLP
        >>> from torchrl_rldt.objectives import RLDTLoss
        >>> from torchrl_rldt.objectives.diagnostics import policy_term_gradients
        >>> _ = torch.manual_seed(0)
        >>> actor = FlowActor(FlowModel(VelocityMLP(3, 2, chunk_len=2, hidden_dim=16), 2,
        ...                             num_steps=4, chunk_len=2))
        >>> critic = ValueOperator(ChunkQValueMLP(3, 2, chunk_len=2, hidden_dim=16),
        ...                        in_keys=["observation", "action"])
        >>> loss = RLDTLoss(actor, critic, num_particles=4)
        >>> report = policy_term_gradients(loss, TensorDict(observation=torch.randn(64, 3), batch_size=[64]),
        ...                                TensorDict(observation=torch.randn(64, 3), batch_size=[64]))
        >>> sorted(report)  # doctest: +NORMALIZE_WHITESPACE
        ['drive_gradient_cosine', 'drive_to_anchor_gradient_ratio', 'gradient_norm_loss_consistency',
         'gradient_norm_loss_reference', 'gradient_norm_loss_rl']
    """
    terms_names = tuple(loss.POLICY_TERMS)
    drive_term = terms_names[0] if drive_term is None else drive_term
    anchor_term = terms_names[-1] if anchor_term is None else anchor_term
    for name in (drive_term, anchor_term):
        if name not in terms_names:
            raise ValueError(f"{name!r} is not one of the loss's policy terms {terms_names}.")
    params = [param for param in loss.actor_network_params.values(True, True) if param.requires_grad]
    device_type = params[0].device.type
    with torch.autocast(device_type, enabled=False):
        terms = loss.actor_loss(batch)
        gradients = {name: _flat_gradient(terms[name], params, retain_graph=True) for name in terms_names}
        other = _flat_gradient(loss.actor_loss(other_batch)[drive_term], params, retain_graph=False)
    norms = {name: gradient.norm() for name, gradient in gradients.items()}
    report = {f"gradient_norm_{name}": norm.item() for name, norm in norms.items()}
    report["drive_to_anchor_gradient_ratio"] = (
        norms[drive_term] / norms[anchor_term].clamp_min(torch.finfo(norms[anchor_term].dtype).tiny)
    ).item()
    report["drive_gradient_cosine"] = torch.nn.functional.cosine_similarity(
        gradients[drive_term], other, dim=0).item()
    return report
