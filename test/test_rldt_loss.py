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
from torchrl.objectives import SoftUpdate, ValueEstimators

from torchrl_rldt.modules import ChunkQValueMLP, FlowActor, FlowModel, SVGDTransport, VelocityMLP
from torchrl_rldt.objectives import FlowMatchingBCLoss, ReferenceUpdater, RLDTLoss

OBS, ACT, H, N = 5, 2, 3, 4


def make_actor(observation_key="observation"):
    model = FlowModel(VelocityMLP(OBS, ACT, chunk_len=H, hidden_dim=32), ACT, N, chunk_len=H,
                      low=-2.0, high=2.0)
    return FlowActor(model, in_keys=[observation_key])


def make_critic(observation_key="observation", action_key="action"):
    return ValueOperator(ChunkQValueMLP(OBS, ACT, chunk_len=H, hidden_dim=32),
                         in_keys=[observation_key, action_key], out_keys=["state_action_value"])


def make_loss(**kwargs):
    loss = RLDTLoss(make_actor(), make_critic(), num_particles=4, **kwargs)
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


class QuadraticCritic(nn.Module):
    """Q(s, a) = -w ||a - goal||^2: its action-gradient points at ``goal``."""

    def __init__(self, goal):
        super().__init__()
        self.goal = goal
        self.weight = nn.Parameter(torch.ones(()))

    def forward(self, observation, action):
        return -self.weight * (action - self.goal).pow(2).sum((-2, -1)).unsqueeze(-1)


POLICY_TERMS = ("loss_rl", "loss_consistency", "loss_reference")


def assert_same_losses(first, second, batch, seed=3):
    """Both losses give the same outputs on ``batch`` from the same random state."""
    torch.manual_seed(seed)
    expected = first(batch.clone())
    torch.manual_seed(seed)
    got = second(batch.clone())
    assert set(got.keys()) == set(expected.keys())
    for key in expected.keys():
        torch.testing.assert_close(got[key], expected[key], msg=key)


class TestRLDTLoss:
    def test_outputs_and_keys(self):
        loss = make_loss()
        out = loss(make_batch())
        assert set(loss.out_keys) == set(out.keys())
        assert all(out[key].shape == () and torch.isfinite(out[key]) for key in out.keys())
        assert loss.in_keys == ["observation", "action", ("next", "observation"),
                                ("next", "reward"), ("next", "done"), ("next", "terminated")]

    def test_set_keys_with_nested_keys(self):
        actor = make_actor(("agent", "obs"))
        loss = RLDTLoss(actor, make_critic(("agent", "obs"), ("agent", "chunk")), num_particles=3)
        loss.set_keys(observation=("agent", "obs"), action=("agent", "chunk"),
                      reward=("agent", "reward"), done=("agent", "done"),
                      terminated=("agent", "terminated"), priority=("agent", "td"))
        loss.make_value_estimator(gamma=0.9)
        batch = make_batch(obs_key=("agent", "obs"), action_key=("agent", "chunk"),
                           reward_key=("agent", "reward"), done_key=("agent", "done"),
                           terminated_key=("agent", "terminated"))
        out = loss(batch)
        assert torch.isfinite(out["loss_qvalue"]) and torch.isfinite(out["loss_rl"])
        assert batch["agent", "td"].shape == (6,)
        assert ("next", "agent", "reward") in loss.in_keys

    @pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
    def test_reduction(self, reduction):
        out = make_loss(reduction=reduction)(make_batch(6))
        for key in ("loss_qvalue",) + POLICY_TERMS:
            assert out[key].shape == ((6,) if reduction == "none" else ())

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
        # the targets and the reference policy are buffers, not optimised
        trainable = {id(p) for p in loss.parameters()}
        assert not any(id(t) in trainable for t in loss.target_qvalue_network_params.values(True, True))
        assert not any(id(t) in trainable for t in loss.reference_actor_network_params.values(True, True))

    def test_actor_loss_gives_no_gradient_to_the_critic(self):
        loss = make_loss()
        terms = loss.actor_loss(make_batch())
        sum(terms[key] for key in POLICY_TERMS).backward()
        assert all(p.grad is None for p in loss.qvalue_network_params.values(True, True))
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in loss.actor_network.parameters())

    def test_critic_loss_gives_no_gradient_to_the_actor(self):
        loss = make_loss()
        value, _ = loss.qvalue_loss(make_batch())
        value.backward()
        assert all(p.grad is None for p in loss.actor_network.parameters())
        assert all(p.grad is not None for p in loss.qvalue_network_params.values(True, True))

    def test_rl_gradient_equals_its_regression_form(self):
        """grad of -<v, sg(phi)>/(N(1-t)) == grad of 0.5 ||v - sg(v + phi/(N(1-t)))||^2."""
        torch.manual_seed(0)
        inner = make_loss(consistency_coeff=0.0, reference_coeff=0.0)
        torch.manual_seed(0)
        regression = make_loss(consistency_coeff=0.0, reference_coeff=0.0, rl_objective="regression")
        batch = make_batch(8)
        grads = []
        for loss in (inner, regression):
            torch.manual_seed(11)
            loss.actor_loss(batch)["loss_rl"].backward()
            grads.append([p.grad.clone() for p in loss.actor_network.parameters()])
        assert any(g.abs().sum() > 0 for g in grads[0])
        for a, b in zip(*grads):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)

    def test_td_target_bootstraps_on_terminated_only(self):
        loss = make_loss()
        batch = make_batch(6, terminated=True)
        predicted = []
        for params in loss.qvalue_network_params.unbind(0):
            with params.to_module(loss.qvalue_network):
                q = loss.qvalue_network.module(batch["observation"], batch["action"])
            predicted.append(q.squeeze(-1))
        predicted = torch.stack(predicted)
        # a terminated transition: the target is the reward alone
        expected = (predicted - batch["next", "reward"].squeeze(-1)).pow(2).sum(0).mean()
        value, info = loss.qvalue_loss(batch)
        torch.testing.assert_close(value, expected.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(info["state_action_value"], predicted.detach())
        assert not info["state_action_value"].requires_grad
        # a truncated transition (done, not terminated) bootstraps: another target
        truncated = batch.clone()
        truncated["next", "terminated"] = torch.zeros(6, 1, dtype=torch.bool)
        assert not torch.allclose(loss.qvalue_loss(truncated)[0], value)

    def test_target_actions_drawn_once_give_the_target_drawn_in_the_step(self):
        loss = make_loss()
        batch = make_batch(6)
        torch.manual_seed(5)
        _, fresh = loss.qvalue_loss(batch.clone())
        torch.manual_seed(5)
        stored = loss.sample_target_actions(batch.clone())
        assert stored["next", "target_action"].shape == (6, loss.num_target_samples, H, ACT)
        _, reused = loss.qvalue_loss(stored)
        torch.testing.assert_close(reused["target_value"], fresh["target_value"])
        # the stored samples are what the target uses: the actor is not called again
        with torch.no_grad():
            for param in loss.actor_network_params.values(True, True):
                param.add_(1.0)
        _, again = loss.qvalue_loss(stored)
        torch.testing.assert_close(again["target_value"], reused["target_value"])
        assert not torch.allclose(loss.qvalue_loss(batch.clone())[1]["target_value"],
                                  reused["target_value"])
        # the key can be moved, as every key of the loss
        loss.set_keys(target_action="next_action_samples")
        renamed = batch.clone()
        renamed["next", "next_action_samples"] = stored["next", "target_action"]
        torch.testing.assert_close(loss.qvalue_loss(renamed)[1]["target_value"], reused["target_value"])

    def test_bootstrap_members_train_on_their_own_transitions(self):
        loss = make_loss()
        batch = make_batch(6)
        torch.manual_seed(2)
        value, info = loss.qvalue_loss(batch.clone())
        squared = (info["state_action_value"] - info["target_value"]).pow(2)  # [E, B]
        torch.testing.assert_close(value, squared.sum(0).mean())
        member = torch.tensor([0, 1, 0, 1, 1, 1])
        torch.manual_seed(2)
        split, _ = loss.qvalue_loss(batch.clone().set("critic_member", member))
        expected = 2 * (squared[0] * (member == 0) + squared[1] * (member == 1)).mean()
        torch.testing.assert_close(split, expected)
        # a member named by no transition gets no gradient
        torch.manual_seed(2)
        only_first, _ = loss.qvalue_loss(batch.clone().set("critic_member", torch.zeros(6, dtype=torch.long)))
        only_first.backward()
        gradients = [p.grad for p in loss.qvalue_network_params.values(True, True) if p.grad is not None]
        assert gradients and all(g[1].abs().sum() == 0 and g[0].abs().sum() > 0 for g in gradients)
        # [B, 1] names the same members as [B]
        torch.manual_seed(2)
        column, _ = loss.qvalue_loss(batch.clone().set("critic_member", member.unsqueeze(-1)))
        torch.testing.assert_close(column, split)

    @pytest.mark.parametrize("member, error, match", [
        (torch.tensor([0, 1, 0, 1, 1, 2]), ValueError, r"outside the ensemble's \[0, 2\)"),
        (torch.tensor([0, 1, 0, 1, 1, -1]), ValueError, "outside the ensemble"),
        (torch.zeros(6), TypeError, "must hold integers"),
        (torch.zeros(6, 2, dtype=torch.long), ValueError, "one member index per transition"),
    ])
    def test_a_member_the_ensemble_does_not_have_is_refused(self, member, error, match):
        # such a transition would train no member, silently
        loss = make_loss()
        with pytest.raises(error, match=match):
            loss.qvalue_loss(make_batch(6).set("critic_member", member))

    def test_n_step_transitions_discount_by_gamma_to_the_steps(self):
        # TorchRL's MultiStep writes steps_to_next_obs; the target is r + gamma ** n V(s')
        loss = make_loss()  # gamma 0.9
        batch = loss.sample_target_actions(make_batch(6))
        one_step = loss.qvalue_loss(batch.clone())[1]["target_value"]
        steps = torch.tensor([1, 2, 3, 1, 2, 3]).unsqueeze(-1)
        n_step = loss.qvalue_loss(batch.clone().set("steps_to_next_obs", steps))[1]["target_value"]
        reward = batch["next", "reward"].squeeze(-1)
        discount = 0.9 ** (steps.squeeze(-1) - 1).double()
        torch.testing.assert_close(n_step - reward, ((one_step - reward) * discount).float())

    def test_target_std_penalty_replaces_the_minimum(self):
        loss = make_loss(target_std_penalty=0.5, num_qvalue_nets=3)
        batch = loss.sample_target_actions(make_batch(6))
        target = loss.qvalue_loss(batch.clone())[1]["target_value"]
        samples = batch["next", "target_action"].movedim(-3, 0)  # [M, B, H, A]
        next_q = torch.stack([loss.critic_values(batch["next"], action) for action in samples])
        value = (next_q.mean(1) - 0.5 * next_q.std(1)).mean(0)  # [M, E, B] -> [B]
        expected = batch["next", "reward"].squeeze(-1) + 0.9 * value
        torch.testing.assert_close(target, expected)

    def test_critic_values_are_the_online_members_predictions(self):
        loss = make_loss()
        batch = make_batch(6)
        torch.manual_seed(2)
        _, info = loss.qvalue_loss(batch.clone())
        values = loss.critic_values(batch)
        assert values.shape == (2, 6) and not values.requires_grad
        torch.testing.assert_close(values, info["state_action_value"])
        # another action, with leading sample dimensions over the state's
        actions = torch.rand(3, 6, H, ACT)
        state = batch.select("observation").expand(3, 6)
        assert loss.critic_values(state, actions).shape == (2, 3, 6)

    def test_soft_update_and_reference_reanchoring(self):
        loss = make_loss()
        updater = SoftUpdate(loss, eps=0.5)
        optim = torch.optim.Adam(loss.parameters(), lr=1e-2)
        target_before = loss.target_qvalue_network_params.clone()
        reference_before = loss.reference_actor_network_params.clone()
        out = loss(make_batch())
        (out["loss_qvalue"] + sum(out[key] for key in POLICY_TERMS)).backward()
        optim.step()
        updater.step()
        moved = (loss.target_qvalue_network_params - target_before).abs().sum()
        assert sum(moved.values(True, True)) > 0
        assert (loss.reference_actor_network_params == reference_before).all()
        loss.reset_reference()
        assert (loss.reference_actor_network_params == loss.actor_network_params.data).all()

    @pytest.mark.parametrize("terminated_at", [None, 2])
    def test_td_lambda_target_along_trajectory_slices(self, terminated_at):
        """TD(lambda) over [slices, T]: the lambda-return recursion, cut at done (a slice end)
        and without bootstrap at terminated, with V(s') = 1 from a constant critic."""
        gamma, lmbda, slices, steps = 0.9, 0.5, 2, 5

        class ConstantCritic(nn.Module):
            def __init__(self):
                super().__init__()
                self.value = nn.Parameter(torch.ones(()))

            def forward(self, observation, action):
                return self.value.expand(*action.shape[:-2], 1)

        critic = TensorDictModule(ConstantCritic(), ["observation", "action"], ["state_action_value"])
        loss = RLDTLoss(make_actor(), critic, num_particles=2, target_clip=(0.0, 1.0))
        loss.make_value_estimator(ValueEstimators.TDLambda, gamma=gamma, lmbda=lmbda)
        batch = make_batch(slices * steps).reshape(slices, steps)
        reward = torch.rand(slices, steps, 1) * 0.5
        done = torch.zeros(slices, steps, 1, dtype=torch.bool)
        done[:, -1] = True  # the slice end, as SliceSampler marks it
        terminated = torch.zeros_like(done)
        if terminated_at is not None:
            terminated[0, terminated_at] = done[0, terminated_at] = True
        batch["next", "reward"], batch["next", "done"] = reward, done
        batch["next", "terminated"] = terminated
        _, info = loss.qvalue_loss(batch)

        expected = torch.zeros(slices, steps)
        for row in range(slices):
            following = None
            for t in reversed(range(steps)):
                bootstrap = 0.0 if terminated[row, t] else 1.0  # V(s') = 1
                if done[row, t]:
                    value = reward[row, t, 0] + gamma * bootstrap
                else:
                    value = reward[row, t, 0] + gamma * ((1 - lmbda) * bootstrap + lmbda * following)
                expected[row, t] = value
                following = value
        torch.testing.assert_close(info["target_value"], expected.clamp(0, 1))
        assert (info["target_value"] <= 1).all() and (expected > 1).any()  # the clip acted

    @pytest.mark.parametrize("kernel", ["rbf", "delta"])
    def test_policy_moves_up_the_critic(self, kernel):
        """A few actor steps against Q = -||a - goal||^2 bring the actions towards ``goal``."""
        torch.manual_seed(0)
        goal = torch.full((H, ACT), 0.8)
        critic = TensorDictModule(QuadraticCritic(goal), ["observation", "action"],
                                  ["state_action_value"])
        loss = RLDTLoss(make_actor(), critic, num_particles=8, reference_coeff=0.0,
                        transport=SVGDTransport(kernel))
        optim = torch.optim.Adam(loss.actor_network.parameters(), lr=3e-3)
        batch = make_batch(32)

        def distance():
            with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
                action = loss.actor_network(batch.select("observation").clone())["action"]
            return (action - goal).pow(2).sum((-2, -1)).mean()

        before = distance()
        for _ in range(60):
            terms = loss.actor_loss(batch)
            optim.zero_grad()
            sum(terms[key] for key in POLICY_TERMS).backward()
            optim.step()
        assert distance() < 0.5 * before

    def test_stop_at_bounds_stops_only_the_outward_push(self):
        """Landings past ``high`` under a critic that pulls further out get no transport; inside
        the bounds the option changes nothing."""
        goal = torch.full((H, ACT), 5.0)  # past high = 2: the critic's gradient points outward
        critic = TensorDictModule(QuadraticCritic(goal), ["observation", "action"],
                                  ["state_action_value"])
        actor = make_actor()
        with torch.no_grad():
            actor.model.velocity_network.output_layer.bias.fill_(50.0)  # every chain ends past 2

        def rl_gradient(stop_at_bounds):
            loss = RLDTLoss(actor, critic, num_particles=4, stop_at_bounds=stop_at_bounds)
            torch.manual_seed(0)
            actor.zero_grad(set_to_none=True)
            loss.actor_loss(make_batch())["loss_rl"].backward()
            return torch.cat([p.grad.flatten() for p in actor.parameters()])

        assert rl_gradient(False).abs().max() > 0
        assert rl_gradient(True).abs().max() == 0
        # bounds that no chain reaches: the option changes nothing
        def wide_loss(stop_at_bounds):
            torch.manual_seed(1)
            model = FlowModel(VelocityMLP(OBS, ACT, chunk_len=H, hidden_dim=32), ACT, N,
                              chunk_len=H, low=-50.0, high=50.0)
            loss = RLDTLoss(FlowActor(model), make_critic(), num_particles=4,
                            stop_at_bounds=stop_at_bounds)
            loss.make_value_estimator(gamma=0.9)
            return loss

        assert_same_losses(wide_loss(False), wide_loss(True), make_batch())

    def test_stop_at_bounds_reads_the_bounds_of_the_loss_copy(self):
        """After ``loss.double()`` (or ``.to(device)``) the loss's copy of the actor, bounds
        included, is not the module's: the projection must use the copy."""
        goal = torch.full((H, ACT), 500.0)  # past both bounds below: the pull is outward
        critic = TensorDictModule(QuadraticCritic(goal), ["observation", "action"],
                                  ["state_action_value"])
        actor = make_actor()
        with torch.no_grad():
            actor.model.velocity_network.output_layer.bias.fill_(50.0)  # landings near 50
        loss = RLDTLoss(actor, critic, num_particles=4, stop_at_bounds=True).double()
        loss.actor_network_params["model", "high"].data.fill_(100.0)  # no landing reaches it
        assert float(actor.model.high.max()) == 2.0  # the module's own bounds did not move
        torch.manual_seed(0)
        loss.actor_loss(make_batch().double())["loss_rl"].backward()
        assert max(p.grad.abs().max() for p in loss.actor_network_params.values(True, True)
                   if p.grad is not None) > 0

    def test_composes_with_another_objective(self):
        actor = make_actor()
        rldt = RLDTLoss(actor, make_critic(), num_particles=2)
        bc = FlowMatchingBCLoss(actor)
        batch = make_batch()
        (rldt.actor_loss(batch)["loss_rl"] + bc(batch)["loss_flow_bc"]).backward()
        assert all(p.grad is not None for p in actor.parameters() if p.requires_grad)

    def test_bad_arguments(self):
        with pytest.raises(ValueError, match="num_particles must be an integer >= 1"):
            RLDTLoss(make_actor(), make_critic(), num_particles=0)
        with pytest.raises(ValueError, match="num_particles must be an integer >= 1"):
            RLDTLoss(make_actor(), make_critic(), num_particles=True)
        with pytest.raises(ValueError, match="reduction must be one of"):
            RLDTLoss(make_actor(), make_critic(), reduction="average")
        with pytest.raises(ValueError, match="loss_function must be one of"):
            RLDTLoss(make_actor(), make_critic(), loss_function="huber")
        with pytest.raises(ValueError, match="reference_coeff must be >= 0"):
            RLDTLoss(make_actor(), make_critic(), reference_coeff=-1.0)
        with pytest.raises(TypeError, match="FlowActor"):
            RLDTLoss(make_critic(), make_critic())
        unbounded = FlowActor(FlowModel(VelocityMLP(OBS, ACT, chunk_len=H), ACT, N, chunk_len=H))
        with pytest.raises(ValueError, match="stop_at_bounds=True needs an actor"):
            RLDTLoss(unbounded, make_critic(), stop_at_bounds=True)
        loss = RLDTLoss(make_actor(), make_critic(action_key="chunk"))
        with pytest.raises(KeyError, match="does not include the loss's action key"):
            loss(make_batch())

    def test_critic_in_keys_in_another_order(self):
        class ActionFirst(nn.Module):
            def __init__(self, network):
                super().__init__()
                self.network = network

            def forward(self, action, observation):
                return self.network(observation, action)

        torch.manual_seed(0)
        straight = make_loss()
        critic = ValueOperator(ActionFirst(ChunkQValueMLP(OBS, ACT, chunk_len=H, hidden_dim=32)),
                               in_keys=["action", "observation"], out_keys=["state_action_value"])
        swapped = RLDTLoss(make_actor(), critic, num_particles=4)
        swapped.make_value_estimator(gamma=0.9)
        # the same weights for both: the actor, the critic members and their targets (the
        # replacement also renames the targets' keys)
        state = {key.replace("qvalue_network_params.module.", "qvalue_network_params.module.network."):
                 value for key, value in straight.state_dict().items()}
        swapped.load_state_dict(state)
        assert_same_losses(straight, swapped, make_batch())

    def test_critic_reads_its_own_in_keys(self):
        class GoalCritic(nn.Module):
            def __init__(self):
                super().__init__()
                self.network = ChunkQValueMLP(OBS + 2, ACT, chunk_len=H, hidden_dim=16)

            def forward(self, observation, goal, action):
                return self.network(torch.cat([observation, goal], -1), action)

        critic = ValueOperator(GoalCritic(), in_keys=["observation", "goal", "action"],
                               out_keys=["state_action_value"])
        loss = RLDTLoss(make_actor(), critic, num_particles=3)
        assert "goal" in loss.in_keys and ("next", "goal") in loss.in_keys
        batch = make_batch()
        batch["goal"], batch["next", "goal"] = torch.randn(6, 2), torch.randn(6, 2)
        out = loss(batch)
        assert torch.isfinite(out["loss_qvalue"]) and torch.isfinite(out["loss_rl"])

    @pytest.mark.parametrize("deactivate_vmap", [False, True])
    def test_critic_with_dropout(self, deactivate_vmap):
        class DropoutCritic(nn.Module):
            def __init__(self):
                super().__init__()
                self.dropout = nn.Dropout(0.5)
                self.network = ChunkQValueMLP(OBS, ACT, chunk_len=H, hidden_dim=16)

            def forward(self, observation, action):
                return self.network(self.dropout(observation), action)

        critic = ValueOperator(DropoutCritic(), in_keys=["observation", "action"],
                               out_keys=["state_action_value"])
        loss = RLDTLoss(make_actor(), critic, num_particles=3, deactivate_vmap=deactivate_vmap)
        assert loss.vmap_randomness == "different"
        out = loss(make_batch())
        assert torch.isfinite(out["loss_qvalue"]) and torch.isfinite(out["loss_rl"])

    def test_vmap_and_loop_agree(self):
        torch.manual_seed(0)
        vmapped = make_loss()
        looped = make_loss(deactivate_vmap=True)
        looped.load_state_dict(vmapped.state_dict())
        assert_same_losses(vmapped, looped, make_batch())

    def test_delta_kernel_declares_no_bandwidth(self):
        loss = make_loss(transport=SVGDTransport("delta"))
        assert "transport_bandwidth" not in loss.out_keys
        assert set(loss(make_batch()).keys()) == set(loss.out_keys)

    def test_reference_is_frozen_or_reanchored_by_its_updater(self):
        batch = make_batch()

        def actor_step(loss):
            terms = loss.actor_loss(batch)
            sum(terms[key] for key in POLICY_TERMS).backward()
            with torch.no_grad():
                for param in loss.actor_network.parameters():
                    param -= 0.05 * param.grad
                    param.grad = None

        frozen = make_loss()  # no updater: the reference stays, however often the loss is called
        start = frozen.reference_actor_network_params.clone()
        for _ in range(3):
            actor_step(frozen)
        assert (frozen.reference_actor_network_params == start).all()
        assert not (frozen.actor_network_params.data == start).all()

        previous = make_loss()
        updater = ReferenceUpdater(previous, every=2)
        start = previous.reference_actor_network_params.clone()
        actor_step(previous)
        updater.step()
        assert (previous.reference_actor_network_params == start).all()  # not yet
        actor_step(previous)
        after_two = previous.actor_network_params.data.clone()
        updater.step()  # the second update re-anchors, to the iterate after two steps
        assert (previous.reference_actor_network_params == after_two).all()
        previous.actor_loss(batch)  # a diagnostic call moves nothing
        assert (previous.reference_actor_network_params == after_two).all()


if __name__ == "__main__":
    args, unknown = argparse.ArgumentParser().parse_known_args()
    pytest.main([__file__, "--capture", "no", "--exitfirst"] + unknown)
