# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
"""Faults a run meets, tried for real: a collector worker or Ray actor killed, a worker stalled mid-run, a stop signal
while the collector hangs, a collector that raises, a non-finite observation."""
from __future__ import annotations

import atexit
import contextlib
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from tensordict import TensorDict
from test_rldt_gym import command, load_checkpoint, make_base

from torchrl_rldt.trainers import CollectorFault, NonFiniteError, TrainingRun
from torchrl_rldt.trainers.run import _exit_without_finalizing, _lost_ray_actors

MULTI_PROCESS = ["collector.num_workers=2", "checkpoint.every_batches=2", "checkpoint.save_replay_buffer=true",
                 "collector.total_env_steps=1000000"]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return make_base(tmp_path_factory.mktemp("base") / "hopper-tiny.pt")


def worker_pids(pid: int) -> list[int]:
    """The multiprocessing workers among the children of process ``pid`` (not its resource tracker)."""
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(child) for child in (task / "children").read_text().split()]
    return [child for child in children
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()]


def start_until_checkpoint(run_dir: Path, base: Path, *overrides: str) -> subprocess.Popen:
    process = subprocess.Popen(command(run_dir, base, *overrides), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while not (run_dir / "checkpoint.pt").exists():
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            pytest.fail(f"no checkpoint: {process.communicate()[0][-3000:]}")
        time.sleep(0.2)
    return process


def buffer_size_on_resume(run_dir: Path, base: Path, *overrides: str) -> int:
    """Resumes the run (``overrides``: its command's) for one more batch; returns the transitions
    its restored buffer held."""
    checkpoint = run_dir / "checkpoint.pt"
    env_steps = load_checkpoint(checkpoint)["counters"]["env_steps"]
    resumed = subprocess.run(command(run_dir, base, *overrides, *MULTI_PROCESS[:-1], f"resume={checkpoint}",
                                     f"collector.total_env_steps={env_steps + 1}"),
                             capture_output=True, text=True, timeout=300)
    output = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, output[-3000:]
    return int(re.search(r"\((\d+) transitions in the buffer\)", output).group(1))


@pytest.mark.parametrize("kind", ["multi_sync", "multi_async"])
def test_a_killed_worker_is_named_checkpointed_and_resumable(tmp_path, base, kind):
    run_dir = tmp_path / "run"
    process = start_until_checkpoint(run_dir, base, f"collector.kind={kind}", *MULTI_PROCESS)
    victim = worker_pids(process.pid)[0]
    killed_at = time.monotonic()
    subprocess.run(["kill", "-9", str(victim)], check=True)
    output, _ = process.communicate(timeout=120)
    elapsed = time.monotonic() - killed_at
    assert process.returncode == 1, output[-3000:]
    assert f"pid {victim}, exit code -9" in output, output[-3000:]
    assert f"resume={run_dir / 'checkpoint.pt'}" in output, output[-3000:]
    assert elapsed < 90, elapsed  # detected within seconds; the rest is the bounded shutdown
    checkpoint = load_checkpoint(run_dir / "checkpoint.pt")
    # every chunk counted was learnt and is in the buffer; none of the dead worker's partial batch
    assert buffer_size_on_resume(run_dir, base, f"collector.kind={kind}") == checkpoint["counters"]["chunks"]


def descendants(pid: int) -> list[int]:
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread or a child that ended meanwhile
            children += [int(child) for child in (task / "children").read_text().split()]
    return children + [grandchild for child in children for grandchild in descendants(child)]


def ray_collector_actors(pid: int) -> list[int]:
    """The processes of the collector actors (``ray::Collector``) of the local Ray cluster that
    the run of process ``pid`` started."""
    pids = []
    for child in descendants(pid):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{child}/cmdline").read_bytes().startswith(b"ray::Collector"):
                pids.append(child)
    return pids


def test_a_lost_ray_actor_is_named_checkpointed_and_resumable(tmp_path, base):
    run_dir = tmp_path / "run"
    process = start_until_checkpoint(run_dir, base, "collector.kind=ray", *MULTI_PROCESS)
    try:
        actors = ray_collector_actors(process.pid)
        assert len(actors) == 2, actors
        killed_at = time.monotonic()
        subprocess.run(["kill", "-9", str(actors[0])], check=True)
        output, _ = process.communicate(timeout=120)
        elapsed = time.monotonic() - killed_at
    finally:
        process.kill()
    assert process.returncode == 1, output[-3000:]
    # Ray reports the loss as ActorDiedError while a batch is collected or, when the weight
    # transfer notices it first, as a closed connection, with the lost actor named by the probe
    assert re.search(r"the collector failed: (ActorDiedError|lost: Ray actor \d; (?!.*Ray actor))", output), \
        output[-3000:]
    assert f"resume={run_dir / 'checkpoint.pt'}" in output, output[-3000:]
    assert elapsed < 90, elapsed
    assert not Path(f"/proc/{actors[1]}").exists()  # the cluster went with the run
    checkpoint = load_checkpoint(run_dir / "checkpoint.pt")
    assert buffer_size_on_resume(run_dir, base, "collector.kind=ray") == checkpoint["counters"]["chunks"]


def test_a_stalled_worker_ends_the_run_after_the_stall_timeout(tmp_path, base):
    run_dir = tmp_path / "run"
    process = start_until_checkpoint(run_dir, base, "collector.kind=multi_sync", "collector.stall_timeout_s=5",
                                     *MULTI_PROCESS)
    victim = worker_pids(process.pid)[0]
    try:
        subprocess.run(["kill", "-STOP", str(victim)], check=True)
        output, _ = process.communicate(timeout=120)
    finally:
        subprocess.run(["kill", "-9", str(victim)], check=False)
    assert process.returncode == 1, output[-3000:]
    assert "within 5 s (collector.stall_timeout_s)" in output, output[-3000:]
    chunks = load_checkpoint(run_dir / "checkpoint.pt")["counters"]["chunks"]
    assert buffer_size_on_resume(run_dir, base, "collector.kind=multi_sync") == chunks


def test_sigterm_while_the_collector_hangs_saves_at_once(tmp_path, base):
    run_dir = tmp_path / "run"
    process = start_until_checkpoint(run_dir, base, "collector.kind=multi_sync", "collector.stall_timeout_s=null",
                                     *MULTI_PROCESS)
    victims = worker_pids(process.pid)
    try:
        for victim in victims:  # the collector now waits forever
            subprocess.run(["kill", "-STOP", str(victim)], check=True)
        time.sleep(3)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=120)
    finally:
        for victim in victims:
            subprocess.run(["kill", "-9", str(victim)], check=False)
    assert process.returncode == 0, output[-3000:]
    assert "SIGTERM while waiting for the collector: stopping and saving now" in output, output[-3000:]
    assert "interrupted" in output, output[-3000:]
    chunks = load_checkpoint(run_dir / "checkpoint.pt")["counters"]["chunks"]
    assert buffer_size_on_resume(run_dir, base, "collector.kind=multi_sync") == chunks


def harness_run(tmp_path: Path, stall_timeout_s=None, backend=None) -> TrainingRun:
    cfg = OmegaConf.create({
        "task": "Hopper-v5", "seed": 0, "device": "cpu", "env": {"max_episode_steps": 100},
        "eval": {"every_env_steps": 10}, "collector": {"stall_timeout_s": stall_timeout_s},
        "logger": {"backend": backend, "progress_bar": False},
    })
    return TrainingRun("demo", cfg, output_dir=tmp_path, counters={"env_steps": 0})


def batch(observation: float = 0.0) -> TensorDict:
    return TensorDict({"observation": torch.full((4, 3), observation), "next": {"reward": torch.zeros(4, 1)}},
                      batch_size=[4])


class _DeadWorker:
    pid, exitcode = 4242, 1

    def is_alive(self):
        return False


class RaisingCollector:
    procs = [_DeadWorker()]

    def __iter__(self):
        yield batch()
        raise RuntimeError("env step failed in worker 0")


class HangingCollector:
    def __iter__(self):
        yield batch()
        time.sleep(60)
        yield batch()


@pytest.mark.parametrize("collector, message", [
    (RaisingCollector(), "dead: worker 0 (pid 4242, exit code 1); RuntimeError: env step failed in worker 0"),
    (HangingCollector(), "the collector delivered no batch within 0.5 s"),
])
def test_collector_faults_raise_after_the_good_batches(tmp_path, collector, message):
    run = harness_run(tmp_path, stall_timeout_s=0.5)
    received = []
    start = time.monotonic()
    with pytest.raises(CollectorFault, match=re.escape(message)):
        for item in run.collected(collector):
            received.append(item)
    assert len(received) == 1 and time.monotonic() - start < 10


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_non_finite_observation_never_reaches_the_loop(tmp_path, value):
    run = harness_run(tmp_path)
    received = []
    with pytest.raises(NonFiniteError, match="the collected 'observation' is not finite"):
        for item in run.collected([batch(), batch(value), batch()]):
            received.append(item)
    assert len(received) == 1


def test_a_collector_fault_in_the_loop_saves_and_exits_non_zero(tmp_path, caplog):
    run = harness_run(tmp_path)
    net = torch.nn.Linear(2, 2)
    run.track(net=net)
    with pytest.raises(SystemExit) as stop, run.loop(total_env_steps=100, description="demo"):
        for _ in run.collected(RaisingCollector()):
            run.counters["env_steps"] += 4
    # the run's process ends at exit without finalising (workers' clean-up can hang): not pytest's
    atexit.unregister(_exit_without_finalizing)
    assert stop.value.code == 1
    assert run.collector_interrupted
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert saved["counters"] == {"env_steps": 4}
    assert f"resume={tmp_path / 'checkpoint.pt'}" in caplog.text


def test_the_collector_shutdown_stops_its_weight_sync_before_interpreter_exit(tmp_path):
    """Left to its ``__del__`` at interpreter exit, TorchRL's shared-memory weight-sync scheme
    starts a thread that a finalising interpreter never runs: a finished multi_sync run hung
    after writing its summary. The harness shuts the schemes down with the collector."""
    import functools

    from tensordict.nn import TensorDictModule
    from torchrl.collectors import MultiSyncCollector
    from torchrl.envs import GymEnv

    policy = TensorDictModule(torch.nn.Linear(3, 1), in_keys=["observation"], out_keys=["action"])
    collector = MultiSyncCollector([functools.partial(GymEnv, "Pendulum-v1")] * 2, policy,
                                   frames_per_batch=20, total_frames=60)
    run = harness_run(tmp_path)
    for _ in run.collected(collector):
        run.update_policy_weights(collector)
    schemes = list(collector._weight_sync_schemes.values())
    assert schemes
    run.shutdown_collector(collector)
    assert all(getattr(scheme, "_is_shutdown", False) for scheme in schemes)


def test_the_probe_names_the_lost_ray_actor():
    # the weight transfer can notice a lost actor first, with an error that does not name it
    import ray

    @ray.remote(num_cpus=0)
    class Worker:
        def pid(self) -> int:
            return os.getpid()

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        actors = [Worker.remote() for _ in range(3)]
        pids = ray.get([actor.pid.remote() for actor in actors])
        assert _lost_ray_actors(SimpleNamespace(remote_collectors=actors)) == ""
        os.kill(pids[1], signal.SIGKILL)
        deadline = time.monotonic() + 30
        while Path(f"/proc/{pids[1]}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _lost_ray_actors(SimpleNamespace(remote_collectors=actors)) == "lost: Ray actor 1; "
        assert _lost_ray_actors(SimpleNamespace(remote_collectors=[])) == ""
        assert _lost_ray_actors(SimpleNamespace()) == ""  # not a Ray collector
    finally:
        ray.shutdown()
