# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
"""The run harness of the training examples: what every run needs besides its training loop.

:class:`TrainingRun` holds the run directory, resuming a checkpoint (refused when it belongs to
another example or another task), atomic checkpoints with the replay buffer, the RNG state, the
learning curve, the logger and progress bar, Ctrl-C (stop after the current batch), the stop on
a non-finite value (naming the last good checkpoint), and the closing summary (``summary.json``,
``learning_curve.png`` and a base-against-final table). :func:`env_seed` keeps the env pools of
a run apart. The training loops stay in the examples, visible top to bottom; this module holds
what they would otherwise each repeat. Evaluation is :mod:`torchrl_rldt.envs.evaluation`,
checkpoint reading :mod:`torchrl_rldt.checkpoint.training`; the progress bar and the plot
(tqdm, matplotlib: the examples' dependencies) are :mod:`torchrl_rldt.trainers.reporting`,
imported only when used.
"""
from __future__ import annotations

import atexit
import contextlib
import json
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, NoReturn

import torch
from tensordict.nn import TensorDictModuleBase
from torchrl.envs import EnvBase

from torchrl_rldt.checkpoint import atomic_write_text, load_checkpoint_buffer, save_checkpoint
from torchrl_rldt.checkpoint.training import CHECKPOINT_VERSION, read_checkpoint, restore_rng_state, rng_state
from torchrl_rldt.envs.evaluation import SAMPLING_MODES, episode_returns, returns_by_sampling_mode
from torchrl_rldt.trainers.config import flat_items
from torchrl_rldt.trainers.reporting import plot_learning_curve, progress_bar

__all__ = ["CollectorFault", "NonFiniteError", "TrainingRun", "env_seed"]

log = logging.getLogger(__name__)

# A pool of n envs seeded s seeds them s, ..., s + n - 1 (see EnvPoolEnv); these offsets keep the
# pools of a run apart for any size below 10 000 envs.
EVAL_SEED_OFFSET = 10_000
FINAL_EVAL_SEED_OFFSET = 20_000
RESUMED_TRAINING_SEED_OFFSET = 1_000_000
# the episodes a data set is recorded on (examples/make_dataset.py): never a run's evaluation states
RECORD_SEED_OFFSET = 500_000
_SEED_ROLES = ("train", "eval", "final", "record")
# how often a call into the collector checks that its workers live (TorchRL's own check, in its
# batch wait, is about as frequent; its weight sync has none)
_WATCH_PERIOD_S = 1.0


def env_seed(seed: int, role: str, env_steps: int = 0) -> int:
    """The seed of a run's env pool for ``role``: its training, evaluation or final-evaluation envs,
    or the envs a data set is recorded on.

    The evaluation envs keep their seeds for the whole run, so that every evaluation starts
    from the same states. The training envs start at ``seed``; a run resumed after
    ``env_steps`` reseeds them, so that it does not replay the episodes it began with, in a
    range of their own, so that its training never starts from an evaluation's states.

    Args:
        seed (int): the run's seed (``cfg.seed``).
        role (str): ``"train"``, ``"eval"``, ``"final"`` or ``"record"``.
        env_steps (int, optional): env steps the run has taken; only the training seed depends
            on it. Defaults to ``0``.

    Examples:
        >>> from torchrl_rldt.trainers import env_seed
        >>> env_seed(1, "train"), env_seed(1, "eval"), env_seed(1, "train", env_steps=20_000)
        (1, 10001, 1020001)
    """
    if role not in _SEED_ROLES:
        raise ValueError(f"role={role!r} is not one of {_SEED_ROLES}.")
    if role == "eval":
        return seed + EVAL_SEED_OFFSET
    if role == "final":
        return seed + FINAL_EVAL_SEED_OFFSET
    if role == "record":
        return seed + RECORD_SEED_OFFSET
    return seed if env_steps == 0 else seed + RESUMED_TRAINING_SEED_OFFSET + env_steps


class NonFiniteError(RuntimeError):
    """A loss, a reward or an observation became NaN or infinite."""


class CollectorFault(RuntimeError):
    """The collector stopped delivering batches: a worker died or raised, or none came in time."""


class StorageFault(RuntimeError):
    """A checkpoint, its replay-buffer dump, the log or the summary could not be written (a full
    disk, a lost mount); the message names the file, what was kept and how to continue."""


class _CollectionDeadline(BaseException):
    """Raised by the watch alarm inside the collector (a dead worker, a stall); a ``BaseException`` so that no ``except
    Exception`` of the collector's own code swallows it."""


class _StopWhileCollecting(BaseException):
    """Raised by Ctrl-C or SIGTERM while the loop waits for the collector (see ``_CollectionDeadline``)."""


def _collector_workers(collector: Any) -> str:
    """The dead worker processes of a multi-process collector, for a message (empty if none)."""
    dead = []
    for index, process in enumerate(getattr(collector, "procs", None) or []):
        try:
            if not process.is_alive():
                dead.append(f"worker {index} (pid {process.pid}, exit code {process.exitcode})")
        except ValueError:  # closed by the collector's own clean-up
            continue
    return ("dead: " + ", ".join(dead) + "; ") if dead else ""


def _lost_ray_actors(collector: Any, timeout: float = 5.0) -> str:
    """The lost actors of a Ray collector, for a message after it raised (empty if none or not
    Ray). A killed actor surfaces as ``ActorDiedError`` while a batch is collected (TorchRL then
    kills the other actors and empties ``remote_collectors``, so there is nothing left to probe),
    or, when the weight transfer notices first, as a closed connection of its transport, which
    does not say what was lost: then the probe names the actor.

    Args:
        collector: the run's collector; only a ``RayCollector`` (``remote_collectors``) is probed.
        timeout (float, optional): seconds all actors together have to answer; one that does
            not is not named (alive but busy). Defaults to ``5.0``.
    """
    actors = getattr(collector, "remote_collectors", None)
    if not actors:
        return ""
    import ray

    try:
        probes = [actor.__ray_ready__.remote() for actor in actors]
        ray.wait(probes, num_returns=len(probes), timeout=timeout)
    except Exception:  # noqa: BLE001 - Ray itself gone: nothing more to name than its error
        return ""
    lost = []
    for index, probe in enumerate(probes):
        try:
            ray.get(probe, timeout=0)
        except ray.exceptions.ActorUnavailableError:  # unreachable for now, not lost
            continue
        except ray.exceptions.RayActorError:
            lost.append(f"Ray actor {index}")
        except Exception:  # noqa: BLE001 - no answer yet (busy) or another error: not named
            continue
    return ("lost: " + ", ".join(lost) + "; ") if lost else ""


def _shutdown_weight_sync(collector: Any) -> None:
    """Shuts down the collector's weight-sync schemes while the interpreter still runs threads:
    left to their ``__del__`` at interpreter exit, TorchRL's shared-memory scheme starts a queue
    thread that a finalising interpreter never runs, and the process hangs after its work is done
    (seen with ``multi_sync`` on a resumed run)."""
    for scheme in (getattr(collector, "_weight_sync_schemes", None) or {}).values():
        try:
            scheme.shutdown()
        except Exception as error:  # noqa: BLE001 - the run's work is saved; say so and go on
            log.warning("weight-sync shutdown: %s: %s", type(error).__name__, error)


def _exit_without_finalizing(code: int) -> None:
    """Ends the process at interpreter exit, before finalisation: after a collector fault,
    TorchRL's weight-sync objects can block forever in ``__del__`` (they start a queue thread,
    which a finalising interpreter never runs). Workers are killed and logs flushed first."""
    for child in multiprocessing.active_children():
        child.kill()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


class TrainingRun:
    """A training run's directory, checkpoints, learning curve, logging and stops.

    A run starts fresh in ``output_dir`` or, with ``resume``, continues the run of that
    checkpoint in its directory; the checkpoint is checked before any work (it must exist, be
    written by the same example and carry the same ``identity``, e.g. the task). The run owns:

    - ``counters`` (``env_steps`` among them) and ``history`` (the learning curve: one point per
      evaluation, with env steps and wall-clock seconds);
    - ``extra``: other plain values to keep across a resume (e.g. a reward scale);
    - the objects registered with :meth:`track` (losses, optimisers, schedulers), saved by
      :meth:`save` with the RNG state (and, given one, the replay buffer) atomically, and loaded
      back when resuming.

    Inside :meth:`loop`, Ctrl-C sets :attr:`stop_requested` (the example saves and returns
    after the current batch; a second Ctrl-C aborts at once), and a :class:`NonFiniteError`
    from :meth:`check_finite` ends the run with exit code 1 and the path of the last good
    checkpoint. :meth:`finish` evaluates the final policy, saves, and writes ``summary.json``,
    ``learning_curve.png`` and the base-against-final table.

    Args:
        name (str): the example's name, e.g. ``"rldt_gym"``; checkpoints are tagged
            ``"torchrl_rldt.<name>"``.
        config: the run's config (a Hydra ``DictConfig``): ``task``, ``seed``, ``device``,
            ``env.max_episode_steps``, ``logger.backend`` and ``logger.progress_bar`` are read.

    Keyword Args:
        output_dir (Path): the directory of a fresh run.
        resume (Path, optional): a checkpoint of an earlier run to continue. Defaults to
            ``None``.
        identity (dict, optional): what a resumed checkpoint must match, e.g.
            ``{"task": cfg.task}``. Defaults to ``{"task": config.task}``. A key the checkpoint
            does not hold is checked against ``identity_defaults`` (what runs written before the
            key existed were).
        identity_defaults (dict, optional): the value of an identity key in checkpoints written
            before it existed, e.g. ``{"method": "rldt"}``. Defaults to none.
        counters (dict, optional): the counters of a fresh run. Defaults to
            ``{"env_steps": 0}``.
        command (str, optional): the command line recorded in ``summary.json``.

    Examples:
        >>> import tempfile, torch
        >>> from pathlib import Path
        >>> from omegaconf import OmegaConf
        >>> from torchrl_rldt.trainers import TrainingRun
        >>> cfg = OmegaConf.create({"task": "Hopper-v5", "seed": 0, "device": "cpu",
        ...     "env": {"max_episode_steps": 1000}, "logger": {"backend": None, "progress_bar": False}})
        >>> run = TrainingRun("demo", cfg, output_dir=Path(tempfile.mkdtemp()))
        >>> net = torch.nn.Linear(2, 2)
        >>> run.track(net=net)
        False
        >>> run.counters["env_steps"] += 100
        >>> path = run.save()
        >>> resumed = TrainingRun("demo", cfg, output_dir=Path("unused"), resume=path)
        >>> resumed.track(net=torch.nn.Linear(2, 2)), resumed.counters["env_steps"]
        (True, 100)
    """

    def __init__(
        self,
        name: str,
        config: Any,
        *,
        output_dir: Path,
        resume: Path | None = None,
        identity: Mapping[str, Any] | None = None,
        identity_defaults: Mapping[str, Any] | None = None,
        counters: Mapping[str, int] | None = None,
        command: str | None = None,
    ) -> None:
        self.name, self.config = name, config
        self.format = f"torchrl_rldt.{name}"
        self.device = torch.device(config.device)
        self.identity = dict(identity) if identity is not None else {"task": config.task}
        self.identity_defaults = dict(identity_defaults or {})
        self.command = command
        self.state = self._load(Path(resume)) if resume else None
        self.run_dir = Path(resume).parent if resume else Path(output_dir)
        self.checkpoint_path = self.run_dir / "checkpoint.pt"
        self.counters = dict(self.state["counters"]) if self.state else dict(
            counters or {"env_steps": 0})
        self.history: list[dict] = list(self.state["history"]) if self.state else []
        self.extra: dict = dict(self.state["extra"]) if self.state else {}
        self._tracked: dict[str, Any] = {}
        self._logger = None
        self._progress = None
        # wall-clock of the loop: what earlier sessions of a resumed run spent, plus this one's
        self._wall_offset = float(self.state["wall_seconds"]) if self.state else 0.0
        # where the loop's time went and the machine's 1-minute load average at the start of each
        # session of the loop, both kept across resumes beside the wall-clock
        self._phase_seconds: dict[str, float] = dict(self.state.get("phase_seconds", {})) if self.state else {}
        self._load_averages: list[float] = list(self.state.get("load_average", [])) if self.state else []
        self._start: float | None = None
        self._total_env_steps: int | None = None
        # the env steps of the next periodic evaluation: the first multiple of the period after
        # the steps already taken (a config without evaluations has none)
        every = getattr(getattr(config, "eval", None), "every_env_steps", None)
        self._next_evaluation = None if every is None else (self.counters["env_steps"] // every + 1) * every
        self.stop_requested = False
        self.collector_interrupted = False
        # the env steps of the checkpoint on disk (None: none written yet), for a fault's message
        self._saved_env_steps: int | None = self.counters["env_steps"] if self.state else None
        self._waiting_for_collector = False

    def env_seed(self, role: str) -> int:
        """The seed of this run's ``role`` env pool (see :func:`env_seed`), at its env steps now."""
        return env_seed(self.config.seed, role, self.counters["env_steps"])

    @classmethod
    def from_hydra(cls, name: str, config: Any, **kwargs: Any) -> TrainingRun:
        """A run of ``examples/<name>.py`` under Hydra.

        The output directory is Hydra's, the command line (with ``--config-name`` when it is
        not the example's own config) is recorded for the summary,
        ``config.resume`` (a checkpoint path, relative to the directory the command was started
        in) names the run to continue, and ``config.num_threads`` sets torch's intra-op threads.

        Args:
            name (str): the example's name (its script is ``examples/<name>.py``).
            config: the Hydra config of the run.
            **kwargs: the other keyword arguments of :class:`TrainingRun` (``identity``,
                ``counters``).
        """
        from hydra.core.hydra_config import HydraConfig

        hydra_config = HydraConfig.get()
        torch.set_num_threads(config.num_threads)
        resume = Path(hydra_config.runtime.cwd, config.resume) if config.resume else None
        command = [f"python examples/{name}.py"]
        if hydra_config.job.config_name != name:  # e.g. --config-name rldt_metaworld
            command.append(f"--config-name {hydra_config.job.config_name}")
        command += list(hydra_config.overrides.task)
        return cls(name, config, output_dir=Path(hydra_config.runtime.output_dir), resume=resume,
                   command=" ".join(command), **kwargs)

    # --- resume and checkpoints ------------------------------------------------------------------
    # what a resumed run may change: its budget, where and how fast it runs, how long it waits for
    # a stalled collector, how it is saved and what it reports
    RESUMABLE_CHANGES = ("resume", "collector.total_env_steps", "collector.stall_timeout_s", "device",
                         "num_threads", "logger.", "checkpoint.")

    def _load(self, path: Path) -> dict:
        state = read_checkpoint(path, self.name, map_location=self.device)
        saved = {key: state.get(key, self.identity_defaults.get(key)) for key in self.identity}
        if saved != self.identity:
            raise ValueError(
                f"{path} is a run with " + " ".join(f"{k}={v}" for k, v in saved.items())
                + "; this run has " + " ".join(f"{k}={v}" for k, v in self.identity.items())
                + ". Pass the checkpoint's values (" + " ".join(f"{k}={v}" for k, v in saved.items())
                + "), or drop resume= to start a new run."
            )
        if state.get("config") is not None:
            self._check_resumed_config(path, state["config"])
        return state

    def _check_resumed_config(self, path: Path, saved_config: Mapping) -> None:
        """Refuses a resume whose config differs from the checkpoint's outside
        :attr:`RESUMABLE_CHANGES`: the continuation would silently be another run (and an
        optimiser's restored state would override a changed learning rate)."""
        from omegaconf import OmegaConf

        saved = dict(flat_items(saved_config))
        current = dict(flat_items(OmegaConf.to_container(self.config, resolve=True)))
        free = self.RESUMABLE_CHANGES
        changed = [key for key in saved.keys() & current.keys()
                   if saved[key] != current[key] and not key.startswith(free)]
        if changed:
            listed = "; ".join(f"{key}: {saved[key]!r} in the checkpoint, {current[key]!r} now"
                               for key in sorted(changed))
            raise ValueError(
                f"{path} was run with another config: {listed}. Resume with the checkpoint's "
                "values (its run directory's .hydra/config.yaml holds them all), or drop resume= "
                "to start a new run."
            )
        added = sorted(key for key in current.keys() - saved.keys() if not key.startswith(free))
        if added:
            log.warning("%s predates the config keys %s: the resumed run uses their values now",
                        path, ", ".join(added))

    def track(self, **objects: Any) -> bool:
        """Registers objects with ``state_dict``/``load_state_dict`` to checkpoint by name.

        When resuming, loads each one's saved state and, after the last call, nothing else is
        needed: the RNG state is restored here too (call :meth:`track` once, after every
        random initialisation).

        Returns:
            ``True`` when the objects were restored from the checkpoint.
        """
        self._tracked.update(objects)
        if not self.state:
            return False
        for name, obj in objects.items():
            if name not in self.state:
                raise KeyError(f"{self.checkpoint_path} holds no state for {name!r}; its entries are "
                               f"{sorted(self.state)}.")
            obj.load_state_dict(self.state[name])
        restore_rng_state(self.state["rng"], self.device)
        log.info("resumed %s at %d env steps", self.checkpoint_path, self.counters["env_steps"])
        return True

    def restore_buffer(self, replay_buffer: Any) -> bool:
        """Fills ``replay_buffer`` with the dump saved beside the resumed checkpoint, if any."""
        if not self.state:
            return False
        loaded = load_checkpoint_buffer(self.state, self.checkpoint_path, replay_buffer)
        if loaded:
            log.info("restored the replay buffer (%d transitions in the buffer)", len(replay_buffer))
        else:
            log.warning("%s was saved without its replay buffer: the run continues with an empty "
                        "one, not exactly where it stopped", self.checkpoint_path)
        return loaded

    def save(self, replay_buffer: Any = None) -> Path:
        """Writes ``checkpoint.pt`` atomically (with the replay buffer's dump, when given).

        Raises:
            StorageFault: the write failed (e.g. the disk is full); the previous checkpoint and
                its dump are kept as they were.
        """
        from omegaconf import OmegaConf

        state = {
            "format": self.format,
            "version": CHECKPOINT_VERSION,
            **self.identity,
            **{name: obj.state_dict() for name, obj in self._tracked.items()},
            "counters": dict(self.counters),
            "history": self.history,
            "extra": self.extra,
            "wall_seconds": self.wall_seconds,
            "phase_seconds": self._phase_seconds,
            "load_average": self._load_averages,
            "rng": rng_state(self.device),
            "config": OmegaConf.to_container(self.config, resolve=True),
        }
        try:
            path = save_checkpoint(state, self.checkpoint_path, replay_buffer)
        except OSError as error:
            raise self._storage_fault(f"could not write the checkpoint {self.checkpoint_path}"
                                      + (" and its replay buffer" if replay_buffer is not None else ""),
                                      error) from error
        self._saved_env_steps = self.counters["env_steps"]
        return path

    def _storage_fault(self, what: str, error: OSError) -> StorageFault:
        if self._saved_env_steps is None:
            kept = "No checkpoint was written yet; free space and start the run again"
        else:
            kept = (f"The checkpoint at {self._saved_env_steps} env steps is kept as it was; free space "
                    f"on {self.run_dir} and resume={self.checkpoint_path} continues the run from it")
        return StorageFault(f"{what}: {error.strerror or error}. {kept}")

    def _exit_on_storage_fault(self, error: StorageFault) -> NoReturn:
        log.error("%s", error)
        atexit.register(_exit_without_finalizing, 1)
        raise SystemExit(1) from None

    def _save_at_exit(self, replay_buffer: Any) -> Path:
        try:
            return self.save(replay_buffer)
        except StorageFault as error:
            self._exit_on_storage_fault(error)

    # --- the loop ----------------------------------------------------------------------------
    @property
    def wall_seconds(self) -> float:
        """Wall-clock seconds of the training loop so far, across resumes (evaluations included)."""
        if self._start is None:
            return self._wall_offset
        return self._wall_offset + time.perf_counter() - self._start

    @contextlib.contextmanager
    def loop(self, *, total_env_steps: int, description: str,
             replay_buffer: Any = None) -> Iterator[TrainingRun]:
        """The context of the training loop: clock, logger, progress bar, stops and faults.

        - Ctrl-C or SIGTERM stops after the current batch, which is saved; while the loop waits
          for a batch (a stalled collector never delivers one), at once, without the partial
          batch. The same signal again ends the process at once.
        - A non-finite value (:meth:`check_finite`, :meth:`collected`) ends the run with exit code
          1, naming the last good checkpoint; nothing of the bad batch was learnt.
        - A :class:`CollectorFault` (:meth:`collected`) writes a checkpoint of every batch that
          was learnt and ends the run with exit code 1, naming the fault and the resume command.
        - A :class:`StorageFault` (a checkpoint or the log could not be written: a full disk) ends
          the run with exit code 1, naming the checkpoint that is kept and the resume command.

        Args:
            total_env_steps (int): the run's budget (the progress bar's total; :meth:`collected`
                stops there).
            description (str): the progress bar's label.
            replay_buffer (optional): saved with the checkpoint written at a stop or a fault.
                Defaults to ``None`` (the checkpoint without the buffer).
        """
        cfg = self.config
        self._total_env_steps = total_env_steps
        if cfg.logger.backend and self._logger is None:
            from torchrl.record.loggers import get_logger

            self._logger = get_logger(cfg.logger.backend, logger_name=str(self.run_dir),
                                      experiment_name=self.name)
            if self.state is not None:
                self._drop_logged_after_checkpoint()
        self._progress = progress_bar(total_env_steps, initial=self.counters["env_steps"],
                                      description=description, enabled=cfg.logger.progress_bar)
        self._start = time.perf_counter()
        # the machine's load beside the run's timings (other jobs on the same cores slow it down)
        self._load_averages.append(round(os.getloadavg()[0], 2))

        def request_stop(signum, frame):
            self.stop_requested = True
            signal.signal(signum, previous_handlers[signum])
            if self._waiting_for_collector:
                log.warning("%s while waiting for the collector: stopping and saving now (send it again "
                            "to stop at once)", signal.Signals(signum).name)
                raise _StopWhileCollecting
            log.warning("%s: stopping and saving after this batch (send it again to stop at once)",
                        signal.Signals(signum).name)

        # Ctrl-C (or a scheduler's SIGTERM) stops at the end of the current batch, which is then
        # saved (a KeyboardInterrupt in the middle of an update could leave modules half-swapped);
        # the same signal again interrupts at once.
        previous_handlers = {signum: signal.signal(signum, request_stop)
                             for signum in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        except NonFiniteError as error:
            last = self.checkpoint_path
            log.error("%s; stopping. The last good checkpoint is %s", error,
                      f"{last} (resume={last})" if last.exists() else "none yet")
            raise SystemExit(1) from None
        except StorageFault as error:
            self._exit_on_storage_fault(error)
        except _StopWhileCollecting:
            self.collector_interrupted = True
            self.interrupted(replay_buffer)
            atexit.register(_exit_without_finalizing, 0)
            raise SystemExit(0) from None
        except CollectorFault as error:
            self.collector_interrupted = True
            path = self._save_at_exit(replay_buffer)
            log.error("%s. Wrote %s at %d env steps (every batch learnt so far; none of the batch "
                      "under way); resume=%s continues the run", str(error).rstrip("."), path,
                      self.counters["env_steps"], path)
            atexit.register(_exit_without_finalizing, 1)
            raise SystemExit(1) from None
        finally:
            for signum, handler in previous_handlers.items():
                signal.signal(signum, handler)
            self._progress.close()
            self._total_env_steps = None

    def _drop_logged_after_checkpoint(self) -> None:
        """Removes the rows that the interrupted session logged after its checkpoint: this session
        logs those env steps again. CSV logger only (other backends keep both)."""
        from torchrl.record.loggers.csv import CSVLogger

        if not isinstance(self._logger, CSVLogger):
            log.info("resumed: the %s logger keeps the points the last session logged after its "
                     "checkpoint", type(self._logger).__name__)
            return
        last_step = self.counters["env_steps"]
        for path in sorted(Path(self._logger.experiment.log_dir, "scalars").glob("*.csv")):
            lines = path.read_text().splitlines(keepends=True)
            kept = []
            for line in lines:
                step, _, value = line.partition(",")
                if not line.endswith("\n") or not value.strip():
                    break  # the line a kill tore
                try:
                    if float(step) <= last_step:
                        kept.append(line)
                except ValueError:
                    break
            if len(kept) != len(lines):
                atomic_write_text("".join(kept), path)

    @contextlib.contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        """Adds the wall-clock seconds of the block to ``phase`` (kept across resumes).

        The totals, and the share of the loop's wall-clock that no phase claims, go into
        ``summary.json`` (``phase_seconds``): where a run spends its time.

        Args:
            phase (str): e.g. ``"critic"``, ``"actor"``; :meth:`evaluate` counts as
                ``"evaluation"`` and :meth:`collected` as ``"collection"``.
        """
        start = time.perf_counter()
        try:
            yield
        finally:
            if self._start is not None:  # the loop's clock runs (not e.g. the base's evaluation)
                elapsed = time.perf_counter() - start
                self._phase_seconds[phase] = self._phase_seconds.get(phase, 0.0) + elapsed

    def collected(self, collector: Any) -> Iterator[Any]:
        """Iterates over ``collector``'s batches, timing each as the ``"collection"`` phase.

        Inside :meth:`loop`, no batch is collected once the run has taken its ``total_env_steps``:
        a finished run that is resumed collects nothing. A batch with a NaN or infinite entry
        (observation, reward, action...) raises :class:`NonFiniteError` before the loop sees it.
        A collector that raises (a worker died or raised; Ray raises for a lost actor), whose
        worker process is found dead (checked every second), or that delivers no batch within
        ``config.collector.stall_timeout_s`` seconds (a hung worker or env; ``null``: no limit)
        raises :class:`CollectorFault`; the partial batch is dropped.
        """
        try:
            iterator = iter(collector)
        except Exception as error:
            raise CollectorFault(f"the collector failed to start: {error}") from error
        while self._total_env_steps is None or self.counters["env_steps"] < self._total_env_steps:
            with self.timed("collection"), self._watching(collector, "delivered no batch"):
                batch = next(iterator, None)
            if batch is None:
                return
            for key, value in batch.items(include_nested=True, leaves_only=True):
                if value.is_floating_point():
                    name = "/".join(key) if isinstance(key, tuple) else key
                    self.check_finite(f"the collected {name!r}", value)
            yield batch

    def update_policy_weights(self, collector: Any) -> None:
        """``collector.update_policy_weights_()`` (the learner's weights to the collector's
        workers), watched as :meth:`collected` watches a batch: TorchRL waits for every worker's
        acknowledgement without a limit, so a dead or hung worker raises :class:`CollectorFault`
        here instead of blocking the run.

        Args:
            collector: the run's collector.
        """
        with self._watching(collector, "did not take the policy weights"):
            collector.update_policy_weights_()

    @property
    def _stall_timeout(self) -> float | None:
        collector = getattr(self.config, "collector", None)
        return getattr(collector, "stall_timeout_s", None) if collector is not None else None

    @contextlib.contextmanager
    def _watching(self, collector: Any, stalled: str) -> Iterator[None]:
        """A call into the collector: a stop signal then acts at once; from the main thread, an
        alarm checks every second that its worker processes live and that the call ends within
        the stall timeout. Any failure becomes a :class:`CollectorFault`."""
        timeout = self._stall_timeout
        watch = threading.current_thread() is threading.main_thread()
        if watch:
            started = time.monotonic()

            def check(signum, frame):
                if _collector_workers(collector) or (timeout is not None and time.monotonic() - started > timeout):
                    raise _CollectionDeadline

            previous = signal.signal(signal.SIGALRM, check)
            signal.setitimer(signal.ITIMER_REAL, _WATCH_PERIOD_S, _WATCH_PERIOD_S)
        self._waiting_for_collector = True
        try:
            yield
        except _CollectionDeadline:
            dead = _collector_workers(collector)
            if dead:
                raise CollectorFault(f"the collector failed: {dead.removesuffix('; ')}") from None
            raise CollectorFault(f"the collector {stalled} within {timeout:g} s (collector.stall_timeout_s): "
                                 f"a worker or an env hangs") from None
        except Exception as error:
            # the probe of Ray actors below may wait: neither the deadline nor a stop signal
            # turns this fault into another one meanwhile
            self._waiting_for_collector = False
            if watch:
                signal.setitimer(signal.ITIMER_REAL, 0)
            raise CollectorFault(f"the collector failed: {_collector_workers(collector)}"
                                 f"{_lost_ray_actors(collector)}{type(error).__name__}: {error}") from error
        finally:
            self._waiting_for_collector = False
            if watch:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, previous)

    def shutdown_collector(self, collector: Any, timeout: float = 60.0) -> None:
        """``collector.shutdown()``; after a :class:`CollectorFault` or a stop signal that
        interrupted a call into the collector, bounded by ``timeout`` seconds, then the worker
        processes killed (a collector with a dead or hung worker can wait forever on it).

        Args:
            collector: the run's collector.
            timeout (float, optional): seconds the shutdown may take after a fault. Defaults to
                ``60.0``.
        """
        if not self.collector_interrupted:
            collector.shutdown()
            _shutdown_weight_sync(collector)
            return

        def shutdown() -> None:
            try:
                collector.shutdown()
            except Exception as error:  # its workers are half gone: say so, then kill them
                log.warning("collector shutdown after the fault: %s: %s", type(error).__name__, error)

        thread = threading.Thread(target=shutdown, daemon=True)
        thread.start()
        thread.join(timeout)
        for child in multiprocessing.active_children():
            child.kill()
        _shutdown_weight_sync(collector)

    def phase_seconds(self) -> dict[str, float]:
        """Seconds per phase of :meth:`timed`, and ``"other"``: the rest of the loop's wall-clock."""
        seconds = dict(self._phase_seconds)
        seconds["other"] = max(self.wall_seconds - sum(seconds.values()), 0.0)
        return {phase: round(value, 3) for phase, value in seconds.items()}

    def check_finite(self, name: str, value: torch.Tensor) -> None:
        """Raises :class:`NonFiniteError` naming ``name`` unless ``value`` is all finite."""
        if not torch.isfinite(value).all():
            raise NonFiniteError(f"{name} is not finite at {self.counters['env_steps']} env steps")

    @property
    def evaluation_mode(self) -> str:
        """``config.eval.exploration``: ``"deterministic"`` (the default) or ``"random"``."""
        return self.config.eval.get("exploration", "deterministic")

    @property
    def configured_mode(self) -> str:
        """The sampling mode of :attr:`evaluation_mode`: ``"deterministic"`` or ``"stochastic"``."""
        return "stochastic" if self.evaluation_mode == "random" else "deterministic"

    def evaluate(self, env: EnvBase, policy: TensorDictModuleBase, *, chunk_len: int) -> dict:
        """Returns of one episode per env of ``env``, added to the learning curve.

        Under ``config.eval.exploration``: ``"deterministic"`` (a flow actor starts from x0 = 0,
        a TanhNormal actor takes its squashed mean) or ``"random"`` (stochastic sampling; give
        the bare actor, without an exploration module, for "no exploration noise").

        Args:
            env (EnvBase): the evaluation env (one episode per env).
            policy (TensorDictModuleBase): the policy.

        Keyword Args:
            chunk_len (int): env actions per step of ``env``.
        """
        with self.timed("evaluation"):
            returns = episode_returns(env, policy, max_env_steps=self.config.env.max_episode_steps,
                                      chunk_len=chunk_len, exploration_type=SAMPLING_MODES[self.configured_mode])
        return self._on_learning_curve(returns)

    def _on_learning_curve(self, returns: dict) -> dict:
        self.history.append({"env_steps": self.counters["env_steps"],
                             "wall_seconds": self.wall_seconds, **returns})
        return returns

    def evaluate_in_both_modes(self, env: EnvBase, policy: TensorDictModuleBase, *,
                               chunk_len: int) -> dict[str, dict]:
        """Returns of one episode per env in each sampling mode, on paired episodes.

        ``env`` (the final-evaluation env) is reseeded with the run's final-evaluation seed
        before each mode, so that the starting and the final policy, in either mode, start from
        the same states. The configured mode (``config.eval.exploration``) goes on the learning
        curve; the other one runs on a forked random state, so that it draws nothing the
        training would have drawn.

        Returns:
            ``{"deterministic": ..., "stochastic": ...}``, each as :func:`episode_returns`'s.
        """
        others = [mode for mode in SAMPLING_MODES if mode != self.configured_mode]
        with self.timed("evaluation"):
            by_mode = returns_by_sampling_mode(env, policy, seed=self.env_seed("final"),
                                               max_env_steps=self.config.env.max_episode_steps,
                                               chunk_len=chunk_len, own_random_state=others)
        self._on_learning_curve(by_mode[self.configured_mode])
        return by_mode

    def evaluate_base(self, env: EnvBase, policy: TensorDictModuleBase, *, chunk_len: int) -> dict:
        """The starting policy's returns (``extra["base_returns"]``), evaluated once per run.

        Both sampling modes are measured (:meth:`evaluate_in_both_modes`, in
        ``extra["base_returns_by_mode"]``); the configured one is returned. A resumed run keeps
        the returns measured when it started.
        """
        if "base_returns" not in self.extra:
            by_mode = self.extra["base_returns_by_mode"] = self.evaluate_in_both_modes(
                env, policy, chunk_len=chunk_len)
            returns = self.extra["base_returns"] = by_mode[self.configured_mode]
            log.info("%s starting policy: %s return %.4g +- %.4g (%d episodes; %s)", self.config.task,
                     self.evaluation_mode, returns["mean"], returns["std"], returns["episodes"],
                     ", ".join(f"{mode} {result['mean']:.4g}" for mode, result in by_mode.items()))
        return self.extra["base_returns"]

    def evaluate_periodically(self, env: EnvBase, policy: TensorDictModuleBase, *,
                              chunk_len: int) -> dict | None:
        """:meth:`evaluate` once every ``config.eval.every_env_steps`` env steps (else ``None``)."""
        if self._next_evaluation is None:
            raise ValueError("periodic evaluations need config.eval.every_env_steps, which this run's "
                             "config does not have.")
        if self.counters["env_steps"] < self._next_evaluation:
            return None
        self._next_evaluation += self.config.eval.every_env_steps
        returns = self.evaluate(env, policy, chunk_len=chunk_len)
        log.info("%d env steps: %s return %.4g +- %.4g", self.counters["env_steps"],
                 self.evaluation_mode, returns["mean"], returns["std"])
        return returns

    def log(self, metrics: dict[str, float], env_steps: int, batch: Any = None) -> None:
        """Logs ``metrics`` at the current env step and advances the progress bar.

        Args:
            metrics (dict): scalar metrics; ``train_return`` is added from ``batch``.
            env_steps (int): the env steps of this batch (the progress bar's advance).
            batch (TensorDictBase, optional): the collected batch; the mean return of the
                episodes that ended in it (``("next", "episode_reward")`` at ``done``, TorchRL's
                ``RewardSum``) is logged as ``train_return``.
        """
        if batch is not None:
            done = batch["next", "done"].squeeze(-1)
            if done.any():
                metrics["train_return"] = batch["next", "episode_reward"][done].mean().item()
        if self._logger is not None:
            try:
                for key, value in metrics.items():
                    self._logger.log_scalar(key, value, step=self.counters["env_steps"])
            except OSError as error:
                # a row torn by the failed write is dropped when the run resumes
                raise self._storage_fault(f"could not write the {type(self._logger).__name__}'s "
                                          f"log in {self.run_dir}", error) from error
        self._progress.update(env_steps)
        postfix = {"eval": f"{self.history[-1]['mean']:.0f}"} if self.history else {}
        if "train_return" in metrics:
            postfix["train"] = f"{metrics['train_return']:.0f}"
        self._progress.set_postfix(postfix, refresh=False)

    def interrupted(self, replay_buffer: Any = None) -> None:
        """Saves after a Ctrl-C and says how to continue."""
        path = self._save_at_exit(replay_buffer)
        log.warning("interrupted at %d env steps: wrote %s; resume=%s continues the run",
                    self.counters["env_steps"], path, path)

    # --- the end -----------------------------------------------------------------------------
    def finish(
        self,
        env: EnvBase,
        policy: TensorDictModuleBase,
        *,
        chunk_len: int,
        title: str,
        replay_buffer: Any = None,
        summary: Mapping[str, Any] | None = None,
    ) -> dict:
        """Final evaluation, checkpoint, ``summary.json``, ``learning_curve.png`` and the table.

        The run's starting returns are ``extra["base_returns"]`` (the first evaluation).

        Args:
            env (EnvBase): the final evaluation env.
            policy (TensorDictModuleBase): the trained policy.

        Keyword Args:
            chunk_len (int): env actions per step of ``env``.
            title (str): what ran, for the plot and the table, e.g. ``"RLDT"``.
            replay_buffer (optional): saved with the final checkpoint when given.
            summary (dict, optional): more entries of ``summary.json`` (e.g. ``method``).

        Returns:
            The summary.
        """
        saved_final = self.extra.get("final")
        if saved_final is not None and saved_final["env_steps"] == self.counters["env_steps"]:
            final = saved_final["returns"]  # a run resumed after its final evaluation was saved
        else:
            # the training is on disk before the final evaluation (minutes) runs
            self._save_at_exit(replay_buffer)
            final_by_mode = self.evaluate_in_both_modes(env, policy, chunk_len=chunk_len)
            final = final_by_mode[self.configured_mode]
            self.extra["final"] = {"env_steps": self.counters["env_steps"], "returns": final,
                                   "returns_by_mode": final_by_mode}
            self._save_at_exit(replay_buffer)
        base = self.extra["base_returns"]
        report = {
            "task": self.config.task, "seed": self.config.seed, **(summary or {}),
            "counters": self.counters, "base": base, "final": final,
            # both sampling modes, base and final on the same initial states
            "base_by_mode": self.extra.get("base_returns_by_mode"),
            "final_by_mode": self.extra["final"].get("returns_by_mode"),
            "history": self.history,
            "phase_seconds": self.phase_seconds(),
            # 1-minute load average when each session of the loop started, and at the end
            "load_average": [*self._load_averages, round(os.getloadavg()[0], 2)],
            "command": self.command,
        }
        try:
            atomic_write_text(json.dumps(report, indent=2) + "\n", self.run_dir / "summary.json")
            plot_learning_curve(self.history, self.run_dir / "learning_curve.png",
                                ylabel=f"{self.evaluation_mode} return",
                                title=f"{title} on {self.config.task} (seed {self.config.seed})")
        except OSError as error:
            self._exit_on_storage_fault(self._storage_fault(
                f"could not write the summary and the learning curve in {self.run_dir}", error))
        log.info(
            "\n%s (%s), %s return over %d episodes:\n"
            "  base       %8.4g +- %.4g\n  fine-tuned %8.4g +- %.4g   (%s)\n  run directory: %s",
            self.config.task, title, self.evaluation_mode, final["episodes"], base["mean"],
            base["std"], final["mean"],
            final["std"], ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in self.counters.items()),
            self.run_dir,
        )
        return report
