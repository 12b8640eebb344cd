# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
"""SWFP (our reading of the abstract of arXiv 2510.15388): the cascade actor, the JKO loss, the stages.

The loss is checked against closed forms on Gaussians: a base ``N(m0, s0^2 I)``, a critic
``Q(a) = -k/2 ||a - c||^2`` and an affine block, for which the JKO step's minimiser, the exact
``W_2^2`` of the step and the log-determinant are known (``docs/swfp.md`` derives them).
"""
from __future__ import annotations

import argparse
import math

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.modules import ValueOperator

from torchrl_rldt.modules import (
    ChunkQValueMLP,
    FlowActor,
    FlowModel,
    LandingPointExploration,
    StepwiseFlowActor,
    VelocityMLP,
)
from torchrl_rldt.objectives import QAMLoss, RLDTLoss, StageUpdater, SWFPLoss

OBS, ACT, H, N = 3, 2, 2, 4  # observation size, action size, chunk length, base flow steps


# --- Gaussian closed forms ---------------------------------------------------------------------
class GaussianBase(nn.Module):
    """With one Euler step, ``x_1 = x_0 + v = s0 x_0 + m0``: the base samples ``N(m0, s0^2 I)``."""

    def __init__(self, mean: torch.Tensor, std: float) -> None:
        super().__init__()
        self.mean = nn.Parameter(mean.clone())
        self.std = nn.Parameter(torch.tensor(std))

    def forward(self, observation, action, time):
        return (self.std - 1) * action + self.mean


class LinearBlock(nn.Module):
    """``u(s, x, r) = W x + b`` on the flattened chunk: one Euler step is the affine map
    ``T(a) = (I + W) a + b`` (the block's output layer is the linear layer itself)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, dim)

    def forward(self, observation, action, time):
        return self.linear(action.flatten(-2)).unflatten(-1, action.shape[-2:])


class QuadraticCritic(nn.Module):
    """``Q(a) = -k/2 ||a - c||^2`` (``k`` and ``c`` buffers: every ensemble member is this one)."""

    def __init__(self, curvature: float, centre: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("curvature", torch.tensor(curvature))
        self.register_buffer("centre", centre.clone())
        self.unused = nn.Parameter(torch.zeros(()))  # an ensemble needs a parameter to expand

    def forward(self, observation, action):
        return (-0.5 * self.curvature * (action - self.centre).pow(2).sum((-2, -1))).unsqueeze(-1)


def gaussian_setup(mean, std, curvature, centre, *, entropy_coeff, jko_step, num_samples):
    dim = mean.numel()
    base = FlowActor(FlowModel(GaussianBase(mean.reshape(1, dim), std), dim, 1, chunk_len=1))
    actor = StepwiseFlowActor(base, [LinearBlock(dim)], block_steps=1)
    critic = TensorDictModule(QuadraticCritic(curvature, centre.reshape(1, dim)),
                              in_keys=["observation", "action"], out_keys=["state_action_value"])
    loss = SWFPLoss(actor, critic, num_qvalue_nets=1, num_samples=num_samples,
                    entropy_coeff=entropy_coeff, jko_step=jko_step)
    return actor, loss


def jko_minimiser(mean, std, curvature, centre, entropy_coeff, jko_step):
    """The minimiser over affine maps ``T(a) = alpha (a - m0) + mu`` of the JKO objective per dimension
    ``k/2 (mu - c)^2 + (mu - m0)^2 / (2 tau) + k/2 alpha^2 s0^2 + (alpha - 1)^2 s0^2 / (2 tau) - eps log alpha``."""
    precision = curvature + 1 / jko_step
    mu = (curvature * centre + mean / jko_step) / precision
    variance = std ** 2
    alpha = (variance / jko_step + math.sqrt(variance ** 2 / jko_step ** 2
                                             + 4 * precision * variance * entropy_coeff)) / (2 * precision * variance)
    return mu, alpha


class TestGaussianClosedForms:
    MEAN, CENTRE = torch.tensor([0.3, -0.2, 0.0]), torch.tensor([1.0, 0.5, -0.5])
    STD, CURVATURE, EPS, TAU = 0.5, 2.0, 0.05, 0.25

    def test_the_minimiser_formula_solves_its_stationarity_conditions(self):
        mu, alpha = jko_minimiser(self.MEAN, self.STD, self.CURVATURE, self.CENTRE, self.EPS, self.TAU)
        s2, k, tau, eps = self.STD ** 2, self.CURVATURE, self.TAU, self.EPS
        torch.testing.assert_close(k * (mu - self.CENTRE) + (mu - self.MEAN) / tau, torch.zeros(3))
        assert k * alpha * s2 + (alpha - 1) * s2 / tau - eps / alpha == pytest.approx(0.0, abs=1e-12)
        assert 0 < alpha < 1  # the critic's curvature shrinks the spread more than the entropy widens it

    def test_adam_on_the_jko_objective_reaches_the_known_minimiser(self):
        torch.manual_seed(0)
        actor, loss = gaussian_setup(self.MEAN, self.STD, self.CURVATURE, self.CENTRE,
                                     entropy_coeff=self.EPS, jko_step=self.TAU, num_samples=64)
        batch = TensorDict(observation=torch.zeros(64, 1), batch_size=[64])
        optim = torch.optim.Adam(loss.block_parameters(), lr=0.02)
        schedule = torch.optim.lr_scheduler.MultiStepLR(optim, milestones=[300, 500], gamma=0.1)
        for _ in range(700):
            terms = loss.actor_loss(batch)
            optim.zero_grad()
            sum(terms[key] for key in SWFPLoss.POLICY_TERMS).backward()
            optim.step()
            schedule.step()
        mu, alpha = jko_minimiser(self.MEAN, self.STD, self.CURVATURE, self.CENTRE, self.EPS, self.TAU)
        linear = actor.blocks[0].linear
        matrix = torch.eye(3) + linear.weight.detach()  # T(a) = matrix a + bias
        learned_mean = matrix @ self.MEAN + linear.bias.detach()
        # measured errors are below 4e-4 (seeds 0-2); without the entropy term alpha would be
        # 2/3, 0.047 away, and without the transport term the mean would be c
        torch.testing.assert_close(matrix, alpha * torch.eye(3), atol=3e-3, rtol=0)
        torch.testing.assert_close(learned_mean, mu, atol=3e-3, rtol=0)

    def test_the_terms_of_an_affine_step_are_the_gaussian_closed_forms(self):
        """The transport term is the exact ``W_2^2`` of the step (an optimal map), the entropy term
        ``-eps d log alpha`` for every sample, the value term ``k/2 (||mu - c||^2 + alpha^2 s0^2 d)``."""
        torch.manual_seed(0)
        dim, alpha, mu = 3, 1.3, torch.tensor([0.5, 0.1, -0.4])
        actor, loss = gaussian_setup(self.MEAN, self.STD, self.CURVATURE, self.CENTRE,
                                     entropy_coeff=self.EPS, jko_step=self.TAU, num_samples=500)
        with torch.no_grad():  # T(a) = alpha (a - m0) + mu
            actor.blocks[0].linear.weight.copy_((alpha - 1) * torch.eye(dim))
            actor.blocks[0].linear.bias.copy_(mu - alpha * self.MEAN)
        loss.reduction = "none"
        terms = loss.actor_loss(TensorDict(observation=torch.zeros(200, 1), batch_size=[200]))
        variance = self.STD ** 2
        w2_squared = (mu - self.MEAN).pow(2).sum() + (alpha - 1) ** 2 * variance * dim
        transport = terms["loss_transport"].mean() / loss.transport_coeff
        assert transport.item() == pytest.approx(w2_squared.item(), rel=0.02)
        assert float(loss.transport_coeff) == pytest.approx(1 / (2 * self.TAU))
        # the map is linear: its log-determinant is d log alpha for every sample, exactly
        torch.testing.assert_close(terms["loss_entropy"], torch.full((200,), -self.EPS * dim * math.log(alpha)))
        value = 0.5 * self.CURVATURE * ((mu - self.CENTRE).pow(2).sum() + alpha ** 2 * variance * dim)
        assert terms["loss_value"].mean().item() == pytest.approx(value.item(), rel=0.02)
        assert terms["transport_distance"].item() == pytest.approx(w2_squared.item(), rel=0.02)


# --- the log-determinant ----------------------------------------------------------------------
def nonlinear_actor(block_steps: int, num_blocks: int = 1, log_det: str = "auto") -> StepwiseFlowActor:
    base = FlowActor(FlowModel(VelocityMLP(OBS, ACT, chunk_len=H, hidden_dim=16), ACT, N, chunk_len=H,
                               low=-1.0, high=1.0))
    blocks = [VelocityMLP(OBS, ACT, chunk_len=H, hidden_dim=16, num_layers=2, activation=nn.Tanh)
              for _ in range(num_blocks)]
    actor = StepwiseFlowActor(base, blocks, block_steps=block_steps, log_det=log_det)
    with torch.no_grad():  # away from the identity: a nonlinear map
        for block in actor.blocks:
            nn.init.normal_(block.output_layer.weight, std=0.4)
            nn.init.normal_(block.output_layer.bias, std=0.2)
    return actor


class TestLogDeterminant:
    def test_exact_log_det_is_that_of_autograds_full_jacobian(self):
        torch.manual_seed(0)
        actor = nonlinear_actor(block_steps=3).double()
        observation = torch.randn(6, OBS, dtype=torch.float64)
        action = torch.randn(6, H, ACT, dtype=torch.float64)
        moved, log_det = actor.block_with_log_det(0, observation, action)
        torch.testing.assert_close(moved, actor.apply_block(0, observation, action))
        for i in range(6):
            jacobian = torch.autograd.functional.jacobian(
                lambda a: actor.apply_block(0, observation[i], a), action[i])
            expected = torch.linalg.slogdet(jacobian.reshape(H * ACT, H * ACT)).logabsdet
            torch.testing.assert_close(log_det[i], expected, rtol=0, atol=1e-10)
        assert log_det.abs().min() > 1e-2  # a map far enough from the identity to tell

    def test_log_det_keeps_batch_dimensions_and_carries_gradients(self):
        actor = nonlinear_actor(block_steps=2)
        observation, action = torch.randn(2, 3, OBS), torch.randn(2, 3, H, ACT)
        _, log_det = actor.block_with_log_det(0, observation, action)
        assert log_det.shape == (2, 3)
        log_det.sum().backward()
        assert actor.blocks[0].output_layer.weight.grad.abs().sum() > 0

    def test_hutchinson_estimate_is_the_exact_value_to_second_order(self):
        torch.manual_seed(0)
        actor = nonlinear_actor(block_steps=8, log_det="hutchinson").double()
        observation = torch.randn(1, OBS, dtype=torch.float64).expand(20_000, OBS)
        action = torch.randn(1, H, ACT, dtype=torch.float64).expand(20_000, H, ACT)
        _, estimate = actor.block_with_log_det(0, observation, action)
        actor.log_det = "exact"
        _, exact = actor.block_with_log_det(0, observation[:1], action[:1])
        standard_error = estimate.std() / math.sqrt(estimate.numel())
        assert abs(estimate.mean() - exact[0]) < 4 * standard_error + 0.01

    def test_auto_is_exact_up_to_32_numbers_per_chunk(self):
        assert nonlinear_actor(1)._log_det_method() == "exact"  # 2 x 2
        base = FlowActor(FlowModel(VelocityMLP(OBS, 6, chunk_len=6, hidden_dim=8), 6, 2, chunk_len=6))
        actor = StepwiseFlowActor(base, [VelocityMLP(OBS, 6, chunk_len=6, hidden_dim=8)])
        assert actor._log_det_method() == "hutchinson"  # 36 numbers


# --- the actor --------------------------------------------------------------------------------
def critic():
    return ValueOperator(ChunkQValueMLP(OBS, ACT, chunk_len=H, hidden_dim=16), in_keys=["observation", "action"])


class TestStepwiseFlowActor:
    @pytest.mark.parametrize("mode", [ExplorationType.RANDOM, ExplorationType.DETERMINISTIC])
    def test_identity_at_start(self, mode):
        """Every block starts as the identity: the cascade samples what the base samples."""
        base = FlowActor(FlowModel(VelocityMLP(OBS, ACT, chunk_len=H, hidden_dim=16), ACT, N, chunk_len=H,
                                   low=-0.5, high=0.5))
        actor = StepwiseFlowActor(base, [VelocityMLP(OBS, ACT, chunk_len=H, hidden_dim=8) for _ in range(3)])
        actor.set_active_block(2)
        td = TensorDict(observation=torch.randn(7, OBS), flow_noise=torch.randn(7, H, ACT), batch_size=[7])
        with set_exploration_type(mode):
            torch.testing.assert_close(actor(td.clone())["action"], base(td.clone())["action"], rtol=0, atol=0)
            torch.manual_seed(1)
            cascade = actor(observation=td["observation"])
            torch.manual_seed(1)
            torch.testing.assert_close(cascade, base(observation=td["observation"]), rtol=0, atol=0)

    def test_blocks_up_to_the_active_one_and_one_clamp_at_the_end(self):
        base = FlowActor(FlowModel(VelocityMLP(OBS, ACT, chunk_len=H, hidden_dim=16), ACT, N, chunk_len=H,
                                   low=-1.0, high=1.0))
        actor = StepwiseFlowActor(base, [LinearBlock(H * ACT) for _ in range(3)], block_steps=1)
        with torch.no_grad():  # block 0 moves by +5, block 1 by -5, block 2 by +0.1
            for block, shift in zip(actor.blocks, (5.0, -5.0, 0.1)):
                block.linear.bias.fill_(shift)
        td = TensorDict(observation=torch.randn(7, OBS), flow_noise=torch.randn(7, H, ACT), batch_size=[7])
        base_end = base.model.integrate(td["observation"], td["flow_noise"]).chain[..., -1, :, :]
        expected = {0: (base_end + 5).clamp(-1, 1), 1: base_end.clamp(-1, 1),  # not clamped in between
                    2: (base_end + 0.1).clamp(-1, 1)}
        for index, action in expected.items():
            actor.set_active_block(index)
            torch.testing.assert_close(actor(td.clone())["action"], action)
            assert actor.action_spec.is_in(actor(td.clone())["action"])
        assert actor.action_spec == base.action_spec and actor.in_keys == base.in_keys
        assert actor.out_keys == base.out_keys and actor.noise_key == base.noise_key

    def test_the_base_is_frozen_and_a_chain_key_refused(self):
        base = FlowActor(FlowModel(VelocityMLP(OBS, ACT, chunk_len=H, hidden_dim=16), ACT, N, chunk_len=H))
        actor = StepwiseFlowActor(base, [VelocityMLP(OBS, ACT, chunk_len=H, hidden_dim=8)])
        assert not any(param.requires_grad for param in base.model.parameters())
        assert all(param.requires_grad for param in actor.block_parameters())
        with pytest.raises(ValueError, match="chain"):
            StepwiseFlowActor(FlowActor(base.model, out_keys=["action", "chain"]),
                              [VelocityMLP(OBS, ACT, chunk_len=H, hidden_dim=8)])
        with pytest.raises(TypeError, match="nn.Linear"):
            StepwiseFlowActor(base, [nn.Identity()])
        with pytest.raises(ValueError, match="index"):
            actor.set_active_block(1)

    def test_other_losses_and_rldts_exploration_refuse_the_cascade(self):
        actor = nonlinear_actor(1)
        for loss_class in (RLDTLoss, QAMLoss):
            with pytest.raises(TypeError, match="StepwiseFlowActor"):
                loss_class(actor, critic())
        with pytest.raises(TypeError, match="StepwiseFlowActor"):
            LandingPointExploration(actor)
        with pytest.raises(TypeError, match="StepwiseFlowActor"):
            SWFPLoss(FlowActor(actor.model), critic())


# --- the loss and its stages ------------------------------------------------------------------
def batch(size=8):
    return TensorDict({
        "observation": torch.randn(size, OBS), "action": torch.rand(size, H, ACT) * 2 - 1,
        "next": {"observation": torch.randn(size, OBS), "reward": torch.randn(size, 1),
                 "done": torch.zeros(size, 1, dtype=torch.bool),
                 "terminated": torch.zeros(size, 1, dtype=torch.bool)}}, batch_size=[size])


class TestSWFPLoss:
    def test_only_the_active_block_gets_a_gradient(self):
        actor = nonlinear_actor(block_steps=2, num_blocks=3)
        loss = SWFPLoss(actor, critic(), num_samples=2)
        loss.advance_stage()
        terms = loss.actor_loss(batch())
        sum(terms[key] for key in SWFPLoss.POLICY_TERMS).backward()
        params = dict(loss.actor_network_params.items(True, True))
        for name, param in params.items():
            if not isinstance(param, nn.Parameter):
                continue
            trained = name[0] == "blocks" and name[1] == "1"
            if trained:
                assert param.grad is not None, name
            else:
                assert param.grad is None or not param.grad.any(), name
        assert any(params[name].grad.abs().sum() > 0 for name in params if name[:2] == ("blocks", "1")
                   and isinstance(params[name], nn.Parameter))
        assert not any(param.requires_grad for name, param in params.items() if name[0] == "model")

    def test_each_term_has_a_gradient_and_the_call_moves_nothing(self):
        actor = nonlinear_actor(block_steps=2, num_blocks=2)
        loss = SWFPLoss(actor, critic(), num_samples=2)
        before = loss.state_dict()
        params = loss.block_parameters()
        for key in SWFPLoss.POLICY_TERMS:
            gradients = torch.autograd.grad(loss.actor_loss(batch())[key], params, allow_unused=True)
            assert any(g is not None and g.abs().sum() > 0 for g in gradients), key
        assert all(torch.equal(value, loss.state_dict()[name]) for name, value in before.items())
        # the critic's parameters get no gradient from the value term
        loss.actor_loss(batch())["loss_value"].backward()
        assert all(p.grad is None for p in loss.qvalue_network_params.values(True, True))

    def test_the_td_target_samples_the_cascade(self):
        actor = nonlinear_actor(block_steps=2, num_blocks=2)
        loss = SWFPLoss(actor, critic())
        loss.advance_stage()
        observation = torch.randn(5, OBS)
        torch.manual_seed(3)
        got = loss._sample(observation)
        torch.manual_seed(3)
        torch.testing.assert_close(got, actor.sample(observation))
        torch.manual_seed(3)
        assert not torch.allclose(got, actor.model.sample(observation))  # not the base alone

    def test_stage_updater_advances_and_survives_a_state_dict_round_trip(self):
        torch.manual_seed(0)
        actor = nonlinear_actor(block_steps=1, num_blocks=3)
        loss = SWFPLoss(actor, critic())
        updater = StageUpdater(loss, every=2)
        seen = []
        for _ in range(7):
            updater.step()
            seen.append(actor.active_index)  # the module (the collector's policy) sees the loss's stage
        assert seen == [0, 1, 1, 2, 2, 2, 2]  # the last block keeps training
        assert loss.active_block == 2
        state, updater_state = loss.state_dict(), updater.state_dict()
        assert int(state["actor_network_params.active_block"]) == 2

        torch.manual_seed(1)
        restored_actor = nonlinear_actor(block_steps=1, num_blocks=3)
        restored = SWFPLoss(restored_actor, critic())
        restored.load_state_dict(state)
        assert restored_actor.active_index == 2 and restored.active_block == 2
        for name, value in restored.state_dict().items():
            torch.testing.assert_close(value, state[name], msg=name)

        # the count too: a resumed run advances at the same update as an uninterrupted one
        actor.set_active_block(0)
        restored_actor.set_active_block(0)
        fresh = StageUpdater(restored, every=2)
        fresh.load_state_dict({"steps": 3})
        fresh.step()
        assert restored_actor.active_index == 1
        with pytest.raises(TypeError, match="SWFPLoss"):
            StageUpdater(RLDTLoss(FlowActor(FlowModel(VelocityMLP(OBS, ACT, chunk_len=H, hidden_dim=8),
                                                      ACT, N, chunk_len=H)), critic()), every=2)
        with pytest.raises(ValueError, match="every"):
            StageUpdater(loss, every=0)
        assert updater_state == {"steps": 7}

    def test_the_optimiser_holds_the_blocks_only(self):
        actor = nonlinear_actor(block_steps=1, num_blocks=2)
        loss = SWFPLoss(actor, critic())
        held = loss.block_parameters()
        assert {id(p) for p in held} == {id(p) for p in actor.block_parameters()}
        assert not {id(p) for p in held} & {id(p) for p in actor.model.parameters()}

    @pytest.mark.parametrize("kwargs, message", [
        ({"jko_step": 0.0}, "jko_step"), ({"entropy_coeff": -1.0}, "entropy_coeff"),
        ({"num_samples": 0}, "num_samples")])
    def test_bad_arguments_are_refused(self, kwargs, message):
        with pytest.raises(ValueError, match=message):
            SWFPLoss(nonlinear_actor(1), critic(), **kwargs)

    def test_the_actor_loss_runs_in_full_precision_under_autocast(self):
        loss = SWFPLoss(nonlinear_actor(block_steps=1), critic(), num_samples=2)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            terms = loss.actor_loss(batch())
        assert all(terms[key].dtype == torch.float32 for key in SWFPLoss.POLICY_TERMS)


if __name__ == "__main__":
    args, unknown = argparse.ArgumentParser().parse_known_args()
    pytest.main([__file__, "--capture", "no", "--exitfirst"] + unknown)
