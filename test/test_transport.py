# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
from __future__ import annotations

import argparse
import math

import pytest
import torch
from tensordict import TensorDict

from torchrl_rldt.modules import SVGDTransport


def run_svgd(transport, particles, score, steps, step_size):
    for _ in range(steps):
        field, _ = transport.field(particles, score(particles))
        particles = particles + step_size * field
    return particles


class TestSVGDTransport:
    def test_particles_reach_a_gaussian_target(self):
        """With alpha = 1 and gradients = the target's score, SVGD samples the target."""
        torch.manual_seed(0)
        mean = torch.tensor([[1.0, -2.0], [0.0, 3.0], [-1.5, 0.5]])  # 3 states
        std = torch.tensor([0.5, 1.0, 0.8]).view(3, 1, 1)
        particles = torch.randn(3, 100, 2) * 0.3 + 4.0  # far from all targets, too narrow

        def score(a):
            return -(a - mean.unsqueeze(-2)) / std**2

        transport = SVGDTransport(temperature=1.0)
        particles = run_svgd(transport, particles, score, steps=1500, step_size=0.05)
        torch.testing.assert_close(particles.mean(-2), mean, atol=0.1, rtol=0)
        variance = particles.var(-2) / std.squeeze(-1) ** 2  # ratio to the target variance
        assert ((variance > 0.75) & (variance < 1.25)).all(), variance

    def test_two_mode_target_keeps_particles_in_both_modes(self):
        torch.manual_seed(0)
        centres = torch.tensor([[-2.0, 0.0], [2.0, 0.0]])

        def score(a):
            a = a.detach().requires_grad_(True)
            log_p = torch.logsumexp(-0.5 * torch.cdist(a, centres).pow(2) / 0.3**2, dim=-1)
            return torch.autograd.grad(log_p.sum(), a)[0]

        particles = torch.randn(1, 64, 2) * 0.5
        particles = run_svgd(SVGDTransport(temperature=1.0), particles, score, 800, 0.02)
        nearest = torch.cdist(particles[0], centres).argmin(-1)
        assert 0.3 < (nearest == 0).float().mean() < 0.7
        assert torch.cdist(particles[0], centres).min(-1).values.max() < 1.0

    @pytest.mark.parametrize("kernel", ["rbf", "delta"])
    def test_degenerate_inputs_stay_finite(self, kernel):
        transport = SVGDTransport(kernel)
        identical = torch.ones(4, 8, 6)
        for particles, gradients in [
            (identical, torch.randn(4, 8, 6)),  # all particles equal: zero distances
            (torch.randn(4, 1, 6), torch.randn(4, 1, 6)),  # K = 1
            (torch.randn(4, 8, 6), torch.zeros(4, 8, 6)),  # flat critic
        ]:
            field, info = transport.field(particles, gradients)
            assert field.shape == particles.shape
            assert torch.isfinite(field).all() and torch.isfinite(info["temperature"]).all()
        field, _ = transport.field(identical, torch.zeros(4, 8, 6))
        assert field.abs().max() == 0

    def test_matches_the_formula_state_by_state(self):
        torch.manual_seed(0)
        particles, gradients = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4)
        queries = torch.randn(2, 3, 7, 4)
        field, info = SVGDTransport(temperature_coef=0.1).field(particles, gradients, queries)
        for b in range(2):
            for s in range(3):
                a, g, q = particles[b, s], gradients[b, s], queries[b, s]
                alpha = 0.1 * g.norm(dim=-1).mean()
                for i in range(7):
                    sq = (q[i] - a).pow(2).sum(-1)
                    h = max(sq.median().item() / (2 * math.log(6)), 1e-8)
                    k = torch.exp(-0.5 * sq / h)
                    expected = (k[:, None] * g + alpha * k[:, None] * (q[i] - a) / h).mean(0)
                    torch.testing.assert_close(field[b, s, i], expected, rtol=1e-4, atol=1e-5)
                    torch.testing.assert_close(info["bandwidth"][b, s, i], torch.tensor(h))
                torch.testing.assert_close(info["temperature"][b, s], alpha)

    def test_kernel_mass_normalization_matches_the_formula(self):
        torch.manual_seed(0)
        particles, gradients = torch.randn(4, 6, 3), torch.randn(4, 6, 3)
        queries = torch.randn(4, 5, 3)
        field, info = SVGDTransport(temperature_coef=0.1, normalization="kernel_mass").field(
            particles, gradients, queries)
        reference, _ = SVGDTransport(temperature_coef=0.1).field(particles, gradients, queries)
        sq = (queries.unsqueeze(-2) - particles.unsqueeze(-3)).pow(2).sum(-1)
        mass = torch.exp(-0.5 * sq / info["bandwidth"].unsqueeze(-1)).sum(-1, keepdim=True)
        # the same sum, divided by the kernel mass instead of K
        torch.testing.assert_close(field, reference * 6 / mass, rtol=1e-5, atol=1e-6)

    def test_kernel_mass_normalization_passes_a_uniform_gradient_on_whole(self):
        """All particles see the same gradient g: the normalised drive is g, the reference's a
        fraction of it (the kernel mass over K)."""
        torch.manual_seed(0)
        particles = torch.randn(3, 8, 4)
        gradients = torch.tensor([1.0, -2.0, 0.5, 0.0]).expand(3, 8, 4)
        normalised, _ = SVGDTransport(temperature=0.0, normalization="kernel_mass").field(
            particles, gradients)
        torch.testing.assert_close(normalised, gradients.expand_as(normalised))
        reference, _ = SVGDTransport(temperature=0.0).field(particles, gradients)
        assert (reference.norm(dim=-1) < 0.9 * gradients.norm(dim=-1)).all()

    def test_kernel_mass_normalization_survives_underflowing_weights(self):
        particles = torch.tensor([[[0.0, 0.0], [100.0, 0.0]]])
        queries = torch.tensor([[[50.0, 50.0]]])
        field, _ = SVGDTransport(bandwidth=1e-3, normalization="kernel_mass").field(
            particles, torch.ones(1, 2, 2), queries)
        assert torch.isfinite(field).all() and (field == 0).all()

    def test_fixed_bandwidth_and_temperature(self):
        particles, gradients = torch.randn(6, 8, 3), torch.randn(6, 8, 3)
        field, info = SVGDTransport(bandwidth=0.5, temperature=0.0).field(particles, gradients)
        kernel = torch.exp(-0.5 * torch.cdist(particles, particles).pow(2) / 0.5)
        torch.testing.assert_close(field, kernel @ gradients / 8, rtol=1e-4, atol=1e-5)
        assert (info["bandwidth"] == 0.5).all() and (info["temperature"] == 0).all()

    def test_adaptive_temperature_is_clipped(self):
        gradients = torch.full((2, 4, 3), 1e7)
        _, info = SVGDTransport(temperature_coef=1e-3, max_grad_norm=1e5).field(
            torch.randn(2, 4, 3), gradients)
        torch.testing.assert_close(info["temperature"], torch.full((2,), 100.0))

    def test_delta_kernel_is_the_gradient(self):
        gradients = torch.randn(3, 8, 4)
        field, _ = SVGDTransport("delta").field(torch.randn(3, 8, 4), gradients)
        torch.testing.assert_close(field, gradients)

    def test_tensordict_keys(self):
        transport = SVGDTransport(
            particles_key=("svgd", "a"), gradients_key=("svgd", "g"), queries_key=("svgd", "q"),
            field_key=("svgd", "phi"),
        )
        assert transport.in_keys == [("svgd", "a"), ("svgd", "g"), ("svgd", "q")]
        td = TensorDict({"svgd": {"a": torch.randn(5, 8, 2), "g": torch.randn(5, 8, 2),
                                  "q": torch.randn(5, 3, 2)}}, batch_size=[5])
        out = transport(td)
        assert out["svgd", "phi"].shape == (5, 3, 2)
        assert out["transport_bandwidth"].shape == (5, 3)
        assert out["transport_temperature"].shape == (5,)

    def test_bad_arguments(self):
        with pytest.raises(ValueError, match="kernel must be"):
            SVGDTransport("laplace")
        with pytest.raises(ValueError, match="fixed bandwidth must be positive"):
            SVGDTransport(bandwidth=0.0)
        with pytest.raises(ValueError, match="temperature must be"):
            SVGDTransport(temperature=-1.0)
        with pytest.raises(ValueError, match="normalization must be 'particles'"):
            SVGDTransport(normalization="mass")
        with pytest.raises(ValueError, match="same shape|shape \\[\\*B, K, D\\]"):
            SVGDTransport().field(torch.randn(2, 8, 3), torch.randn(2, 8, 4))

    def test_no_gradient_flows_through_the_field(self):
        particles = torch.randn(2, 4, 3, requires_grad=True)
        field, _ = SVGDTransport().field(particles, particles * 2)
        assert not field.requires_grad


if __name__ == "__main__":
    args, unknown = argparse.ArgumentParser().parse_known_args()
    pytest.main([__file__, "--capture", "no", "--exitfirst"] + unknown)
