# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
"""The SVGD transport field of RLDT: :func:`svgd_field` (the math) and :class:`SVGDTransport`."""
from __future__ import annotations

import math
from typing import Callable, Literal, Sequence

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from tensordict.utils import NestedKey

__all__ = ["SVGDTransport", "svgd_field"]


def _check_options(kernel, bandwidth, temperature, temperature_coef, max_grad_norm, min_bandwidth,
                   normalization):
    if kernel not in ("rbf", "delta"):
        raise ValueError(f"kernel must be 'rbf' or 'delta', got {kernel!r}.")
    if normalization not in ("particles", "kernel_mass"):
        raise ValueError(
            f"normalization must be 'particles' (1/K, the reference) or 'kernel_mass', got "
            f"{normalization!r}."
        )
    if bandwidth is not None and not bandwidth > 0:
        raise ValueError(f"a fixed bandwidth must be positive, got {bandwidth}.")
    if temperature != "adaptive" and not (
        isinstance(temperature, (int, float)) and not isinstance(temperature, bool)
        and temperature >= 0
    ):
        raise ValueError(
            f"temperature must be 'adaptive' or a non-negative number, got {temperature!r}."
        )
    if temperature_coef < 0 or max_grad_norm <= 0 or min_bandwidth <= 0:
        raise ValueError("temperature_coef must be >= 0, max_grad_norm and min_bandwidth > 0.")


@torch.no_grad()
def svgd_field(
    particles: torch.Tensor,
    gradients: torch.Tensor,
    queries: torch.Tensor | None = None,
    *,
    kernel: Literal["rbf", "delta"] = "rbf",
    bandwidth: float | None = None,
    temperature: Literal["adaptive"] | float = "adaptive",
    temperature_coef: float = 1e-3,
    max_grad_norm: float = 1e5,
    min_bandwidth: float = 1e-8,
    normalization: Literal["particles", "kernel_mass"] = "particles",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The Stein variational gradient descent field of particles, evaluated at query points.

    For each state, with particles ``a_1..a_K``, their critic action-gradients ``g_j`` and query
    points ``q_i``:

    ``phi(q_i) = 1/K sum_j [ k(q_i, a_j) g_j + alpha k(q_i, a_j) (q_i - a_j) / h_i ]``

    with the RBF kernel ``k(x, y) = exp(-0.5 ||x - y||^2 / h_i)``. The first term drives
    particles up the critic; the second repels them from each other, so that the field
    transports the particles towards ``pi*(a|s) ~ exp(Q(s, a) / alpha)`` rather than collapsing
    them onto its mode. ``h_i`` is the median rule ``median_j ||q_i - a_j||^2 / (2 log(K + 1))``
    (clamped at ``min_bandwidth``) or a fixed value; ``alpha`` is fixed or state-adaptive,
    ``c * clip(mean_j ||g_j||, 0, max_grad_norm)``. With ``kernel="delta"`` (RLDT-Delta) the
    field is the gradient itself, ``phi(q_i) = g_i``: the gradients must then be taken at the
    queries. The work is ``O(K^2 D)`` per state, vectorised over any leading batch shape; the
    output carries no gradient.

    ``normalization="kernel_mass"`` divides by ``sum_j k(q_i, a_j)`` instead of ``K`` (a departure
    from the reference, ``docs/algorithm.md``): the drive becomes a kernel-weighted average of
    the gradients, as large as the gradient itself, while ``1/K`` passes on only a fraction of it
    (about ``1/K`` at a query far from the other particles). The kernel's smoothing and the
    repulsion stay; only their scale changes.

    Reference: RLDT, arXiv 2606.08602 (``docs/algorithm.md``, "Transport field"); SVGD: Liu &
    Wang, arXiv 1608.04471.

    Args:
        particles (torch.Tensor): ``[*B, K, D]``.
        gradients (torch.Tensor): ``[*B, K, D]``, the critic's action-gradients at the particles
            (at the queries for the delta kernel).
        queries (torch.Tensor, optional): ``[*B, K', D]``; ``None`` evaluates the field at the
            particles. Defaults to ``None``.

    Keyword Args:
        kernel (str, optional): ``"rbf"`` or ``"delta"``. Defaults to ``"rbf"``.
        bandwidth (float, optional): ``None`` for the per-query median rule, or a fixed positive
            ``h``. Defaults to ``None``.
        temperature (str or float, optional): ``"adaptive"`` for ``alpha = c * mean gradient
            norm`` per state, or a fixed non-negative ``alpha``. Defaults to ``"adaptive"``.
        temperature_coef (float, optional): ``c``. Defaults to ``1e-3``.
        max_grad_norm (float, optional): the clip of the mean gradient norm in the adaptive
            temperature. Defaults to ``1e5``.
        min_bandwidth (float, optional): the floor of the median-rule bandwidth. Defaults to
            ``1e-8``.
        normalization (str, optional): what the RBF field's sum is divided by: ``"particles"``
            (``K``, the reference) or ``"kernel_mass"`` (``sum_j k(q_i, a_j)`` per query). No
            effect on the delta kernel. Defaults to ``"particles"``.

    Returns:
        The field ``[*B, K', D]`` and a dict with ``"temperature"`` ``[*B]`` and, for the RBF
        kernel, ``"bandwidth"`` ``[*B, K']``.

    Examples:
        >>> import torch
        >>> from torchrl_rldt.modules import svgd_field
        >>> particles = torch.randn(5, 8, 3)  # 5 states, 8 particles, 3 action dims
        >>> field, info = svgd_field(particles, -particles)
        >>> field.shape, info["bandwidth"].shape, info["temperature"].shape
        (torch.Size([5, 8, 3]), torch.Size([5, 8]), torch.Size([5]))
    """
    _check_options(kernel, bandwidth, temperature, temperature_coef, max_grad_norm, min_bandwidth,
                   normalization)
    if particles.ndim < 2 or particles.shape != gradients.shape:
        raise ValueError(
            f"particles and gradients must both have shape [*B, K, D], got "
            f"{tuple(particles.shape)} and {tuple(gradients.shape)}."
        )
    queries = particles if queries is None else queries
    if queries.shape[:-2] != particles.shape[:-2] or queries.shape[-1] != particles.shape[-1]:
        raise ValueError(
            f"queries must have shape [*B, K', D] = [{tuple(particles.shape[:-2])}, K', "
            f"{particles.shape[-1]}], got {tuple(queries.shape)}."
        )
    if temperature == "adaptive":
        mean_norm = gradients.norm(dim=-1).mean(-1)
        alpha = temperature_coef * mean_norm.clamp(0, max_grad_norm)
    else:
        alpha = gradients.new_full(gradients.shape[:-2], float(temperature))
    if kernel == "delta":
        if queries.shape != gradients.shape:
            raise ValueError("the delta kernel needs one gradient per query point.")
        return gradients.clone(), {"temperature": alpha}
    num_particles = particles.shape[-2]
    # Explicit differences rather than the Gram-matrix identity: that one cancels
    # catastrophically once particles concentrate (small distances, large norms).
    diff = queries.unsqueeze(-2) - particles.unsqueeze(-3)  # [*B, K', K, D]
    sq_dist = diff.pow(2).sum(-1)
    if bandwidth is None:
        median = sq_dist.median(dim=-1).values
        h = (median / (2 * math.log(num_particles + 1))).clamp_min(min_bandwidth)
    else:
        h = sq_dist.new_full(sq_dist.shape[:-1], float(bandwidth))
    weights = torch.exp(-0.5 * sq_dist / h.unsqueeze(-1))  # [*B, K', K]
    drive = weights @ gradients
    repulsion = (weights.unsqueeze(-1) * diff).sum(-2) / h.unsqueeze(-1)
    if normalization == "kernel_mass":
        # the median rule keeps half the weights >= 1 / (K + 1); a small fixed bandwidth can
        # underflow them all, and then drive and repulsion are 0 as well
        mass = weights.sum(-1, keepdim=True).clamp_min(torch.finfo(weights.dtype).tiny)
    else:
        mass = num_particles
    field = (drive + alpha[..., None, None] * repulsion) / mass
    return field, {"temperature": alpha, "bandwidth": h}


class SVGDTransport(TensorDictModuleBase):
    """RLDT's transport field as a TensorDict module: :func:`svgd_field` with fixed options.

    Reads particles ``[*B, K, D]``, their critic action-gradients and, optionally, query points;
    writes the field, the temperature and (RBF only) the bandwidths. Besides the TensorDict
    call, :meth:`transport` takes a function returning the critic's action-gradient at given
    points and asks it where the kernel needs it: at the particles for the RBF kernel, at the
    queries for the delta kernel (RLDT-Delta, where the field is the gradient at the query).

    Reference: RLDT, arXiv 2606.08602 (``docs/algorithm.md``, "Transport field"); SVGD: Liu &
    Wang, arXiv 1608.04471.

    Args:
        kernel (str, optional): ``"rbf"`` or ``"delta"``. Defaults to ``"rbf"``.
        bandwidth (float, optional): ``None`` for the per-query median rule, or a fixed positive
            ``h``. Defaults to ``None``.
        temperature (str or float, optional): ``"adaptive"`` (``c`` times the mean gradient
            norm per state) or a fixed non-negative ``alpha``. Defaults to ``"adaptive"``.

    Keyword Args:
        temperature_coef (float, optional): ``c`` of the adaptive temperature. Defaults to
            ``1e-3``.
        max_grad_norm (float, optional): the clip of the mean gradient norm in the adaptive
            temperature. Defaults to ``1e5``.
        min_bandwidth (float, optional): the floor of the median-rule bandwidth. Defaults to
            ``1e-8``.
        normalization (str, optional): ``"particles"`` (divide by ``K``, the reference) or
            ``"kernel_mass"`` (by ``sum_j k(q_i, a_j)``; see :func:`svgd_field`). Defaults to
            ``"particles"``.
        particles_key (NestedKey, optional): particles ``[*B, K, D]``. Defaults to
            ``"particles"``.
        gradients_key (NestedKey, optional): critic action-gradients at the particles (at the
            queries for ``"delta"``). Defaults to ``"particle_gradients"``.
        queries_key (NestedKey, optional): where the field is evaluated, ``[*B, K', D]``;
            ``None`` evaluates it at the particles. Defaults to ``None``.
        field_key (NestedKey, optional): the output field ``[*B, K', D]``. Defaults to
            ``"transport_field"``.
        bandwidth_key (NestedKey, optional): the output bandwidths ``[*B, K']`` (RBF only; not
            an out key of the delta kernel). Defaults to ``"transport_bandwidth"``.
        temperature_key (NestedKey, optional): the output temperature ``[*B]``. Defaults to
            ``"transport_temperature"``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl_rldt.modules import SVGDTransport
        >>> transport = SVGDTransport()
        >>> particles = torch.randn(5, 8, 3)  # 5 states, 8 particles, 3 action dims
        >>> td = TensorDict(particles=particles, particle_gradients=-particles, batch_size=[5])
        >>> transport(td)["transport_field"].shape
        torch.Size([5, 8, 3])
        >>> field, info = transport.transport(particles, lambda points: -points)
        >>> sorted(info)
        ['bandwidth', 'gradient', 'temperature']
    """

    def __init__(
        self,
        kernel: Literal["rbf", "delta"] = "rbf",
        bandwidth: float | None = None,
        temperature: Literal["adaptive"] | float = "adaptive",
        *,
        temperature_coef: float = 1e-3,
        max_grad_norm: float = 1e5,
        min_bandwidth: float = 1e-8,
        normalization: Literal["particles", "kernel_mass"] = "particles",
        particles_key: NestedKey = "particles",
        gradients_key: NestedKey = "particle_gradients",
        queries_key: NestedKey | None = None,
        field_key: NestedKey = "transport_field",
        bandwidth_key: NestedKey = "transport_bandwidth",
        temperature_key: NestedKey = "transport_temperature",
    ) -> None:
        super().__init__()
        _check_options(kernel, bandwidth, temperature, temperature_coef, max_grad_norm,
                       min_bandwidth, normalization)
        self.kernel = kernel
        self.normalization = normalization
        self.bandwidth = bandwidth
        self.temperature = temperature
        self.temperature_coef = temperature_coef
        self.max_grad_norm = max_grad_norm
        self.min_bandwidth = min_bandwidth
        self.particles_key, self.gradients_key = particles_key, gradients_key
        self.queries_key = queries_key
        self.field_key = field_key
        self.bandwidth_key, self.temperature_key = bandwidth_key, temperature_key
        self.in_keys: Sequence[NestedKey] = [particles_key, gradients_key] + (
            [queries_key] if queries_key is not None else []
        )
        self.out_keys: Sequence[NestedKey] = [field_key, temperature_key] + (
            [bandwidth_key] if kernel == "rbf" else []
        )

    def field(
        self,
        particles: torch.Tensor,
        gradients: torch.Tensor,
        queries: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """:func:`svgd_field` with this module's options (see there for shapes)."""
        return svgd_field(
            particles, gradients, queries, kernel=self.kernel, bandwidth=self.bandwidth,
            temperature=self.temperature, temperature_coef=self.temperature_coef,
            max_grad_norm=self.max_grad_norm, min_bandwidth=self.min_bandwidth,
            normalization=self.normalization,
        )

    def transport(
        self,
        particles: torch.Tensor,
        action_gradient: Callable[[torch.Tensor], torch.Tensor],
        queries: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The field at ``queries``, with the critic's gradient taken where the kernel needs it.

        Args:
            particles (torch.Tensor): ``[*B, K, D]``.
            action_gradient (callable): ``points [*B, K, D] -> dQ/da [*B, K, D]``.
            queries (torch.Tensor, optional): ``[*B, K, D]``; defaults to the particles.

        Returns:
            The field and :func:`svgd_field`'s info, with the gradient used under
            ``"gradient"``.
        """
        at = queries if self.kernel == "delta" and queries is not None else particles
        gradient = action_gradient(at)
        field, info = self.field(particles, gradient, queries)
        return field, {**info, "gradient": gradient}

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Reads particles, gradients (and queries) and writes the field and its statistics."""
        particles = tensordict.get(self.particles_key)
        gradients = tensordict.get(self.gradients_key)
        queries = None if self.queries_key is None else tensordict.get(self.queries_key)
        field, info = self.field(particles, gradients, queries)
        tensordict.set(self.field_key, field)
        tensordict.set(self.temperature_key, info["temperature"])
        if "bandwidth" in info:
            tensordict.set(self.bandwidth_key, info["bandwidth"])
        return tensordict
