"""Driver scale: 1,000 trials of a trivial trainable through the sweep's own driver (Optuna TPE over
the flagship's six knobs, ASHA on training tokens, Tune's experiment state and result files) on a
local Ray: the driver process's CPU seconds per trial and its peak memory.

The trainable reports three times (the objective and ``tokens_seen``, so ASHA stops some), as a
trial would, and trains nothing. CPU time is the driver process's user + system time over
``tuner.fit()``, every thread included (Ray's core worker, gRPC, Tune, Optuna); memory is its peak
resident set. Ratio: CPU seconds per trial / 0.05 s (<= 1.0 is met); the memory target (< 2 GB) is
in ``raw`` and the detail.
"""

from __future__ import annotations

import math
import resource
import tempfile
import time

from bench.figure import Figure

TITLE = "driver scale"
TARGET = ("<=", 1.0)
CPU_S_PER_TRIAL = 0.05
MEMORY_GB = 2.0


def trivial(config: dict, secrets=None) -> None:
    from ray import tune

    budget = config["trial"]["settings"]["max_tokens"]
    # a made-up objective with a best learning rate, so TPE has something to find
    loss = 1.0 + abs(math.log10(config["learning_rate"]) + 3.0) / 3 + 0.1 / config["r"]
    for i in (1, 2, 3):
        tune.report({"eval_loss": loss + 0.5 / i, "tokens_seen": budget * i // 3, "finished": i == 3})


def run(device: str, quick: bool) -> Figure:
    import ray

    from lorasweep.cluster import cluster_resources, concurrency, init_ray, trial_resources
    from lorasweep.resolve import resolve
    from lorasweep.tuner import build_tuner
    from sweeps.llama_finetome import RECIPE

    trials = 100 if quick else 1000
    with tempfile.TemporaryDirectory() as tmp:
        sweep = resolve(RECIPE, ["--preset", "smoke", "--num-samples", str(trials), "--max-concurrent", "8",
                                        "--cpus-per-worker", "0.25", "--storage-path", tmp, "--name", "scale"])
        init_ray(sweep.options)
        try:
            cluster = cluster_resources()
            res = trial_resources(sweep.options, cluster, sweep)
            tuner = build_tuner(sweep, res, concurrency(sweep.options, res, cluster), trainable=trivial)
            before, t0 = resource.getrusage(resource.RUSAGE_SELF), time.time()
            grid = tuner.fit()
            after, wall = resource.getrusage(resource.RUSAGE_SELF), time.time() - t0
            errors = sum(r.error is not None for r in grid)
        finally:
            ray.shutdown()
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    per_trial = cpu / trials
    peak_gb = after.ru_maxrss / 2**20  # Linux: KiB
    raw = {"trials": trials, "errors": errors, "driver_cpu_s": round(cpu, 2), "driver_cpu_s_per_trial": round(per_trial, 4),
           "target_cpu_s_per_trial": CPU_S_PER_TRIAL, "peak_driver_memory_gb": round(peak_gb, 3),
           "target_memory_gb": MEMORY_GB, "memory_met": peak_gb < MEMORY_GB, "wall_s": round(wall, 1),
           "trials_per_s": round(trials / wall, 2)}
    return Figure(ratio=per_trial / CPU_S_PER_TRIAL, target=TARGET, raw=raw,
                  detail=f"{per_trial * 1000:.1f} ms driver CPU per trial (target < {CPU_S_PER_TRIAL * 1000:.0f}), "
                         f"peak {peak_gb:.2f} GB (target < {MEMORY_GB:g}); {trials} trials in {wall:.0f} s")
