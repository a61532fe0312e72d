"""The Ray cluster a sweep runs on: starting or joining Ray, what the cluster offers, what each
trial asks for, and how many trials fit at once."""

from __future__ import annotations

import dataclasses
import logging
import os

from common.errors import ConfigError
from lorasweep.recipe import ResolvedSweep, SweepOptions
from trainers.config import HEAD_RESOURCE, Resources


def init_ray(options: SweepOptions) -> None:
    import ray

    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    if ray.is_initialized():
        return
    # Ray's own chatter off unless --verbose: its INFO lines, the workers' output forwarded to this
    # console (a trial's goes to its folder: Tune's log_to_file), and the token-auth notice (the
    # dashboard line below says it once, with how to sign in).
    quiet = {} if options.verbose else {"logging_level": logging.WARNING, "log_to_driver": False}
    if not options.verbose:
        logging.getLogger("ray._private.authentication").setLevel(logging.ERROR)
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # "A new study created in memory"
    if options.address:
        ray.init(address=options.address, runtime_env={"env_vars": job_env()}, **quiet)
    else:
        start_local_ray(options.dashboard_host, job_env(), **quiet)


def start_local_ray(dashboard_host: str = "127.0.0.1", env: dict | None = None, port: int | None = None,
                    **init_kwargs) -> str:
    """A new Ray instance of our own (address="local": never a `ray start` cluster on this machine;
    --address auto joins one), its dashboard on ``dashboard_host`` and every process pointed at that
    dashboard, this driver too: Ray Train asks the state API whether a trial is alive, and asking
    another local Ray's gets the trial's workers removed. ``env``: more of the processes'
    environment. Returns the state API's address."""
    import ray

    port = port or free_port()
    api = f"http://{'127.0.0.1' if dashboard_host in ('0.0.0.0', '::') else dashboard_host}:{port}"
    ray.init(address="local", dashboard_host=dashboard_host, dashboard_port=port, include_dashboard=None,
             runtime_env={"env_vars": {"RAY_API_SERVER_ADDRESS": api, **(env or {})}}, **init_kwargs)
    os.environ["RAY_API_SERVER_ADDRESS"] = api  # the driver's own state-API calls, likewise
    return api


def job_env() -> dict[str, str]:
    """The environment every Ray process of the sweep gets (``ray.init``'s runtime env): the
    dashboard's Train page (``dashboard.env_vars``), and TUNE_FUNCTION_THREAD_TIMEOUT_S: before Tune
    reuses a trial's process for the next trial it waits this long for the stopped trial's thread
    (Ray's default 2 s), then fails the NEXT trial ("Trainable runner reuse requires reset_config()";
    bench/quality.py's chat sweep on a loaded 2-core machine lost one so, Dec 3). A user's value wins.
    The simulated clusters' test switch (``trainers.devices.CPU_FOR_FAKE_GPUS``) travels too, when set."""
    from lorasweep.dashboard import env_vars
    from trainers.devices import CPU_FOR_FAKE_GPUS

    switch = {CPU_FOR_FAKE_GPUS: "1"} if os.environ.get(CPU_FOR_FAKE_GPUS) == "1" else {}
    return {**env_vars(), "TUNE_FUNCTION_THREAD_TIMEOUT_S": os.environ.get("TUNE_FUNCTION_THREAD_TIMEOUT_S", "600"),
            **switch}


def free_port(preferred: int | None = None) -> int:
    """Ray's usual dashboard port when it is free (a second sweep on the machine gets another).
    ``preferred``: default ``$LORASWEEP_DASHBOARD_PORT``, else 8265; 0 takes any free port, which is
    what sweeps started together want (both may find 8265 free, and the one whose dashboard binds
    second runs without one: the test suite's sweeps on two workers did)."""
    import socket

    if preferred is None:
        preferred = int(os.environ.get("LORASWEEP_DASHBOARD_PORT") or 8265)
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise OSError("no free port for the Ray dashboard")


# Declared by cluster.yaml's and the KubeRay manifest's worker nodes (1000 each: room for any number
# of trials); a trial's processes ask for one unit, so they never land on the head.
WORKER_RESOURCE = "lorasweep_worker"


def cluster_resources() -> dict:
    import ray

    alive = [n for n in ray.nodes() if n.get("Alive")]
    nodes = [n["Resources"] for n in alive]
    return {
        "cpu": sum(n.get("CPU", 0) for n in nodes),
        "gpu": sum(n.get("GPU", 0) for n in nodes),
        "nodes": nodes,
        "accelerators": sorted({k for n in nodes for k in n if k.startswith("accelerator_type:")}),
        "head_id": next((n["NodeID"] for n in alive if HEAD_RESOURCE in n["Resources"]), None),
    }


def trial_host(cluster: dict) -> tuple[dict[str, float], str]:
    """What keeps a trial's processes off the head node, which runs the driver, Optuna and the data
    audit: the Tune trial actor (and so its Ray Train controller, which Ray Train starts on the trial
    actor's node), its workers and the scoring tasks. cluster.yaml's head has 0 CPUs, but a trial
    actor asks only for 1 byte of memory (lorasweep/tuner.py says why), which the head still has.
    Returns (resources to add to each request, the node id to keep off):
    - worker nodes (live, or node types the autoscaler adds) declare ``lorasweep_worker``: one unit
      of it. A resource, not a label, because Ray's v1 autoscaler scales up for resources and ignores
      label selectors;
    - else, when nodes other than the head are up: the head's node id (a label selector excludes it);
    - else (a one-node Ray: the head is all there is, as on a laptop): nothing."""
    offered = [*cluster.get("nodes", []), *(cluster.get("node_types") or {}).values()]
    if any(WORKER_RESOURCE in r for r in offered):
        return {WORKER_RESOURCE: 1.0}, ""
    head = cluster.get("head_id")
    if head and any(HEAD_RESOURCE not in r for r in cluster.get("nodes", [])):
        return {}, head
    return {}, ""


def trial_resources(options: SweepOptions, cluster: dict, sweep: "ResolvedSweep | None" = None) -> Resources:
    """``--gpus-per-worker -1``: 1 when the cluster has GPUs (or, with ``--autoscale``, when a node
    type it can add has them: ``cluster["node_types"]``), else 0. With ``sweep``, also whether its
    trials train in the Tune trial's own process (``in_trial_process``)."""
    gpus = options.gpus_per_worker
    if gpus < 0:
        gpus = 1.0 if cluster["gpu"] > 0 else 0.0
        if not gpus and options.autoscale:
            gpus = _gpus_from_node_types(cluster.get("node_types"))
    host_resources, not_on_node = trial_host(cluster)
    res = Resources(workers=options.workers_per_trial, gpus=gpus, cpus=options.cpus_per_worker,
                    retries=options.trial_retries, placement=options.placement.upper(),
                    host_resources=host_resources, not_on_node=not_on_node)
    if sweep is not None:
        res.in_trial_process = trains_in_trial_process(sweep, res)
    return res


def trains_in_trial_process(sweep: "ResolvedSweep", res: Resources) -> bool:
    """One worker, and no trial of the space that needs DeepSpeed (``trainers.config.for_workers``:
    ``offload``, or a full fine-tune in half precision, i.e. on a GPU): Ray Train would only add a
    controller and a worker process per trial. ``--ray-train`` keeps it anyway."""
    from trainers.config import for_workers

    if res.workers != 1 or sweep.options.ray_train:
        return False
    settings = sweep.settings
    # what pick_precision gives a worker: a GPU's half precision (bf16 or fp16: the same to for_workers)
    precision = settings.precision if settings.precision != "auto" else ("bf16" if res.gpus > 0 else "fp32")
    methods = {settings.method, *getattr(sweep.space.params.get("method"), "values", ())}
    return all(for_workers(dataclasses.replace(settings, method=m), 1, precision)[0].zero_stage == 0 for m in methods)


def _gpus_from_node_types(node_types: dict[str, dict] | None) -> float:
    if node_types and any(r.get("GPU", 0) > 0 for r in node_types.values()):
        return 1.0
    # A node type whose resources Ray could not fill in (no CPU count: its provider does not
    # autodetect them) may well be a GPU type, so only a complete picture without GPUs means CPUs.
    unknown = [name for name, r in (node_types or {}).items() if "CPU" not in r]
    if node_types and not unknown:
        return 0.0
    why = ("no ~/ray_bootstrap_config.yaml on the head" if node_types is None
           else "its autoscaler config lists no node type to add" if not node_types
           else f"its autoscaler config gives no resources for node type(s) {', '.join(unknown)}")
    raise ConfigError(f"`--gpus-per-worker` is -1 (auto) but with --autoscale the GPUs of the nodes the cluster will "
                      f"add are unknown ({why}); pass --gpus-per-worker 1 (or 0 to train on CPUs)")


def concurrency(options: SweepOptions, res: Resources, cluster: dict) -> int:
    """Trials that fit at once, from the worker slots of every node. An autoscaling cluster grows
    to fit the trials asked for: ``--max-concurrent`` of them (cluster.yaml starts with no GPU
    node, which would cap the sweep at one trial at a time)."""
    from lorasweep.preflight import worker_slots

    wanted = min(options.max_concurrent, options.num_samples)
    if options.autoscale:
        return wanted
    return max(1, min(wanted, sum(worker_slots(n, res) for n in cluster["nodes"]) // res.workers))
