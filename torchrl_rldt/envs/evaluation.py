# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
"""Evaluation of a policy on a batched env: one episode per env, returns and lengths."""
from __future__ import annotations

import contextlib
import math
from typing import Collection

import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModuleBase
from torchrl.envs import EnvBase, ExplorationType, set_exploration_type

__all__ = ["SAMPLING_MODES", "episode_returns", "evaluate_policy", "returns_by_sampling_mode"]

# a flow actor starts its chain from x0 = 0 under DETERMINISTIC and from x0 ~ N(0, I) under RANDOM
SAMPLING_MODES = {"deterministic": ExplorationType.DETERMINISTIC, "stochastic": ExplorationType.RANDOM}


@torch.no_grad()
def evaluate_policy(
    env: EnvBase,
    policy: TensorDictModuleBase,
    *,
    max_steps: int,
    exploration_type: ExplorationType = ExplorationType.DETERMINISTIC,
    chunk_steps_key: str = "chunk_steps",
) -> TensorDict:
    """Runs one episode in each environment of a batched env and returns their returns.

    The env is reset, then stepped with TorchRL's ``rollout(break_when_all_done=True)``: an env
    whose episode ended is no longer stepped (the ``"_step"`` mask) while the others go on, so
    every env contributes exactly its first episode. Episodes still running after ``max_steps``
    are cut there and counted with what they collected.

    Args:
        env (EnvBase): a TorchRL env with batch shape ``[num_episodes]``, for example an
            :class:`~torchrl_rldt.envs.EnvPoolEnv` (optionally inside an
            :class:`~torchrl_rldt.envs.ActionChunkEnv` and a ``TransformedEnv``).
        policy (TensorDictModuleBase): the TensorDict policy to evaluate.

    Keyword Args:
        max_steps (int): the most steps of ``env`` (chunks, for a chunk env) per episode.
        exploration_type (ExplorationType, optional): the exploration type the policy runs
            under; DETERMINISTIC by default (for a :class:`~torchrl_rldt.modules.FlowActor`,
            x0 = 0), RANDOM for stochastic sampling.
        chunk_steps_key (str, optional): the key under ``"next"`` where a chunk env records how
            many env steps each chunk executed; when present, episode lengths count env steps,
            not chunks. Defaults to ``"chunk_steps"``.

    Returns:
        A TensorDict of batch shape ``[num_episodes]`` with ``"return"`` (float) and ``"length"``
        (int64, env steps).

    Examples:
        >>> from tensordict.nn import TensorDictModule
        >>> from torchrl_rldt.envs import EnvPoolEnv
        >>> from torchrl_rldt.envs import evaluate_policy
        >>> env = EnvPoolEnv("Hopper-v5", num_envs=3, seed=0)
        >>> still = TensorDictModule(
        ...     lambda obs: obs.new_zeros(*obs.shape[:-1], 3), ["observation"], ["action"])
        >>> result = evaluate_policy(env, still, max_steps=1000)
        >>> result["return"].shape, bool((result["length"] < 1000).all())
        (torch.Size([3]), True)
    """
    if env.batch_dims != 1:
        raise ValueError(
            f"evaluate_policy expects an env with one batch dimension (one episode per env), "
            f"got batch_size={tuple(env.batch_size)}."
        )
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}.")
    with set_exploration_type(exploration_type):
        rollout = env.rollout(
            max_steps, policy, break_when_any_done=False, break_when_all_done=True
        )
    done = rollout["next", "done"].squeeze(-1)
    # rollout() repeats a finished env's last entry while the others go on: count each env's
    # steps up to and including its first done only.
    done_before = (done.long().cumsum(-1) - done.long()) > 0
    counted = ~done_before
    reward = rollout["next", "reward"].squeeze(-1)
    episode_return = (reward * counted).sum(-1)
    if ("next", chunk_steps_key) in rollout.keys(True):
        steps = rollout["next", chunk_steps_key].reshape(counted.shape)
        length = (steps * counted).sum(-1)
    else:
        length = counted.sum(-1)
    return TensorDict(
        {"return": episode_return, "length": length.long()}, batch_size=episode_return.shape
    )


def episode_returns(
    env: EnvBase,
    policy: TensorDictModuleBase,
    *,
    max_env_steps: int,
    chunk_len: int,
    exploration_type: ExplorationType = ExplorationType.DETERMINISTIC,
) -> dict:
    """Mean and standard deviation of one episode per env (see :func:`evaluate_policy`).

    Args:
        env (EnvBase): a batched env, one episode per env.
        policy (TensorDictModuleBase): the policy.

    Keyword Args:
        max_env_steps (int): the time limit of an episode, in env steps.
        chunk_len (int): env actions per step of ``env`` (1 for a per-step env).
        exploration_type (ExplorationType, optional): defaults to DETERMINISTIC.

    Returns:
        ``{"mean", "std", "min", "max", "episodes", "mean_length"}``: the min tells a policy that
        fails now and then (a fallen or flipped robot) from one that is uniformly worse.
    """
    max_chunks = math.ceil(max_env_steps / chunk_len)
    result = evaluate_policy(env, policy, max_steps=max_chunks, exploration_type=exploration_type)
    returns = result["return"]
    return {
        "mean": returns.mean().item(),
        # one episode has no spread (torch's corrected std would be NaN, invalid in JSON)
        "std": returns.std().item() if returns.numel() > 1 else 0.0,
        "min": returns.min().item(),
        "max": returns.max().item(),
        "episodes": returns.numel(),
        "mean_length": result["length"].float().mean().item(),
    }


def returns_by_sampling_mode(
    env: EnvBase,
    policy: TensorDictModuleBase,
    *,
    seed: int,
    max_env_steps: int,
    chunk_len: int,
    own_random_state: Collection[str] = (),
) -> dict[str, dict]:
    """:func:`episode_returns` in each sampling mode, on paired episodes.

    ``env`` is reseeded with ``seed`` before each mode, so that every mode, and every policy
    measured with the same seed, starts from the same initial states.

    Args:
        env (EnvBase): a batched env, one episode per env; it must support ``set_seed``.
        policy (TensorDictModuleBase): the policy.

    Keyword Args:
        seed (int): the env's seed before each mode.
        max_env_steps (int): the time limit of an episode, in env steps.
        chunk_len (int): env actions per step of ``env``.
        own_random_state (collection of str, optional): modes evaluated on a forked torch random
            state, so that they draw nothing from the caller's stream (a run evaluating beside
            its training). Defaults to none.

    Returns:
        ``{"deterministic": ..., "stochastic": ...}``, each as :func:`episode_returns`'s.

    Examples:
        >>> from torchrl_rldt.envs import ActionChunkEnv, EnvPoolEnv, returns_by_sampling_mode
        >>> from torchrl_rldt.modules import FlowActor, FlowModel, VelocityMLP
        >>> env = ActionChunkEnv(EnvPoolEnv("Hopper-v5", num_envs=2), chunk_len=2)
        >>> actor = FlowActor(FlowModel(VelocityMLP(11, 3, chunk_len=2, hidden_dim=16), 3,
        ...                             num_steps=2, chunk_len=2, low=-1.0, high=1.0))
        >>> first = returns_by_sampling_mode(env, actor, seed=5, max_env_steps=20, chunk_len=2)
        >>> second = returns_by_sampling_mode(env, actor, seed=5, max_env_steps=20, chunk_len=2)
        >>> first["deterministic"] == second["deterministic"]  # the same initial states
        True
    """
    unknown = set(own_random_state) - set(SAMPLING_MODES)
    if unknown:
        raise ValueError(f"own_random_state names no sampling mode: {sorted(unknown)} "
                         f"(modes: {list(SAMPLING_MODES)}).")
    devices = [env.device] if env.device is not None and env.device.type == "cuda" else []
    returns = {}
    for mode, exploration in SAMPLING_MODES.items():
        env.set_seed(seed)
        forked = torch.random.fork_rng(devices=devices) if mode in own_random_state else contextlib.nullcontext()
        with forked:
            returns[mode] = episode_returns(env, policy, max_env_steps=max_env_steps, chunk_len=chunk_len,
                                            exploration_type=exploration)
    return returns
