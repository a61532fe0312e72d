"""A real multi-node Ray cluster on loopback (``ray.cluster_utils.Cluster``): a head that offers no
CPU (as cluster.yaml's and the KubeRay manifest's heads) and worker nodes with their own CPUs, each
its own raylet. The sweep joins it with ``--address``, as on a real cluster.

Every report carries ``worker_nodes`` (the Ray node id of each rank, comma-separated), which is
how these tests see where a trial ran.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--preset", "smoke", "--eval-every", "4", "--scheduler", "none", "--cpus-per-worker", "1", "--final-round", "0"]


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def cluster():
    """A head with no CPU and its own dashboard (Ray Train's placement-group cleaner asks the state
    API whether a trial is alive: this cluster's, not another Ray's on this machine), and two worker
    nodes of 2 CPUs, started once for this module (the node-loss test, last, removes one). Every
    process of the cluster and the sweep import this checkout."""
    from ray.cluster_utils import Cluster

    from lorasweep.cluster import free_port

    port = free_port(0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_TRAIN_V2_ENABLED", "1")
        mp.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        mp.setenv("RAY_API_SERVER_ADDRESS", f"http://127.0.0.1:{port}")
        c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "dashboard_port": port,
                                                          "include_dashboard": True})
        try:
            c.add_node(num_cpus=2)
            c.add_node(num_cpus=2)
            c.wait_for_nodes()
            yield c
        finally:
            c.shutdown()


def _reports(sweep_dir: Path) -> dict[str, list[dict]]:
    out = {}
    for result in sweep_dir.glob("trial_*/result.json"):
        out[result.parent.name] = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
    return out


def _leaderboard(sweep_dir: Path) -> list[dict]:
    with open(sweep_dir / "leaderboard.csv", newline="") as f:
        return list(csv.DictReader(f))


def _nodes(report: dict) -> list[str]:
    return report["worker_nodes"].split(",")


def _trial_actor_nodes() -> dict[str, set[str]]:
    """Node ids of the trial-side actors this cluster has run, by class (the state API keeps dead
    actors): the Tune trial actor, its Ray Train controller and workers."""
    from ray.util.state import list_actors

    out: dict[str, set[str]] = {}
    for actor in list_actors(address=os.environ["RAY_API_SERVER_ADDRESS"], limit=10_000, detail=True):
        if actor.class_name in ("ImplicitFunc", "TrainController", "RayTrainWorker"):
            out.setdefault(actor.class_name, set()).add(actor.node_id)
    return out


def _sweep(args: list[str], **kw):
    return subprocess.run([sys.executable, "sweeps/llama_finetome.py", *args], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=900, **kw)


def test_trials_run_on_worker_nodes_as_one_placement_group_packed_or_spread(cluster, tiny_assets, tmp_path):
    workers, head = {n.node_id for n in cluster.worker_nodes}, cluster.head_node.node_id
    # spread: two trials, which also shows the sizing; pack: one trial is enough to see its workers share a node
    for placement, trials in (("spread", 2), ("pack", 1)):
        t0 = time.time()
        r = _sweep([*SMALL, "--address", cluster.address, "--num-samples", str(trials), "--max-concurrent", "8",
                    "--workers-per-trial", "2", "--placement", placement, "--max-tokens", "3000",
                    "--storage-path", str(tmp_path), "--name", placement])
        assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
        # 2 nodes x 2 CPUs hold 4 one-CPU workers: 2 two-worker trials at once, whatever --max-concurrent says
        assert f"{trials} trial{'s' * (trials > 1)}, {trials} at once, 2 worker(s)/trial" in r.stdout, r.stdout[-3000:]
        reports = _reports(tmp_path / placement)
        assert len(reports) == trials
        for trial, reps in reports.items():
            nodes = {n for rep in reps for n in _nodes(rep)}
            assert head not in nodes and nodes <= workers, (placement, trial, nodes)
            assert all(len(_nodes(rep)) == 2 for rep in reps)
            assert len(nodes) == (2 if placement == "spread" else 1), (placement, trial, nodes)
        print(f"\n[{placement}] {time.time() - t0:.0f}s: " +
              "; ".join(f"{t}: {sorted(n[:8] for n in _nodes(reps[-1]))}" for t, reps in reports.items()))
    # Nothing of a trial on the head: its trial actor asks for 1 byte of memory, which the 0-CPU head
    # has, and Ray Train starts the controller beside it (both ran on the head before Dec 3).
    placed = _trial_actor_nodes()
    assert set(placed) == {"ImplicitFunc", "TrainController", "RayTrainWorker"}, placed
    assert all(nodes <= workers for nodes in placed.values()), (head, placed)


def test_a_gpu_node_whose_torch_sees_no_cuda_refuses_the_sweep_in_seconds(cluster, tiny_assets, tmp_path, monkeypatch):
    """A node that offers Ray a GPU (on a real node Ray counts them by NVML) where torch sees no CUDA
    (here: this machine's CPU build of torch). --gpus-per-worker 1 trained the trial on the CPU and
    exited 0; now a 1-GPU task asks the node first and the sweep is refused with one line."""
    # the suite hides CUDA (conftest), and Ray refuses a GPU node whose CUDA_VISIBLE_DEVICES lists none
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    node = cluster.add_node(num_cpus=1, num_gpus=1)
    cluster.wait_for_nodes()
    try:
        t0 = time.time()
        r = _sweep([*SMALL, "--address", cluster.address, "--gpus-per-worker", "1", "--num-samples", "1",
                    "--storage-path", str(tmp_path), "--name", "nocuda"])
        took = time.time() - t0
    finally:
        cluster.remove_node(node)
    assert r.returncode == 2, (r.stdout[-3000:], r.stderr[-3000:])
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, r.stderr[-3000:]
    assert f"1 of 1 GPU node(s) ({node.address.rsplit(':', 1)[0]} ({node.node_id[:8]})): " in errors[0], errors
    assert "torch sees no CUDA device: torch 2.13" in errors[0], errors
    assert "CUDA_VISIBLE_DEVICES='0'" in errors[0] and "--gpus-per-worker 0" in errors[0], errors
    assert took < 60, took
    assert not (tmp_path / "nocuda").exists()  # refused before anything was written
    print(f"\n[no CUDA] refused in {took:.0f}s: {errors[0]}")


def test_node_loss_restarts_the_trial_on_another_node_from_its_checkpoint(cluster, tiny_assets, tmp_path):
    nodes = {n.node_id: n for n in cluster.worker_nodes}
    proc = subprocess.Popen([sys.executable, "sweeps/llama_finetome.py", *SMALL, "--address", cluster.address,
                             "--num-samples", "1", "--trial-retries", "2", "--max-tokens", "40000",
                             "--storage-path", str(tmp_path), "--name", "nodeloss"],
                            cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sweep_dir = tmp_path / "nodeloss"
    deadline = time.time() + 600
    while True:
        reports = next(iter(_reports(sweep_dir).values()), [])
        if len(reports) >= 2:
            break
        assert proc.poll() is None and time.time() < deadline, "the trial never reported twice"
        time.sleep(0.2)
    victim = _nodes(reports[-1])[0]
    t_kill = time.time()
    cluster.remove_node(nodes[victim], allow_graceful=False)  # its raylet and workers are gone
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-4000:]

    rows = _leaderboard(sweep_dir)
    assert len(rows) == 1 and rows[0]["status"] == "completed", rows
    reports = next(iter(_reports(sweep_dir).values()))
    steps = [rep["step"] for rep in reports]
    assert steps == sorted(set(steps)), steps  # the step counter went on; it never restarted at 0
    last_before = max(i for i, rep in enumerate(reports) if _nodes(rep) == [victim])
    after = reports[last_before + 1:]
    assert after and all(victim not in _nodes(rep) for rep in after), reports
    assert reports[-1]["finished"], reports[-1]  # its whole budget, on the node that was left
    print(f"\n[node loss] killed {victim[:8]} at step {reports[last_before]['step']}; resumed on "
          f"{_nodes(after[0])[0][:8]}, first report after at step {after[0]['step']}; "
          f"finished {time.time() - t_kill:.0f}s after the kill")
