"""Framework overhead: steady-state training tokens/s of a trial inside a sweep vs the same loop
run standalone.

One trial of the flagship's smoke preset (tiny Llama, 4-bit, FineTome-format sample, unpacked,
fixed knobs) with 2 CPUs, ~10 reports. Each report carries the training tokens/s of its interval
(eval and checkpoint time excluded); the steady state is the median after the first interval.
Standalone: the same ``train_func`` in a plain ``python`` process with OMP_NUM_THREADS=2 (as Ray
gives a trial with 2 CPUs), run before and after the sweep and averaged. Also measured, side by
side: the same trial through a Ray Train TorchTrainer (``--ray-train``, what every trial used to
run in).
"""

from __future__ import annotations

import statistics
import tempfile

from bench.common import Figure
from bench.sweep_util import fixed_space, run_sweep, standalone, steady, trial_config

TITLE = "framework overhead"
TARGET = (">=", 0.97)
KNOBS = {"r": 16, "lora_alpha": 32, "use_rslora": False, "packing": False, "warmup_ratio": 0.05, "learning_rate": 1e-3}


def run(device: str, quick: bool) -> Figure:
    from sweeps.llama_finetome import RECIPE

    tokens = 12_000 if quick else 40_000
    with tempfile.TemporaryDirectory() as tmp:
        argv = ["--preset", "smoke", "--num-samples", "1", "--cpus-per-worker", "2",
                "--gpus-per-worker", "1" if device == "cuda" else "0", "--scheduler", "none",
                "--max-tokens", str(tokens), "--no-baseline", "--storage-path", tmp, *fixed_space(KNOBS)]
        config = trial_config(RECIPE, [*argv, "--name", "x"], KNOBS)
        alone = [steady(standalone(config, 2)["history"])]
        swept = run_sweep(RECIPE, [*argv, "--name", "own"])
        alone.append(steady(standalone(config, 2)["history"]))
        train = run_sweep(RECIPE, [*argv, "--name", "train", "--ray-train"])
    in_sweep = steady(next(iter(swept["reports"].values())))
    via_train = steady(next(iter(train["reports"].values())))
    base = statistics.mean(alone)
    raw = {"sweep_tokens_per_s": round(in_sweep, 1), "standalone_tokens_per_s": [round(x, 1) for x in alone],
           "ray_train_tokens_per_s": round(via_train, 1), "ray_train_ratio": round(via_train / base, 4),
           "in_trial_process": swept["in_trial_process"], "max_tokens": tokens}
    return Figure(ratio=in_sweep / base, target=TARGET, raw=raw,
                  detail=f"{in_sweep:,.0f} tokens/s in the sweep vs {base:,.0f} standalone "
                         f"(through Ray Train: {via_train:,.0f})")
