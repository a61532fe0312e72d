"""A simulated autoscaling GPU cluster on this machine, with cluster.yaml's worker node types.

Ray's fake multi-node provider (``ray.autoscaler._private.fake_multi_node``, what Ray's own autoscaler
tests run on) starts each node the autoscaler launches as one more raylet on this machine, with the
resources of its node type: a GPU there is a count that Ray schedules by, with no CUDA behind it.
The autoscaler is Ray's own (the v1 monitor, as ``ray up`` starts it on the head), reading a config
whose worker node types are cluster.yaml's: their names, ``min_workers``/``max_workers`` and custom
resources (``lorasweep_worker``), with the CPU, GPU and accelerator type that ``ray up`` fills in
from the instance type (``INSTANCE_TYPES``). The head offers 0 CPUs, as cluster.yaml's.

What is not a cloud's: a node is up ~2 s after the autoscaler asks (an EC2 GPU instance takes
minutes), and ``idle_timeout_minutes`` is shortened (cluster.yaml: 10) to fit trials of seconds.
Trials that train for real on these nodes need the test switch ``LORASWEEP_TEST_CPU_FOR_FAKE_GPUS=1``
(trainers/devices.py); without it a trial given a fake GPU refuses, as on a node without CUDA.

Ray's ``ray.cluster_utils.AutoscalingCluster`` wraps the same provider but reads an example config
that the ray wheel does not ship, and stops with ``ray stop --force``, every Ray on the machine
included; this starts and stops only its own.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import yaml
from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_TYPE

ROOT = Path(__file__).resolve().parents[1]

# What `ray up` fills in on AWS for cluster.yaml's instance types (its node types give only custom resources).
INSTANCE_TYPES = {
# (Memory too, which the fake provider cannot declare: its nodes get this machine's.)
    "g5.xlarge": {"CPU": 4, "GPU": 1, "accelerator_type:A10G": 1},
    "g5.12xlarge": {"CPU": 48, "GPU": 4, "accelerator_type:A10G": 1},
}


def node_types(cluster_yaml: Path = ROOT / "cluster.yaml", keep: tuple[str, ...] | None = None,
               max_workers: int | None = None) -> dict:
    """cluster.yaml's worker node types as the fake provider takes them: each
    worker type with its instance type's resources; ``keep`` names the worker types to offer (all by
    default), ``max_workers`` replaces each one's cap (cluster.yaml's spending cap is 4 nodes)."""
    config = yaml.safe_load(cluster_yaml.read_text())
    head = config["head_node_type"]
    out = {}
    for name, t in config["available_node_types"].items():
        if name == head or (keep is not None and name not in keep):
            continue
        instance = t["node_config"]["InstanceType"]
        cap = t.get("max_workers", config.get("max_workers", 1)) if max_workers is None else max_workers
        out[name] = {"resources": {**INSTANCE_TYPES[instance], **(t.get("resources") or {})}, "node_config": {},
                     "min_workers": t.get("min_workers", 0), "max_workers": cap}
    return out


def fake_config(gcs_address: str, workers: dict, max_workers: int, idle_timeout_minutes: float) -> dict:
    """The autoscaler config: ``workers`` (``node_types``) on the fake provider, a 0-CPU head (under
    the provider's own name for its type: it tags the head so, and would see another as a stray)."""
    head = FAKE_HEAD_NODE_TYPE
    return {
        "cluster_name": "lorasweep-fake", "max_workers": max_workers,
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "gcs_address": gcs_address},
        "available_node_types": {head: {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0}, **workers},
        "head_node_type": head, "auth": {}, "upscaling_speed": 1.0, "idle_timeout_minutes": idle_timeout_minutes,
        "docker": {}, "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [],
    }


def _kill_nodes_of(gcs_address: str) -> int:
    """Fake nodes still up after the head is gone (the provider starts them without a reaper): every
    process on this machine started for ``gcs_address``. Returns how many were signalled."""
    killed = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if any(a in (f"--gcs-address={gcs_address}", f"--gcs_address={gcs_address}") for a in args):
            try:
                os.kill(int(pid), signal.SIGKILL)
                killed += 1
            except OSError:
                pass
    return killed


class FakeCluster:
    def __init__(self, cluster, gcs_address: str, config_path: str, api: str):
        self.cluster, self.gcs_address, self.config_path, self.api = cluster, gcs_address, config_path, api
        self.address = cluster.address

    def worker_nodes(self) -> list[dict]:
        """Alive nodes other than the head, as ``ray.nodes()`` gives them (asked from a short-lived
        driver of its own when none is connected)."""
        import ray

        return [n for n in ray.nodes() if n["Alive"] and "node:__internal_head__" not in n["Resources"]]

    def wait_for_workers(self, count: int, timeout_s: float) -> float:
        """Seconds until exactly ``count`` worker nodes are alive; raises TimeoutError."""
        t0 = time.time()
        while time.time() - t0 < timeout_s:
            if len(self.worker_nodes()) == count:
                return time.time() - t0
            time.sleep(0.5)
        raise TimeoutError(f"{len(self.worker_nodes())} worker node(s) after {timeout_s:.0f}s, not {count}")


class NodeWatch:
    """When each worker node was up, seen by polling ``ray.nodes()`` every ``every_s`` seconds in a
    thread: ``{node id: {"resources", "up", "down", "held"}}`` (``down`` None while it is up;
    ``held``: [(time, GPUs reserved by an actor or a placement group)] at each poll). Provisioned
    GPU-seconds are the sum of GPUs x (down - up), within one poll of the truth at each end."""

    def __init__(self, every_s: float = 0.5):
        import threading

        self.every_s, self.nodes, self._stop = every_s, {}, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import ray
        from ray._private.state import available_resources_per_node  # the GCS's view; no public API

        while not self._stop.is_set():
            now, alive = time.time(), set()
            available = available_resources_per_node()
            for n in ray.nodes():
                if n["Alive"] and "node:__internal_head__" not in n["Resources"]:
                    alive.add(n["NodeID"])
                    seen = self.nodes.setdefault(n["NodeID"], {"resources": dict(n["Resources"]), "up": now,
                                                               "down": None, "held": []})
                    gpus = seen["resources"].get("GPU", 0)
                    if n["NodeID"] in available:  # a resource all in use is left out of its node's dict
                        seen["held"].append((now, gpus - available[n["NodeID"]].get("GPU", 0)))
            for node_id, seen in self.nodes.items():
                if seen["down"] is None and node_id not in alive:
                    seen["down"] = now
            self._stop.wait(self.every_s)

    def __enter__(self) -> "NodeWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def gpu_seconds(self, until: float) -> float:
        return sum(n["resources"].get("GPU", 0) * ((n["down"] or until) - n["up"]) for n in self.nodes.values())


@contextmanager
def autoscaling_cluster(keep: tuple[str, ...] | None = ("gpu_worker",), max_workers: int = 2,
                        idle_timeout_minutes: float = 0.1):
    """A head (0 CPU, its own dashboard: Ray Train's placement-group cleaner asks its state API) and
    Ray's autoscaler with cluster.yaml's worker node types, none of them up. Yields a ``FakeCluster``;
    this process is connected to it (``ray.init``) for the duration. Every node is stopped on exit."""
    import ray
    from ray._private.services import get_node_ip_address
    from ray.cluster_utils import Cluster

    from lorasweep.cluster import free_port

    port, dash = free_port(0), free_port(0)
    gcs = f"{get_node_ip_address()}:{port}"
    workers = node_types(keep=keep, max_workers=max_workers)
    config = fake_config(gcs, workers, max_workers, idle_timeout_minutes)
    fd, path = tempfile.mkstemp(prefix="lorasweep-fake-", suffix=".yaml")
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(config))
    api = f"http://127.0.0.1:{dash}"
    env = {"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_API_SERVER_ADDRESS": api,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    saved = {k: os.environ.get(k) for k in (*env, "CUDA_VISIBLE_DEVICES")}
    os.environ.update(env)  # the head's processes inherit them, the autoscaler and the nodes it starts too
    # Ray refuses a node of n GPUs whose CUDA_VISIBLE_DEVICES lists fewer (the test suite hides CUDA)
    os.environ.pop("CUDA_VISIBLE_DEVICES", None)
    cluster = None
    try:
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "gcs_server_port": port, "autoscaling_config": path,
            "dashboard_port": dash, "include_dashboard": True})
        ray.init(address=cluster.address)
        yield FakeCluster(cluster, gcs, path, api)
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        _kill_nodes_of(gcs)
        os.unlink(path)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
