"""Trial start-up: from a trial being scheduled (Tune starts it) to its first optimizer step, inside
a sweep, against a standalone script's import + load time for the same model and data.

Sweep side: the flagship's smoke preset (tiny Llama in 4-bit, FineTome-format sample), every trial
the same knobs, one trial at a time with 2 CPUs (so nothing competes for the cores), through the real
driver; a Tune callback notes when each trial starts, the trial's first report says when its first
optimizer step began. Standalone side: the same trial's ``train_func`` as a plain ``python`` script in
a fresh interpreter (imports included), before and after the sweep. Ratio: the sweep's mean over its
trials / the standalone mean. The first trial of a sweep starts a process (and imports torch); the
next ones reuse it (``reuse_actors``), so ``raw`` has the first and the rest apart.
"""

from __future__ import annotations

import statistics
import tempfile

from bench.figure import Figure
from bench.sweep_util import KNOBS, fixed_space, run_sweep, standalone, trial_config

TITLE = "trial start-up"
TARGET = ("<=", 1.5)


def run(device: str, quick: bool) -> Figure:
    from sweeps.llama_finetome import RECIPE

    trials = 3 if quick else 6
    with tempfile.TemporaryDirectory() as tmp:
        argv = ["--preset", "smoke", "--num-samples", str(trials), "--max-concurrent", "1", "--cpus-per-worker", "2",
                "--gpus-per-worker", "1" if device == "cuda" else "0", "--scheduler", "none",
                "--max-tokens", "4000", "--no-baseline", "--storage-path", tmp, *fixed_space(KNOBS)]
        config = trial_config(RECIPE, [*argv, "--name", "x"], KNOBS)
        alone = []
        run_alone = lambda: alone.append((lambda r: r["history"][0]["first_step_at"] - r["t0"])(standalone(config, 2)))  # noqa: E731
        run_alone()
        sweep = run_sweep(RECIPE, [*argv, "--name", "own"])
        run_alone()
        # the same trials through a Ray Train TorchTrainer each: how every trial started before
        train = run_sweep(RECIPE, [*argv, "--name", "train", "--ray-train"])
    order = sorted(sweep["started"], key=sweep["started"].get)
    per_trial = [sweep["reports"][t][0]["first_step_at"] - sweep["started"][t] for t in order]
    setup = [sweep["reports"][t][0]["setup_s"] for t in order]
    pids = [sweep["reports"][t][0]["pid"] for t in order]
    mean_sweep, mean_alone = statistics.mean(per_trial), statistics.mean(alone)
    via_train = [train["reports"][t][0]["first_step_at"] - train["started"][t] for t in train["started"]]
    raw = {
        "sweep_startup_s": [round(x, 3) for x in per_trial],
        "sweep_mean_s": round(mean_sweep, 3),
        "sweep_first_s": round(per_trial[0], 3),
        "sweep_rest_mean_s": round(statistics.mean(per_trial[1:]), 3) if len(per_trial) > 1 else None,
        "in_train_func_s": setup,  # train_func's own part: tokenizer, data, model
        "trial_pids": pids,
        "in_trial_process": sweep["in_trial_process"],
        "standalone_s": [round(x, 3) for x in alone],
        "standalone_mean_s": round(mean_alone, 3),
        "sweep_wall_s": round(sweep["wall_s"], 1),
        "ray_train_startup_s": [round(x, 3) for x in via_train],
        "ray_train_mean_s": round(statistics.mean(via_train), 3),
        "ray_train_ratio": round(statistics.mean(via_train) / mean_alone, 3),
        "ray_train_sweep_wall_s": round(train["wall_s"], 1),
    }
    return Figure(ratio=mean_sweep / mean_alone, target=TARGET, raw=raw,
                  detail=f"sweep {mean_sweep:.1f} s/trial (first {per_trial[0]:.1f} s, then "
                         f"{raw['sweep_rest_mean_s'] or 0:.1f} s) vs standalone {mean_alone:.1f} s; "
                         f"through Ray Train {raw['ray_train_mean_s']:.1f} s")
