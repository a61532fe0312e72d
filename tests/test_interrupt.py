"""A driver lost outright (SIGKILL, no handler runs) mid-sweep: --resume finishes the sweep without
rerunning finished trials, the killed trial going on from its checkpoint.

(Ctrl-C, its printed resume command and the resume: tests/test_s3.py, on object storage. Failure
isolation, bad rows and secrets are read from the shared sweep: tests/test_sweep.py.)
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
# 24k tokens: ~20 reports a trial, several seconds of training, so a Ctrl-C two seconds after the first
# checkpoint lands mid-trial (trials start within a second of each other since they reuse a process).
BUDGET = 24_000
# --checkpoint-minutes 0: a checkpoint at every report, so the kill and the crash below land between
# two checkpoints whatever the eval losses do (by default only improving reports get one)
SMALL = ["--preset", "smoke", "--max-tokens", str(BUDGET), "--eval-every", "4", "--scheduler", "none", "--final-round", "0",
         "--checkpoint-minutes", "0"]


def _env(**extra) -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **extra}


def _leaderboard(sweep_dir: Path) -> list[dict]:
    with open(sweep_dir / "leaderboard.csv", newline="") as f:
        return list(csv.DictReader(f))


def _start(tmp_path: Path, name: str, mlflow: Path | None = None, **popen):
    """A three-trial sweep started in the background: its args, process, folder and a deadline.
    ``mlflow``: a folder store it also logs to."""
    storage = tmp_path / "runs"
    args = [*SMALL, "--num-samples", "3", "--max-concurrent", "1", "--storage-path", str(storage), "--name", name,
            *(["--mlflow-tracking-uri", str(mlflow)] if mlflow else [])]
    proc = subprocess.Popen([sys.executable, "sweeps/llama_finetome.py", *args], cwd=ROOT, env=_env(), **popen)
    return args, proc, storage / name, time.time() + 600


# ----------------------------------------------------------------------------- driver loss


def _recorded_unfinished(sweep_dir: Path, finished: dict) -> list[tuple[str, str, list[str]]]:
    """(trial id, checkpoint named by Tune's newest state snapshot, checkpoints on disk) of each
    unfinished trial whose named checkpoint is on disk. Empty while the snapshot (written every few
    seconds, atomically or not at all) has not caught up with the files."""
    states = sorted(sweep_dir.glob("experiment_state-*.json"), key=lambda p: p.name)
    try:
        trial_data = json.loads(states[-1].read_text())["trial_data"] if states else []
    except (OSError, ValueError, KeyError):
        return []
    out = []
    for trial_json, runtime_json in trial_data:
        trial_id = json.loads(trial_json)["trial_id"]
        named = (json.loads(runtime_json).get("last_result") or {}).get("checkpoint_dir_name")
        on_disk = sorted(p.name for p in (sweep_dir / f"trial_{trial_id}").glob("checkpoint_*"))
        if trial_id not in finished and named and named in on_disk:
            out.append((trial_id, named, on_disk))
    return out


def _prune_recorded_checkpoints(sweep_dir: Path, finished: dict) -> list[str]:
    """Leave each unfinished trial as the race that Tune's pruning opens leaves it: the checkpoint
    that Tune's last state snapshot names is gone, a newer one is on storage. (Tune deletes one
    when a newer report pushes it out of num_to_keep, and saves its state only later; a driver
    killed in between left 1 resume in 3 failing.) The newest is renamed one step on when the
    snapshot names it; an older named one is deleted. Returns the trials changed."""
    import shutil

    changed = []
    for trial_id, named, on_disk in _recorded_unfinished(sweep_dir, finished):
        folder = sweep_dir / f"trial_{trial_id}"
        if named == on_disk[-1]:
            number = int(named.removeprefix("checkpoint_"))
            (folder / named).rename(folder / f"checkpoint_{number + 1:06d}")
        else:
            shutil.rmtree(folder / named)
        changed.append(trial_id)
    return changed


def _finished_trials(sweep_dir: Path) -> dict[str, int]:
    """trial id -> reports in its result.json, for trials whose last report says finished."""
    out = {}
    for result in sweep_dir.glob("trial_*/result.json"):
        lines = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        if lines and lines[-1].get("finished"):
            out[result.parent.name.removeprefix("trial_")] = len(lines)
    return out


def test_driver_sigkill_then_resume_finishes_without_rerunning_finished_trials(tiny_assets, tmp_path):
    """SIGKILL (no handler runs, unlike Ctrl-C) while the second of three trials trains; --resume
    then finishes the sweep: the finished trial is not run again, the killed one goes on from its
    checkpoint, and Optuna's study still holds the trial finished before the kill."""
    import pickle

    args, proc, sweep_dir, deadline = _start(tmp_path, "dk", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                             start_new_session=True, mlflow=tmp_path / "mlruns")
    try:
        # killed once a trial has finished and Tune's state snapshot names a checkpoint of one that has not
        # (the files alone run ahead of the snapshot, and a kill in between leaves nothing to resume from)
        while not ((done := _finished_trials(sweep_dir)) and _recorded_unfinished(sweep_dir, done)):
            assert proc.poll() is None and time.time() < deadline, "the sweep ended before Tune recorded the second trial's checkpoint"
            time.sleep(0.5)
        proc.kill()  # SIGKILL to the driver alone
        proc.wait(timeout=60)
    finally:
        try:  # its local Ray (started by the dead driver) goes at once too, as it would with the driver's machine
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    finished_before = _finished_trials(sweep_dir)
    assert (sweep_dir / "tuner.pkl").is_file()
    killed = _prune_recorded_checkpoints(sweep_dir, finished_before)
    assert killed, "no trial was killed mid-training"

    r = subprocess.run([sys.executable, "sweeps/llama_finetome.py", *args, "--resume"], cwd=ROOT, env=_env(),
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, (r.stdout[-4000:], r.stderr[-4000:])
    rows = _leaderboard(sweep_dir)
    assert len(rows) == 3 and all(row["status"] == "completed" for row in rows), ([row["status"] for row in rows], r.stdout[-3000:])
    after = _finished_trials(sweep_dir)
    for trial, n_reports in finished_before.items():  # not run again: no report added
        assert after[trial] == n_reports, (trial, n_reports, after[trial])
    for result in sweep_dir.glob("trial_*/result.json"):  # every trial's steps only go forward
        steps = [json.loads(line)["step"] for line in result.read_text().splitlines() if line.strip()]
        assert steps == sorted(set(steps)), (result.parent.name, steps)
    # Optuna's history survived: the study behind the searcher holds all three trials, finished
    states = sorted(sweep_dir.glob("searcher-state-*.pkl"))  # one per driver session, named by its start time
    study = pickle.loads(states[-1].read_bytes())["_ot_study"]
    assert sum(t.state.name == "COMPLETE" for t in study.trials) == 3, [t.state for t in study.trials]
    assert (sweep_dir / "best_adapters" / "rank_1" / "adapter_model.safetensors").is_file()
    # MLflow went on in the same runs: one parent, one child per trial, each with every report
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("lorasweep").experiment_id])
    [parent] = [run for run in runs if run.data.tags.get("lorasweep.kind") == "sweep"]
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "FINISHED" and len(runs) == 4
    assert sorted(run.data.tags["lorasweep.trial_id"] for run in children) == sorted(row["trial_id"] for row in rows)
    for run in children:
        assert run.info.status == "FINISHED"
        result = sweep_dir / f"trial_{run.data.tags['lorasweep.trial_id']}" / "result.json"
        tokens = {json.loads(line)["tokens_seen"] for line in result.read_text().splitlines() if line.strip()}
        # every report Tune kept; the killed trial may also hold one from past its resumed checkpoint
        assert tokens <= {m.step for m in client.get_metric_history(run.info.run_id, "eval_loss")}


# ----------------------------------------------------------------------------- failed trials


def test_retry_failed_runs_a_failed_trial_again_from_its_last_checkpoint(tiny_assets, tmp_path):
    """A trial that failed once (tests/faults.py crash_once: at step 5, after its report at step 4):
    --resume --retry-failed runs it again from that checkpoint to the end of its budget, its step
    counter going on (a plain --resume leaves a failed trial failed: Tune's resume_errored=False)."""
    args = ["--preset", "smoke", "--num-samples", "1", "--max-tokens", "6000", "--eval-every", "2", "--scheduler",
            "none", "--final-round", "0", "--checkpoint-minutes", "0", "--callbacks", "tests.faults:crash_once",
            "--storage-path", str(tmp_path / "runs"), "--name", "rf"]
    env = _env(LORASWEEP_TEST_FAULT_DIR=str(tmp_path))

    def run(*more):
        return subprocess.run([sys.executable, "sweeps/llama_finetome.py", *args, *more], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=600)

    sweep_dir = tmp_path / "runs" / "rf"
    first = run()
    assert [r["status"] for r in _leaderboard(sweep_dir)] == ["failed"], first.stdout[-2000:]
    assert "crash_once: injected failure at step 5" in first.stdout + first.stderr
    retried = run("--resume", "--retry-failed")
    assert retried.returncode == 0, (retried.stdout[-3000:], retried.stderr[-3000:])
    rows = _leaderboard(sweep_dir)
    assert [r["status"] for r in rows] == ["completed"], rows
    (result,) = sweep_dir.glob("trial_*/result.json")
    steps = [json.loads(line)["step"] for line in result.read_text().splitlines() if line.strip()]
    assert steps[:2] == [2, 4] and steps == sorted(set(steps)) and steps[-1] > 5, steps  # on from step 4
    assert json.loads(result.read_text().splitlines()[-1])["finished"]
