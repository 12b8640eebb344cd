# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
from __future__ import annotations

import argparse

import pytest
import torch
from tensordict import TensorDict
from torchrl.data import Bounded, Composite, Unbounded
from torchrl.envs.utils import ExplorationType, set_exploration_type

from torchrl_rldt.modules import (
    DDPMChunkModel,
    DPPOActor,
    FlowActor,
    FlowModel,
    FlowNoiseMLP,
    LandingPointExploration,
    NoisyFlowActor,
    StepwiseFlowActor,
    VelocityMLP,
)

OBS, ACT, H = 5, 2, 3


def make_model(num_steps=4, **kwargs):
    return FlowModel(VelocityMLP(OBS, ACT, chunk_len=H, hidden_dim=32), ACT, num_steps, chunk_len=H,
                     **kwargs)


def make_actor(num_steps=4, **kwargs):
    return FlowActor(make_model(num_steps), **kwargs)


class TestFlowModel:
    @pytest.mark.parametrize("batch", [(), (1,), (4,), (2, 3)])
    def test_shapes(self, batch):
        model = make_model()
        observation = torch.randn(*batch, OBS)
        assert model(observation).shape == (*batch, H, ACT)
        action, chain = model.sample(observation, return_chain=True)
        assert chain.shape == (*batch, model.num_steps + 1, H, ACT)

    def test_chain_is_the_euler_integration(self):
        model = make_model(num_steps=5)
        obs, noise = torch.randn(4, OBS), torch.randn(4, H, ACT)
        action, chain = model.sample(obs, noise, return_chain=True)
        assert (chain[:, 0] == noise).all()
        for k in range(5):
            expected = chain[:, k] + model.velocity(obs, chain[:, k], k / 5) / 5
            torch.testing.assert_close(chain[:, k + 1], expected)
        torch.testing.assert_close(action, chain[:, -1])

    def test_noisy_steps_are_gaussian_around_the_euler_step(self):
        model = make_model(num_steps=3)
        obs, noise = torch.randn(2, OBS), torch.randn(2, H, ACT)
        std = torch.full((2, H, ACT), 0.5)
        chain, mean, step_std = model.integrate(obs, noise, step_std=lambda o, t: std)
        assert chain.shape == (2, 4, H, ACT) and mean.shape == step_std.shape == (2, 3, H, ACT)
        for k in range(3):
            torch.testing.assert_close(mean[:, k], model.step_mean(obs, chain[:, k], k / 3))
        assert not torch.allclose(chain[:, 1:], mean)  # noise was added
        # without a noise network the same call is the deterministic chain
        deterministic = model.integrate(obs, noise)
        assert deterministic.step_mean is None and deterministic.step_std is None

    def test_num_steps_can_change(self):
        model = make_model(num_steps=2)
        model.num_steps = 8
        assert model.sample(torch.randn(3, OBS), return_chain=True)[1].shape == (3, 9, H, ACT)
        with pytest.raises(ValueError, match="num_steps"):
            model.num_steps = 0

    def test_bounds(self):
        model = make_model(low=-0.1, high=0.1)
        action = model(torch.randn(100, OBS), torch.randn(100, H, ACT) * 10)
        assert action.abs().max() <= 0.1 + 1e-7
        with pytest.raises(ValueError, match="low must not exceed high"):
            make_model(low=1.0, high=0.0)
        with pytest.raises(ValueError, match="noise must have shape"):
            make_model().sample(torch.randn(2, OBS), torch.randn(2, ACT))
        # per-dimension bounds of another action size fail when built, not at the first clamp
        with pytest.raises(ValueError, match=r"\(3,\), which does not broadcast to a chunk \(3, 2\)"):
            make_model(low=torch.zeros(3), high=torch.ones(2))
        per_element = make_model(low=-torch.ones(H, ACT), high=torch.ones(H, ACT))  # one per chunk entry
        assert per_element.low.shape == (H, ACT)
        per_dimension = make_model(low=torch.tensor([-1.0, -0.5]), high=torch.tensor([1.0, 0.5]))
        assert per_dimension(torch.randn(50, OBS), torch.randn(50, H, ACT) * 10)[..., 1].abs().max() <= 0.5

    def test_expected_action_and_chain_landing(self):
        model = make_model()
        obs, x = torch.randn(4, OBS), torch.randn(4, H, ACT)
        t = torch.tensor([0.0, 0.25, 0.5, 0.75])
        expected = x + (1 - t)[:, None, None] * model.velocity(obs, x, t)
        torch.testing.assert_close(model.expected_action(obs, x, t), expected)
        # the landing point at step k of a chain is the expected action of its k-th state
        _, chain = model.sample(obs, return_chain=True)
        step = torch.tensor([0, 1, 2, 3])
        velocity, landing = model.chain_landing(obs, chain, step)
        states = chain[torch.arange(4), step]
        torch.testing.assert_close(landing, model.expected_action(obs, states, step / 4))
        torch.testing.assert_close(velocity, model.velocity(obs, states, step / 4))
        # its parameter gradient is (1 - t) dv/dtheta: zero at t = 1
        model.zero_grad()
        model.expected_action(obs, x, 1.0).sum().backward()
        assert all(p.grad is None or (p.grad == 0).all() for p in model.parameters())

    def test_any_velocity_module(self):
        class Constant(torch.nn.Module):
            def forward(self, observation, action, time):
                return torch.ones_like(action)

        model = FlowModel(Constant(), ACT, num_steps=4, chunk_len=H)
        # x_1 = x_0 + sum of 4 steps of 1/4 * 1 = 1 + x_0
        torch.testing.assert_close(model(torch.randn(2, OBS), torch.zeros(2, H, ACT)),
                                   torch.ones(2, H, ACT))


class TestFlowActor:
    @pytest.mark.parametrize("batch", [(), (1,), (4,), (2, 3)])
    def test_shapes(self, batch):
        actor = make_actor(out_keys=["action", "chain"])
        td = TensorDict(observation=torch.randn(*batch, OBS), batch_size=batch)
        out = actor(td)
        assert out["action"].shape == (*batch, H, ACT)
        assert out["chain"].shape == (*batch, actor.model.num_steps + 1, H, ACT)

    def test_exploration_modes(self):
        actor = make_actor()
        td = TensorDict(observation=torch.randn(6, OBS), batch_size=[6])
        with set_exploration_type(ExplorationType.DETERMINISTIC):
            a1 = actor(td.clone())["action"]
            a2 = actor(td.clone())["action"]
        zero = actor.model(td["observation"], torch.zeros(6, H, ACT))
        assert (a1 == a2).all()
        torch.testing.assert_close(a1, zero)
        with set_exploration_type(ExplorationType.RANDOM):
            r1 = actor(td.clone())["action"]
            r2 = actor(td.clone())["action"]
        assert not torch.allclose(r1, r2)
        # an explicit noise in the input wins over the exploration type
        noise = torch.randn(6, H, ACT)
        for mode in (ExplorationType.RANDOM, ExplorationType.DETERMINISTIC):
            with set_exploration_type(mode):
                n1 = actor(td.clone().set("flow_noise", noise))["action"]
            torch.testing.assert_close(n1, actor.model(td["observation"], noise))

    def test_keys_are_fixed_at_construction(self):
        actor = make_actor(in_keys=[("agent", "obs")], out_keys=[("agent", "chunk")])
        assert actor.in_keys == [("agent", "obs")] and actor.observation_key == ("agent", "obs")
        td = TensorDict({"agent": {"obs": torch.randn(2, OBS)}}, batch_size=[2])
        assert actor(td)["agent", "chunk"].shape == (2, H, ACT)
        for name in ("in_keys", "out_keys", "observation_key", "action_key", "chain_key"):
            with pytest.raises(AttributeError):
                setattr(actor, name, ["other"])
        assert actor.in_keys == [("agent", "obs")]
        with pytest.raises(ValueError, match="in_keys"):
            make_actor(in_keys=["observation", "goal"])
        with pytest.raises(TypeError, match="FlowModel"):
            FlowActor(VelocityMLP(OBS, ACT))

    def test_action_spec(self):
        actor = FlowActor(make_model(low=-torch.ones(ACT), high=torch.ones(ACT)),
                          out_keys=[("agent", "chunk"), "chain"])
        bounded = actor.action_spec
        assert isinstance(bounded, Bounded) and bounded.shape == (H, ACT)
        assert (bounded.space.low == -1).all() and (bounded.space.high == 1).all()
        # TorchRL's actor convention: a Composite keyed by the action key (the chain is left out)
        assert isinstance(actor.spec, Composite) and actor.spec["agent", "chunk"] == bounded
        assert list(actor.spec.keys(True, True)) == [("agent", "chunk")]
        assert isinstance(make_actor().action_spec, Unbounded)
        with set_exploration_type(ExplorationType.RANDOM):
            action = FlowActor(make_model(low=-0.1, high=0.1))(
                TensorDict(observation=torch.randn(50, OBS), batch_size=[50]))["action"]
        assert FlowActor(make_model(low=-0.1, high=0.1)).action_spec.is_in(action)


def make_stepwise_actor():
    actor = StepwiseFlowActor(make_actor(), [VelocityMLP(OBS, ACT, chunk_len=H, hidden_dim=8) for _ in range(2)])
    with torch.no_grad():  # blocks that move the action
        for block in actor.blocks:
            block.output_layer.bias.normal_()
    actor.set_active_block(1)
    return actor


ACTORS = {
    "flow": lambda: make_actor(),
    "stepwise_flow": make_stepwise_actor,
    "noisy_flow": lambda: NoisyFlowActor(make_actor(), FlowNoiseMLP(OBS, ACT, chunk_len=H, hidden_dims=(8,))),
    "dppo": lambda: DPPOActor(DDPMChunkModel(VelocityMLP(OBS, ACT, chunk_len=H, hidden_dim=16), ACT, 6,
                                             chunk_len=H, low=-1.0, high=1.0), finetuned_steps=3),
}


@pytest.mark.parametrize("name", ACTORS)
@pytest.mark.parametrize("mode", [ExplorationType.RANDOM, ExplorationType.DETERMINISTIC])
class TestActorConventions:
    """What TorchRL's actors offer: a call with keyword tensors (``@dispatch``), and the dtype of
    the module's parameters carried to its noise and actions."""

    def test_keyword_call_equals_the_tensordict_call(self, name, mode):
        actor, observation = ACTORS[name](), torch.randn(4, OBS)
        with set_exploration_type(mode):
            torch.manual_seed(0)
            expected = actor(TensorDict(observation=observation, batch_size=[4]))
            torch.manual_seed(0)
            got = actor(observation=observation)
        action = got[0] if isinstance(got, tuple) else got
        torch.testing.assert_close(action, expected["action"], rtol=0, atol=0)

    def test_a_float64_actor_samples_in_float64(self, name, mode):
        actor = ACTORS[name]().double()
        with set_exploration_type(mode):
            td = actor(TensorDict(observation=torch.randn(4, OBS, dtype=torch.float64), batch_size=[4]))
        assert all(value.dtype == torch.float64 for key, value in td.items() if key != "observation"
                   and value.is_floating_point()), {key: value.dtype for key, value in td.items()}
        flow_actor = getattr(actor, "flow_actor", actor)
        if isinstance(flow_actor, FlowActor):
            noise = flow_actor.initial_noise(td)
            assert noise.dtype == torch.float64  # the noise itself, not only what it is mixed into


WRAPPERS = {
    "landing_point": lambda actor: LandingPointExploration(actor, min_step=2),
    "noisy_flow": lambda actor: NoisyFlowActor(actor, FlowNoiseMLP(OBS, ACT, chunk_len=H, hidden_dims=(8,)),
                                               # ("log_prob",) is the key "log_prob", unravelled
                                               chain_key=("agent", "noisy_chain"), log_prob_key=("log_prob",)),
}


@pytest.mark.parametrize("name", WRAPPERS)
class TestWrapperConventions:
    """The policies around a FlowActor take its keys and spec, read-only as the actor's own."""

    @staticmethod
    def wrap(name):
        actor = FlowActor(make_model(low=-torch.ones(ACT), high=torch.ones(ACT)), in_keys=[("agent", "obs")],
                          out_keys=[("agent", "chunk"), ("agent", "chain")])
        return actor, WRAPPERS[name](actor)

    def test_keys_are_the_actor_keys(self, name):
        actor, policy = self.wrap(name)
        assert policy.in_keys == actor.in_keys == [("agent", "obs")]
        assert policy.out_keys[0] == actor.action_key == ("agent", "chunk")
        if name == "landing_point":
            assert policy.out_keys == actor.out_keys
        else:
            assert policy.out_keys == [("agent", "chunk"), ("agent", "noisy_chain"), "log_prob"]
            assert policy.out_keys[1:] == [policy.chain_key, policy.log_prob_key]
        assert policy.out_keys_source == policy.out_keys  # tensordict's wrappers read it
        # the keys by role, as the actor names its own
        assert (policy.observation_key, policy.action_key) == (actor.observation_key, actor.action_key)
        if name == "landing_point":
            assert (policy.chain_key, policy.log_prob_key) == (actor.chain_key, None)
        with set_exploration_type(ExplorationType.RANDOM):
            td = policy(TensorDict({"agent": {"obs": torch.randn(4, OBS)}}, batch_size=[4]))
        # what the module declares is what its forward writes
        assert set(td.keys(True, True)) == {*policy.in_keys, *policy.out_keys}

    def test_keys_cannot_be_set(self, name):
        _, policy = self.wrap(name)
        in_keys, out_keys = policy.in_keys, policy.out_keys
        for attr in ("in_keys", "out_keys"):
            with pytest.raises(AttributeError, match="keys are fixed at construction"):
                setattr(policy, attr, ["other"])
        named = ("chain_key", "log_prob_key") if name == "noisy_flow" else ()
        for attr in named:
            with pytest.raises(AttributeError):
                setattr(policy, attr, "other")
        # select_out_keys would set out_keys: refused with the same message, as FlowActor's is
        with pytest.raises(AttributeError, match="keys are fixed at construction"):
            policy.select_out_keys(("agent", "chunk"))
        assert policy.in_keys == in_keys and policy.out_keys == out_keys and not policy._forward_hooks

    def test_spec_is_the_actor_spec(self, name):
        actor, policy = self.wrap(name)
        assert isinstance(policy.spec, Composite) and policy.spec == actor.spec
        assert list(policy.spec.keys(True, True)) == [("agent", "chunk")]
        with set_exploration_type(ExplorationType.RANDOM):
            td = policy(TensorDict({"agent": {"obs": torch.randn(50, OBS)}}, batch_size=[50]))
        assert policy.spec["agent", "chunk"].is_in(td["agent", "chunk"])


class TestVelocityMLP:
    def test_expanded_time_matches_per_sample_time(self):
        # The sampler passes one time expanded over the batch; the network embeds it once.
        net = VelocityMLP(OBS, ACT, chunk_len=H, hidden_dim=32)
        observation, action = torch.randn(4, 6, OBS), torch.randn(4, 6, H, ACT)
        expanded = torch.tensor(0.375).expand(4, 6)
        torch.testing.assert_close(net(observation, action, expanded),
                                   net(observation, action, expanded.clone()))
        mixed = torch.rand(4, 6)
        assert not torch.allclose(net(observation, action, mixed), net(observation, action, expanded))

    def test_a_transposed_chunk_is_refused(self):
        # [*B, A, H] has the size of [*B, H, A]: flattened, it would be read as another chunk
        net = VelocityMLP(OBS, ACT, chunk_len=H, hidden_dim=32)
        with pytest.raises(ValueError, match=r"expects chunks \[\*B, 3, 2\]"):
            net(torch.randn(4, OBS), torch.randn(4, ACT, H), torch.rand(4))


if __name__ == "__main__":
    args, unknown = argparse.ArgumentParser().parse_known_args()
    pytest.main([__file__, "--capture", "no", "--exitfirst"] + unknown)
