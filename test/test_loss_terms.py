# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
"""Every term of every loss against its documented formula, on tiny seeded batches.

Each test recomputes a term from the formula of the loss's docstring with small hand-built
networks (a velocity linear in its inputs, a critic quadratic in the action), replaying the
loss's random draws in the same order from the same seed, and compares the values per sample
(``reduction="none"``): a term replaced by zeros, computed with the wrong sign or missing a
factor fails here. Closed forms that live beside their loss's other tests: DPPO's surrogate
and value loss (``test_dppo.py``), QAM's lean adjoint recursion (``test_qam_loss.py``), the
critic's TD(lambda) target, its n-step discount and its bootstrap masks (``test_rldt_loss.py``).
"""
from __future__ import annotations

import argparse
import copy
import math

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.modules import MLP, ValueOperator

from torchrl_rldt.modules import (
    DDPMChunkModel,
    FlowActor,
    FlowModel,
    FlowNoiseMLP,
    NoisyFlowActor,
    SVGDTransport,
    VelocityMLP,
    svgd_field,
)
from torchrl_rldt.objectives import (
    DDPMChunkBCLoss,
    FlowMatchingBCLoss,
    FPOLoss,
    QAMLoss,
    ReinFlowLoss,
    RLDTLoss,
)

OBS, ACT, H, N = 3, 2, 2, 4  # observation size, action size, chunk length, flow steps
B, K, M, E = 5, 3, 4, 2  # batch, particles (or CFM pairs), target samples, critic members
DIM = H * ACT
GAMMA = 0.9


class LinearVelocity(nn.Module):
    """``v(s, x, t) = (1 + t) M x + W s + b`` on the flattened chunk: a wrong time, state or
    observation anywhere changes the velocity."""

    def __init__(self, scale: float = 0.4) -> None:
        super().__init__()
        self.matrix = nn.Parameter(scale * torch.randn(DIM, DIM) / DIM ** 0.5)
        self.state = nn.Parameter(0.5 * torch.randn(DIM, OBS))
        self.bias = nn.Parameter(0.3 * torch.randn(DIM))

    def forward(self, observation, action, time):
        scale = (1 + time)[..., None]
        flat = scale * (action.flatten(-2) @ self.matrix.T) + observation @ self.state.T + self.bias
        return flat.unflatten(-1, action.shape[-2:])


class QuadraticCritic(nn.Module):
    """``Q(s, a) = <u, s> - w ||a - g||^2``, so ``dQ/da = -2 w (a - g)``."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(()))
        self.state_weight = nn.Parameter(torch.zeros(OBS))
        self.register_buffer("goal", torch.full((H, ACT), 0.5))

    def forward(self, observation, action):
        squared = (action - self.goal).pow(2).sum((-2, -1))
        return ((observation * self.state_weight).sum(-1) - self.weight * squared).unsqueeze(-1)


def quadratic_q(members: TensorDict, observation, action):
    """Every member's ``Q(s, a)`` of :class:`QuadraticCritic`, ``[E, *B]``, written out."""
    weight, state_weight = members["module", "weight"], members["module", "state_weight"]
    goal = members["module", "goal"][0]
    shape = (-1,) + (1,) * (action.ndim - 2)
    squared = (action - goal).pow(2).sum((-2, -1))
    return (observation * state_weight.reshape(*shape, OBS)).sum(-1) - weight.reshape(shape) * squared


def flow_actor(low=-1.0, high=1.0):
    return FlowActor(FlowModel(LinearVelocity(), ACT, N, chunk_len=H, low=low, high=high))


def quadratic_critic():
    return TensorDictModule(QuadraticCritic(), ["observation", "action"], ["state_action_value"])


def set_members(params, **values):
    """Writes each member's value of the critic parameters ``values`` (``name -> [E, ...]``)."""
    for name, value in values.items():
        params["module", name].data.copy_(value)


def perturb(module: nn.Module, scale: float = 0.2) -> None:
    """Moves every parameter of ``module`` in place (the actor away from its reference/base)."""
    with torch.no_grad():
        for param in module.parameters():
            param.add_(scale * torch.randn_like(param))


def transitions(batch=B):
    return TensorDict(
        {"observation": torch.randn(batch, OBS), "action": torch.rand(batch, H, ACT) * 2 - 1,
         "next": {"observation": torch.randn(batch, OBS), "reward": torch.randn(batch, 1),
                  "done": torch.tensor([[False], [True], [False], [True], [False]])[:batch],
                  "terminated": torch.tensor([[False], [True], [False], [False], [False]])[:batch]}},
        batch_size=[batch],
    )


def euler_chain(model: FlowModel, observation, noise):
    """``x_0 = noise``, ``x_{k+1} = x_k + v(x_k, k / N | s) / N``: ``[*B, N + 1, H, A]``."""
    x, chain = noise, [noise]
    with torch.no_grad():
        for k in range(N):
            time = torch.full(x.shape[:-2], k / N)
            x = x + model.velocity_network(observation, x, time) / N
            chain.append(x)
    return torch.stack(chain, -3)


class TestFlowMatchingBCTerms:
    @pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
    def test_loss_flow_bc(self, reduction):
        """``||v(x_t, t | s) - (a - z)||^2`` summed over the chunk, ``x_t = (1 - t) z + t a``,
        with ``z`` then ``t`` drawn in that order."""
        actor = flow_actor()
        loss = FlowMatchingBCLoss(actor, reduction=reduction)
        data = transitions()
        torch.manual_seed(4)
        value = loss(data)["loss_flow_bc"]
        torch.manual_seed(4)
        noise = torch.randn(B, H, ACT)
        time = torch.rand(B)
        point = (1 - time)[:, None, None] * noise + time[:, None, None] * data["action"]
        velocity = actor.model.velocity_network(data["observation"], point, time)
        per_sample = (velocity - (data["action"] - noise)).pow(2).sum((-2, -1))
        expected = {"none": per_sample, "mean": per_sample.mean(), "sum": per_sample.sum()}[reduction]
        torch.testing.assert_close(value, expected)


def rldt_setup(kernel, **kwargs):
    """An RLDT loss on a linear flow and a two-member quadratic critic (weights 1 and 3), the
    actor moved away from its reference, and a frozen copy of the reference network."""
    actor = flow_actor()
    reference = copy.deepcopy(actor.model.velocity_network)
    loss = RLDTLoss(actor, quadratic_critic(), num_particles=K, transport=SVGDTransport(kernel),
                    reduction="none", rl_coeff=1.5, consistency_coeff=0.7, reference_coeff=0.3, **kwargs)
    set_members(loss.qvalue_network_params, weight=torch.tensor([1.0, 3.0]))
    perturb(actor.model.velocity_network)
    return loss, reference


def rldt_terms(loss, reference, observation, seed, kernel, rl_objective="inner_product"):
    """The three policy terms per state, replaying ``actor_loss``'s draws from ``seed``."""
    network = loss.actor_network.model.velocity_network
    obs = observation[:, None].expand(B, K, OBS)
    torch.manual_seed(seed)
    chain = euler_chain(loss.actor_network.model, obs, torch.randn(B, K, H, ACT))  # [B, K, N+1, H, A]
    step = torch.randint(N, (B, K))
    reference_time = torch.randint(N, (B, K)).float() / N
    reference_noise = torch.randn(B, K, H, ACT)

    particles = chain[..., -1, :, :].clamp(-1.0, 1.0)  # the executed chunks
    assert (particles != chain[..., -1, :, :]).any()  # the clamp acts on some
    time = step.float() / N
    state = chain[torch.arange(B)[:, None], torch.arange(K), step]  # x_k of each particle
    velocity = network(obs, state, time)
    landing = state + (1 - time)[..., None, None] * velocity
    mean_weight = 2.0  # the members' weights are 1 and 3: dQ/da = -2 * mean_w (a - g)
    goal = torch.full((H, ACT), 0.5)
    if kernel == "delta":  # the field is the critic's gradient at the landing point
        field = -2 * mean_weight * (landing - goal)
    else:  # SVGD with the gradients at the particles, evaluated at the landing points
        gradient = -2 * mean_weight * (particles - goal)
        field, _ = svgd_field(particles.flatten(-2), gradient.flatten(-2),
                              landing.detach().flatten(-2))
        field = field.unflatten(-1, (H, ACT))
    field = field.detach()
    scale = N * (1 - time)
    if rl_objective == "inner_product":
        rl = -(velocity * field).sum((-2, -1)) / scale
    else:  # 0.5 ||v - sg(v + phi / (N (1 - t)))||^2 = 0.5 ||phi||^2 / (N (1 - t))^2
        rl = 0.5 * field.pow(2).sum((-2, -1)) / scale.pow(2)
    consistency = (landing - particles).pow(2).sum((-2, -1)) / scale.pow(2)
    t_ref = reference_time[..., None, None]
    point = (1 - t_ref) * reference_noise + t_ref * particles
    gap = network(obs, point, reference_time) - reference(obs, point, reference_time)
    return {"loss_rl": 1.5 * rl.mean(-1), "loss_consistency": 0.7 * consistency.mean(-1),
            "loss_reference": 0.3 * gap.pow(2).sum((-2, -1)).mean(-1)}


class TestRLDTTerms:
    @pytest.mark.parametrize("kernel", ["delta", "rbf"])
    @pytest.mark.parametrize("rl_objective", ["inner_product", "regression"])
    def test_policy_terms(self, kernel, rl_objective):
        """``L_RL = -<v, sg(phi)> / (N (1 - t))`` (or its regression form), ``L_cons = ||a_hat -
        a||^2 / (N (1 - t))^2`` and ``L_ref = ||v - v_ref||^2`` at ``(1 - t') z + t' a``, each
        averaged over the particles and weighted by its coefficient."""
        loss, reference = rldt_setup(kernel, rl_objective=rl_objective)
        data = transitions()
        torch.manual_seed(7)
        terms = loss.actor_loss(data)
        expected = rldt_terms(loss, reference, data["observation"], 7, kernel, rl_objective)
        for key, value in expected.items():
            assert value.abs().min() > 0, key
            torch.testing.assert_close(terms[key], value, msg=key)

    def test_policy_term_gradients(self):
        """The actor's gradient of the weighted terms is the formula's (with ``sg(phi)``)."""
        loss, reference = rldt_setup("rbf")
        data = transitions()
        params = list(loss.actor_network.model.velocity_network.parameters())
        torch.manual_seed(7)
        terms = loss.actor_loss(data)
        expected = rldt_terms(loss, reference, data["observation"], 7, "rbf")
        for key in RLDTLoss.POLICY_TERMS:
            got = torch.autograd.grad(terms[key].sum(), params, retain_graph=True)
            want = torch.autograd.grad(expected[key].sum(), params, retain_graph=True)
            for g, w in zip(got, want):
                torch.testing.assert_close(g, w, msg=key)


class TestChunkQEnsembleCriticTerms:
    @pytest.mark.parametrize("loss_function", ["l2", "l1", "smooth_l1"])
    @pytest.mark.parametrize("target_clip", [None, (-0.5, 0.5)])
    @pytest.mark.parametrize("loss_class", [RLDTLoss, QAMLoss])
    def test_td0_target_and_loss(self, loss_function, target_clip, loss_class):
        """``y = clip(r + gamma (1 - terminated) mean_m min_e Qbar_e(s', a'_m))`` from the
        target members, and ``sum_e d(Q_e(s, a), y)`` with the online members, batch mean."""
        kwargs = {"num_particles": K} if loss_class is RLDTLoss else {}
        loss = loss_class(flow_actor(), quadratic_critic(), num_qvalue_nets=E, num_target_samples=M,
                          loss_function=loss_function, target_clip=target_clip, **kwargs)
        loss.make_value_estimator(gamma=GAMMA)
        set_members(loss.qvalue_network_params, weight=torch.tensor([1.0, 3.0]),
                    state_weight=torch.randn(E, OBS))
        set_members(loss.target_qvalue_network_params, weight=torch.tensor([0.5, 2.0]),
                    state_weight=torch.randn(E, OBS))
        data = transitions()
        torch.manual_seed(3)
        data = loss.sample_target_actions(data)
        torch.manual_seed(3)  # the stored samples are fresh policy samples at s'
        next_observation = data["next", "observation"]
        chain = euler_chain(loss.actor_network.model, next_observation.expand(M, B, OBS),
                            torch.randn(M, B, H, ACT))
        samples = chain[..., -1, :, :].clamp(-1.0, 1.0).movedim(0, -3)  # [B, M, H, A]
        torch.testing.assert_close(data["next", "target_action"], samples)

        value, info = loss.qvalue_loss(data)
        next_q = quadratic_q(loss.target_qvalue_network_params, next_observation[:, None], samples)
        bootstrap = next_q.min(0).values.mean(-1)  # [E, B, M] -> [B]
        not_terminated = 1.0 - data["next", "terminated"].squeeze(-1).float()
        target = data["next", "reward"].squeeze(-1) + GAMMA * not_terminated * bootstrap
        if target_clip is not None:
            assert ((target < -0.5) | (target > 0.5)).any()
            target = target.clamp(*target_clip)
        predicted = quadratic_q(loss.qvalue_network_params, data["observation"], data["action"])
        error = predicted - target
        distance = {"l2": error.pow(2), "l1": error.abs(),
                    "smooth_l1": torch.where(error.abs() < 1, 0.5 * error.pow(2), error.abs() - 0.5)}
        torch.testing.assert_close(info["target_value"], target)
        torch.testing.assert_close(info["td_error"], error.abs().max(0).values)
        torch.testing.assert_close(value, distance[loss_function].sum(0).mean())

    def test_priority_weights_weight_the_critic_loss(self):
        """With ``priority_weight`` the batch mean becomes ``sum_b w_b l_b / sum_b w_b``."""
        loss = RLDTLoss(flow_actor(), quadratic_critic(), num_particles=K)
        loss.make_value_estimator(gamma=GAMMA)
        data = loss.sample_target_actions(transitions())
        _, info = loss.qvalue_loss(data)
        per_sample = (info["state_action_value"] - info["target_value"]).pow(2).sum(0)
        weight = torch.rand(B) + 0.5
        value, _ = loss.qvalue_loss(data.clone().set("priority_weight", weight))
        torch.testing.assert_close(value, (weight * per_sample).sum() / weight.sum())


def qam_setup(**kwargs):
    actor = flow_actor()
    base = copy.deepcopy(actor.model.velocity_network)
    loss = QAMLoss(actor, quadratic_critic(), num_qvalue_nets=E, inverse_temperature=0.7,
                   base_constraint_coeff=0.4, reduction="none", **kwargs)
    set_members(loss.qvalue_network_params, weight=torch.tensor([1.0, 3.0]))
    perturb(actor.model.velocity_network)
    return loss, base


def sigma(time):
    """The memoryless noise schedule ``sqrt(2 (1 - t + h) / (t + h))``, ``h = 1 / N``."""
    h = 1 / N
    return math.sqrt(2 * (1 - time + h) / (time + h))


class TestQAMTerms:
    def test_adjoint_and_base_constraint(self):
        """The SDE, the lean adjoint from ``a_N = -lambda mean_e dQ_e/da`` at the clamped end,
        ``L_adj = sum_k ||2 (v - v_base) / sigma_k + sigma_k a_k||^2`` and ``L_base = c ||v -
        v_base||^2`` at ``(1 - t') z + t' x_N``, written out for a linear flow."""
        loss, base = qam_setup()
        network = loss.actor_network.model.velocity_network
        observation = torch.randn(B, OBS)
        data = TensorDict(observation=observation, batch_size=[B])
        torch.manual_seed(5)
        terms = loss.actor_loss(data)

        h = 1 / N
        torch.manual_seed(5)
        x = torch.randn(B, H, ACT)
        states = []
        with torch.no_grad():
            for k in range(N):
                states.append(x)
                time = torch.full((B,), k * h)
                if k < N - 1:
                    drift = 2 * network(observation, x, time) - x / (k * h + h)
                    x = x + h * drift + math.sqrt(h) * sigma(k * h) * torch.randn(B, H, ACT)
                else:
                    x = x + h * base(observation, x, time)
        final = x
        clamped = final.clamp(-1.0, 1.0)
        assert (clamped != final).any()
        gradient = torch.where(clamped == final, -2 * 2.0 * (clamped - 0.5), 0.0)  # mean weight 2
        adjoint, adjoints = (-0.7 * gradient).flatten(-2), [None] * N
        for k in reversed(range(N)):
            end = (k + 1) * h  # the base Jacobian (1 + t) M_base at the step's end time
            adjoint = adjoint + h * (2 * (1 + end) * adjoint @ base.matrix.detach()
                                     - adjoint / end)
            adjoints[k] = adjoint.unflatten(-1, (H, ACT))
        expected_adjoint = 0.0
        for k in range(N):
            time = torch.full((B,), k * h)
            gap = network(observation, states[k], time) - base(observation, states[k], time).detach()
            residual = 2 * gap / sigma(k * h) + sigma(k * h) * adjoints[k]
            expected_adjoint = expected_adjoint + residual.pow(2).sum((-2, -1))
        constraint_time = torch.rand(B)
        point = (1 - constraint_time)[:, None, None] * torch.randn(B, H, ACT) \
            + constraint_time[:, None, None] * final
        gap = network(observation, point, constraint_time) - base(observation, point, constraint_time)
        expected_base = 0.4 * gap.pow(2).sum((-2, -1))

        for key, expected in (("loss_adjoint", expected_adjoint),
                              ("loss_base_constraint", expected_base)):
            assert expected.min() > 0, key
            torch.testing.assert_close(terms[key], expected, msg=key)
            params = list(network.parameters())
            got = torch.autograd.grad(terms[key].sum(), params, retain_graph=True)
            want = torch.autograd.grad(expected.sum(), params, retain_graph=True)
            for g, w in zip(got, want):
                torch.testing.assert_close(g, w, msg=key)


def value_critic():
    return ValueOperator(MLP(in_features=OBS, out_features=1, num_cells=[8]), in_keys=["observation"])


def ppo_batch(data):
    """Adds a transition, advantages of both signs and a value target to ``data`` ``[B]``."""
    data["next"] = transitions()["next"]
    data["advantage"] = torch.tensor([[1.0], [-0.5], [2.0], [-1.5], [0.7]])
    data["value_target"] = torch.randn(B, 1)
    return data


def ppo_clip_objective(ratio, advantage, epsilon):
    """``-min(r A, clip(r, 1 - eps, 1 + eps) A)``."""
    return -torch.minimum(ratio * advantage, ratio.clamp(1 - epsilon, 1 + epsilon) * advantage)


class TestFPOTerms:
    @pytest.mark.parametrize("variant", ["fpo", "fpo++"])
    def test_objective_ratio_and_critic(self, variant):
        """``l_i = min(mean ||v(x_t, t | s) - (a - eps)||^2, max_cfm)`` recorded at collection,
        recomputed under the moved actor; FPO: ``r = exp(mean_i l_i(old) - mean_i l_i)`` with
        PPO's clip; FPO++: ``r_i = exp(l_i(old) - l_i)``, PPO's clip where ``A > 0`` and
        ``r A - |A| (r - 1)^2 / (2 eps)`` elsewhere, averaged over the pairs; log-ratios clamped
        at ``max_log_ratio`` with a straight-through gradient; ``0.5 (V(s) - V_target)^2``."""
        epsilon, max_cfm, max_log_ratio = 0.1, 3.0, 0.25
        actor, critic = flow_actor(low=None, high=None), value_critic()
        loss = FPOLoss(actor, critic, num_cfm_samples=K, variant=variant, clip_epsilon=epsilon,
                       max_cfm_loss=max_cfm, max_log_ratio=max_log_ratio, normalize_advantage=False,
                       reduction="none")
        data = ppo_batch(TensorDict(observation=torch.randn(B, OBS),
                                    action=0.5 * torch.randn(B, H, ACT), batch_size=[B]))
        network = actor.model.velocity_network

        def cfm(time, noise):
            observation = data["observation"][:, None].expand(B, K, OBS)
            action = data["action"][:, None]
            point = (1 - time)[..., None, None] * noise + time[..., None, None] * action
            return (network(observation, point, time) - (action - noise)).pow(2).mean((-2, -1))

        torch.manual_seed(2)
        loss.record_cfm_losses(data)
        torch.manual_seed(2)
        time, noise = torch.rand(B, K), torch.randn(B, K, H, ACT)
        torch.testing.assert_close(data["cfm_time"], time)
        torch.testing.assert_close(data["cfm_noise"], noise)
        with torch.no_grad():
            torch.testing.assert_close(data["cfm_old_loss"], cfm(time, noise).clamp(max=max_cfm))
        # log-ratios past max_log_ratio where the advantage is negative (the gradient goes through)
        shift = torch.tensor([0.0, 0.4, -0.05, 0.4, 0.1])[:, None] + torch.linspace(-0.15, 0.15, K)
        data["cfm_old_loss"] = data["cfm_old_loss"] + shift
        perturb(network, 0.05)

        out = loss(data)
        unclamped = cfm(time, noise)
        assert (unclamped > max_cfm).any() and (unclamped < max_cfm).any()
        new = unclamped.clamp(max=max_cfm)  # a plain clamp: no gradient above it
        old, advantage = data["cfm_old_loss"], data["advantage"]
        if variant == "fpo":  # one ratio per sample, from the mean CFM losses
            log_ratio = old.mean(-1, keepdim=True) - new.mean(-1, keepdim=True)
        else:  # one ratio per pair
            log_ratio = old - new
        through = (log_ratio > max_log_ratio) & (advantage < 0)
        assert (through & (unclamped < max_cfm) if variant == "fpo++" else through).any()
        log_ratio = log_ratio.detach().clamp(max=max_log_ratio) + (log_ratio - log_ratio.detach())
        ratio = log_ratio.exp()
        objective = ppo_clip_objective(ratio, advantage, epsilon)
        if variant == "fpo++":
            penalty = -(ratio * advantage - advantage.abs() * (ratio - 1).pow(2) / (2 * epsilon))
            objective = torch.where(advantage > 0, objective, penalty)
        expected = objective.mean(-1)
        clipped = (ratio - ratio.clamp(1 - epsilon, 1 + epsilon)).abs() > 0
        assert clipped.any() and (~clipped).any()
        torch.testing.assert_close(out["loss_objective"], expected)
        params = list(network.parameters())
        got = torch.autograd.grad(out["loss_objective"].sum(), params, retain_graph=True)
        want = torch.autograd.grad(expected.sum(), params)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w)
        clip_region = clipped if variant == "fpo" else clipped & (advantage > 0)
        torch.testing.assert_close(out["clip_fraction"], clip_region.float().mean())
        torch.testing.assert_close(out["cfm_loss"], new.detach().mean())
        torch.testing.assert_close(out["mean_ratio"], ratio.detach().mean())
        value = critic(data.select("observation").clone())["state_value"]
        torch.testing.assert_close(out["loss_critic"],
                                   0.5 * (value - data["value_target"]).pow(2).squeeze(-1))


class TestReinFlowTerms:
    @pytest.mark.parametrize("average_log_prob", [True, False])
    def test_objective_entropy_and_critic(self, average_log_prob):
        """``r = exp(log pi(chain) - log pi_old)`` with the chain's Gaussian transitions
        ``N(x_k + v(x_k, k / N) / N, sigma(s, k / N)^2)`` (summed or averaged), PPO's clipped
        surrogate, ``-c_H`` times the transitions' entropy and ``c_V (V(s) - V_target)^2``."""
        epsilon, entropy_coeff, critic_coeff = 0.05, 0.03, 0.5
        flow = flow_actor()
        policy = NoisyFlowActor(flow, FlowNoiseMLP(OBS, ACT, chunk_len=H, hidden_dims=(8,)),
                                average_log_prob=average_log_prob)
        critic = value_critic()
        loss = ReinFlowLoss(policy, critic, clip_epsilon=epsilon, entropy_coeff=entropy_coeff,
                            critic_coeff=critic_coeff, normalize_advantage=False, reduction="none")
        data = TensorDict(observation=torch.randn(B, OBS), batch_size=[B])
        with set_exploration_type(ExplorationType.RANDOM), torch.no_grad():
            data = ppo_batch(policy(data))
        data["sample_log_prob"] = data["sample_log_prob"] + torch.linspace(-0.1, 0.1, B)
        # the ratio is recomputed under the current parameters: move them (less for the sum over
        # the chain's N * H * A dimensions)
        perturb(flow.model.velocity_network, 0.02 if average_log_prob else 0.002)
        out = loss(data)

        chain, observation = data["flow_chain"], data["observation"]
        time = torch.arange(N).float().div(N).expand(B, N)
        steps_observation = observation[:, None].expand(B, N, OBS)
        mean = chain[:, :-1] + flow.model.velocity_network(steps_observation, chain[:, :-1], time) / N
        std = policy.noise_network(steps_observation, time)
        log_density = (-0.5 * ((chain[:, 1:] - mean) / std).pow(2) - std.log()
                       - 0.5 * math.log(2 * math.pi))
        entropy = 0.5 * math.log(2 * math.pi * math.e) + std.log()
        reduce = (lambda x: x.mean((1, 2, 3))) if average_log_prob else (lambda x: x.sum((1, 2, 3)))
        ratio = (reduce(log_density) - data["sample_log_prob"]).exp()
        clipped = (ratio - ratio.clamp(1 - epsilon, 1 + epsilon)).abs() > 0
        assert clipped.any() and (~clipped).any()
        expected = ppo_clip_objective(ratio, data["advantage"].squeeze(-1), epsilon)
        torch.testing.assert_close(out["loss_objective"], expected)
        torch.testing.assert_close(out["loss_entropy"], -entropy_coeff * reduce(entropy))
        value = critic(data.select("observation").clone())["state_value"]
        torch.testing.assert_close(out["loss_critic"],
                                   critic_coeff * (value - data["value_target"]).pow(2).squeeze(-1))


class TestDDPMChunkBCTerms:
    @pytest.mark.parametrize("reduction", ["none", "mean"])
    def test_loss_diffusion_bc(self, reduction):
        """``||eps(s, sqrt(abar_t) a + sqrt(1 - abar_t) eps, t) - eps||^2`` per dimension, with
        ``t ~ U{0..T-1}`` then ``eps`` drawn in that order."""
        steps = 6
        model = DDPMChunkModel(VelocityMLP(OBS, ACT, chunk_len=H, hidden_dim=8), ACT, steps, chunk_len=H)
        loss = DDPMChunkBCLoss(model, reduction=reduction)
        data = transitions()
        torch.manual_seed(8)
        value = loss(data)["loss_diffusion_bc"]
        torch.manual_seed(8)
        timestep = torch.randint(0, steps, (B,))
        noise = torch.randn(B, H, ACT)
        abar = model.alphas_cumprod[timestep][:, None, None]
        noisy = abar.sqrt() * data["action"] + (1 - abar).sqrt() * noise
        predicted = model.denoising_network(data["observation"], noisy, timestep.float())
        squared = (predicted - noise).pow(2)
        torch.testing.assert_close(value, squared if reduction == "none" else squared.mean())


if __name__ == "__main__":
    args, unknown = argparse.ArgumentParser().parse_known_args()
    pytest.main([__file__, "--capture", "no", "--exitfirst"] + unknown)
