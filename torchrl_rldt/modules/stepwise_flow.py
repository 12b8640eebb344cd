# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
"""SWFP's policy: a frozen flow policy followed by a cascade of small flow blocks, one per stage.

Our reading of the abstract of Sun, Ding, Zhang, Wang, "Iterative Refinement of Flow Policies in
Probability Space for Online Reinforcement Learning" (SWFP), arXiv 2510.15388: fine-tuning is a
sequence of small transformations between nearby distributions; the pretrained flow stays, and
each stage trains one small flow block on top of the previous iterate. Every choice the abstract
leaves open is listed, with its reason, in ``docs/swfp.md``.
"""
from __future__ import annotations

import logging
from typing import Literal, Sequence

import torch
from tensordict import TensorDictBase
from tensordict.nn import dispatch
from torch import nn
from torch.func import jacrev, jvp, vjp, vmap

from torchrl_rldt.modules.flow import FlowActor

__all__ = ["StepwiseFlowActor"]

log = logging.getLogger(__name__)

# the largest chunk size H * A whose block log-determinant is computed exactly ("auto")
EXACT_LOG_DET_MAX_DIM = 32


def _output_layer(network: nn.Module) -> nn.Linear:
    """The layer whose zero weights make ``network``'s output 0: its ``output_layer`` when it has
    one (:class:`~torchrl_rldt.modules.VelocityMLP`), else its last registered ``nn.Linear``."""
    layer = getattr(network, "output_layer", None)
    if isinstance(layer, nn.Linear):
        return layer
    linears = [module for module in network.modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise TypeError(
            f"a block network must end in an nn.Linear (its 'output_layer', or its last registered "
            f"nn.Linear) that is zero-initialised so that the block starts as the identity; "
            f"{type(network).__name__} has none."
        )
    return linears[-1]


class StepwiseFlowActor(FlowActor):
    """A frozen flow actor followed by a cascade of small flow blocks ``T_1 .. T_m`` (SWFP).

    Our reading of the abstract of SWFP (arXiv 2510.15388; ``docs/swfp.md`` lists every choice the
    abstract leaves open): the pretrained flow stays, and fine-tuning trains one small flow block
    per stage, each a short flow on the action chunk ``[*B, H, A]``:

    ``x <- x + h u_k(s, x, r)``, ``r = j h`` for ``j = 0 .. L - 1``, ``h = 1 / L``

    (``L = block_steps`` explicit Euler steps of the block's velocity network ``u_k``, a small
    state-conditioned network, e.g. :class:`~torchrl_rldt.modules.VelocityMLP`). A sample is the
    base's unclamped chain end, then the blocks ``T_1 .. T_{k+1}`` up to the active one (index
    ``k``, a buffer: saved in the state dict, moved by
    :class:`~torchrl_rldt.objectives.StageUpdater`), and only then the clamp to the base model's
    bounds: the executed action. Each block's output layer is zero-initialised, so a block starts
    as the identity and a new stage starts at the previous policy.

    Everything else is :class:`~torchrl_rldt.modules.FlowActor`'s, so that collectors, evaluation
    and the critic's TD target work unchanged: the keys (the base's observation, action and noise
    keys), ``@dispatch`` (keyword tensors in, tensors out), :attr:`action_spec` and the bounds (the
    base model's), and the exploration contract: the base starts from ``x_0 = 0`` under a
    deterministic exploration type, from ``N(0, I)`` otherwise, and the blocks are deterministic
    maps. :attr:`model` is the base :class:`~torchrl_rldt.modules.FlowModel`: ``model.sample``
    samples the base alone; :meth:`sample` samples the cascade.

    The base's parameters are frozen (``requires_grad=False``, in place: the base actor's model is
    this actor's).

    :meth:`block_with_log_det` also returns ``log|det dT_k/da|``: exactly, for ``H * A <= 32``, as
    ``sum_j log|det(I + h J_j)|`` with ``J_j`` the Jacobian of ``u_k`` with respect to ``x`` at the
    ``j``-th Euler step (``torch.func.vmap`` of ``jacrev``), which is the log-determinant of the
    whole block by the chain rule; above, by default, a one-probe Hutchinson estimate of the series
    ``log det(I + h J) = h tr(J) - h^2 tr(J^2) / 2 + O(h^3)`` truncated after the second term.

    Reference: Sun, Ding, Zhang, Wang, "Iterative Refinement of Flow Policies in Probability Space
    for Online Reinforcement Learning", arXiv 2510.15388 (our reading of the abstract).

    Args:
        base (FlowActor): the pretrained flow policy, frozen; its keys (without a chain key) and its
            model's bounds are this actor's.
        block_networks (sequence of nn.Module): the velocity networks ``u_1 .. u_m`` of the
            ``m = num_blocks`` preallocated blocks, each ``u(observation, action, time)`` returning
            a tensor shaped like ``action`` ``[*B, H, A]`` for ``time`` of shape ``[*B]``. Each one's
            output layer (its ``output_layer`` attribute, else its last registered ``nn.Linear``)
            is zeroed here.

    Keyword Args:
        block_steps (int, optional): ``L``, the Euler steps of one block. Defaults to ``2``.
        log_det (str, optional): how :meth:`block_with_log_det` computes the log-determinant:
            ``"exact"``, ``"hutchinson"`` or ``"auto"`` (exact for ``H * A <= 32``). Defaults to
            ``"auto"``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.envs.utils import ExplorationType, set_exploration_type
        >>> from torchrl_rldt.modules import FlowActor, FlowModel, StepwiseFlowActor, VelocityMLP
        >>> base = FlowActor(FlowModel(VelocityMLP(11, 3, chunk_len=4, hidden_dim=64), 3, num_steps=8,
        ...                            chunk_len=4, low=-1.0, high=1.0))
        >>> actor = StepwiseFlowActor(base, [VelocityMLP(11, 3, chunk_len=4, hidden_dim=16)
        ...                                  for _ in range(3)], block_steps=2)
        >>> actor.num_blocks, actor.active_index
        (3, 0)
        >>> td = TensorDict(observation=torch.randn(5, 11), flow_noise=torch.randn(5, 4, 3), batch_size=[5])
        >>> torch.equal(actor(td.clone())["action"], base(td.clone())["action"])  # blocks start as the identity
        True
        >>> actor.advance_block(), actor.active_index
        (True, 1)
        >>> with set_exploration_type(ExplorationType.DETERMINISTIC):  # x0 = 0 through the base, then the blocks
        ...     action = actor(observation=torch.randn(5, 11))
        >>> action.shape, bool(actor.action_spec.is_in(action))
        (torch.Size([5, 4, 3]), True)
        >>> moved, log_det = actor.block_with_log_det(1, torch.randn(5, 11), torch.randn(5, 4, 3))
        >>> moved.shape, log_det.shape
        (torch.Size([5, 4, 3]), torch.Size([5]))
    """

    def __init__(
        self,
        base: FlowActor,
        block_networks: Sequence[nn.Module],
        *,
        block_steps: int = 2,
        log_det: Literal["auto", "exact", "hutchinson"] = "auto",
    ) -> None:
        if not isinstance(base, FlowActor) or isinstance(base, StepwiseFlowActor):
            raise TypeError(f"base must be a FlowActor, got {type(base).__name__}.")
        if base.chain_key is not None:
            raise ValueError(
                f"base writes a chain ({base.chain_key!r}); a StepwiseFlowActor writes the action "
                "alone (the base's chain is not the cascade's): give a base without a chain key."
            )
        block_networks = list(block_networks)
        if not block_networks or not all(isinstance(net, nn.Module) for net in block_networks):
            raise ValueError("block_networks must be a non-empty sequence of nn.Module.")
        if type(block_steps) is not int or block_steps < 1:  # bool is an int too
            raise ValueError(f"block_steps must be an integer >= 1, got {block_steps!r}.")
        if log_det not in ("auto", "exact", "hutchinson"):
            raise ValueError(f"log_det must be 'auto', 'exact' or 'hutchinson', got {log_det!r}.")
        super().__init__(base.model, in_keys=base.in_keys, out_keys=[base.action_key],
                         noise_key=base.noise_key)
        self.model.requires_grad_(False)
        self.blocks = nn.ModuleList(block_networks)
        with torch.no_grad():
            for network in self.blocks:
                layer = _output_layer(network)
                layer.weight.zero_()
                if layer.bias is not None:
                    layer.bias.zero_()
        self.block_steps = block_steps
        self.log_det = log_det
        self.register_buffer("active_block", torch.zeros((), dtype=torch.long))

    # --- the stage -------------------------------------------------------------------------------
    @property
    def num_blocks(self) -> int:
        """The number ``m`` of preallocated blocks."""
        return len(self.blocks)

    @property
    def active_index(self) -> int:
        """The index ``k`` (from 0) of the block being trained; samples use blocks ``0 .. k``."""
        return int(self.active_block)

    @torch.no_grad()
    def set_active_block(self, index: int) -> None:
        """Makes block ``index`` the active one (in place: the buffer keeps its identity)."""
        if type(index) is not int or not 0 <= index < self.num_blocks:
            raise ValueError(f"index must be an integer in [0, {self.num_blocks}), got {index!r}.")
        self.active_block.fill_(index)
        log.debug("StepwiseFlowActor: block %d of %d is active", index + 1, self.num_blocks)

    def advance_block(self) -> bool:
        """Activates the next block; after the last one the last block stays active.

        Returns:
            Whether the active block changed.
        """
        index = self.active_index
        if index + 1 >= self.num_blocks:
            return False
        self.set_active_block(index + 1)
        return True

    def block_parameters(self, index: int | None = None) -> list[nn.Parameter]:
        """The parameters of block ``index``, or of every block (``None``): what an optimiser holds."""
        blocks = self.blocks if index is None else [self.blocks[index]]
        return [param for block in blocks for param in block.parameters()]

    # --- the blocks ------------------------------------------------------------------------------
    def _time(self, step: int, action: torch.Tensor) -> torch.Tensor:
        time = torch.as_tensor(step / self.block_steps, dtype=action.dtype, device=action.device)
        return time.expand(action.shape[:-2])

    def apply_block(self, index: int, observation: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """``T_index(action)``: the block's ``L`` Euler steps from ``action``, unclamped.

        Args:
            index (int): the block, from 0.
            observation (torch.Tensor): ``[*B, D]``.
            action (torch.Tensor): ``[*B, H, A]``.
        """
        network, step_size = self.blocks[index], 1.0 / self.block_steps
        for step in range(self.block_steps):
            action = action + step_size * network(observation, action, self._time(step, action))
        return action

    def cascade(self, observation: torch.Tensor, noise: torch.Tensor, *,
                num_blocks: int | None = None) -> torch.Tensor:
        """The base's unclamped chain end from ``noise``, then blocks ``0 .. num_blocks - 1``, unclamped.

        Args:
            observation (torch.Tensor): ``[*B, D]``.
            noise (torch.Tensor): the base's ``x_0``, ``[*B, H, A]``.

        Keyword Args:
            num_blocks (int, optional): how many blocks to apply. Defaults to ``active_index + 1``.
        """
        if num_blocks is None:
            num_blocks = self.active_index + 1
        action = self.model.integrate(observation, noise).chain[..., -1, :, :]
        for index in range(num_blocks):
            action = self.apply_block(index, observation, action)
        return action

    def sample(self, observation: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """An executed action chunk ``[*B, H, A]``: the cascade up to the active block, clamped.

        Args:
            observation (torch.Tensor): ``[*B, D]``.
            noise (torch.Tensor, optional): the base's ``x_0``. Defaults to ``N(0, I)``.
        """
        if noise is None:
            noise = self.model.initial_noise(observation.shape[:-1], observation.device)
        return self.model.clamp(self.cascade(observation, noise))

    def _log_det_method(self) -> str:
        if self.log_det != "auto":
            return self.log_det
        size = self.model.chunk_len * self.model.action_dim
        return "exact" if size <= EXACT_LOG_DET_MAX_DIM else "hutchinson"

    def block_with_log_det(
        self, index: int, observation: torch.Tensor, action: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``T_index(action)`` and ``log|det dT_index/da|`` ``[*B]``, both differentiable.

        Exact (``sum_j log|det(I + h J_j)|``) or a Hutchinson estimate, per ``log_det``.

        Args:
            index (int): the block, from 0.
            observation (torch.Tensor): ``[*B, D]`` (broadcast to the action's batch shape).
            action (torch.Tensor): ``[*B, H, A]``.
        """
        network, step_size = self.blocks[index], 1.0 / self.block_steps
        observation = observation.expand(*action.shape[:-2], observation.shape[-1])
        exact = self._log_det_method() == "exact"
        log_det = action.new_zeros(action.shape[:-2])
        for step in range(self.block_steps):
            time = self._time(step, action)
            if exact:
                velocity, jacobian = self._velocity_and_jacobian(network, observation, action, time)
                eye = torch.eye(jacobian.shape[-1], dtype=jacobian.dtype, device=jacobian.device)
                log_det = log_det + torch.linalg.slogdet(eye + step_size * jacobian).logabsdet
            else:
                velocity, estimate = self._velocity_and_trace_estimate(network, observation, action,
                                                                       time, step_size)
                log_det = log_det + estimate
            action = action + step_size * velocity
        return action, log_det

    @staticmethod
    def _velocity_and_jacobian(network, observation, action, time):
        """``u(s, x, r)`` ``[*B, H, A]`` and its Jacobian in ``x``, ``[*B, H A, H A]``."""
        batch_shape, event_shape = action.shape[:-2], action.shape[-2:]

        def velocity(obs, x, t):  # one sample, as a batch of one for the network
            u = network(obs.unsqueeze(0), x.unsqueeze(0), t.unsqueeze(0)).reshape(-1)
            return u, u

        jacobian, flat = vmap(jacrev(velocity, argnums=1, has_aux=True))(
            observation.reshape(-1, observation.shape[-1]), action.reshape(-1, *event_shape),
            time.reshape(-1))
        size = event_shape.numel()
        return (flat.reshape(*batch_shape, *event_shape),
                jacobian.reshape(*batch_shape, size, size))

    @staticmethod
    def _velocity_and_trace_estimate(network, observation, action, time, step_size):
        """``u`` and ``h v.Jv - h^2 (J^T v).(J v) / 2`` for one Rademacher probe ``v`` per sample."""
        probe = torch.randint(0, 2, action.shape, device=action.device).to(action.dtype) * 2 - 1

        def velocity(x):
            return network(observation, x, time)

        action = action.contiguous()  # forward-mode AD refuses an expanded primal
        value, jacobian_probe = jvp(velocity, (action,), (probe,))
        _, pullback = vjp(velocity, action)
        (transposed_probe,) = pullback(probe)
        first = (probe * jacobian_probe).sum((-2, -1))
        second = (transposed_probe * jacobian_probe).sum((-2, -1))
        return value, step_size * first - 0.5 * step_size ** 2 * second

    @dispatch(auto_batch_size=False)
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Samples an executed action chunk (base, then the blocks up to the active one) into ``tensordict``."""
        observation = tensordict.get(self.observation_key)
        return tensordict.set(self.action_key, self.sample(observation, self.initial_noise(tensordict)))

    def extra_repr(self) -> str:
        return f"num_blocks={self.num_blocks}, block_steps={self.block_steps}, log_det={self.log_det!r}"
