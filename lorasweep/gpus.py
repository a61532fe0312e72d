"""Before a GPU sweep: does torch see CUDA where the trials will run?

Ray offers a node's GPUs by NVML; a trial there can still find no CUDA (a CPU build of torch, a
driver older than the wheel's CUDA). Each trial refuses to train so (trainers/devices.py); this
asks every GPU node once, up front, so that the sweep is refused in seconds with one line instead
of each trial failing after its start-up.
"""

from __future__ import annotations

from common.errors import ConfigError
from lorasweep import log
from lorasweep.preflight import node_label


def check_attention(settings, res) -> None:
    """flash_attention_2 on a sweep without GPUs: refused before any Ray work."""
    if settings.attn_implementation == "flash_attention_2" and res.gpus <= 0:
        from trainers.devices import flash_attention_line

        raise ConfigError(flash_attention_line("it runs on CUDA GPUs only and the trials get none "
                                               "(--gpus-per-worker 0, or a cluster without GPUs)"))


def check_gpu_nodes(settings, res, timeout_s: float = 180) -> None:
    """For a GPU sweep (``res.gpus`` > 0): a 1-GPU task on each live GPU node runs
    ``trainers.devices.cuda_report`` as a trial would see it (Ray sets its CUDA_VISIBLE_DEVICES);
    a node without CUDA, or without what ``--attn-implementation flash_attention_2`` needs, refuses
    the sweep. Nodes an autoscaler has yet to add are left to their trials' own checks."""
    if res.gpus <= 0:
        return
    from trainers.devices import cpu_for_fake_gpus

    if cpu_for_fake_gpus():
        log.warn("LORASWEEP_TEST_CPU_FOR_FAKE_GPUS=1: the GPU nodes are not asked for CUDA and GPU trials train on "
                 "the CPU (a test switch for simulated clusters; unset it on a real one)")
        return
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from trainers.devices import cuda_report, flash_attention_line, flash_attention_problem, no_cuda_line

    nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("GPU", 0) >= 1]
    probe = ray.remote(num_gpus=1, num_cpus=0, max_retries=0)(cuda_report)
    refs = {node_label(n): probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
            .remote() for n in nodes}
    reports = {}
    for label, ref in refs.items():
        try:
            reports[label] = ray.get(ref, timeout=timeout_s)
        except (ray.exceptions.RayError, TimeoutError) as e:  # busy or going away: its trials check for themselves
            log.warn(f"could not check CUDA on GPU node {label} ({type(e).__name__})")
    lacking = {label: r for label, r in reports.items() if not r["available"]}
    if lacking:
        first = next(iter(lacking.values()))
        raise ConfigError(f"{len(lacking)} of {len(nodes)} GPU node(s) ({', '.join(lacking)}): {no_cuda_line(first)}")
    if settings.attn_implementation == "flash_attention_2":
        problems = {label: p for label, r in reports.items() if (p := flash_attention_problem(r))}
        if problems:
            raise ConfigError(f"{len(problems)} of {len(nodes)} GPU node(s) ({', '.join(problems)}): "
                              f"{flash_attention_line(next(iter(problems.values())))}")
