# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
"""Meta-World manipulation tasks (EnvPool's ``MetaWorld/<Task>-v3``) with a sparse success reward."""
from __future__ import annotations

import importlib

import numpy as np
import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from tensordict.utils import NestedKey
from torchrl.envs import Compose, TransformedEnv
from torchrl.envs.transforms import SuccessReward, TerminateTransform

from torchrl_rldt.envs.libs.envpool import EnvPoolEnv

__all__ = [
    "METAWORLD_EPISODE_STEPS",
    "MetaWorldExpert",
    "PartialStepSuccessReward",
    "is_success",
    "make_metaworld_env",
]

# the time limit of every Meta-World v3 task in EnvPool
METAWORLD_EPISODE_STEPS = 500


class PartialStepSuccessReward(SuccessReward):
    """TorchRL's :class:`~torchrl.envs.transforms.SuccessReward` that honours partial steps.

    An env left out of a step (the ``"_step"`` mask, e.g. a finished env while
    ``rollout(break_when_all_done=True)`` or :class:`~torchrl_rldt.envs.ActionChunkEnv` steps
    the others) keeps its success flag but earns no reward: TorchRL's partial-step contract.
    The parent transform would pay such an env its success again at every skipped step.
    """

    def _step(self, tensordict: TensorDictBase, next_tensordict: TensorDictBase) -> TensorDictBase:
        next_tensordict = super()._step(tensordict, next_tensordict)
        stepped = tensordict.get("_step", None)
        if stepped is not None:
            key = self.out_keys[0]
            reward = next_tensordict.get(key)
            next_tensordict.set(key, reward * stepped.reshape(reward.shape).to(reward.dtype))
        return next_tensordict


def is_success(next_tensordict: TensorDictBase) -> torch.Tensor:
    """Meta-World's success flag of a step, as a boolean ``[*B, 1]``."""
    return next_tensordict.get("success") > 0.5


def make_metaworld_env(
    task: str,
    num_envs: int,
    *,
    seed: int | None = None,
    device: torch.device | str | None = None,
    max_episode_steps: int = METAWORLD_EPISODE_STEPS,
) -> TransformedEnv:
    """A batch of a Meta-World task whose reward is 1 on success, and whose episode ends there.

    EnvPool's Meta-World tasks report ``info["success"]`` but keep the episode running and
    return a dense shaped reward. Here, per env step:

    - ``"success"`` (float32 ``[num_envs, 1]``, 0 or 1) is an output at every step;
    - the reward is TorchRL's :class:`~torchrl.envs.transforms.SuccessReward` (honouring
      partial steps, :class:`PartialStepSuccessReward`): 1 on a success step, else 0. Since
      the episode ends at the first success, an episode's return is its success (0 or 1) and
      the reward 1 occurs once;
    - :class:`~torchrl.envs.transforms.TerminateTransform` sets ``terminated`` (and ``done``)
      at success: the critic does not bootstrap past it, and a collector resets the env;
    - ``truncated`` comes at ``max_episode_steps`` (the time limit): a critic bootstraps there.

    The observation is the full 39-D state with the goal position (``partially_observable=False``:
    Meta-World's scripted experts read the goal, so a policy imitating them must see it).
    Wrap the result in an :class:`~torchrl_rldt.envs.ActionChunkEnv` to execute chunks: the
    transforms above then act at every env step, inside the chunk.

    Args:
        task (str): an EnvPool Meta-World id, e.g. ``"MetaWorld/PickPlace-v3"``.
        num_envs (int): the batch size.

    Keyword Args:
        seed (int, optional): the pool's seed (see :class:`~torchrl_rldt.envs.EnvPoolEnv`).
        device (torch.device or str, optional): where the data goes. Defaults to the CPU.
        max_episode_steps (int, optional): the time limit. Defaults to ``500``.

    Examples:
        >>> import torch
        >>> from torchrl_rldt.envs import make_metaworld_env
        >>> env = make_metaworld_env("MetaWorld/PickPlace-v3", num_envs=2, seed=0)
        >>> env.observation_spec["observation"].shape, env.action_spec.shape
        (torch.Size([2, 39]), torch.Size([2, 4]))
        >>> rollout = env.rollout(5)
        >>> rollout["next", "reward"].sum().item(), rollout["next", "success"].shape
        (0.0, torch.Size([2, 5, 1]))
    """
    if not task.startswith("MetaWorld/"):
        raise ValueError(f"make_metaworld_env expects a 'MetaWorld/<Task>-v3' id, got {task!r}.")
    base = EnvPoolEnv(task, num_envs, seed=seed, device=device, info_keys=("success",),
                      partially_observable=False, max_episode_steps=max_episode_steps)
    return TransformedEnv(
        base, Compose(TerminateTransform(is_success), PartialStepSuccessReward("success"))
    )


# EnvPool task names whose scripted policy in `metaworld.policies` is not Sawyer<Name>V3Policy
_EXPERT_NAMES = {"PegInsertSide": "SawyerPegInsertionSideV3Policy"}


class MetaWorldExpert(TensorDictModuleBase):
    """Meta-World's scripted expert of a task as a TensorDict policy, with optional action noise.

    The ``metaworld`` package ships one hand-written policy per task
    (``metaworld.policies``); it reads the full 39-D state (with the goal, as
    :func:`make_metaworld_env` exposes it) and returns a 4-D action. This module runs it on each
    env of a batch and adds Gaussian noise of standard deviation ``noise_std`` to every action
    (clipped to [-1, 1]): a deliberately imperfect demonstrator. The noise is i.i.d. by default;
    with ``noise_correlation`` it is a stationary first-order autoregressive (discretised
    Ornstein-Uhlenbeck) process per env, ``e_t = rho e_{t-1} + sqrt(1 - rho^2) noise_std z_t``, so
    each action component keeps the standard deviation ``noise_std`` but the demonstrator drifts
    off its path for about ``1 / (1 - rho)`` steps at a time: an error that a policy fitted to the
    mean of the data averages out much less than i.i.d. noise. The process runs on across the
    episodes of an env (it is stationary, so a new episode starts from a noise of the same
    distribution); a call with another batch size starts it afresh. The scripted policies are
    Python functions of one observation, so the batch is a loop; they are meant for recording
    demonstrations, not for training.

    ``metaworld`` 3.1.1 pins ``mujoco==3.3.0``; only its policies are used here, which need
    numpy and scipy but not its environments, so it is installed without its dependencies
    (``scripts/setup.sh`` does it) next to the MuJoCo that gymnasium brings.

    Args:
        task (str): an EnvPool Meta-World id, e.g. ``"MetaWorld/PickPlace-v3"``.

    Keyword Args:
        noise_std (float, optional): the action noise, a property of the demonstrator: it is
            added under every exploration type, also where none is set (``env.rollout``
            sets none). Defaults to ``0.0``.
        noise_correlation (float, optional): ``rho`` in ``[0, 1)``, the correlation of the noise
            between consecutive steps of an env; ``0`` draws i.i.d. noise (the same draws as
            without the argument). Defaults to ``0.0``.
        seed (int, optional): seed of the noise generator, a numpy generator of its own
            (``torch.manual_seed`` does not reach it). Defaults to ``0``.
        observation_key (NestedKey, optional): defaults to ``"observation"``.
        action_key (NestedKey, optional): defaults to ``"action"``.

    Examples:
        >>> from torchrl_rldt.envs import MetaWorldExpert, make_metaworld_env
        >>> from torchrl_rldt.envs import evaluate_policy
        >>> env = make_metaworld_env("MetaWorld/PickPlace-v3", num_envs=2, seed=0)
        >>> result = evaluate_policy(env, MetaWorldExpert("MetaWorld/PickPlace-v3"), max_steps=500)
        >>> result["return"].tolist()  # the success of each episode
        [1.0, 1.0]
    """

    def __init__(
        self,
        task: str,
        *,
        noise_std: float = 0.0,
        noise_correlation: float = 0.0,
        seed: int = 0,
        observation_key: NestedKey = "observation",
        action_key: NestedKey = "action",
    ) -> None:
        super().__init__()
        if not task.startswith("MetaWorld/") or not task.endswith("-v3"):
            raise ValueError(f"expected a 'MetaWorld/<Task>-v3' id, got {task!r}.")
        if noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std}.")
        if not 0.0 <= noise_correlation < 1.0:
            raise ValueError(f"noise_correlation must be in [0, 1), got {noise_correlation}.")
        try:
            policies = importlib.import_module("metaworld.policies")
        except ImportError as err:
            raise ImportError(
                "MetaWorldExpert needs the metaworld package's scripted policies: "
                "`pip install --no-deps metaworld==3.1.1 scipy` (scripts/setup.sh installs them)."
            ) from err
        name = task[len("MetaWorld/"):-len("-v3")]
        class_name = _EXPERT_NAMES.get(name, f"Sawyer{name}V3Policy")
        if not hasattr(policies, class_name):
            raise ValueError(f"metaworld.policies has no scripted policy {class_name} for {task}.")
        self.task, self.noise_std, self.noise_correlation = task, noise_std, noise_correlation
        self.noise = None  # the current noise of each env, with noise_correlation > 0
        self.policy = getattr(policies, class_name)()
        self.generator = np.random.default_rng(seed)
        self.in_keys, self.out_keys = [observation_key], [action_key]

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        observation = tensordict.get(self.in_keys[0])
        flat = observation.reshape(-1, observation.shape[-1]).cpu().double().numpy()
        action = np.stack([self.policy.get_action(row) for row in flat])
        if self.noise_std:
            action = action + self._next_noise(action.shape)
        action = torch.as_tensor(np.clip(action, -1.0, 1.0), dtype=torch.float32)
        tensordict.set(self.out_keys[0],
                       action.reshape(*observation.shape[:-1], -1).to(observation.device))
        return tensordict

    def _next_noise(self, shape: tuple[int, ...]) -> np.ndarray:
        """The noise of this step: i.i.d., or the next step of each env's AR(1) process."""
        draw = self.noise_std * self.generator.standard_normal(shape)
        rho = self.noise_correlation
        if not rho:
            return draw
        if self.noise is None or self.noise.shape != shape:
            self.noise = draw  # a draw from the stationary distribution
        else:
            self.noise = rho * self.noise + np.sqrt(1.0 - rho * rho) * draw
        return self.noise
