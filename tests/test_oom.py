"""A trial that Ray's memory monitor kills fails alone; the sweep goes on.

A real local Ray whose memory monitor threshold sits 3 GB above what the machine uses now, a real
Tune run of two trials one after the other: the first allocates until Ray kills it, the second
reports and finishes. Without ``lorasweep.tuner.oom_kill_fails_the_trial`` Tune 2.60 raises
"Caught unexpected exception" out of ``fit`` and the second trial never runs.
"""

from __future__ import annotations

import os
import time

import pytest

GB = 1 << 30


def _hog(config):
    """Trial 0 allocates 256 MB at a time until killed; it gives up (and reports that it was not
    killed) before the machine itself runs short, so a wrong threshold fails the test, not the box."""
    import psutil
    from ray import tune

    if config["i"] == 0:
        held = []
        while psutil.virtual_memory().available > 2 * GB:
            block = bytearray(256 << 20)
            block[::4096] = b"x" * len(block[::4096])  # touch every page
            held.append(block)
            time.sleep(0.05)
        time.sleep(5)  # the monitor looks every 100 ms
        tune.report({"killed": 0, "held_gb": len(held) / 4})
        return
    tune.report({"killed": 0, "held_gb": 0.0})


@pytest.fixture
def tight_ray(monkeypatch):
    import ray
    from ray._private.utils import get_system_memory, get_used_memory

    total, used = get_system_memory(), get_used_memory()
    threshold = min(used + 3 * GB, 0.85 * total) / total  # room for the other xdist worker to grow
    monkeypatch.setenv("RAY_memory_usage_threshold", f"{threshold:.4f}")
    monkeypatch.setenv("RAY_memory_monitor_refresh_ms", "100")
    ray.init(num_cpus=1, include_dashboard=False, configure_logging=False)
    yield threshold
    ray.shutdown()


def test_a_trial_killed_by_rays_memory_monitor_fails_alone(tight_ray, tmp_path):
    from ray import tune

    from lorasweep.tuner import oom_kill_fails_the_trial

    oom_kill_fails_the_trial()
    tuner = tune.Tuner(
        _hog, param_space={"i": tune.grid_search([0, 1])},
        tune_config=tune.TuneConfig(max_concurrent_trials=1),
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="oom", verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=0)))
    grid = tuner.fit()  # returns: the kill is one trial's failure, not the sweep's
    by_i = {r.config["i"]: r for r in grid}
    assert by_i[0].error is not None, f"trial 0 was not killed (threshold {tight_ray:.3f}): {by_i[0].metrics}"
    line = str(by_i[0].error)
    assert "killed by Ray's memory monitor: the node ran out of memory (node memory " in line, line
    assert "`--max-concurrent`" in line and "\n" not in line.strip(), line
    assert by_i[1].error is None and by_i[1].metrics["held_gb"] == 0.0  # the next trial ran and finished
    assert os.path.isfile(os.path.join(by_i[0].path, "error.txt"))
