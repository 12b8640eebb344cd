# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
from __future__ import annotations

import copy
import math

import pytest
import torch
from tensordict import TensorDict
from torch.distributions import Normal
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.modules import MLP, ValueOperator
from torchrl.objectives import DiffusionBCLoss, ValueEstimators

from torchrl_rldt.modules import VelocityMLP
from torchrl_rldt.modules import DDPMChunkModel, DPPOActor, cosine_beta_schedule
from torchrl_rldt.objectives import DDPMChunkBCLoss, DPPOLoss

from ppo_batches import add_transition

OBS, ACT, H, T, K = 5, 2, 3, 8, 4


def make_model(num_steps=T, **kwargs):
    network = VelocityMLP(OBS, ACT, chunk_len=H, hidden_dim=32, num_layers=2)
    return DDPMChunkModel(network, ACT, num_steps, chunk_len=H, **kwargs)


def make_policy(finetuned_steps=K, model=None, **kwargs):
    return DPPOActor(make_model() if model is None else model, finetuned_steps=finetuned_steps,
                     **kwargs)


def make_critic():
    return ValueOperator(MLP(in_features=OBS, out_features=1, num_cells=[16]), in_keys=["observation"])


def make_batch(policy, batch=16, advantage=None):
    data = TensorDict(observation=torch.randn(batch, OBS), batch_size=[batch])
    with set_exploration_type(ExplorationType.RANDOM), torch.no_grad():
        data = policy(data)
    add_transition(data, OBS, advantage)
    return data


def schedule(num_steps, betas=None):
    """``abar_t`` for t = -1 .. T - 1 and ``beta_t``, from the cosine formula (or ``betas``), in
    float64."""
    if betas is None:
        level = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
        f = torch.cos((level + 0.008) / 1.008 * math.pi / 2) ** 2
        alphas_cumprod = f / f[0]
        betas = (1 - alphas_cumprod[1:] / alphas_cumprod[:-1]).clamp(max=0.999)
    return torch.cumprod(1 - betas, 0), betas


def closed_form_step(model, observation, latent, timestep, network=None, betas=None):
    """Mean and standard deviation of the reverse step, written out from the DDPM posterior."""
    alphas_cumprod, betas = schedule(model.num_steps, betas)
    # the coefficients in float64, as the model computes its schedule, then float32
    abar = alphas_cumprod[timestep]
    abar_prev = alphas_cumprod[timestep - 1] if timestep > 0 else torch.tensor(1.0, dtype=torch.float64)
    beta = betas[timestep]
    network = model.denoising_network if network is None else network
    eps = network(observation, latent, torch.full(latent.shape[:-2], float(timestep)))
    clean = ((latent - (1 - abar).sqrt().float() * eps) / abar.sqrt().float()).clamp(-1, 1)
    clean_coef = (beta * abar_prev.sqrt() / (1 - abar)).float()
    latent_coef = ((1 - abar_prev) * (1 - beta).sqrt() / (1 - abar)).float()
    std = (beta * (1 - abar_prev) / (1 - abar)).clamp(min=1e-20).sqrt().float()
    return clean_coef * clean + latent_coef * latent, std


class TestSchedule:
    def test_cosine_schedule_matches_the_formula(self):
        _, betas = schedule(20)
        torch.testing.assert_close(cosine_beta_schedule(20), betas.float())

    def test_model_buffers(self):
        model = make_model()
        alphas_cumprod, betas = schedule(T)
        torch.testing.assert_close(model.betas, betas.float())
        torch.testing.assert_close(model.alphas_cumprod, alphas_cumprod.float())
        # the last step has no posterior noise; its std is floored at sqrt(1e-20)
        torch.testing.assert_close(model.posterior_std[0], torch.tensor(1e-10))
        linear = make_model(betas=torch.linspace(1e-4, 0.02, T))
        torch.testing.assert_close(linear.betas, torch.linspace(1e-4, 0.02, T))

    def test_bad_arguments(self):
        with pytest.raises(ValueError, match="betas"):
            make_model(betas=torch.linspace(1e-4, 0.02, T + 1))
        with pytest.raises(ValueError, match="num_steps"):
            cosine_beta_schedule(0)
        with pytest.raises(ValueError, match="denoised_clip_value"):
            make_model(denoised_clip_value=0.0)


class TestDDPMChunkModel:
    def test_add_noise(self):
        model = make_model()
        action, noise = torch.rand(6, H, ACT), torch.randn(6, H, ACT)
        timestep = torch.arange(6)
        noisy, returned = model.add_noise(action, timestep, noise)
        abar = schedule(T)[0][timestep].float()[:, None, None]
        torch.testing.assert_close(noisy, abar.sqrt() * action + (1 - abar).sqrt() * noise)
        assert returned is noise

    @pytest.mark.parametrize("timestep", [0, 3, T - 1])
    def test_posterior_matches_the_closed_form(self, timestep):
        model = make_model()
        observation, latent = torch.randn(7, OBS), 2 * torch.randn(7, H, ACT)
        mean, std = model.posterior(observation, latent, timestep)
        expected_mean, expected_std = closed_form_step(model, observation, latent, timestep)
        torch.testing.assert_close(mean, expected_mean)
        torch.testing.assert_close(std.squeeze(), expected_std.float())

    def test_the_clean_prediction_is_clipped(self):
        model = make_model()
        torch.nn.init.constant_(model.denoising_network.output_layer.bias, 100.0)
        observation, latent = torch.randn(4, OBS), torch.randn(4, H, ACT)
        mean, _ = model.posterior(observation, latent, 2)
        # eps = +large: the clean prediction is -1 everywhere
        alphas_cumprod, betas = schedule(T)
        abar, abar_prev, beta = (alphas_cumprod[2].float(), alphas_cumprod[1].float(),
                                 betas[2].float())
        expected = (beta * abar_prev.sqrt() * -1
                    + (1 - abar_prev) * (1 - beta).sqrt() * latent) / (1 - abar)
        torch.testing.assert_close(mean, expected)


class TestDPPOActor:
    def test_keys_shapes_and_bounds(self):
        torch.manual_seed(0)
        policy = make_policy(model=make_model(low=-0.3, high=0.3))
        data = TensorDict(observation=torch.randn(32, OBS), batch_size=[32])
        with set_exploration_type(ExplorationType.RANDOM):
            data = policy(data)
        assert data["action"].shape == (32, H, ACT)
        assert data["denoising_chain"].shape == (32, K + 1, H, ACT)
        assert data["sample_log_prob"].shape == (32, K)
        assert not data["denoising_chain"].requires_grad
        assert policy.action_spec.is_in(data["action"])
        assert (data["action"].abs() <= 0.3).all()
        # the chain keeps the unclamped last latent; the executed chunk is its clamp
        torch.testing.assert_close(data["action"], data["denoising_chain"][:, -1].clamp(-0.3, 0.3))
        assert (data["denoising_chain"][:, -1].abs() > 0.3).any()
        assert policy.in_keys == ["observation"]
        assert policy.out_keys == ["action", "denoising_chain", "sample_log_prob"]
        assert (policy.observation_key, policy.action_key, policy.chain_key, policy.log_prob_key) == (
            "observation", "action", "denoising_chain", "sample_log_prob")

    def test_final_action_clip_is_part_of_the_chain(self):
        torch.manual_seed(0)
        policy = make_policy(model=make_model(final_action_clip_value=0.2))
        data = make_batch(policy, batch=32)
        assert data["denoising_chain"][:, -1].abs().max() <= 0.2

    def test_transition_log_prob_matches_normal_with_the_std_floor(self):
        torch.manual_seed(0)
        policy = make_policy(min_log_prob_std=0.1)
        data = make_batch(policy)
        observation, chain = data["observation"], data["denoising_chain"]
        per_dimension = policy.transition_log_prob(observation, chain)
        assert per_dimension.shape == (16, K, H, ACT)
        for k, timestep in enumerate(range(K - 1, -1, -1)):
            mean, std = closed_form_step(policy.model, observation, chain[:, k], timestep)
            std = std.clamp(min=0.1)
            expected = Normal(mean, std.float().expand_as(mean)).log_prob(chain[:, k + 1])
            # sigma = 0.1 turns float32 rounding of the mean into ~1e-5 of log-density
            torch.testing.assert_close(per_dimension[:, k], expected, rtol=1e-4, atol=1e-4)
        # the last step has no posterior noise: only the floor is left
        mean, _ = closed_form_step(policy.model, observation, chain[:, -2], 0)
        torch.testing.assert_close(per_dimension[:, -1], Normal(mean, 0.1).log_prob(chain[:, -1]),
                                   rtol=1e-4, atol=1e-4)
        # PPO's log-likelihood: per-dimension clamp to [-5, 2], averaged over the chunk
        torch.testing.assert_close(policy.log_prob(observation, chain),
                                   per_dimension.clamp(-5, 2).mean((-2, -1)))
        summed = make_policy(model=policy.model, average_log_prob=False, log_prob_bounds=None)
        torch.testing.assert_close(summed.log_prob(observation, chain), per_dimension.sum((-2, -1)))

    def test_stored_log_prob_is_recomputed_by_log_prob(self):
        torch.manual_seed(0)
        policy = make_policy()
        data = make_batch(policy)
        torch.testing.assert_close(policy.log_prob(data["observation"], data["denoising_chain"]),
                                   data["sample_log_prob"])

    def test_sampling_floor_and_noise_clip(self):
        torch.manual_seed(0)
        policy = make_policy(min_sampling_std=0.1, noise_clip=0.5)
        data = make_batch(policy, batch=64)
        observation, chain = data["observation"], data["denoising_chain"]
        for k, timestep in enumerate(range(K - 1, -1, -1)):
            mean, std = closed_form_step(policy.model, observation, chain[:, k], timestep)
            z = (chain[:, k + 1] - mean) / std.clamp(min=0.1)
            assert z.abs().max() <= 0.5 + 1e-4
            assert z.abs().max() > 0.45  # the clip binds on some draws

    def test_early_steps_use_the_frozen_base_network(self):
        policy = make_policy()
        assert all(not p.requires_grad for p in policy.base_network.parameters())
        observation = torch.randn(8, OBS)

        def first_latent():
            torch.manual_seed(1)
            with set_exploration_type(ExplorationType.RANDOM):
                return policy(TensorDict(observation=observation, batch_size=[8]))["denoising_chain"]

        before = first_latent()
        with torch.no_grad():
            for p in policy.model.denoising_network.parameters():
                p.add_(0.1 * torch.randn_like(p))
        after = first_latent()
        # the input of the first fine-tuned step comes from base steps only
        torch.testing.assert_close(after[:, 0], before[:, 0])
        assert not torch.allclose(after[:, 1:], before[:, 1:])
        with torch.no_grad():
            for p in policy.base_network.parameters():
                p.add_(0.1 * torch.randn_like(p))
        assert not torch.allclose(first_latent()[:, 0], before[:, 0])

    def test_reset_base_network_copies_the_finetuned_weights(self):
        policy = make_policy()
        with torch.no_grad():
            for p in policy.model.denoising_network.parameters():
                p.add_(1.0)
        policy.reset_base_network()
        for base, tuned in zip(policy.base_network.parameters(),
                               policy.model.denoising_network.parameters()):
            torch.testing.assert_close(base, tuned)
            assert not base.requires_grad and base is not tuned

    def test_all_steps_finetuned_keeps_the_initial_noise(self):
        torch.manual_seed(0)
        policy = make_policy(finetuned_steps=T)
        data = make_batch(policy)
        assert data["denoising_chain"].shape == (16, T + 1, H, ACT)
        torch.testing.assert_close(policy.log_prob(data["observation"], data["denoising_chain"]),
                                   data["sample_log_prob"])

    def test_deterministic_exploration_writes_the_chunk_only(self):
        policy = make_policy(model=make_model(low=-1.0, high=1.0))
        data = TensorDict(observation=torch.randn(4, OBS), batch_size=[4])
        with set_exploration_type(ExplorationType.DETERMINISTIC):
            out = policy(data.clone())
        assert set(out.keys()) == {"observation", "action"}
        assert policy.action_spec.is_in(out["action"])
        noiseless = make_policy(model=policy.model, noiseless_evaluation=True)
        with set_exploration_type(ExplorationType.DETERMINISTIC):
            first, second = noiseless(data.clone())["action"], noiseless(data.clone())["action"]
        torch.testing.assert_close(first, second)

    def test_evaluation_sampler_is_ddpm_with_the_base_on_early_steps(self):
        """Deterministic exploration: DDPM's noise (floored at 1e-3, none at the last step) from a
        random start, the base network before the fine-tuned steps, the noise clip."""
        torch.manual_seed(0)
        # a first beta of 1e-8 puts the std of step t = 1 at ~1e-4, under the floor
        betas = torch.cat([torch.tensor([1e-8]), torch.linspace(0.05, 0.3, T - 1)]).double()
        policy = make_policy(model=make_model(betas=betas), noise_clip=1.5)
        with torch.no_grad():
            for p in policy.model.denoising_network.parameters():
                p.add_(0.1 * torch.randn_like(p))  # the fine-tuned steps differ from the base's
        observation = torch.randn(16, OBS)
        torch.manual_seed(3)
        with set_exploration_type(ExplorationType.DETERMINISTIC), torch.no_grad():
            action = policy(TensorDict(observation=observation, batch_size=[16]))["action"]
        torch.manual_seed(3)
        latent = torch.randn(16, H, ACT)
        with torch.no_grad():
            for timestep in reversed(range(T)):
                network = None if timestep < K else policy.base_network
                mean, std = closed_form_step(policy.model, observation, latent, timestep, network,
                                             betas)
                assert timestep != 1 or std < 2e-4
                std = torch.zeros_like(std) if timestep == 0 else std.clamp(min=1e-3)
                latent = mean + std * torch.randn_like(latent).clamp(-1.5, 1.5)
        torch.testing.assert_close(action, latent)

    def test_bad_arguments(self):
        with pytest.raises(TypeError, match="DDPMChunkModel"):
            DPPOActor(torch.nn.Linear(2, 2))
        with pytest.raises(ValueError, match="finetuned_steps"):
            make_policy(finetuned_steps=T + 1)
        with pytest.raises(ValueError, match="min_log_prob_std"):
            make_policy(min_log_prob_std=0.0)
        with pytest.raises(ValueError, match="log_prob_bounds"):
            make_policy(log_prob_bounds=(2.0, -5.0))
        policy = make_policy()
        with pytest.raises(ValueError, match="transitions"):
            policy.log_prob(torch.randn(3, OBS), torch.randn(3, K, H, ACT))
        for attr in ("in_keys", "out_keys"):
            with pytest.raises(AttributeError, match="DPPOActor keys are fixed at construction"):
                setattr(policy, attr, ["other"])
        with pytest.raises(AttributeError, match="DPPOActor keys are fixed at construction"):
            policy.select_out_keys("action")
        assert policy.out_keys == ["action", "denoising_chain", "sample_log_prob"]


class TestDPPOLoss:
    def test_outputs_gae_and_first_ratio(self):
        torch.manual_seed(0)
        policy = make_policy()
        loss = DPPOLoss(policy, make_critic())
        loss.make_value_estimator(ValueEstimators.GAE, gamma=0.99, lmbda=0.95)
        out = loss(make_batch(policy))
        assert set(out.keys()) == {"loss_objective", "loss_critic", "clip_fraction", "kl_approx",
                                   "mean_ratio", "max_ratio", "explained_variance"}
        assert set(out.keys()) == set(loss.out_keys)
        for key in ("loss_objective", "loss_critic"):
            assert out[key].shape == () and torch.isfinite(out[key])
        # freshly sampled chains are scored by the parameters that drew them
        torch.testing.assert_close(out["mean_ratio"], torch.tensor(1.0))
        torch.testing.assert_close(out["max_ratio"], torch.tensor(1.0))
        assert out["clip_fraction"] == 0
        assert loss.tensor_keys.action == "denoising_chain"
        assert loss.tensor_keys.sample_log_prob == "sample_log_prob"
        assert set(loss.in_keys) >= {"observation", "denoising_chain", "sample_log_prob",
                                     ("next", "reward"), ("next", "terminated")}

    def test_clip_schedule_and_denoising_discount(self):
        policy = make_policy()
        constant = DPPOLoss(policy, make_critic(), clip_epsilon=0.01)
        torch.testing.assert_close(constant.step_clip_epsilon(), torch.full((K,), 0.01))
        scheduled = DPPOLoss(policy, make_critic(), clip_epsilon=0.1, first_step_clip_epsilon=1e-3,
                             clip_epsilon_growth=3.0)
        position = torch.arange(K) / (K - 1)
        expected = 1e-3 + (0.1 - 1e-3) * (torch.exp(3 * position) - 1) / (math.exp(3) - 1)
        torch.testing.assert_close(scheduled.step_clip_epsilon(), expected)
        # the step that outputs the action (chain's last) gets the whole advantage
        torch.testing.assert_close(constant.denoising_discount(),
                                   torch.tensor([0.99 ** 3, 0.99 ** 2, 0.99, 1.0]))

    def test_objective_matches_the_closed_form(self):
        torch.manual_seed(0)
        policy = make_policy()
        loss = DPPOLoss(policy, make_critic(), clip_epsilon=0.1, first_step_clip_epsilon=0.02,
                        gamma_denoising=0.9, normalize_advantage=False, reduction="none")
        data = make_batch(policy, batch=6)
        data["advantage"] = torch.tensor([[1.0], [-1.0], [2.0], [-0.5], [0.3], [-3.0]])
        data["value_target"] = torch.zeros(6, 1)
        # move the behaviour log-likelihoods so that some ratios leave the clip range
        shift = torch.linspace(-0.15, 0.25, 6 * K).reshape(6, K)  # asymmetric: mean log-ratio != 0
        data["sample_log_prob"] = data["sample_log_prob"] + shift
        out = loss(data)
        ratio = (-shift).exp()
        epsilon = loss.step_clip_epsilon()
        advantage = data["advantage"] * 0.9 ** torch.arange(K - 1, -1, -1)
        clipped = torch.minimum(torch.maximum(ratio, 1 - epsilon), 1 + epsilon)
        gain = torch.minimum(ratio * advantage, clipped * advantage)
        torch.testing.assert_close(out["loss_objective"], -gain.mean(-1), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(out["clip_fraction"],
                                   ((ratio - 1).abs() > epsilon).float().mean())
        # the k3 estimator of KL(old || new) that DPPO's target_kl reads, and the ratio statistics
        torch.testing.assert_close(out["kl_approx"], (ratio - 1 + shift).mean())
        torch.testing.assert_close(out["mean_ratio"], ratio.mean())
        torch.testing.assert_close(out["max_ratio"], ratio.max())

    @pytest.mark.parametrize("sign", [1.0, -1.0])
    def test_a_step_moves_the_chain_likelihood_with_the_advantage(self, sign):
        torch.manual_seed(0)
        policy = make_policy()
        loss = DPPOLoss(policy, make_critic(), clip_epsilon=0.2, normalize_advantage=False)
        data = make_batch(policy, advantage=sign)
        before = policy.log_prob(data["observation"], data["denoising_chain"]).mean()
        optim = torch.optim.SGD(policy.parameters(), lr=1e-3)
        loss(data)["loss_objective"].backward()
        optim.step()
        after = policy.log_prob(data["observation"], data["denoising_chain"]).mean()
        assert sign * (after - before) > 0

    def test_the_base_network_gets_no_gradient(self):
        torch.manual_seed(0)
        policy = make_policy()
        base = copy.deepcopy(policy.base_network.state_dict())
        loss = DPPOLoss(policy, make_critic(), normalize_advantage=False)
        out = loss(make_batch(policy, advantage=1.0))
        (out["loss_objective"] + out["loss_critic"]).backward()
        assert all(p.grad is None for p in policy.base_network.parameters())
        assert any(p.grad is not None and p.grad.abs().max() > 0
                   for p in policy.model.denoising_network.parameters())
        torch.optim.Adam(policy.parameters(), lr=1e-2).step()
        for name, value in policy.base_network.state_dict().items():
            torch.testing.assert_close(value, base[name])

    def test_clipped_ratio_gives_no_gradient(self):
        torch.manual_seed(0)
        policy = make_policy()
        loss = DPPOLoss(policy, make_critic(), clip_epsilon=0.01, normalize_advantage=False)
        data = make_batch(policy, advantage=1.0)
        data["sample_log_prob"] = data["sample_log_prob"] - 1.0  # ratio e > 1 + eps: clipped
        out = loss(data)
        assert out["clip_fraction"] == 1.0
        out["loss_objective"].backward()
        grads = [p.grad for p in policy.parameters() if p.grad is not None]
        assert grads and all(g.abs().max() == 0 for g in grads)

    def test_reductions(self):
        torch.manual_seed(0)
        policy = make_policy()
        data = make_batch(policy, advantage=1.0)
        data["sample_log_prob"] = data["sample_log_prob"] - 0.05
        critic = make_critic()  # shared: the three losses see the same parameters
        outs = {reduction: DPPOLoss(policy, critic, reduction=reduction, normalize_advantage=False)
                for reduction in ("none", "mean", "sum")}
        none, mean, total = (outs[r](data) for r in ("none", "mean", "sum"))
        for key in ("loss_objective", "loss_critic"):
            assert none[key].shape == (16,)
            torch.testing.assert_close(mean[key], none[key].mean())
            torch.testing.assert_close(total[key], none[key].sum())

    def test_critic_loss_and_its_gradient(self):
        torch.manual_seed(0)
        policy, critic = make_policy(), make_critic()
        loss = DPPOLoss(policy, critic)
        loss.make_value_estimator(ValueEstimators.GAE, gamma=0.99, lmbda=0.95)
        data = make_batch(policy)
        out = loss(data)
        with torch.no_grad():
            gae = data.clone()
            loss.value_estimator(gae)
            value = critic(data.clone())["state_value"]
        expected = 0.25 * (value - gae["value_target"]).pow(2).mean()
        torch.testing.assert_close(out["loss_critic"], expected)
        out["loss_critic"].backward()
        assert all(p.grad is None or p.grad.abs().max() == 0 for p in policy.parameters())
        assert any(p.grad is not None and p.grad.abs().max() > 0
                   for p in loss.critic_network_params.values(True, True))

    def test_bad_arguments(self):
        with pytest.raises(TypeError, match="DPPOActor"):
            DPPOLoss(make_model(), make_critic())
        with pytest.raises(ValueError, match="clip_epsilon"):
            DPPOLoss(make_policy(), make_critic(), clip_epsilon=0.0)
        with pytest.raises(ValueError, match="gamma_denoising"):
            DPPOLoss(make_policy(), make_critic(), gamma_denoising=0.0)
        with pytest.raises(ValueError, match="delay_actor"):
            DPPOLoss(make_policy(), make_critic(), delay_actor=True)
        with pytest.raises(ValueError, match="entropy_coeff"):
            DPPOLoss(make_policy(), make_critic(), entropy_coeff=0.01)
        with pytest.raises(ValueError, match="clip_value as a float"):
            DPPOLoss(make_policy(), make_critic(), clip_value=True)
        torch.manual_seed(0)
        policy = make_policy()
        data = make_batch(policy, batch=K, advantage=1.0)  # [K]: would broadcast over the steps
        data["advantage"] = torch.linspace(-1, 1, K)
        with pytest.raises(ValueError, match="trailing dimension of 1"):
            DPPOLoss(policy, make_critic(), normalize_advantage=False)(data)
        policy = make_policy()
        data = make_batch(policy, advantage=1.0)
        data["sample_log_prob"] = data["sample_log_prob"].mean(-1)
        with pytest.raises(ValueError, match="one per fine-tuned denoising step"):
            DPPOLoss(policy, make_critic())(data)


class TestDDPMChunkBCLoss:
    def test_is_torchrl_diffusion_bc_loss_for_chunks(self):
        loss = DDPMChunkBCLoss(make_model())
        assert isinstance(loss, DiffusionBCLoss)
        data = TensorDict(observation=torch.randn(8, OBS), action=torch.rand(8, H, ACT),
                          batch_size=[8])
        assert loss(data)["loss_diffusion_bc"].shape == ()
        per_dimension = DDPMChunkBCLoss(make_model(), reduction="none")(data)["loss_diffusion_bc"]
        assert per_dimension.shape == (8, H, ACT)
        assert loss(observation=data["observation"], action=data["action"]).shape == ()
        with pytest.raises(ValueError, match="trailing shape"):
            loss(data.set("action", torch.rand(8, H + 1, ACT)))
        with pytest.raises(TypeError, match="DDPMChunkModel"):
            DDPMChunkBCLoss(make_policy())

    def test_bc_steps_reduce_the_loss_on_a_toy_data_set(self):
        torch.manual_seed(0)
        model = make_model()
        loss = DDPMChunkBCLoss(model)
        observation = torch.randn(64, OBS)
        # a deterministic expert: each chunk is a fixed function of the observation
        action = torch.tanh(observation[:, :ACT]).unsqueeze(-2).expand(64, H, ACT).contiguous()
        data = TensorDict(observation=observation, action=action, batch_size=[64])

        def evaluate():
            with torch.no_grad():
                torch.manual_seed(123)
                return torch.stack([loss(data)["loss_diffusion_bc"] for _ in range(8)]).mean()

        before = evaluate()
        optim = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(150):
            optim.zero_grad()
            loss(data)["loss_diffusion_bc"].backward()
            optim.step()
        assert evaluate() < 0.7 * before
