"""Checkpoints' share of a trial's wall time, on the flagship's smoke preset with the sweep's storage
on S3 (a real S3 API on loopback: moto's server, as tests/test_s3.py), side by side:

  before  a checkpoint (adapter, optimizer, scheduler and RNG state) at every report, uploaded before
          training goes on: ``--checkpoint-minutes 0 --no-background-upload``, what every trial did
          before issue 24
  after   the defaults: a checkpoint at the trial's best report so far, its last, and one at least
          every 10 minutes (``--checkpoint-minutes``), the other reports metrics only; each report
          handed to Ray from a thread of its own while training goes on (trainers/reporting.py
          ``BackgroundReporter``)

One trial per side, the same fixed knobs, 2 CPUs, reports every 10 steps (the preset's); the two
sides alternate (before, after, before, after) since this machine's speed drifts. Each report
carries ``checkpoint_s``: the trial's seconds so far writing checkpoints and handing them over (the
upload itself, before: Tune uploads before ``report`` returns; after: only a wait for room behind
earlier uploads); the share is that over the trial's wall time from the start
of its train function to its last report (the last checkpoint's upload, after it, is not counted on
either side). Goal (issue 24): <= 5%. The figure is the after side's share.

    python bench/run.py --only checkpoints          # 248 s on 2 cores (Dec 4, beside the QA bench)
    python bench/run.py --only checkpoints --quick
"""

from __future__ import annotations

import statistics
from contextlib import contextmanager

from bench.figure import Figure
from common.environ import scoped_env
from bench.sweep_util import KNOBS, fixed_space, run_sweep

TITLE = "checkpoint share of trial time"
HOW = "seconds writing + uploading checkpoints / trial wall seconds, smoke preset on S3 (moto)"
TARGET = ("<=", 0.05)


@contextmanager
def s3_bucket(name: str):
    """A moto S3 server on loopback with one bucket; the AWS_* variables point boto3 and pyarrow at
    it in this process and in the Ray workers it starts."""
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    _, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    try:
        with scoped_env(env):
            boto3.client("s3").create_bucket(Bucket=name)
            yield f"s3://{name}"
    finally:
        server.stop()


def share(reports: list[dict]) -> dict:
    last = reports[-1]
    started = last["first_step_at"] - last["setup_s"]
    wall = last["reported_at"] - started
    checkpoints = sum(bool(r.get("checkpoint_dir_name")) for r in reports)
    return {"share": last["checkpoint_s"] / wall, "checkpoint_s": last["checkpoint_s"], "wall_s": round(wall, 1),
            "reports": len(reports), "checkpoints": checkpoints}


def run(device: str, quick: bool) -> Figure:
    from sweeps.llama_finetome import RECIPE

    tokens = 12_000 if quick else 40_000
    sides = {"before": ["--checkpoint-minutes", "0", "--no-background-upload"], "after": []}
    measured: dict[str, list[dict]] = {side: [] for side in sides}
    with s3_bucket("bench") as bucket:
        for i in range(1 if quick else 2):
            for side, flags in sides.items():
                argv = ["--preset", "smoke", "--num-samples", "1", "--cpus-per-worker", "2",
                        "--gpus-per-worker", "1" if device == "cuda" else "0", "--scheduler", "none",
                        "--max-tokens", str(tokens), "--no-baseline", "--final-round", "0", *flags,
                        "--storage-path", f"{bucket}/runs", "--name", f"{side}{i}", *fixed_space(KNOBS)]
                swept = run_sweep(RECIPE, argv)
                measured[side].append(share(next(iter(swept["reports"].values()))))
    median = {side: statistics.median(m["share"] for m in runs) for side, runs in measured.items()}
    def run_line(m: dict) -> str:
        return f"{m['checkpoint_s']:.1f} of {m['wall_s']:.0f} s, {m['checkpoints']}/{m['reports']} reports with one"

    # the same tokens on both sides: the wall times compare directly (an upload in the background
    # still takes CPU from training on a small machine; this ratio shows it where the share cannot)
    wall = {side: statistics.median(m["wall_s"] for m in runs) for side, runs in measured.items()}
    detail = "; ".join(f"{side}: {median[side]:.1%} ({', '.join(map(run_line, runs))})" for side, runs in measured.items())
    detail += f"; trial wall after / before {wall['after'] / wall['before']:.2f}"
    return Figure(ratio=round(median["after"], 4), target=TARGET,
                  raw={"runs": measured, "median_share": median, "median_wall_s": wall},
                  detail=detail)
