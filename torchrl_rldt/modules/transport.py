# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
"""The SVGD transport field of RLDT, as a TensorDict module."""
from __future__ import annotations

import math
from typing import Literal, Sequence

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from tensordict.utils import NestedKey

__all__ = ["SVGDTransport"]


class SVGDTransport(TensorDictModuleBase):
    """Stein variational gradient descent field over a set of action particles.

    For each state, with particles ``a_1..a_K``, their critic action-gradients ``g_j`` and query
    points ``q_i``:

    ``phi(q_i) = 1/K sum_j [ k(q_i, a_j) g_j + alpha k(q_i, a_j) (q_i - a_j) / h_i ]``

    with the RBF kernel ``k(x, y) = exp(-0.5 ||x - y||^2 / h_i)``. The first term drives
    particles up the critic; the second repels them from each other, so that the field
    transports the particles towards ``pi*(a|s) ~ exp(Q(s, a) / alpha)`` rather than collapsing
    them onto its mode. ``h_i`` is the median rule ``median_j ||q_i - a_j||^2 / (2 log(K + 1))``
    (clamped at ``min_bandwidth``) or a fixed value; ``alpha`` is fixed or state-adaptive,
    ``c * clip(mean_j ||g_j||, 0, max_grad_norm)``. With ``kernel="delta"`` (RLDT-Delta) the
    field is the gradient itself, ``phi(q_i) = g_i``: there the gradients must be those of the
    critic at the query points.

    The work is ``O(K^2 D)`` per state, vectorised over any leading batch shape. The output is a
    target: it carries no gradient.

    Reference: RLDT, "Reinforcement Learning for Flow-Matching Policies with Density Transport",
    arXiv 2606.08602, section 3 of ``docs/rldt-algorithm.md``; SVGD: Liu & Wang, arXiv
    1608.04471.

    Args:
        kernel: ``"rbf"`` or ``"delta"``. Defaults to ``"rbf"``.
        bandwidth: ``None`` for the per-query median rule, or a fixed positive ``h``.
            Defaults to ``None``.
        temperature: ``"adaptive"`` for ``alpha = c * mean gradient norm`` per state, or a fixed
            non-negative ``alpha``. Defaults to ``"adaptive"``.
        temperature_coef: ``c`` of the adaptive temperature. Defaults to ``1e-3``.
        max_grad_norm: the clip of the mean gradient norm in the adaptive temperature.
            Defaults to ``1e5``.
        min_bandwidth: the floor of the median-rule bandwidth. Defaults to ``1e-8``.
        particles_key: particles ``[*B, K, D]``. Defaults to ``"particles"``.
        gradients_key: critic action-gradients at the particles ``[*B, K, D]`` (at the queries
            for ``"delta"``). Defaults to ``"particle_gradients"``.
        queries_key: where the field is evaluated, ``[*B, K', D]``; ``None`` evaluates it at the
            particles. Defaults to ``None``.
        field_key: the output field ``[*B, K', D]``. Defaults to ``"transport_field"``.
        bandwidth_key: the output bandwidths ``[*B, K']`` (RBF only). Defaults to
            ``"transport_bandwidth"``.
        temperature_key: the output temperature ``[*B]``. Defaults to
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
        >>> field, info = transport.field(particles, -particles)
        >>> info["bandwidth"].shape, info["temperature"].shape
        (torch.Size([5, 8]), torch.Size([5]))
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
        particles_key: NestedKey = "particles",
        gradients_key: NestedKey = "particle_gradients",
        queries_key: NestedKey | None = None,
        field_key: NestedKey = "transport_field",
        bandwidth_key: NestedKey = "transport_bandwidth",
        temperature_key: NestedKey = "transport_temperature",
    ) -> None:
        super().__init__()
        if kernel not in ("rbf", "delta"):
            raise ValueError(f"kernel must be 'rbf' or 'delta', got {kernel!r}.")
        if bandwidth is not None and not bandwidth > 0:
            raise ValueError(f"a fixed bandwidth must be positive, got {bandwidth}.")
        if temperature != "adaptive" and not (
            isinstance(temperature, (int, float)) and temperature >= 0
        ):
            raise ValueError(
                f"temperature must be 'adaptive' or a non-negative number, got {temperature!r}."
            )
        if temperature_coef < 0 or max_grad_norm <= 0 or min_bandwidth <= 0:
            raise ValueError(
                "temperature_coef must be >= 0, max_grad_norm and min_bandwidth > 0."
            )
        self.kernel = kernel
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

    def _temperature(self, gradients: torch.Tensor) -> torch.Tensor:
        if self.temperature == "adaptive":
            mean_norm = gradients.norm(dim=-1).mean(-1)
            return self.temperature_coef * mean_norm.clamp(0, self.max_grad_norm)
        return gradients.new_full(gradients.shape[:-2], float(self.temperature))

    @torch.no_grad()
    def field(
        self,
        particles: torch.Tensor,
        gradients: torch.Tensor,
        queries: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The transport field at ``queries`` (default: the particles).

        Args:
            particles: ``[*B, K, D]``.
            gradients: ``[*B, K, D]``, the critic's action-gradients at the particles (at the
                queries for the delta kernel).
            queries: ``[*B, K', D]`` or ``None``.

        Returns:
            The field ``[*B, K', D]`` and a dict with ``"temperature"`` ``[*B]`` and, for the RBF
            kernel, ``"bandwidth"`` ``[*B, K']``.
        """
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
        temperature = self._temperature(gradients)
        if self.kernel == "delta":
            if queries.shape != gradients.shape:
                raise ValueError("the delta kernel needs one gradient per query point.")
            return gradients.clone(), {"temperature": temperature}
        num_particles = particles.shape[-2]
        # Explicit differences rather than the Gram-matrix identity: that one cancels
        # catastrophically once particles concentrate (small distances, large norms).
        diff = queries.unsqueeze(-2) - particles.unsqueeze(-3)  # [*B, K', K, D]
        sq_dist = diff.pow(2).sum(-1)
        if self.bandwidth is None:
            median = sq_dist.median(dim=-1).values
            bandwidth = (median / (2 * math.log(num_particles + 1))).clamp_min(self.min_bandwidth)
        else:
            bandwidth = sq_dist.new_full(sq_dist.shape[:-1], float(self.bandwidth))
        kernel = torch.exp(-0.5 * sq_dist / bandwidth.unsqueeze(-1))  # [*B, K', K]
        drive = kernel @ gradients
        repulsion = (kernel.unsqueeze(-1) * diff).sum(-2) / bandwidth.unsqueeze(-1)
        field = (drive + temperature[..., None, None] * repulsion) / num_particles
        return field, {"temperature": temperature, "bandwidth": bandwidth}

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
