"""``--storage-path s3://...`` against a real S3 API on loopback (moto's server; boto3 and pyarrow,
which Ray's storage uses, find it through ``AWS_ENDPOINT_URL``): a sweep writes its checkpoints,
leaderboard and best adapters to the bucket; Ctrl-C mid-trial keeps everything and prints the resume
command; that command finishes the sweep from the bucket, the interrupted trial going on from its
checkpoint; and the export carries the marker that says it is whole. (Ctrl-C on a local folder takes
the same code path; a driver killed outright: tests/test_interrupt.py.)"""

from __future__ import annotations

import csv
import io
import json
import os
import shlex
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
SMALL = ["--preset", "smoke", "--max-tokens", str(BUDGET), "--eval-every", "4", "--scheduler", "none",
         "--checkpoint-minutes", "0"]  # a checkpoint at every report: the Ctrl-C lands between two


@pytest.fixture
def s3():
    import boto3

    from bench.checkpoints import s3_bucket  # moto's server on loopback, the AWS_* variables at it

    with s3_bucket("sweeps"):
        yield boto3.client("s3")


def _keys(client, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket="sweeps", Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def _reports(client) -> dict[str, list[dict]]:
    """trial id -> the reports in its result.json in the bucket."""
    out = {}
    for key in _keys(client, "runs/s3/"):
        parts = key.split("/")
        if len(parts) == 4 and parts[2].startswith("trial_") and parts[3] == "result.json":
            text = client.get_object(Bucket="sweeps", Key=key)["Body"].read().decode()
            out[parts[2].removeprefix("trial_")] = [json.loads(line) for line in text.splitlines() if line.strip()]
    return out


def _write_times(prefix: str) -> dict:
    """Each key's write time to the microsecond, read from the moto server's backend (it runs in this
    process)."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    bucket = s3_backends[DEFAULT_ACCOUNT_ID]["aws"].buckets["sweeps"]
    return {k: bucket.keys[k].last_modified for k in bucket.keys if k.startswith(prefix)}


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def test_a_sweep_on_s3_writes_resumes_and_exports_whole(s3, tiny_assets):
    args = [*SMALL, "--num-samples", "2", "--max-concurrent", "1", "--storage-path", "s3://sweeps/runs", "--name", "s3"]
    proc = subprocess.Popen([sys.executable, "sweeps/llama_finetome.py", *args], cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 600
    while not any("/checkpoint_" in k for k in _keys(s3, "runs/s3/")):
        assert proc.poll() is None and time.time() < deadline, "no checkpoint reached the bucket"
        time.sleep(1)
    time.sleep(2)  # mid-trial: the first checkpoint is in, the trial still training
    proc.send_signal(signal.SIGINT)  # Ctrl-C: what is in the bucket must be enough
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 130, out[-4000:]
    keys = _keys(s3, "runs/s3/")
    assert "runs/s3/tuner.pkl" in keys and "runs/s3/leaderboard.csv" in keys
    assert not [k for k in keys if "/best_adapters/" in k]  # nothing exported from a partial sweep
    # The trial that was training: its last report (as the bucket holds it) is not its final one.
    before = {t: reps for t, reps in _reports(s3).items() if reps and not reps[-1].get("finished")}
    assert len(before) == 1, {t: len(reps) for t, reps in _reports(s3).items()}
    (interrupted, reports_before), = before.items()
    resume = next(line for line in out.splitlines() if "resume with: " in line).split("resume with: ", 1)[1]
    cmd = shlex.split(resume)
    assert cmd[:2] == ["python", "sweeps/llama_finetome.py"] and cmd[-1] == "--resume", cmd
    assert "--name s3" in resume and "--storage-path s3://sweeps/runs" in resume

    r = subprocess.run([sys.executable, *cmd[1:]], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, (r.stdout[-4000:], r.stderr[-4000:])
    # The interrupted trial went on from its checkpoint: its steps never restart at an earlier one.
    reports = _reports(s3)[interrupted]
    steps = [rep["step"] for rep in reports]
    assert len(reports) > len(reports_before) and steps == sorted(set(steps)), steps
    assert reports[-1]["finished"] and reports[-1]["tokens_seen"] >= BUDGET
    keys = _keys(s3, "runs/s3/")
    board = s3.get_object(Bucket="sweeps", Key="runs/s3/leaderboard.csv")["Body"].read().decode()
    rows = list(csv.DictReader(io.StringIO(board)))
    assert len(rows) == 2 and all(row["status"] == "completed" for row in rows), rows
    for name in ("adapter_model.safetensors", "adapter_config.json", "README.md", "lorasweep.json"):
        assert f"runs/s3/best_adapters/rank_1/{name}" in keys, keys
    assert "runs/s3/best_adapters/EXPORT_COMPLETE" in keys
    # The marker went up after every other file of the export: the server's own write times (the API's
    # LastModified has one-second steps, too coarse to order them).
    written = _write_times("runs/s3/best_adapters/")
    assert written.pop("runs/s3/best_adapters/EXPORT_COMPLETE") > max(written.values())
    # the exported adapter loads back from the bucket as a PEFT folder
    meta = json.loads(s3.get_object(Bucket="sweeps", Key="runs/s3/best_adapters/rank_1/lorasweep.json")["Body"].read())
    assert meta["trial_id"] in {row["trial_id"] for row in rows}
    assert not list(Path(ROOT).glob("runs/s3*"))  # nothing went to a local folder of that name
