"""Episode returns of a policy over a batched environment."""
from __future__ import annotations

import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModuleBase
from torchrl.envs import EnvBase, ExplorationType, set_exploration_type

__all__ = ["evaluate_policy"]


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
        env: a TorchRL env with batch shape ``[num_episodes]``, for example an
            :class:`~torchrl_rldt.envs.EnvPoolEnv` (optionally inside an
            :class:`~torchrl_rldt.envs.ActionChunkEnv` and a ``TransformedEnv``).
        policy: the TensorDict policy to evaluate.
        max_steps: the most steps of ``env`` (chunks, for a chunk env) per episode.
        exploration_type: the exploration type the policy runs under; DETERMINISTIC by default
            (for a :class:`~torchrl_rldt.modules.FlowActor`, x0 = 0), RANDOM for stochastic
            sampling.
        chunk_steps_key: the key under ``"next"`` where a chunk env records how many env steps
            each chunk executed; when present, episode lengths count env steps, not chunks.

    Returns:
        A TensorDict of batch shape ``[num_episodes]`` with ``"return"`` (float) and ``"length"``
        (int64, env steps).

    Examples:
        >>> from tensordict.nn import TensorDictModule
        >>> from torchrl_rldt.envs import EnvPoolEnv, evaluate_policy
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
    if (("next", chunk_steps_key)) in rollout.keys(True):
        steps = rollout["next", chunk_steps_key].reshape(counted.shape)
        length = (steps * counted).sum(-1)
    else:
        length = counted.sum(-1)
    return TensorDict(
        {"return": episode_return, "length": length.long()}, batch_size=episode_return.shape
    )
