# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
"""Configs of the training examples: refusing bad values at once, and per-task values.

Both work on OmegaConf / Hydra configs, the examples' dependencies (``pip install
torchrl-rldt[examples]``); OmegaConf is imported where it is used.
"""
from __future__ import annotations

import logging
import math
from numbers import Real
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch

from torchrl_rldt.envs import check_task_id

__all__ = ["RENAMED_KEYS", "ConfigCheck", "apply_task_config", "flat_items", "refuse_renamed_keys"]

log = logging.getLogger(__name__)

# Config keys renamed, old -> new: the loss weights took TorchRL's ``*_coeff`` names (buffers of the
# losses). A command that still names an old key is refused with the new spelling.
RENAMED_KEYS = {
    "rldt.rl_coef": "rldt.rl_coeff",
    "rldt.consistency_coef": "rldt.consistency_coeff",
    "rldt.reference_coef": "rldt.reference_coeff",
    "qam.base_constraint_coef": "qam.base_constraint_coeff",
}


def refuse_renamed_keys(command_line: Sequence[str], renamed: Mapping[str, str] = RENAMED_KEYS) -> None:
    """Refuses command-line overrides that name a renamed config key, with the new spelling.

    Hydra's own error for an unknown key says that the key is missing, not what it is called now;
    the examples call this before Hydra parses their command line.

    Args:
        command_line: the overrides (``"key=value"``, ``"+key=value"``, ``"~key"``), e.g.
            ``sys.argv[1:]``.
        renamed: old key -> new key. Defaults to :data:`RENAMED_KEYS`.

    Raises:
        SystemExit: an override names an old key.

    Examples:
        >>> refuse_renamed_keys(["rldt.rl_coeff=6"])  # the current name: nothing happens
        >>> refuse_renamed_keys(["rldt.rl_coef=6"])
        Traceback (most recent call last):
        ...
        SystemExit: rldt.rl_coef was renamed rldt.rl_coeff (TorchRL's name for a loss weight): use rldt.rl_coeff=6
    """
    for token in command_line:
        key = token.lstrip("+~").partition("=")[0]
        if key in renamed:
            fixed = token.replace(key, renamed[key], 1)
            raise SystemExit(f"{key} was renamed {renamed[key]} (TorchRL's name for a loss weight): use {fixed}")


def flat_items(values: Mapping, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in values.items():
        if isinstance(value, Mapping):
            yield from flat_items(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def apply_task_config(config: Any, path: str | Path, command_line: Sequence[str]) -> list[str]:
    """Sets the values of a per-task config file, except those set on the command line.

    A config's defaults are shared by every task; a task that needs other values (measured, and
    written down beside them) gets a file of only those values, which the run picks up by the
    task's name. What the user sets on the command line still wins.

    Args:
        config: the run's (Hydra) ``DictConfig``, changed in place; every key of the file must be
            one of its keys.
        path: the per-task YAML file (nested keys, as in the config); nothing happens when it
            does not exist.
        command_line: the run's overrides as Hydra received them (``"key=value"``, ``"+key=..."``,
            ``"~key"``), e.g. ``HydraConfig.get().overrides.task``.

    Returns:
        The ``"key=value"`` settings applied, in the file's order.

    Raises:
        KeyError: the file names a key that the config does not have.

    Examples:
        >>> import tempfile
        >>> from omegaconf import OmegaConf
        >>> from torchrl_rldt.trainers import apply_task_config
        >>> cfg = OmegaConf.create({"task": "HalfCheetah-v5", "schedule": {"reanchor_every": 32, "steps": 1}})
        >>> path = Path(tempfile.mkdtemp()) / "halfcheetah-v5.yaml"
        >>> _ = path.write_text("schedule:\\n  reanchor_every: null\\n  steps: 2\\n")
        >>> apply_task_config(cfg, path, ["schedule.steps=5"])
        ['schedule.reanchor_every=None']
        >>> cfg.schedule.reanchor_every is None
        True
    """
    from omegaconf import OmegaConf

    path = Path(path)
    if not path.is_file():
        return []
    values = OmegaConf.to_container(OmegaConf.load(path), resolve=True) or {}
    # "key=value", "+key=value", "++key=value", "~key" and "~key=value" all set (or remove) key
    on_command_line = {override.split("=", 1)[0].lstrip("+~") for override in command_line}
    missing = object()
    applied = []
    for key, value in flat_items(values):
        if OmegaConf.select(config, key, default=missing) is missing:
            raise KeyError(f"{path} sets {key!r}, which the config does not have; fix the file.")
        if key in on_command_line:
            continue
        OmegaConf.update(config, key, value, merge=False)
        applied.append(f"{key}={value}")
    if applied:
        log.info("values of %s for this task: %s", path.name, " ".join(applied))
    return applied


class ConfigCheck:
    """Collects every problem of a (Hydra) config, then refuses it at once with all the reasons.

    Args:
        cfg: the config; ``cfg.task`` is checked first (an unknown task makes every other message
            moot).

    Examples:
        >>> from omegaconf import OmegaConf
        >>> from torchrl_rldt.trainers import ConfigCheck
        >>> check = ConfigCheck(OmegaConf.create({"task": "Hopper-v5", "lr": -1, "steps": 0}))
        >>> check.number("lr", 0.0, open_low=True)
        >>> check.positive_int("steps")
        >>> check.done()
        Traceback (most recent call last):
        ...
        ValueError: invalid configuration:
          - lr must be a finite number > 0.0, got -1
          - steps must be an integer >= 1, got 0
    """

    def __init__(self, cfg: Any) -> None:
        check_task_id(cfg.task)
        self.cfg, self.problems = cfg, []

    def get(self, dotted: str) -> Any:
        """``cfg.a.b`` for ``"a.b"``."""
        value = self.cfg
        for part in dotted.split("."):
            value = value[part]
        return value

    def need(self, condition: bool, message: str) -> None:
        """Records ``message`` unless ``condition`` holds."""
        if not condition:
            self.problems.append(message)

    def positive_int(self, name: str) -> None:
        """``name`` must be an integer ``>= 1``."""
        self.integer(name, minimum=1)

    def integer(self, name: str, minimum: int) -> None:
        """``name`` must be an integer ``>= minimum`` (``bool`` is not one)."""
        value = self.get(name)
        self.need(isinstance(value, int) and not isinstance(value, bool) and value >= minimum,
                  f"{name} must be an integer >= {minimum}, got {value!r}")

    def number(self, name: str, low: float, high: float = math.inf, open_low: bool = False) -> None:
        """``name`` must be a finite number in ``[low, high]`` (``(low, high]`` if ``open_low``)."""
        value = self.get(name)
        ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
        ok = ok and (value > low if open_low else value >= low) and value <= high
        bound = f"> {low}" if open_low else f">= {low}"
        self.need(ok, f"{name} must be a finite number {bound}"
                  + (f" and <= {high}" if high < math.inf else "") + f", got {value!r}")

    def one_of(self, name: str, choices: tuple) -> None:
        """``name`` must be one of ``choices``, of the same type (``1`` is not ``True``)."""
        value = self.get(name)
        self.need(any(type(value) is type(choice) and value == choice for choice in choices),
                  f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")

    def common(self) -> None:
        """What every training example shares: env and evaluation sizes, the logger, the device."""
        for name in ("env.num_envs", "env.max_episode_steps", "collector.total_env_steps",
                     "eval.every_env_steps", "eval.episodes", "eval.final_episodes", "num_threads"):
            self.positive_int(name)
        self.need(self.cfg.logger.backend in (None, "csv", "tensorboard", "wandb"),
                  f"logger.backend must be csv, tensorboard, wandb or null, got "
                  f"{self.cfg.logger.backend!r}")
        if str(self.cfg.device).startswith("cuda"):
            self.need(torch.cuda.is_available(),
                      f"device={self.cfg.device} but CUDA is not available; use device=cpu")
        if "exploration" in self.cfg.eval:
            self.one_of("eval.exploration", ("deterministic", "random"))

    def done(self) -> None:
        """Raises ``ValueError`` listing every recorded problem, if any."""
        if self.problems:
            raise ValueError("invalid configuration:\n  - " + "\n  - ".join(self.problems))
