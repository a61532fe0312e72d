"""A GPU sweep on a simulated autoscaling cluster (bench/fake_cluster.py): Ray's own autoscaler and
its fake multi-node provider, a 0-CPU head and cluster.yaml's ``gpu_worker`` node type (a g5.xlarge:
4 CPUs, 1 GPU that is a count Ray schedules by), none up at the start, at most 2, idle ones removed
after 6 s. The sweep joins it as on a real cluster: ``--address``, ``--autoscale``, and
``--gpus-per-worker -1``, which the driver resolves to 1 from the node types the head's autoscaler
can add. The trials' nodes are added while the sweep runs and removed after it.

The fake GPUs have no CUDA behind them: the trials train on the CPU only under the test switch
``LORASWEEP_TEST_CPU_FOR_FAKE_GPUS=1`` (trainers/devices.py), set in the sweep's environment;
without it a trial given a GPU refuses, as on a real node where torch sees no CUDA.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.fake_cluster import NodeWatch, autoscaling_cluster

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ["--preset", "smoke", "--eval-every", "4", "--scheduler", "none", "--final-round", "0", "--autoscale",
         "--gpus-per-worker", "-1", "--cpus-per-worker", "1", "--max-tokens", "3000", "--no-baseline"]
SWITCH = "LORASWEEP_TEST_CPU_FOR_FAKE_GPUS"


def _sweep(fc, tmp_path: Path, name: str, trials: int, switch: bool) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != SWITCH}
    env.update({"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **({SWITCH: "1"} if switch else {})})
    return subprocess.run([sys.executable, "sweeps/llama_finetome.py", *SWEEP, "--address", fc.address,
                           "--num-samples", str(trials), "--max-concurrent", str(trials),
                           "--storage-path", str(tmp_path), "--name", name],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)


def _report_nodes(sweep_dir: Path) -> set[str]:
    return {node for result in sweep_dir.glob("trial_*/result.json") for line in result.read_text().splitlines()
            if line.strip() for node in json.loads(line)["worker_nodes"].split(",")}


def test_a_gpu_sweep_scales_the_cluster_up_from_zero_and_back_down(tiny_assets, tmp_path):
    with autoscaling_cluster(max_workers=2, idle_timeout_minutes=0.1) as fc:
        assert fc.worker_nodes() == []  # scaled to zero: nothing can run a trial yet
        with NodeWatch() as watch:
            t0 = time.time()
            refused = _sweep(fc, tmp_path, "noswitch", 1, switch=False)
            ok = _sweep(fc, tmp_path, "scaled", 2, switch=True)
            took = time.time() - t0
            down_s = fc.wait_for_workers(0, timeout_s=90)
            time.sleep(3 * watch.every_s)  # the watch's own poll sees the last node go too (seen racing in CI)
        # Without the switch: the autoscaler added a node, and the trial there refused its fake GPU
        assert refused.returncode != 0, refused.stdout[-3000:]
        assert "a GPU trial but torch sees no CUDA device" in refused.stdout + refused.stderr, refused.stdout[-3000:]
        # With it: the driver took 1 GPU per worker from the autoscaler's node types, the cluster grew for the trials
        assert ok.returncode == 0, (ok.stdout[-3000:], ok.stderr[-3000:])
        assert "2 trials, 2 at once, 1 worker(s)/trial (1 CPU, 1 GPU each)" in ok.stdout, ok.stdout[-3000:]
        ran_on = _report_nodes(tmp_path / "scaled")
        assert ran_on and ran_on <= set(watch.nodes), (ran_on, watch.nodes)
        for node in ran_on:
            assert watch.nodes[node]["resources"]["GPU"] == 1 and "lorasweep_worker" in watch.nodes[node]["resources"]
        assert 1 <= len(watch.nodes) <= 2 + 1, watch.nodes  # the refused trial's node may have gone before
        # ... and every node it added is gone again once idle
        assert all(n["down"] is not None for n in watch.nodes.values()), watch.nodes
        refusal = next(line for line in (refused.stdout + refused.stderr).splitlines() if "torch sees no CUDA" in line)
        print(f"\n[autoscale] {len(watch.nodes)} node(s) added and removed; sweeps {took:.0f}s, "
              f"scaled to zero {down_s:.0f}s after; {watch.gpu_seconds(time.time()):.0f} GPU-s provisioned\n"
              f"[autoscale] without the switch: {refusal.strip()[:400]}")
