"""GPU-slot utilisation: of the GPU-seconds a sweep holds, the share its trials spend in their
trainable. 128 trials of 1 GPU on 32 GPU slots (a local Ray that declares 32 GPUs: Ray schedules by
the number, nothing touches CUDA) through the sweep's own driver: the flagship's Optuna TPE over its
six knobs, the judged ASHA on training tokens, Tune's bookkeeping, trial actors reused.

Each trial follows a synthetic learning curve instead of training: a loss that falls with the tokens
seen towards a floor set by its learning rate and rank (so TPE and ASHA have something to find),
one step every ``STEP_S`` seconds, a report every ``EVAL`` steps, the full budget in ``STEPS`` steps;
ASHA stops most trials early. What is measured is the driver's part of a sweep on a fixed cluster:
how soon a freed slot gets the next trial, and the tail when fewer trials remain than slots.

  busy         per trial: from entering its trainable to its last report (a trial's own start-up,
               its model loading on a real cluster, is busy time here: bench/startup.py times it)
  provisioned  32 x the wall time of ``tuner.fit()``
Goal (issue 24): >= 0.9. No autoscaling here (a fixed cluster: provisioned slots are all the
cluster's from the start); the figure is busy / provisioned. On 2 CPU cores the 32 trial processes
start slower than on 32 GPU machines; the detail gives the first-wave and tail losses apart.

    python bench/run.py --only gpu_slots            # 276 s on 2 cores (Dec 4, beside the QA bench)
    python bench/run.py --only gpu_slots --quick    # 8 slots, 32 trials: 168 s (Dec 4)
"""

from __future__ import annotations

import math
import tempfile
import time

from bench.figure import Figure

TITLE = "GPU-slot utilisation"
HOW = "busy GPU-seconds / provisioned GPU-seconds, 128 one-GPU trials of synthetic curves on 32 slots"
TARGET = (">=", 0.9)
STEPS, EVAL, STEP_S = 120, 10, 0.5  # a full trial: 60 s, 12 reports


def synthetic(config: dict, **_shared) -> None:
    """A trial that follows a learning curve: tokens_seen and eval_loss every EVAL steps."""
    import random

    from ray import tune

    started = time.time()
    budget = config["trial"]["settings"]["max_tokens"]
    floor = 0.8 + abs(math.log10(config["learning_rate"]) + 3.3) / 4 + 0.05 / config["r"]
    rng = random.Random(hash((config["learning_rate"], config["r"])))
    for step in range(1, STEPS + 1):
        time.sleep(STEP_S)
        if step % EVAL == 0 or step == STEPS:
            tokens = budget * step // STEPS
            loss = floor + 1.5 * math.exp(-3 * tokens / budget) + rng.gauss(0, 0.01)
            tune.report({"eval_loss": loss, "tokens_seen": tokens, "step": step, "max_steps": STEPS,
                         "finished": step == STEPS, "entered_at": started, "reported_at": time.time()})


def run(device: str, quick: bool) -> Figure:
    import ray

    from lorasweep.cluster import cluster_resources, concurrency, start_local_ray, trial_resources
    from lorasweep.resolve import resolve
    from lorasweep.tuner import build_tuner
    from sweeps.llama_finetome import RECIPE

    slots, trials = (8, 32) if quick else (32, 128)
    budget = 1_200_000
    with tempfile.TemporaryDirectory() as tmp:
        sweep = resolve(RECIPE, ["--preset", "smoke", "--num-samples", str(trials), "--max-concurrent", str(slots),
                                 "--gpus-per-worker", "1", "--cpus-per-worker", "0.01", "--max-tokens", str(budget),
                                 "--grace-tokens", str(budget // 9), "--reduction-factor", "3",
                                 "--storage-path", tmp, "--name", "slots"])
        # the fake GPUs, and this machine's CPUs declared as many: each trial actor asks for a share
        start_local_ray(num_gpus=slots, num_cpus=slots, resources={"lorasweep_worker": 1000})
        try:
            cluster = cluster_resources()
            res = trial_resources(sweep.options, cluster, sweep)
            tuner = build_tuner(sweep, res, concurrency(sweep.options, res, cluster), trainable=synthetic)
            t0 = time.time()
            grid = tuner.fit()
            wall = time.time() - t0
            spans = []
            for result in grid:
                df = result.metrics_dataframe
                if result.error is None and df is not None and len(df):
                    spans.append((float(df["entered_at"].iloc[0]), float(df["reported_at"].iloc[-1]),
                                  int(df["step"].iloc[-1])))
            errors = sum(r.error is not None for r in grid)
        finally:
            ray.shutdown()
    busy = sum(end - start for start, end, _ in spans)
    provisioned = slots * wall
    first_start = min(s for s, _, _ in spans) - t0
    filled = sorted(s for s, _, _ in spans)[min(slots, len(spans)) - 1] - t0  # the last slot of the first wave
    last_end = max(e for _, e, _ in spans)
    # the tail: slot-seconds idle after the time the last trial started until fit returned
    last_start = max(s for s, _, _ in spans)
    tail_idle = slots * (t0 + wall - last_start) - sum(e - max(s, last_start) for s, e, _ in spans if e > last_start)
    steps = sum(n for _, _, n in spans)
    raw = {"slots": slots, "trials": trials, "finished_or_stopped": len(spans), "errors": errors,
           "wall_s": round(wall, 1), "busy_gpu_s": round(busy, 1), "provisioned_gpu_s": round(provisioned, 1),
           "first_trial_started_s": round(first_start, 1), "all_slots_filled_s": round(filled, 1),
           "tail_idle_gpu_s": round(tail_idle, 1), "after_last_report_s": round(t0 + wall - last_end, 1),
           "steps": steps, "full_budget_steps": trials * STEPS}
    ratio = busy / provisioned
    detail = (f"{busy:.0f} of {provisioned:.0f} GPU-s busy ({slots} slots x {wall:.0f} s); {len(spans)} trials, "
              f"{steps / (trials * STEPS):.0%} of their full budgets trained (ASHA); first wave filled at {filled:.0f} s, "
              f"{tail_idle:.0f} GPU-s idle in the tail, fit returned {t0 + wall - last_end:.1f} s after the last report")
    return Figure(ratio=round(ratio, 4), target=TARGET, raw=raw, detail=detail)
