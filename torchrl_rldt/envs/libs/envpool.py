# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
"""EnvPool environments for TorchRL, written for envpool 1.x (gymnasium API).

TorchRL's :class:`~torchrl.envs.MultiThreadedEnv` assumes envpool 0.x and is
broken with envpool 1.x (see ``docs/upstream-envpool.md``): it imports legacy
``gym`` and ``treevalue``, aliases its observation cache with the returned
data, gives reward and done specs the wrong shape, and lets envpool's
``NEXT_STEP`` auto-reset produce a fake transition after every episode end.
:class:`EnvPoolEnv` is a small, self-contained replacement.
"""
from __future__ import annotations

import difflib
import importlib.util
from typing import Any, Callable, Sequence

import numpy as np
import torch
from tensordict import TensorDictBase
from torchrl.data import Bounded, Categorical, Composite, TensorSpec, Unbounded
from torchrl.envs import EnvBase

from torchrl_rldt._compat import new_tensordict_unsafe

__all__ = ["EnvPoolEnv", "check_task_id"]

_has_envpool = importlib.util.find_spec("envpool") is not None
_FLOAT32_MAX = float(np.finfo(np.float32).max)
# envpool derives one seed per sub-environment from the pool seed, keep the sum in int32
_MAX_SEED = 2**30


def _float32_spec(spec: TensorSpec) -> TensorSpec:
    """Casts the float64 leaves of a spec to float32.

    Bounds that float32 cannot hold (envpool marks unbounded dm_control observations
    with the float64 extremes) turn the leaf into an :class:`~torchrl.data.Unbounded`.
    """
    if isinstance(spec, Composite):
        for key, leaf in list(spec.items()):
            spec[key] = _float32_spec(leaf)
        return spec
    if spec.dtype != torch.float64:
        return spec
    if isinstance(spec, Bounded):
        low, high = spec.space.low, spec.space.high
        bounds = torch.cat([low.reshape(-1), high.reshape(-1)])
        if torch.isfinite(bounds).all() and bounds.abs().max() < _FLOAT32_MAX:
            return Bounded(
                low.float(),
                high.float(),
                shape=spec.shape,
                dtype=torch.float32,
                device=spec.device,
            )
    return Unbounded(shape=spec.shape, dtype=torch.float32, device=spec.device)


def _map_tree(fn: Callable, tree: Any, *rest: Any) -> Any:
    """Applies ``fn`` leaf-wise over an array or a (nested) dict of arrays."""
    if isinstance(tree, dict):
        return {key: _map_tree(fn, tree[key], *(r[key] for r in rest)) for key in tree}
    return fn(tree, *rest)


def _spec_dtypes(spec: TensorSpec) -> Any:
    if isinstance(spec, Composite):
        return {key: _spec_dtypes(leaf) for key, leaf in spec.items()}
    return spec.dtype


def check_task_id(env_name: str) -> None:
    """Raises a ValueError listing close matches when ``env_name`` is not an envpool task id.

    Args:
        env_name: the task id, e.g. ``"Hopper-v5"``.
    """
    if not _has_envpool:
        raise ImportError("EnvPoolEnv needs the envpool package: `pip install 'envpool>=1.2.5'`.")
    import envpool

    known_ids = envpool.list_all_envs()
    if env_name not in known_ids:
        matches = difflib.get_close_matches(env_name, known_ids, n=5, cutoff=0.5)
        hint = f"Close matches: {', '.join(matches)}." if matches else "No close match."
        raise ValueError(
            f"Unknown envpool task id {env_name!r}. {hint} `envpool.list_all_envs()` lists every id."
        )


class EnvPoolEnv(EnvBase):
    """A batch of EnvPool environments (envpool >= 1.0, gymnasium API) as a TorchRL env.

    EnvPool runs ``num_envs`` copies of a task in C++ threads. This class exposes
    them as one batch-locked TorchRL environment of batch size ``[num_envs]``:

    - float observations are float32 (``"observation"`` for a ``Box`` space, one
      entry per key for a ``Dict`` space); reward, ``done``, ``terminated`` and
      ``truncated`` have shape ``[num_envs, 1]``; the action spec carries the
      task's bounds;
    - ``terminated`` (a terminal state) and ``truncated`` (the time limit) are kept
      apart, and a partial reset (``"_reset"`` mask) resets only the finished envs;
    - envpool auto-resets in gymnasium's ``NEXT_STEP`` mode: stepping a finished
      env without resetting it returns a fake transition (the action ignored, reward
      0). TorchRL always resets finished envs, so here that step is refused with
      an error instead of being recorded;
    - partial steps (``"_step"`` mask, used by :class:`~torchrl.envs.MultiAction`
      to execute action chunks) step only the selected envs; the others keep their
      observation and done flags and get a reward of 0;
    - seeding: the same ``seed`` gives the same trajectories;
      :meth:`~torchrl.envs.EnvBase.set_seed` rebuilds the pool with the new seed;
    - ``info_keys`` exposes per-env scalars of envpool's ``info`` dict (e.g. Meta-World's
      ``"success"``) as float32 entries of shape ``[num_envs, 1]``, at reset and at every
      step (with TorchRL's ``SuccessReward`` and ``TerminateTransform`` they make a sparse,
      success-terminated task: see :func:`~torchrl_rldt.envs.make_metaworld_env`).

    Args:
        env_name (str): an envpool task id, for example ``"Hopper-v5"``. The ids
            are listed by ``envpool.list_all_envs()``.
        num_envs (int): the number of environments run in parallel (the batch size).

    Keyword Args:
        seed (int, optional): seed of the pool; sub-environment ``i`` is seeded from
            ``seed`` and ``i`` by envpool. Defaults to a seed drawn from torch's
            global generator, so that ``torch.manual_seed`` controls it.
        device (torch.device, optional): the device of the returned data. EnvPool
            runs on the CPU; actions are copied to the CPU. Defaults to ``"cpu"``.
        num_threads (int, optional): envpool worker threads. Defaults to envpool's
            choice (one per environment).
        info_keys (sequence of str, optional): entries of envpool's ``info`` to output, each
            a scalar per env. Defaults to none.
        **task_kwargs: forwarded to ``envpool.make``, for example
            ``max_episode_steps=100``.

    Raises:
        ValueError: for an unknown task id (the message lists close matches),
            ``num_envs < 1``, or an info key the task does not report (the message lists
            those it does).

    Examples:
        >>> from torchrl_rldt.envs import EnvPoolEnv
        >>> env = EnvPoolEnv("Hopper-v5", num_envs=4, seed=0)
        >>> env.observation_spec["observation"].shape
        torch.Size([4, 11])
        >>> rollout = env.rollout(10, break_when_any_done=False)
        >>> rollout["next", "reward"].shape
        torch.Size([4, 10, 1])
    """

    def __init__(
        self,
        env_name: str,
        num_envs: int,
        *,
        seed: int | None = None,
        device: torch.device | str | None = None,
        num_threads: int | None = None,
        info_keys: Sequence[str] = (),
        **task_kwargs: Any,
    ) -> None:
        if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"num_envs must be a positive int, got {num_envs!r}.")
        check_task_id(env_name)
        super().__init__(
            device=torch.device("cpu") if device is None else device,
            batch_size=torch.Size([num_envs]),
        )
        self.env_name = env_name
        self.num_envs = num_envs
        self.num_threads = num_threads
        self.task_kwargs = dict(task_kwargs)
        self.info_keys = tuple(info_keys)
        if seed is None:
            seed = int(torch.randint(_MAX_SEED, ()))
        self._pool = self._make_pool(seed)
        self._check_info_keys()
        self._make_specs()
        self._all_ids = np.arange(num_envs)
        # Set by a step that ends an episode, cleared by a reset: envpool would
        # answer the next step of such an env with a fake transition.
        self._needs_reset = np.ones(num_envs, dtype=bool)
        # envpool's latest arrays, held by nothing else: observation (array or
        # dict) and [num_envs, 2] (terminated, truncated) flags. Steps of a subset
        # of envs fill the other rows from here.
        self._pool_state: dict[str, Any] = {
            "obs": None,
            "flags": np.zeros((num_envs, 2), dtype=bool),
            "info": {key: np.zeros((num_envs, 1), dtype=np.float32) for key in self.info_keys},
        }
        # hot-path constants: spec and key properties are slow to query per step
        self._action_shape = self.action_spec.shape
        self._action_dtype = self.action_spec.dtype
        self._action_key = self.action_key
        self._reward_key = self.reward_key

    @property
    def _is_cpu(self) -> bool:
        # read at each call: EnvBase.to(device) moves the env after construction
        return self.device.type == "cpu"

    def _make_pool(self, seed: int):
        import envpool

        kwargs = dict(self.task_kwargs)
        if self.num_threads is not None:
            kwargs["num_threads"] = self.num_threads
        # envpool takes int32 seeds; TorchRL's seeds (set_seed's chain) can be any integer
        seed = int(seed) % _MAX_SEED
        self._seed = seed
        return envpool.make(
            self.env_name,
            env_type="gymnasium",
            num_envs=self.num_envs,
            seed=seed,
            **kwargs,
        )

    def _check_info_keys(self) -> None:
        # envpool lists a task's state entries ("info:<key>", ...) only in its spec's
        # private `_state_keys`; without it, an unknown key fails at the first reset instead
        state_keys = getattr(self._pool.spec, "_state_keys", None)
        if state_keys is None:
            return
        available = sorted(key[len("info:"):] for key in state_keys
                           if key.startswith("info:") and "env_id" not in key)
        unknown = [key for key in self.info_keys if key not in available]
        if unknown:
            raise ValueError(
                f"{self.env_name} reports no info entries {unknown}; it reports {available}."
            )

    def _info_arrays(self, info: dict) -> dict[str, np.ndarray]:
        """The ``info_keys`` entries of envpool's ``info`` as float32 ``[n, 1]`` arrays."""
        return {key: np.asarray(info[key], dtype=np.float32).reshape(-1, 1)
                for key in self.info_keys}

    def _make_specs(self) -> None:
        from torchrl.envs.libs.gym import _gym_to_torchrl_spec_transform, set_gym_backend

        # envpool 1.x returns gymnasium spaces; torchrl's converter must be told so
        with set_gym_backend("gymnasium"):
            action_spec = _gym_to_torchrl_spec_transform(
                self._pool.action_space, categorical_action_encoding=True
            )
            observation_spec = _gym_to_torchrl_spec_transform(
                self._pool.observation_space, categorical_action_encoding=True
            )
        observation_spec = _float32_spec(observation_spec)
        # dtypes in the nesting of envpool's observations (an array or a dict of arrays)
        self._obs_dtypes = _spec_dtypes(observation_spec)
        if not isinstance(observation_spec, Composite):
            observation_spec = Composite(observation=observation_spec)
        batch = self.batch_size
        self.action_spec = (
            _float32_spec(action_spec).expand(*batch, *action_spec.shape).to(self.device)
        )
        for key in self.info_keys:
            observation_spec[key] = Unbounded(shape=(1,), dtype=torch.float32)
        self.observation_spec = observation_spec.expand(batch).to(self.device)
        self.reward_spec = Unbounded(shape=(*batch, 1), device=self.device)
        flag = Categorical(2, shape=(*batch, 1), dtype=torch.bool, device=self.device)
        self.done_spec = Composite(
            done=flag,
            terminated=flag.clone(),
            truncated=flag.clone(),
            shape=batch,
            device=self.device,
        )

    def _set_seed(self, seed: int | None) -> None:
        if seed is None:
            return
        # envpool cannot re-seed a pool: build a new one (cheap next to a rollout)
        self._pool = self._make_pool(seed)
        self._needs_reset[:] = True
        # nothing of the old pool's episodes survives into the new one's outputs
        state = self._pool_state
        state["obs"] = None
        state["flags"][:] = False
        for array in state["info"].values():
            array[:] = 0

    def _check_action(self, action: torch.Tensor) -> None:
        shape, dtype = self._action_shape, self._action_dtype
        if action.shape != shape:
            raise ValueError(
                f"{self.env_name} expects an action of shape {tuple(shape)} "
                f"(num_envs, *action_shape), got {tuple(action.shape)}. Nothing was stepped."
            )
        if action.dtype != dtype:
            raise TypeError(
                f"{self.env_name} expects actions of dtype {dtype}, got {action.dtype}. "
                f"Cast the action with `.to({dtype})`. Nothing was stepped."
            )

    def _scatter(self, cached: Any, new: Any, env_ids: np.ndarray) -> Any:
        """A copy of ``cached`` (or zeros) with the rows ``env_ids`` taken from ``new``."""

        def scatter(previous, update):
            if previous is None:
                previous = np.zeros((self.num_envs, *update.shape[1:]), dtype=update.dtype)
            full = previous.copy()
            full[env_ids] = update
            return full

        if cached is None:
            return _map_tree(lambda update: scatter(None, update), new)
        return _map_tree(scatter, cached, new)

    def _output(
        self, obs: Any, flags: np.ndarray, info: dict[str, np.ndarray],
        reward: np.ndarray | None = None,
    ) -> TensorDictBase:
        """Builds the output from envpool's arrays; no tensor aliases the cache."""

        def to_tensor(array, dtype):
            return torch.from_numpy(array).to(dtype, copy=True)

        if isinstance(obs, dict):
            source = _map_tree(to_tensor, obs, self._obs_dtypes)
        else:
            source = {"observation": to_tensor(obs, self._obs_dtypes)}
        # one fresh [3, N, 1] block: terminated, truncated, done (disjoint views)
        done = np.stack([flags[:, 0], flags[:, 1], flags[:, 0] | flags[:, 1]])
        source["terminated"], source["truncated"], source["done"] = torch.from_numpy(
            done[..., None]
        ).unbind(0)
        for key, array in info.items():
            source[key] = torch.from_numpy(array.copy())
        if reward is not None:
            # envpool returns a fresh reward array per call, nothing else holds it
            source[self._reward_key] = torch.from_numpy(reward).unsqueeze(-1)
        if self._is_cpu:  # with the env's device set, TensorDict.set does not cast it again
            return new_tensordict_unsafe(source, batch_size=self.batch_size, device=self.device)
        out = new_tensordict_unsafe(source, batch_size=self.batch_size)
        return out.to(self.device, non_blocking=True)

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        action = tensordict.get(self._action_key)
        self._check_action(action)
        step_mask = tensordict.get("_step", None)
        action = action.detach().cpu().numpy()
        if step_mask is None or bool(step_mask.all()):
            env_ids, stepped = self._all_ids, None
        else:
            env_ids = step_mask.reshape(-1).cpu().numpy().nonzero()[0]
            action, stepped = action[env_ids], env_ids
        needs_reset = self._needs_reset[env_ids]
        if needs_reset.any():
            raise RuntimeError(
                f"Envs {env_ids[needs_reset].tolist()} of {self.env_name} ended an "
                "episode (or were never reset) and must be reset before they are "
                "stepped: call `env.reset()` with a '_reset' mask, or use "
                "`env.step_and_maybe_reset` / a collector. Nothing was stepped."
            )
        obs, reward, terminated, truncated, info = self._pool.step(action, stepped)
        order = info["env_id"]
        flags = np.stack([terminated, truncated], -1).astype(bool, copy=False)
        info = self._info_arrays(info)
        state = self._pool_state
        if stepped is not None or not np.array_equal(order, self._all_ids):
            obs = self._scatter(state["obs"], obs, order)
            flags = self._scatter(state["flags"], flags, order)
            info = self._scatter(state["info"], info, order)
            reward = self._scatter(None, np.asarray(reward, dtype=np.float32), order)
        self._needs_reset[order] = flags[order].any(-1)
        state["obs"], state["flags"], state["info"] = obs, flags, info
        return self._output(obs, flags, info, reward)

    def _step_and_maybe_reset(
        self, tensordict: TensorDictBase
    ) -> tuple[TensorDictBase, TensorDictBase]:
        # The generic path (``step`` then ``maybe_reset``) re-validates what ``_step`` and
        # ``_reset`` build complete, and merges the reset through masked copies of every
        # entry: at a few envs it costs more than the physics. Here the finished envs are
        # reset right after the step and only their rows change. Inputs this shortcut does
        # not handle (partial steps, preset "next" entries, type checks, hooks, another
        # device) take the generic path.
        if (
            not self._is_cpu
            or self.run_type_checks
            or self._post_step_mdp_hooks is not None
            or tensordict.device != self.device
            or "_step" in tensordict.keys()
            or "next" in tensordict.keys()
        ):
            return super()._step_and_maybe_reset(tensordict)
        if tensordict.batch_size != self.batch_size:
            self._assert_tensordict_shape(tensordict)
        tensordict.set("next", self._step(tensordict))
        tensordict_ = self._step_mdp(tensordict)
        finished = self._needs_reset.nonzero()[0]
        if len(finished):
            reset = self._reset_envs(finished)
            if len(finished) < self.num_envs:
                # as TorchRL's partial reset: the reset rows of the entries that the reset
                # does not produce (the action, policy outputs) are zeroed (a full reset
                # keeps them); fresh tensors, so that the transition keeps its own
                rows = torch.from_numpy(finished)
                tensordict_.update(tensordict_.exclude(*reset.keys()).apply(
                    lambda value: value.index_fill(0, rows, 0)
                ))
            tensordict_.update(reset)
        return tensordict, tensordict_

    def _reset(
        self, tensordict: TensorDictBase | None = None, **kwargs: Any
    ) -> TensorDictBase:
        reset_mask = None if tensordict is None else tensordict.get("_reset", None)
        if reset_mask is None or bool(reset_mask.all()):
            return self._reset_envs(None)
        return self._reset_envs(reset_mask.reshape(-1).cpu().numpy().nonzero()[0])

    def _reset_envs(self, env_ids: np.ndarray | None) -> TensorDictBase:
        """Resets the envs ``env_ids`` (all for ``None``); the output covers every env."""
        obs, info = self._pool.reset() if env_ids is None else self._pool.reset(env_ids)
        order = info["env_id"]
        info = self._info_arrays(info)
        state = self._pool_state
        if env_ids is not None or not np.array_equal(order, self._all_ids):
            obs = self._scatter(state["obs"], obs, order)
            info = self._scatter(state["info"], info, order)
        flags = state["flags"].copy()
        flags[order] = False
        self._needs_reset[order] = False
        state["obs"], state["flags"], state["info"] = obs, flags, info
        return self._output(obs, flags, info)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(env_name={self.env_name!r}, num_envs={self.num_envs}, "
            f"seed={self._seed}, device={self.device})"
        )
