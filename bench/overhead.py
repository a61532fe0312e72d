"""Framework overhead: steady-state training tokens/s of a trial inside a sweep vs the same loop
run standalone.

One trial of the flagship's smoke preset (tiny Llama, 4-bit, FineTome-format sample, unpacked,
fixed knobs) with 2 CPUs, ~10 reports. Each report carries the training tokens/s of its interval
(eval and checkpoint time excluded); the steady state is the median after the first interval.
Standalone: the same ``train_func`` in a plain ``python`` process with OMP_NUM_THREADS=2 (as Ray
gives a trial with 2 CPUs), alternated with the sweep three times; medians. Also measured, side by side: the same trial through
a Ray Train TorchTrainer (``--ray-train``, what every trial used to run in).
"""

from __future__ import annotations

import statistics
import tempfile

from bench.figure import Figure
from bench.sweep_util import KNOBS, fixed_space, run_sweep, standalone, steady, trial_config

TITLE = "framework overhead"
TARGET = (">=", 0.97)


def run(device: str, quick: bool) -> Figure:
    from sweeps.llama_finetome import RECIPE

    tokens = 12_000 if quick else 40_000
    with tempfile.TemporaryDirectory() as tmp:
        argv = ["--preset", "smoke", "--num-samples", "1", "--cpus-per-worker", "2",
                "--gpus-per-worker", "1" if device == "cuda" else "0", "--scheduler", "none",
                "--max-tokens", str(tokens), "--no-baseline", "--storage-path", tmp, *fixed_space(KNOBS)]
        config = trial_config(RECIPE, [*argv, "--name", "x"], KNOBS)
        # alternated, three of each, medians: this machine's speed drifts by 10-20% from minute to minute
        alone, own, train, driver = [], [], [], []
        for i in range(1 if quick else 3):
            alone.append(steady(standalone(config, 2)["history"]))
            swept = run_sweep(RECIPE, [*argv, "--name", f"own{i}"])
            own.append(steady(next(iter(swept["reports"].values()))))
            driver.append(swept["driver_cpu_share"])
            train.append(steady(next(iter(run_sweep(RECIPE, [*argv, "--name", f"train{i}", "--ray-train"])["reports"].values()))))
    in_sweep, via_train, base = statistics.median(own), statistics.median(train), statistics.median(alone)
    raw = {"sweep_tokens_per_s": [round(x, 1) for x in own], "standalone_tokens_per_s": [round(x, 1) for x in alone],
           "ray_train_tokens_per_s": [round(x, 1) for x in train], "ray_train_ratio": round(via_train / base, 4),
           "max_tokens": tokens,
           # what else ran on the cores during the sweep: the driver process (Tune's loop) as a share
           # of one core; Ray's own daemons add ~3% of one core when idle (raylet, GCS, dashboard)
           "driver_cpu_share_of_a_core": [round(x, 3) for x in driver]}
    return Figure(ratio=in_sweep / base, target=TARGET, raw=raw,
                  detail=f"{in_sweep:,.0f} tokens/s in the sweep vs {base:,.0f} standalone "
                         f"(through Ray Train: {via_train:,.0f})")
