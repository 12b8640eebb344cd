# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
"""Evaluation of a policy on a batched env: one episode per env, returns and lengths."""
from __future__ import annotations

import math

import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModuleBase
from torchrl.envs import EnvBase, ExplorationType, set_exploration_type

__all__ = ["episode_returns", "evaluate_policy"]


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
