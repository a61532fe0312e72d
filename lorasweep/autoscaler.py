"""What an autoscaling cluster can add: the worker node types of the autoscaler's config, read on the
head (``--autoscale``). ``trial_resources`` takes the GPUs of ``--gpus-per-worker -1`` from them, the
head check (``cluster.trial_host``) their ``lorasweep_worker`` resource, the dry run their GPU type.
"""

from __future__ import annotations

import os

# Where `ray up` leaves the autoscaler's config on the head: the cluster YAML with each node type's
# `resources` filled in from its instance type (AWS: CPU, memory, GPU, accelerator_type).
BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"


def addable_node_types(text: str) -> dict[str, dict]:
    """``{node type: resources}`` of the worker node types an autoscaler config (YAML or JSON) can
    add: the head's type and types capped at 0 workers are left out."""
    import yaml

    config = yaml.safe_load(text) or {}
    head = config.get("head_node_type")
    return {name: dict(t.get("resources") or {}) for name, t in (config.get("available_node_types") or {}).items()
            if name != head and t.get("max_workers", config.get("max_workers", 1)) != 0}


def monitor_config(gcs_address: str, proc: str = "/proc") -> str | None:
    """The ``--autoscaling-config`` of the autoscaler (Ray's monitor process) serving ``gcs_address``
    on this node: where a head started by hand (``ray start --head --autoscaling-config=...``), or a
    second cluster on the same machine, keeps it. None without one."""
    try:
        pids = [p for p in os.listdir(proc) if p.isdigit()]
    except OSError:  # no /proc (macOS)
        return None
    for pid in pids:
        try:
            with open(os.path.join(proc, pid, "cmdline"), "rb") as f:
                args = f.read().decode(errors="replace").split("\0")
        except OSError:  # gone, or not ours to read
            continue
        if not any(a.endswith("monitor.py") for a in args) or f"--gcs-address={gcs_address}" not in args:
            continue
        for a in args:
            if a.startswith("--autoscaling-config="):
                return a.split("=", 1)[1]
    return None


def _read_node_types(path: str, gcs_address: str = "") -> dict[str, dict] | None:
    """On the head node: its autoscaler config's node types (``path``, else the config its monitor was
    started with); None without one. Only the resources leave the head (the config also names the
    SSH key and the provider's settings)."""
    full = os.path.expanduser(path)
    if not os.path.isfile(full):
        full = monitor_config(gcs_address) if gcs_address else None
        if not full or not os.path.isfile(full):
            return None
    try:
        with open(full, encoding="utf-8") as f:
            return addable_node_types(f.read())
    except Exception:  # unreadable or not a cluster config: as good as none
        return None


def with_addable_node_types(cluster: dict, path: str = BOOTSTRAP_CONFIG) -> dict:
    """``cluster`` plus ``node_types``, what the autoscaler can add (None when its config is not on
    the head), read by a 0-CPU task pinned to the head, wherever the driver runs. Their accelerator
    types join ``accelerators`` for the dry run's estimate."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    head = next((n for n in ray.nodes() if n.get("Alive") and "node:__internal_head__" in n["Resources"]), None)
    if head is None:
        return {**cluster, "node_types": None}
    read = ray.remote(num_cpus=0, max_retries=0)(_read_node_types)
    pin = NodeAffinitySchedulingStrategy(head["NodeID"], soft=False)
    gcs = ray.get_runtime_context().gcs_address
    node_types = ray.get(read.options(scheduling_strategy=pin).remote(path, gcs), timeout=120)
    accelerators = {k for r in (node_types or {}).values() for k in r if k.startswith("accelerator_type:")}
    return {**cluster, "node_types": node_types, "accelerators": sorted({*cluster["accelerators"], *accelerators})}
