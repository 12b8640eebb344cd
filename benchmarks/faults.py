"""The fault table: every fault of the reliability section tried for real on ``examples/rldt_gym.py``.

Each case starts the Hopper-v5 job (the shipped base, 8 envs, a checkpoint with its replay buffer
every ``--checkpoint-every`` batches), waits for its first checkpoint, injects the fault into the
real processes, and records what the run did (exit code, the line it logged), how long after the
fault it logged it and ended, and what was lost: the env steps the run had logged beyond the
checkpoint it left (a batch under way when a collector fails is never counted, so it is not
there), and whether that checkpoint resumes with exactly its buffer. Cases of bad input record
how long the refusal took. Writes ``<out>/faults.md`` and ``<out>/faults.json``.

    python benchmarks/faults.py                 # every case, about 10 minutes on 2 cores
    python benchmarks/faults.py --cases worker_killed_multi_sync full_disk

The full-disk case mounts a small tmpfs under the run (it needs root; elsewhere it is reported
as not run).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
FRAMES_PER_BATCH = 8 * 8 * 4  # env.num_envs x collector.chunks_per_env x chunk length
LOG_TIME = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]\[[^]]*\]\[(ERROR|WARNING)\] - (.*)$", re.M)


def job(run_dir: Path, *overrides: str, script: str = "rldt_gym.py") -> list[str]:
    return [sys.executable, str(EXAMPLES / script), f"hydra.run.dir={run_dir}", "logger.progress_bar=false",
            "num_threads=1", "eval.every_env_steps=1000000", "eval.episodes=2", "eval.final_episodes=2",
            "checkpoint.save_replay_buffer=true", "collector.total_env_steps=10000000", *overrides]


class Run:
    """The job in a process of its own session (so that its workers can be found and stopped)."""

    def __init__(self, run_dir: Path, *overrides: str, checkpoint_every: int):
        self.run_dir = run_dir
        self.checkpoint = run_dir / "checkpoint.pt"
        self.overrides = [f"checkpoint.every_batches={checkpoint_every}", *overrides]
        self.process = subprocess.Popen(job(run_dir, *self.overrides), stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, start_new_session=True)

    def wait_for_checkpoints(self, count: int = 1, timeout: float = 600) -> None:
        deadline, seen, last = time.monotonic() + timeout, 0, None
        while seen < count:
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.kill()
                raise RuntimeError(f"no checkpoint in {self.run_dir}: {self.process.communicate()[0][-2000:]}")
            stamp = self.checkpoint.stat().st_mtime_ns if self.checkpoint.exists() else None
            if stamp is not None and stamp != last:
                seen, last = seen + 1, stamp
            time.sleep(0.05)

    def descendants(self, pid: int | None = None) -> list[int]:
        pid = self.process.pid if pid is None else pid
        children = []
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                children += [int(child) for child in (task / "children").read_text().split()]
            except OSError:
                continue
        return children + [grandchild for child in children for grandchild in self.descendants(child)]

    def processes(self, prefix: bytes) -> list[int]:
        found = []
        for pid in self.descendants():
            try:
                if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(prefix):
                    found.append(pid)
            except OSError:
                continue
        return found

    def workers(self) -> list[int]:
        return [pid for pid in self.descendants()
                if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]

    def finish(self, timeout: float = 300) -> tuple[int, str]:
        try:
            output, _ = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            output, _ = self.process.communicate()
            return None, output  # hung: the case failed
        return self.process.returncode, output

    def kill(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def logged_env_steps(run_dir: Path) -> int:
    """The largest env step in the run's CSV log (the env steps it reached)."""
    steps = [0]
    for path in run_dir.rglob("scalars/*.csv"):
        with open(path) as handle:
            for row in csv.reader(handle):
                try:
                    steps.append(int(float(row[0])))
                except (ValueError, IndexError):
                    continue
    return max(steps)


def resumes_exactly(run: Run, run_dir: Path | None = None) -> bool:
    """The checkpoint resumes (from ``run_dir``, a copy of the run's, when given), and the buffer it
    restores holds the transitions it counts."""
    run_dir = run.run_dir if run_dir is None else run_dir
    checkpoint = run_dir / "checkpoint.pt"
    state = torch.load(checkpoint, weights_only=True)
    env_steps, chunks = state["counters"]["env_steps"], state["counters"]["chunks"]
    overrides = [o for o in run.overrides if not o.startswith(("collector.total_env_steps", "collector.stall"))]
    try:
        resumed = subprocess.run(job(run_dir, *overrides, f"resume={checkpoint}",
                                     f"collector.total_env_steps={env_steps + 1}"),
                                 capture_output=True, text=True, timeout=300, start_new_session=True)
    except subprocess.TimeoutExpired:  # the resumed run hung: not resumable as it should be
        return False
    found = re.search(r"\((\d+) transitions in the buffer\)", resumed.stdout + resumed.stderr)
    return resumed.returncode == 0 and found is not None and int(found.group(1)) == chunks


def first_log_line(output: str, after: float) -> tuple[str, float | None]:
    """The first ERROR or WARNING line the run logged after ``after`` (a time.time()), and when."""
    for stamp, _, message in LOG_TIME.findall(output):
        when = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
        if when >= after - 0.01:
            return message.strip(), when - after
    return "", None


def training_fault(name: str, workdir: Path, inject, *overrides: str, checkpoint_every: int,
                   checkpoints_before: int = 1) -> dict:
    run = Run(workdir / name, *overrides, checkpoint_every=checkpoint_every)
    try:
        run.wait_for_checkpoints(checkpoints_before)
        injected = time.time()
        inject(run)
        code, output = run.finish()
    finally:
        run.kill()
    ended = time.time() - injected
    line, detected = first_log_line(output, injected)
    saved = torch.load(run.checkpoint, weights_only=True)["counters"]["env_steps"]
    return {
        "exit_code": code, "logged": line.splitlines()[0][:300] if line else "(nothing)",
        "detected_s": None if detected is None else round(detected, 1), "ended_s": round(ended, 1),
        "checkpoint_env_steps": saved,
        "env_steps_lost": max(logged_env_steps(run.run_dir) - saved, 0),
        "resumes_exactly": resumes_exactly(run),
    }


def kill_first(kind: str, signum: int = signal.SIGKILL):
    def inject(run: Run) -> None:
        targets = run.processes(b"ray::Collector") if kind == "ray" else run.workers()
        os.kill(targets[0], signum)
    return inject


def stop_workers_then_sigterm(run: Run) -> None:
    for pid in run.workers():
        os.kill(pid, signal.SIGSTOP)
    time.sleep(2)
    run.process.send_signal(signal.SIGTERM)


def kills_during_checkpoints(workdir: Path, kills: int) -> dict:
    """The training process killed (SIGKILL) at spread moments of a run that writes a checkpoint
    every batch, so that kills land inside writes; each time the checkpoint must resume exactly."""
    outcomes = []
    for index in range(kills):
        run = Run(workdir / f"kill-{index}", checkpoint_every=1)
        try:
            run.wait_for_checkpoints(2 + index % 3)
            time.sleep(0.037 * index)  # a different moment of the next write each time
            injected = time.time()
            run.kill()
            run.process.communicate()
            ended = time.time() - injected
        finally:
            run.kill()
        in_write = any(run.run_dir.glob(".checkpoint.pt.*.tmp")) or len(list(run.run_dir.glob("checkpoint.pt.buffer-*"))) > 1
        saved = torch.load(run.checkpoint, weights_only=True)["counters"]["env_steps"]
        outcomes.append({"in_write": in_write, "env_steps_lost": max(logged_env_steps(run.run_dir) - saved, 0),
                         "resumes_exactly": resumes_exactly(run), "ended_s": round(ended, 1)})
    return {
        "exit_code": -9, "logged": f"(killed {kills} times; {sum(o['in_write'] for o in outcomes)} kills "
                                   f"left a write unfinished)",
        "detected_s": None, "ended_s": max(o["ended_s"] for o in outcomes),
        "env_steps_lost": max(o["env_steps_lost"] for o in outcomes),
        "resumes_exactly": all(o["resumes_exactly"] for o in outcomes), "kills": outcomes,
    }


def full_disk(workdir: Path) -> dict:
    """The run directory on a tmpfs with room for one checkpoint and its buffer (28.5 MB) but not
    for the next one's buffer beside it (needs root to mount). After the fault, the run directory is
    copied to a disk with space (what a user does after freeing space) and resumed from there."""
    mount = workdir / "small-disk"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=45m", "tmpfs", str(mount)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        return {"not_run": f"mounting a tmpfs failed ({mounted.stderr.strip()}); run as root"}
    try:
        run = Run(mount / "run", checkpoint_every=2)
        try:
            run.wait_for_checkpoints(1)
            injected = time.time()
            code, output = run.finish(timeout=900)
        finally:
            run.kill()
        line, detected = first_log_line(output, injected)
        saved = torch.load(run.checkpoint, weights_only=True)["counters"]["env_steps"]
        leftovers = sorted(path.name for path in run.run_dir.iterdir()
                           if path.name.startswith((".checkpoint", "checkpoint.pt.buffer")))
        return {
            "exit_code": code, "logged": line.splitlines()[0][:300] if line else "(nothing)",
            "detected_s": None, "ended_s": None, "checkpoint_env_steps": saved,
            "env_steps_lost": max(logged_env_steps(run.run_dir) - saved, 0),
            "left_in_the_directory": leftovers,
            "resumes_exactly": resumes_exactly(run, Path(shutil.copytree(run.run_dir, workdir / "freed"))),
        }
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def refused(command: list[str], prepare=None) -> dict:
    if prepare is not None:
        prepare()
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    text = result.stderr + result.stdout
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    at = next((index for index in reversed(range(len(lines)))
               if any(word in lines[index] for word in ("Error", "error", "refuse", "not a", "pass ", "Run it"))), None)
    reason = "" if at is None else " ".join(lines[at: at + 2] if lines[at].endswith(":") else lines[at: at + 1])
    return {"exit_code": result.returncode, "logged": reason.strip()[:300],
            "detected_s": round(time.monotonic() - started, 1), "ended_s": round(time.monotonic() - started, 1),
            "env_steps_lost": 0, "resumes_exactly": None}


def bad_inputs(workdir: Path) -> dict[str, dict]:
    truncated = workdir / "truncated" / "checkpoint.pt"
    text_data = workdir / "notes.npz"
    manifest = workdir / "manifest.json"

    def write_truncated():
        truncated.parent.mkdir(parents=True)
        source = next(workdir.glob("worker_killed_multi_sync/checkpoint.pt"), None)
        content = source.read_bytes() if source else b"PK\x03\x04" + bytes(4096)
        truncated.write_bytes(content[: len(content) // 2])

    pretrain = [sys.executable, str(EXAMPLES / "pretrain_flow.py"), f"hydra.run.dir={workdir / 'pretrain'}",
                f"out.checkpoint={workdir / 'base.pt'}", "train.steps=10"]
    return {
        "truncated checkpoint (resume=)": refused(job(workdir / "resumed", f"resume={truncated}"), write_truncated),
        "data file that is not an .npz archive": refused(
            pretrain + [f"data.source={text_data}", f"out.manifest={workdir / 'unused.json'}"],
            lambda: text_data.write_text("observations,actions\n")),
        "broken manifest": refused(pretrain + [f"out.manifest={manifest}"], lambda: manifest.write_text("{oops")),
        "data=<file> (the data block replaced)": refused(pretrain + ["data=data/hopper-v5-medium.npz"]),
        "Meta-World task under the Gym config": refused(job(workdir / "mw", "task=MetaWorld/Assembly-v3")),
        "mistyped value": refused(job(workdir / "typo", "schedule.actor_steps=-3")),
    }


def non_finite_observation() -> dict:
    """A NaN in the observations of a collected batch: the harness check (in process)."""
    from omegaconf import OmegaConf
    from tensordict import TensorDict

    from torchrl_rldt.trainers import NonFiniteError, TrainingRun

    cfg = OmegaConf.create({"task": "Hopper-v5", "seed": 0, "device": "cpu", "env": {"max_episode_steps": 100},
                            "eval": {"every_env_steps": 10}, "collector": {"stall_timeout_s": None},
                            "logger": {"backend": None, "progress_bar": False}})
    run = TrainingRun("demo", cfg, output_dir=Path(tempfile.mkdtemp()))
    batches = [TensorDict({"observation": torch.zeros(256, 11)}, [256]) for _ in range(3)]
    batches[1]["observation"][17, 3] = float("nan")
    received = 0
    started = time.monotonic()
    try:
        for _ in run.collected(batches):
            received += 1
    except NonFiniteError as error:
        line = str(error)
    return {"exit_code": "NonFiniteError", "logged": line, "detected_s": round(time.monotonic() - started, 3),
            "ended_s": None, "env_steps_lost": 0, "resumes_exactly": None,
            "batches_that_reached_the_loop": received}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--checkpoint-every", type=int, default=4, help="batches between checkpoints")
    parser.add_argument("--kills", type=int, default=6, help="kills of the training process during checkpoints")
    parser.add_argument("--cases", nargs="+", default=None)
    args = parser.parse_args()
    every = args.checkpoint_every
    workdir = Path(tempfile.mkdtemp(prefix="faults-"))
    multi = ["collector.num_workers=2"]
    cases = {
        "worker_killed_multi_sync": lambda: training_fault(
            "worker_killed_multi_sync", workdir, kill_first("multi_sync"), "collector.kind=multi_sync", *multi,
            checkpoint_every=every),
        "worker_killed_multi_async": lambda: training_fault(
            "worker_killed_multi_async", workdir, kill_first("multi_async"), "collector.kind=multi_async", *multi,
            checkpoint_every=every),
        "ray_actor_killed": lambda: training_fault(
            "ray_actor_killed", workdir, kill_first("ray"), "collector.kind=ray", *multi, checkpoint_every=every),
        "worker_stalled": lambda: training_fault(
            "worker_stalled", workdir, kill_first("multi_sync", signal.SIGSTOP), "collector.kind=multi_sync",
            "collector.stall_timeout_s=30", *multi, checkpoint_every=every),
        "sigterm_while_workers_hang": lambda: training_fault(
            "sigterm_while_workers_hang", workdir, stop_workers_then_sigterm, "collector.kind=multi_sync", *multi,
            checkpoint_every=every),
        "sigterm_while_training": lambda: training_fault(
            "sigterm_while_training", workdir, lambda run: run.process.send_signal(signal.SIGTERM),
            checkpoint_every=every),
        "run_killed_during_checkpoints": lambda: kills_during_checkpoints(workdir, args.kills),
        "full_disk": lambda: full_disk(workdir),
        "nan_observation": non_finite_observation,
        "bad_inputs": lambda: bad_inputs(workdir),
    }
    selected = args.cases or list(cases)
    unknown = set(selected) - set(cases)
    if unknown:
        raise SystemExit(f"unknown cases {sorted(unknown)}; choose from {list(cases)}")
    results = {"checkpoint_every_batches": every, "frames_per_batch": FRAMES_PER_BATCH,
               "load_average_start": round(os.getloadavg()[0], 2), "cases": {}}
    for name in selected:
        started = time.monotonic()
        outcome = cases[name]()
        if name == "bad_inputs":
            results["cases"].update(outcome)
        else:
            results["cases"][name] = outcome
        print(f"{name}: {time.monotonic() - started:.0f} s", flush=True)
    results["load_average_end"] = round(os.getloadavg()[0], 2)
    shutil.rmtree(workdir, ignore_errors=True)

    def cell(value):
        return "-" if value is None else str(value).replace("|", "/")

    rows = []
    for name, outcome in results["cases"].items():
        if "not_run" in outcome:
            rows.append(f"| {name.replace('_', ' ')} | not run: {outcome['not_run']} | | | | |")
            continue
        rows.append(f"| {name.replace('_', ' ')} | exit {cell(outcome['exit_code'])}: {cell(outcome['logged'])} | "
                    f"{cell(outcome['detected_s'])} | {cell(outcome['ended_s'])} | {cell(outcome['env_steps_lost'])} | "
                    f"{cell(outcome['resumes_exactly'])} |")
    table = "\n".join([
        f"Faults injected into real runs of `examples/rldt_gym.py` (Hopper-v5, shipped base, 8 envs, "
        f"{FRAMES_PER_BATCH} env steps a batch, a checkpoint with the replay buffer every {every} batches) and "
        f"bad inputs. 1-minute load average {results['load_average_start']} at the start, "
        f"{results['load_average_end']} at the end (2 CPU cores).", "",
        "| fault | what the run did (exit code: first line logged) | detected after (s) | ended after (s) "
        "| env steps lost | checkpoint resumes with its buffer |",
        "| --- | --- | --- | --- | --- | --- |", *rows, "",
        "Env steps lost: logged by the run beyond the checkpoint it left (a batch under way when a "
        "collector fails is dropped uncounted). Detected: the fault's first logged line; ended: the "
        "process's exit, both from the injection.", "",
        "Made by `" + " ".join(["python benchmarks/faults.py", *sys.argv[1:]]) + "`.",
    ])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "faults.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (args.out / "faults.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
