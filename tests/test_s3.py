"""``--storage-path s3://...`` against a real S3 API on loopback (moto's server; boto3 and pyarrow,
which Ray's storage uses, find it through ``AWS_ENDPOINT_URL``): a sweep writes its checkpoints,
leaderboard and best adapters to the bucket, is interrupted, resumes from the bucket, and its
export carries the marker that says it is whole."""

from __future__ import annotations

import csv
import io
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
SMALL = ["--preset", "smoke", "--max-tokens", str(BUDGET), "--eval-every", "4", "--scheduler", "none"]


@pytest.fixture
def s3():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    _, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        import boto3

        client = boto3.client("s3")
        client.create_bucket(Bucket="sweeps")
        try:
            yield client
        finally:
            server.stop()


def _keys(client, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket="sweeps", Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


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
    time.sleep(2)
    proc.send_signal(signal.SIGINT)  # interrupted mid-sweep: what is in the bucket must be enough
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 130, out[-4000:]
    assert "runs/s3/tuner.pkl" in _keys(s3, "runs/s3/")

    r = subprocess.run([sys.executable, "sweeps/llama_finetome.py", *args, "--resume"], cwd=ROOT, env=_env(),
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, (r.stdout[-4000:], r.stderr[-4000:])
    keys = _keys(s3, "runs/s3/")
    board = s3.get_object(Bucket="sweeps", Key="runs/s3/leaderboard.csv")["Body"].read().decode()
    rows = list(csv.DictReader(io.StringIO(board)))
    assert len(rows) == 2 and all(row["status"] == "completed" for row in rows), rows
    for name in ("adapter_model.safetensors", "adapter_config.json", "README.md", "lorasweep.json"):
        assert f"runs/s3/best_adapters/rank_1/{name}" in keys, keys
    assert "runs/s3/best_adapters/EXPORT_COMPLETE" in keys
    written = {o["Key"]: o["LastModified"] for o in s3.list_objects_v2(Bucket="sweeps", Prefix="runs/s3/best_adapters/")["Contents"]}
    assert written.pop("runs/s3/best_adapters/EXPORT_COMPLETE") >= max(written.values())  # the marker went up last
    # the exported adapter loads back from the bucket as a PEFT folder
    meta = json.loads(s3.get_object(Bucket="sweeps", Key="runs/s3/best_adapters/rank_1/lorasweep.json")["Body"].read())
    assert meta["trial_id"] in {row["trial_id"] for row in rows}
    assert not list(Path(ROOT).glob("runs/s3*"))  # nothing went to a local folder of that name
