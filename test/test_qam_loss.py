# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
from __future__ import annotations

import argparse

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.modules import ValueOperator
from torchrl.objectives import SoftUpdate

from torchrl_rldt.modules import ChunkQValueMLP, FlowActor, FlowModel, VelocityMLP
from torchrl_rldt.objectives import BaseEMAUpdater, ChunkQEnsembleLoss, QAMLoss, RLDTLoss
from torchrl_rldt.objectives.qam import memoryless_noise_std

OBS, ACT, H, N = 5, 2, 3, 4


def make_actor(observation_key="observation", low=-2.0, high=2.0):
    model = FlowModel(VelocityMLP(OBS, ACT, chunk_len=H, hidden_dim=32), ACT, N, chunk_len=H,
                      low=low, high=high)
    return FlowActor(model, in_keys=[observation_key])


def make_critic(observation_key="observation", action_key="action"):
    return ValueOperator(ChunkQValueMLP(OBS, ACT, chunk_len=H, hidden_dim=32),
                         in_keys=[observation_key, action_key], out_keys=["state_action_value"])


def make_loss(**kwargs):
    loss = QAMLoss(make_actor(), make_critic(), **kwargs)
    loss.make_value_estimator(gamma=0.9)
    return loss


def make_batch(batch=6, *, obs_key="observation", action_key="action", reward_key="reward",
               done_key="done", terminated_key="terminated", terminated=False):
    td = TensorDict(batch_size=[batch])
    td.set(obs_key, torch.randn(batch, OBS))
    td.set(action_key, torch.rand(batch, H, ACT) * 2 - 1)
    td.set(("next", obs_key), torch.randn(batch, OBS))
    td.set(("next", reward_key), torch.randn(batch, 1))
    td.set(("next", done_key), torch.full((batch, 1), terminated))
    td.set(("next", terminated_key), torch.full((batch, 1), terminated))
    return td


class LinearVelocity(nn.Module):
    """``v(s, x, t) = (1 + time_scale t) M x + b`` on the flattened chunk, whatever ``s``: with
    ``time_scale != 0`` a wrong time anywhere in the loss changes the result."""

    def __init__(self, matrix, bias, time_scale=0.0):
        super().__init__()
        self.matrix = nn.Parameter(matrix)
        self.bias = nn.Parameter(bias)
        self.time_scale = time_scale

    def forward(self, observation, action, time):
        scale = (1 + self.time_scale * torch.as_tensor(time)).expand(action.shape[:-2])[..., None]
        flat = scale * (action.flatten(-2) @ self.matrix.T) + self.bias
        return flat.unflatten(-1, action.shape[-2:])


class LinearCritic(nn.Module):
    """``Q(s, a) = <c, a>``: the same action-gradient ``c`` everywhere."""

    def __init__(self, direction):
        super().__init__()
        self.direction = nn.Parameter(direction)

    def forward(self, observation, action):
        return (action.flatten(-2) * self.direction).sum(-1, keepdim=True) + 0 * observation[..., :1]


class QuadraticCritic(nn.Module):
    """``Q(s, a) = -w ||a - goal||^2``: its action-gradient points at ``goal``."""

    def __init__(self, goal):
        super().__init__()
        self.goal = goal
        self.weight = nn.Parameter(torch.ones(()))

    def forward(self, observation, action):
        return -self.weight * (action - self.goal).pow(2).sum((-2, -1)).unsqueeze(-1)


def linear_loss(matrix, num_steps, members, inverse_temperature=0.7, low=None, high=None,
                time_scale=0.0, **kwargs):
    """A QAMLoss on a linear flow and a linear critic whose members' gradients are ``members``."""
    dim = matrix.shape[0]
    model = FlowModel(LinearVelocity(matrix.clone(), torch.randn(dim), time_scale), ACT, num_steps,
                      chunk_len=H, low=low, high=high)
    critic = TensorDictModule(LinearCritic(torch.zeros(dim)), ["observation", "action"],
                              ["state_action_value"])
    loss = QAMLoss(FlowActor(model), critic, num_qvalue_nets=members.shape[0],
                   inverse_temperature=inverse_temperature, **kwargs)
    loss.qvalue_network_params.data["module", "direction"].copy_(members)
    return loss


def assert_same_losses(first, second, batch, seed=3):
    """Both losses give the same outputs on ``batch`` from the same random state."""
    torch.manual_seed(seed)
    expected = first(batch.clone())
    torch.manual_seed(seed)
    got = second(batch.clone())
    assert set(got.keys()) == set(expected.keys())
    for key in expected.keys():
        torch.testing.assert_close(got[key], expected[key], msg=key)


def actor_step(loss, batch, lr=0.05):
    terms = loss.actor_loss(batch)
    sum(terms[key] for key in QAMLoss.POLICY_TERMS).backward()
    with torch.no_grad():
        for param in loss.actor_network.parameters():
            param -= lr * param.grad
            param.grad = None


class TestLeanAdjoint:
    @pytest.mark.parametrize("time_scale", [0.0, 1.0])
    def test_linear_flow_follows_the_recursion_exactly(self, time_scale):
        """With ``v = (1 + s t) M x + b`` the base drift ``2 v - x / (t + h)`` has the Jacobian
        ``2 (1 + s t) M - I / (t + h)`` whatever the state; taken at the step's end time ``t_{k+1}``
        (both reference codes), ``a_k = (I + h (2 (1 + s t_{k+1}) M^T - I / t_{k+1})) a_{k+1}``
        from ``a_N = -lambda mean_e c_e``."""
        torch.manual_seed(0)
        dim = H * ACT
        matrix = 0.4 * torch.randn(dim, dim) / dim ** 0.5
        members = torch.randn(2, dim)
        loss = linear_loss(matrix, N, members, time_scale=time_scale)
        trajectory = loss.adjoint_trajectory(TensorDict(observation=torch.randn(3, OBS),
                                                        batch_size=[3]))
        terminal = -0.7 * members.mean(0)
        torch.testing.assert_close(trajectory.critic_gradient.flatten(-2),
                                   members.mean(0).expand(3, dim))
        h, adjoint, expected = 1 / N, terminal, [None] * N
        for k in reversed(range(N)):
            end_time = (k + 1) * h
            adjoint = adjoint + h * (2 * (1 + time_scale * end_time) * matrix.T @ adjoint
                                     - adjoint / end_time)
            expected[k] = adjoint
        expected = torch.stack(expected)[:, None].expand(N, 3, dim)
        torch.testing.assert_close(trajectory.adjoint.flatten(-2), expected)
        assert trajectory.states.shape == (N, 3, H, ACT)
        torch.testing.assert_close(trajectory.times, torch.arange(N) / N)

    def test_linear_flow_converges_to_the_matrix_exponential(self):
        """The lean adjoint ODE ``da/dt = -(2 M - I / t)^T a`` has the solution
        ``a(t) = t exp(2 M^T (1 - t)) a(1)``; the Euler recursion reaches it at rate ``1 / N``."""
        torch.manual_seed(0)
        dim = H * ACT
        matrix = 0.5 * torch.randn(dim, dim) / dim ** 0.5
        members = torch.randn(2, dim)
        terminal = -0.7 * members.mean(0)
        errors = []
        for num_steps in (25, 100, 400):
            loss = linear_loss(matrix, num_steps, members)
            trajectory = loss.adjoint_trajectory(TensorDict(observation=torch.randn(2, OBS),
                                                            batch_size=[2]))
            solution = torch.stack([time * torch.linalg.matrix_exp(2 * matrix.T * (1 - time))
                                    @ terminal for time in trajectory.times])
            errors.append((trajectory.adjoint.flatten(-2) - solution[:, None]).abs().max())
        scale = terminal.abs().max()
        assert errors[-1] < 2e-3 * scale
        assert errors[1] < 0.35 * errors[0] and errors[2] < 0.35 * errors[1]  # first order

    def test_clamp_cuts_the_critic_gradient_beyond_the_bounds(self):
        torch.manual_seed(0)
        dim = H * ACT
        members = torch.randn(2, dim)
        batch = TensorDict(observation=torch.randn(64, OBS), batch_size=[64])
        loss = linear_loss(torch.zeros(dim, dim), N, members, low=-0.3, high=0.3)
        trajectory = loss.adjoint_trajectory(batch)
        inside = (trajectory.final_action.abs() <= 0.3).flatten(-2)
        assert inside.any() and not inside.all()
        gradient = trajectory.critic_gradient.flatten(-2)
        expected = members.mean(0).expand_as(gradient)
        torch.testing.assert_close(gradient[inside], expected[inside])
        assert (gradient[~inside] == 0).all()
        unclamped = linear_loss(torch.zeros(dim, dim), N, members, low=-0.3, high=0.3,
                                clamp_final_action=False)
        torch.testing.assert_close(unclamped.adjoint_trajectory(batch).critic_gradient.flatten(-2),
                                   expected)

    def test_gradient_of_the_target_critic(self):
        torch.manual_seed(0)
        dim = H * ACT
        members = torch.randn(2, dim)
        loss = linear_loss(torch.zeros(dim, dim), N, members, action_gradient_critic="target")
        loss.target_qvalue_network_params.data["module", "direction"].copy_(-members)
        trajectory = loss.adjoint_trajectory(TensorDict(observation=torch.randn(3, OBS),
                                                        batch_size=[3]))
        torch.testing.assert_close(trajectory.critic_gradient.flatten(-2),
                                   -members.mean(0).expand(3, dim))

    def test_memoryless_noise_schedule(self):
        """``sigma(t)^2 = 2 (1 - t + h) / (t + h)``: ``2 (1 + h) / h`` at the first step, ``4 h`` at
        the last, decreasing in between."""
        h = 1 / 8
        sigma = memoryless_noise_std(torch.arange(8) / 8, h)
        torch.testing.assert_close(sigma[0] ** 2, torch.tensor(2 * (1 + h) / h))
        torch.testing.assert_close(sigma[-1] ** 2, torch.tensor(4 * h))
        assert (sigma.diff() < 0).all()

    def test_sde_forgets_its_start_and_ends_with_the_base_step(self):
        """At ``t = 0`` the drift ``-x / h`` cancels ``x_0``; step ``k`` uses ``v(x_k, t_k)``; the
        last step is the base's Euler step at ``t_{N-1}`` (a velocity that depends on time)."""
        torch.manual_seed(0)
        dim = H * ACT
        loss = linear_loss(0.3 * torch.randn(dim, dim), N, torch.randn(2, dim), time_scale=1.0)
        with torch.no_grad():
            for param in loss.actor_network_params.values(True, True):
                param.add_(0.1 * torch.randn_like(param))  # the fine-tuned flow differs from the base
        batch = TensorDict(observation=torch.randn(3, OBS), batch_size=[3])
        trajectory = loss.adjoint_trajectory(batch)
        base = loss.base_actor_network_params
        with base.to_module(loss.actor_network):
            last = loss.actor_network.model.velocity(batch["observation"], trajectory.states[-1],
                                                     (N - 1) / N)
        torch.testing.assert_close(trajectory.final_action, trajectory.states[-1] + last / N)
        # x_1 = 2 h v(x_0, 0) + sqrt(h) sigma(0) eps: with v = M x + b, x_0 enters only through 2 h M x_0
        h = 1 / N
        torch.manual_seed(5)
        x0 = torch.randn(3, H, ACT)
        eps = torch.randn(3, H, ACT)
        eps_next = torch.randn(3, H, ACT)
        torch.manual_seed(5)
        states = loss.adjoint_trajectory(batch).states
        params = loss.actor_network_params
        matrix = params["model", "velocity_network", "matrix"].detach()
        bias = params["model", "velocity_network", "bias"].detach()
        expected = (2 * h * (x0.flatten(-2) @ matrix.T + bias)).unflatten(-1, (H, ACT)) \
            + (2 * (1 + h)) ** 0.5 * eps
        torch.testing.assert_close(states[1], expected)
        # x_2 = x_1 + h (2 v(x_1, h) - x_1 / (2 h)) + sqrt(h) sigma(h) eps, v(x, h) = (1 + h) M x + b
        velocity = ((1 + h) * states[1].flatten(-2) @ matrix.T + bias).unflatten(-1, (H, ACT))
        expected = states[1] + h * (2 * velocity - states[1] / (2 * h)) \
            + h ** 0.5 * memoryless_noise_std(h, h) * eps_next
        torch.testing.assert_close(states[2], expected)

    def test_loss_regresses_the_velocity_gap_at_the_step_times(self):
        """``L_adj = E sum_k ||2 (v - v_base)(x_k, t_k) / sigma_k + sigma_k a_k||^2`` with the
        velocities at each state's own time ``t_k``."""
        torch.manual_seed(0)
        dim = H * ACT
        loss = linear_loss(0.3 * torch.randn(dim, dim), N, torch.randn(2, dim), time_scale=1.0)
        with torch.no_grad():
            loss.actor_network_params["model", "velocity_network", "matrix"].add_(
                0.2 * torch.randn(dim, dim))
        batch = TensorDict(observation=torch.randn(5, OBS), batch_size=[5])
        torch.manual_seed(2)
        trajectory = loss.adjoint_trajectory(batch)
        torch.manual_seed(2)
        terms = loss.actor_loss(batch)
        model, observation = loss.actor_network.model, batch["observation"]
        expected = 0.0
        for k, time in enumerate(trajectory.times.tolist()):
            with torch.no_grad(), loss.actor_network_params.to_module(loss.actor_network):
                velocity = model.velocity(observation, trajectory.states[k], time)
            with torch.no_grad(), loss.base_actor_network_params.to_module(loss.actor_network):
                base_velocity = model.velocity(observation, trajectory.states[k], time)
            sigma = memoryless_noise_std(time, 1 / N)
            residual = 2 * (velocity - base_velocity) / sigma + sigma * trajectory.adjoint[k]
            expected = expected + residual.pow(2).sum((-2, -1))
        assert terms["velocity_gap"] > 0
        torch.testing.assert_close(terms["loss_adjoint"].detach(), expected.mean())

    def test_reset_base_policy_after_loading_weights(self):
        """Weights loaded into the actor after the loss was built become the base on request."""
        loss = make_loss()
        pretrained = make_actor()
        loss.actor_network.load_state_dict(pretrained.state_dict())
        assert loss.actor_loss(make_batch())["velocity_gap"] > 0  # still anchored to the old weights
        loss.reset_base_policy()
        assert (loss.base_actor_network_params == loss.actor_network_params.data).all()
        assert loss.actor_loss(make_batch())["velocity_gap"] == 0


class TestQAMLoss:
    def test_outputs_and_keys(self):
        loss = make_loss()
        out = loss(make_batch())
        assert set(loss.out_keys) == set(out.keys())
        assert all(out[key].shape == () and torch.isfinite(out[key]) for key in out.keys())
        assert loss.in_keys == ["observation", "action", ("next", "observation"),
                                ("next", "reward"), ("next", "done"), ("next", "terminated")]
        assert isinstance(loss, ChunkQEnsembleLoss)

    def test_loss_value_where_the_actor_is_the_base(self):
        """Before any update ``v = v_base``: ``L_adj = E sum_k sigma_k^2 ||a_k||^2``, no constraint."""
        loss = make_loss()
        batch = make_batch(6)
        torch.manual_seed(4)
        trajectory = loss.adjoint_trajectory(batch)
        torch.manual_seed(4)
        terms = loss.actor_loss(batch)
        sigma = memoryless_noise_std(trajectory.times, 1 / N)
        expected = (sigma[:, None] ** 2 * trajectory.adjoint.pow(2).sum((-2, -1))).sum(0).mean()
        torch.testing.assert_close(terms["loss_adjoint"], expected)
        assert terms["loss_base_constraint"] == 0 and terms["velocity_gap"] == 0
        torch.testing.assert_close(terms["q_gradient_norm"],
                                   trajectory.critic_gradient.flatten(-2).norm(dim=-1).mean())

    def test_zero_inverse_temperature_leaves_the_base_alone(self):
        loss = make_loss(inverse_temperature=0.0)
        terms = loss.actor_loss(make_batch())
        assert terms["loss_adjoint"] == 0 and terms["adjoint_norm"] == 0
        sum(terms[key] for key in QAMLoss.POLICY_TERMS).backward()
        assert all(p.grad is None or (p.grad == 0).all() for p in loss.actor_network.parameters())

    def test_policy_moves_up_the_critic(self):
        """A few actor steps against ``Q = -||a - goal||^2`` bring the actions towards ``goal``."""
        torch.manual_seed(0)
        goal = torch.full((H, ACT), 0.8)
        critic = TensorDictModule(QuadraticCritic(goal), ["observation", "action"],
                                  ["state_action_value"])
        loss = QAMLoss(make_actor(), critic, inverse_temperature=1.0)
        optim = torch.optim.Adam(loss.actor_network_params.values(True, True), lr=3e-3)
        batch = make_batch(32)

        def distance():
            with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
                action = loss.actor_network(batch.select("observation").clone())["action"]
            return (action - goal).pow(2).sum((-2, -1)).mean()

        before = distance()
        for _ in range(60):
            terms = loss.actor_loss(batch)
            optim.zero_grad()
            sum(terms[key] for key in QAMLoss.POLICY_TERMS).backward()
            optim.step()
        assert distance() < 0.5 * before
        assert terms["velocity_gap"] > 0 and terms["loss_base_constraint"] > 0

    def test_actor_loss_keeps_full_precision_under_autocast(self):
        """A few Adam steps from the base, ``v - v_base`` is below bfloat16's rounding: the loss
        and its gradient under a bfloat16 autocast are the fp32 ones."""
        loss = make_loss()
        params = [param for param in loss.actor_network_params.values(True, True) if param.requires_grad]
        with torch.no_grad():
            for param in params:
                param.add_(1e-4 * torch.randn_like(param))
        batch = make_batch(16)
        results = []
        for enabled in (False, True):
            torch.manual_seed(7)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
                terms = loss.actor_loss(batch)
            total = sum(terms[key] for key in QAMLoss.POLICY_TERMS)
            gradients = torch.autograd.grad(total, params)
            results.append((terms, gradients))
        (fp32, fp32_gradients), (autocast, autocast_gradients) = results
        trajectories = []
        for enabled in (False, True):
            torch.manual_seed(7)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
                trajectories.append(loss.adjoint_trajectory(batch))
        for got, expected in zip(*trajectories):
            torch.testing.assert_close(got, expected, rtol=0, atol=0)
        assert all(autocast[key].dtype == torch.float32 for key in autocast.keys())
        torch.testing.assert_close(autocast.to_dict(), fp32.to_dict(), rtol=0, atol=0)
        for gradient, expected in zip(autocast_gradients, fp32_gradients):
            torch.testing.assert_close(gradient, expected, rtol=0, atol=0)

    def test_actor_loss_follows_autocast_when_asked(self):
        """``full_precision_actor_loss=False`` (a diagnostic) lets the bfloat16 autocast reach the
        actor loss: its value is no longer the fp32 one."""
        loss = make_loss()
        loss.full_precision_actor_loss = False
        batch = make_batch(16)
        values = []
        for enabled in (False, True):
            torch.manual_seed(7)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
                values.append(loss.actor_loss(batch)["loss_adjoint"])
        assert not torch.equal(values[0], values[1].float())

    def test_set_keys_with_nested_keys(self):
        actor = make_actor(("agent", "obs"))
        loss = QAMLoss(actor, make_critic(("agent", "obs"), ("agent", "chunk")))
        loss.set_keys(observation=("agent", "obs"), action=("agent", "chunk"),
                      reward=("agent", "reward"), done=("agent", "done"),
                      terminated=("agent", "terminated"), priority=("agent", "td"))
        loss.make_value_estimator(gamma=0.9)
        batch = make_batch(obs_key=("agent", "obs"), action_key=("agent", "chunk"),
                           reward_key=("agent", "reward"), done_key=("agent", "done"),
                           terminated_key=("agent", "terminated"))
        out = loss(batch)
        assert torch.isfinite(out["loss_qvalue"]) and torch.isfinite(out["loss_adjoint"])
        assert batch["agent", "td"].shape == (6,)
        assert ("next", "agent", "reward") in loss.in_keys

    @pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
    def test_reduction(self, reduction):
        loss = make_loss(reduction=reduction)
        batch = make_batch(6)
        torch.manual_seed(1)
        out = loss(batch.clone())
        for key in ("loss_qvalue",) + QAMLoss.POLICY_TERMS:
            assert out[key].shape == ((6,) if reduction == "none" else ())
        loss.reduction = "mean"
        torch.manual_seed(1)
        mean = loss(batch.clone())
        for key in ("loss_qvalue",) + QAMLoss.POLICY_TERMS:
            scale = 6 if reduction == "sum" else 1
            torch.testing.assert_close(out[key].mean() if reduction == "none" else out[key] / scale,
                                       mean[key], msg=key)

    def test_batch_of_several_dimensions(self):
        loss = make_loss(reduction="none")
        batch = make_batch(6).reshape(2, 3)
        terms = loss.actor_loss(batch)
        assert terms["loss_adjoint"].shape == (2, 3) and terms["loss_base_constraint"].shape == (2, 3)
        assert loss.adjoint_trajectory(batch).adjoint.shape == (N, 2, 3, H, ACT)

    def test_tensordict_free_call_and_determinism(self):
        loss = make_loss()
        batch = make_batch(6)
        torch.manual_seed(3)
        expected = loss(batch.clone())
        torch.manual_seed(3)
        values = loss(
            observation=batch["observation"], action=batch["action"],
            next_observation=batch["next", "observation"], next_reward=batch["next", "reward"],
            next_done=batch["next", "done"], next_terminated=batch["next", "terminated"],
        )
        for key, value in zip(loss.out_keys, values):
            torch.testing.assert_close(value, expected[key])

    def test_parameters_seen_by_the_optimiser(self):
        loss = make_loss()
        actor_params = sum(p.numel() for p in loss.actor_network.parameters())
        critic_params = sum(p.numel() for p in make_critic().parameters())
        assert sum(p.numel() for p in loss.parameters()) == actor_params + 2 * critic_params
        trainable = {id(p) for p in loss.parameters()}
        assert not any(id(t) in trainable for t in loss.target_qvalue_network_params.values(True, True))
        assert not any(id(t) in trainable for t in loss.base_actor_network_params.values(True, True))

    def test_actor_loss_gives_no_gradient_to_the_critic(self):
        loss = make_loss()
        terms = loss.actor_loss(make_batch())
        sum(terms[key] for key in QAMLoss.POLICY_TERMS).backward()
        assert all(p.grad is None for p in loss.qvalue_network_params.values(True, True))
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in loss.actor_network.parameters())

    def test_critic_loss_gives_no_gradient_to_the_actor(self):
        loss = make_loss()
        value, _ = loss.qvalue_loss(make_batch())
        value.backward()
        assert all(p.grad is None for p in loss.actor_network.parameters())
        assert all(p.grad is not None for p in loss.qvalue_network_params.values(True, True))

    @pytest.mark.parametrize("terminated", [False, True])
    def test_same_critic_as_rldt(self, terminated):
        """One critic implementation: same members, same batch, same seed, same critic loss."""
        torch.manual_seed(0)
        actor, critic = make_actor(), make_critic()
        rldt = RLDTLoss(actor, critic, num_particles=2)
        qam = QAMLoss(actor, critic)
        qam.qvalue_network_params.data.copy_(rldt.qvalue_network_params.data)
        qam.target_qvalue_network_params.data.copy_(rldt.target_qvalue_network_params.data)
        for loss in (rldt, qam):
            loss.make_value_estimator(gamma=0.9)
        critic_keys = {key for key in rldt.state_dict() if "qvalue" in key}
        assert critic_keys == {key for key in qam.state_dict() if "qvalue" in key}
        batch = make_batch(6, terminated=terminated)
        for member in (None, torch.tensor([0, 1, 1, 0, 1, 1])):
            data = batch if member is None else batch.clone().set("critic_member", member)
            results = []
            for loss in (rldt, qam):
                torch.manual_seed(7)
                results.append(loss.qvalue_loss(data.clone()))
            (rldt_value, rldt_info), (qam_value, qam_info) = results
            torch.testing.assert_close(qam_value, rldt_value)
            for key in rldt_info:
                torch.testing.assert_close(qam_info[key], rldt_info[key], msg=key)
        torch.testing.assert_close(qam.critic_values(batch), rldt.critic_values(batch))

    def test_std_penalised_target(self):
        """``V(s') = mean_m (mean_e Qbar_e - rho std_e Qbar_e)`` with ``target_std_penalty=rho``."""
        loss = make_loss(target_std_penalty=0.5)
        batch = loss.sample_target_actions(make_batch(6))
        _, info = loss.qvalue_loss(batch)
        samples = batch["next", "target_action"]  # [B, M, H, A]
        observation = batch["next", "observation"].unsqueeze(1).expand(-1, samples.shape[1], -1)
        values = []
        for params in loss.target_qvalue_network_params.unbind(0):
            with params.to_module(loss.qvalue_network):
                values.append(loss.qvalue_network.module(observation, samples).squeeze(-1))
        values = torch.stack(values)  # [E, B, M]
        next_value = (values.mean(0) - 0.5 * values.std(0)).mean(-1)
        expected = batch["next", "reward"].squeeze(-1) + 0.9 * next_value
        torch.testing.assert_close(info["target_value"], expected)

    def test_base_policy_schedule(self):
        batch = make_batch()
        loss = make_loss()
        updater = BaseEMAUpdater(loss, decay=0.75, every=2)
        start = loss.base_actor_network_params.clone()
        actor_step(loss, batch)
        updater.step()
        assert (loss.base_actor_network_params == start).all()  # not yet
        actor_step(loss, batch)
        after_two = loss.actor_network_params.data.clone()
        assert not (after_two == start).all()
        updater.step()  # the second update moves the base towards the actor after two steps
        expected = start.apply(lambda base, actor: 0.75 * base + 0.25 * actor, after_two)
        for key, value in expected.items(True, True):
            torch.testing.assert_close(loss.base_actor_network_params[key], value, msg=str(key))

        frozen = make_loss()  # no updater: the pretrained base, whatever the loss is called for
        start = frozen.base_actor_network_params.clone()
        for _ in range(3):
            actor_step(frozen, batch)
        assert (frozen.base_actor_network_params == start).all()

        copied = make_loss()
        actor_step(copied, batch)
        copied.update_base_policy(0.0)
        assert (copied.base_actor_network_params == copied.actor_network_params.data).all()
        with pytest.raises(ValueError, match="decay must be in"):
            copied.update_base_policy(1.5)

    def test_soft_update_moves_the_critic_targets_only(self):
        loss = make_loss()
        updater = SoftUpdate(loss, eps=0.5)
        optim = torch.optim.Adam(loss.parameters(), lr=1e-2)
        target_before = loss.target_qvalue_network_params.clone()
        base_before = loss.base_actor_network_params.clone()
        out = loss(make_batch())
        (out["loss_qvalue"] + sum(out[key] for key in QAMLoss.POLICY_TERMS)).backward()
        optim.step()
        updater.step()
        moved = (loss.target_qvalue_network_params - target_before).abs().sum()
        assert sum(moved.values(True, True)) > 0
        assert (loss.base_actor_network_params == base_before).all()

    def test_vmap_and_loop_agree(self):
        torch.manual_seed(0)
        vmapped = make_loss()
        looped = make_loss(deactivate_vmap=True)
        looped.load_state_dict(vmapped.state_dict())
        assert_same_losses(vmapped, looped, make_batch())

    def test_bad_arguments(self):
        with pytest.raises(ValueError, match="inverse_temperature must be >= 0"):
            QAMLoss(make_actor(), make_critic(), inverse_temperature=-1.0)
        with pytest.raises(ValueError, match="base_constraint_coeff must be >= 0"):
            QAMLoss(make_actor(), make_critic(), base_constraint_coeff=-0.1)
        with pytest.raises(ValueError, match="action_gradient_critic"):
            QAMLoss(make_actor(), make_critic(), action_gradient_critic="mean")
        with pytest.raises(ValueError, match="target_std_penalty needs num_qvalue_nets >= 2"):
            QAMLoss(make_actor(), make_critic(), num_qvalue_nets=1, target_std_penalty=0.5)
        with pytest.raises(TypeError, match="FlowActor"):
            QAMLoss(make_critic(), make_critic())
        loss = QAMLoss(make_actor(), make_critic(action_key="chunk"))
        with pytest.raises(KeyError, match="does not include the loss's action key"):
            loss(make_batch())


if __name__ == "__main__":
    args, unknown = argparse.ArgumentParser().parse_known_args()
    pytest.main([__file__, "--capture", "no", "--exitfirst"] + unknown)
