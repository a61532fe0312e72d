"""Running a recipe's sweep from a figure: the real driver (resolve -> Ray -> build_tuner), plus a
Tune callback that notes when each trial was started, and the same trial standalone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from bench.figure import ROOT


# The knobs of the trials that the start-up and overhead figures time: one unpacked trial shape.
KNOBS = {"r": 16, "lora_alpha": 32, "use_rslora": False, "packing": False, "warmup_ratio": 0.05, "learning_rate": 1e-3}


def fixed_space(knobs: dict) -> list[str]:
    """``--space`` flags that pin every knob to one value (every trial trains the same thing)."""
    return [a for k, v in knobs.items() for a in ("--space", f"{k}={str(v).lower() if isinstance(v, bool) else v}")]


def run_sweep(recipe, argv: list[str], *, seeds: bool = True, stop=None, shutdown: bool = True) -> dict:
    """Runs the sweep ``argv`` describes, as ``python sweeps/<recipe>.py ARGV`` would, and returns
    ``{"started": {trial_id: wall clock}, "reports": {trial_id: [report, ...]}, "wall_s": s,
    "sweep_dir": path}``. Ray is started here (unless it runs) and shut down at the end (unless
    ``shutdown`` is False). ``seeds=False`` drops the recipe's known-good points; ``stop`` is a Tune
    stopper."""
    import dataclasses

    import ray
    from ray.tune import Callback

    from lorasweep import preflight
    from lorasweep.cluster import cluster_resources, concurrency, init_ray, trial_resources
    from lorasweep.resolve import resolve
    from lorasweep.tuner import build_tuner

    class Started(Callback):
        def __init__(self):
            self.started: dict[str, float] = {}

        def on_trial_start(self, iteration, trials, trial, **info):
            self.started[trial.trial_id] = time.time()

    t0 = time.time()
    sweep = resolve(recipe, argv)
    if not seeds:
        sweep.space = dataclasses.replace(sweep.space, known_points=())
    inputs = preflight.check_inputs(sweep)
    init_ray(sweep.options)
    try:
        cluster = cluster_resources()
        res = trial_resources(sweep.options, cluster, sweep)
        n = concurrency(sweep.options, res, cluster)
        started = Started()
        tuner = build_tuner(sweep, res, n, callbacks=[started], stop=stop)
        import resource

        before, t_fit = resource.getrusage(resource.RUSAGE_SELF), time.time()
        grid = tuner.fit()
        after, t_fit = resource.getrusage(resource.RUSAGE_SELF), time.time() - t_fit
        driver_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        reports = {}
        for result in grid:
            df = result.metrics_dataframe
            if result.error is not None:
                raise RuntimeError(f"a bench trial failed: {result.error}")
            if df is not None and len(df):  # a trial stopped before its first report has none
                reports[df["trial_id"].iloc[0]] = df.to_dict("records")
        del inputs
        return {"started": started.started, "reports": reports, "wall_s": time.time() - t0,
                "sweep_dir": sweep.sweep_dir, "in_trial_process": res.in_trial_process,
                # the driver's own CPU seconds over tuner.fit(), as a share of one core's time
                "driver_cpu_share": driver_cpu / max(t_fit, 1e-9)}
    finally:
        if shutdown:
            ray.shutdown()


STANDALONE = r"""
import time
t0 = time.time()
import json, os, sys
sys.path.insert(0, {root!r})
from trainers.loop import train_func
history = train_func(json.loads(open({config!r}).read()))
json.dump({{"t0": t0, "history": history}}, open({out!r}, "w"))
"""


def standalone(config: dict, threads: int | None = None) -> dict:
    """The same trial as a plain script in a fresh Python: ``{"t0": process start, "history": reports}``.
    ``threads``: torch's intra-op threads, as Ray gives a trial with that many CPUs (OMP_NUM_THREADS)."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg, out = os.path.join(tmp, "config.json"), os.path.join(tmp, "out.json")
        with open(cfg, "w") as f:
            json.dump(config, f, default=str)
        env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
        subprocess.run([sys.executable, "-c", STANDALONE.format(root=str(ROOT), config=cfg, out=out)],
                       cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
        with open(out) as f:
            return json.load(f)


def trial_config(recipe, argv: list[str], knobs: dict) -> dict:
    """The config a sweep's trial with ``knobs`` gets (what ``train_func`` receives)."""
    from lorasweep.resolve import resolve
    from trainers.config import Resources, TrialConfig

    sweep = resolve(recipe, argv)
    return TrialConfig(sweep.settings, knobs=knobs, resources=Resources()).to_tune(dict(knobs))


def steady(reports: list[dict], key: str = "tokens_per_s") -> float:
    """Median of ``key`` over a trial's reports after the first (its interval holds the warm-up)."""
    values = sorted(r[key] for r in reports[1:] if r.get(key)) or [reports[0][key]]
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2
