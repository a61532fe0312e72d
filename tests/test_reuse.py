"""Tune reuses a one-worker trial's process for the next trial (``reuse_actors``). Before it does, it
waits ``TUNE_FUNCTION_THREAD_TIMEOUT_S`` (2 s by Ray's default) for the stopped trial's thread to end,
and otherwise fails the NEXT trial: "Trainable runner reuse requires reset_config() to be implemented
and return True" (bench/quality.py's chat sweep on SmolLM2, Dec 3: one of six trials lost on a loaded
2-core machine). The sweep's runtime env raises that wait (``lorasweep.dashboard.env_vars``). The lost
trial depends on the machine's load, so this test does not wait for it: a real sweep whose trials are
all stopped mid-budget runs every trial in one reused process, and each trial finds the raised wait in
its own process, where Tune reads it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT, sweep_env

pytestmark = pytest.mark.slow

SCRIPT = r"""
import json, sys
from ray import tune
from bench.sweep_util import run_sweep
from sweeps.llama_finetome import RECIPE

class FirstReport(tune.Stopper):  # every trial ends at its first report, mid-budget
    def __call__(self, trial_id, result):
        return True
    def stop_all(self):
        return False

out = run_sweep(RECIPE, sys.argv[1:], stop=FirstReport())
print("RESULT " + json.dumps({t: [(r["step"], r["pid"]) for r in reps] for t, reps in out["reports"].items()}))
"""


def test_stopped_trials_hand_their_reused_process_on_with_a_thread_wait_that_fits_a_trial(tmp_path):
    probe = tmp_path / "probe.txt"
    args = ["--preset", "smoke", "--num-samples", "3", "--max-concurrent", "1", "--scheduler", "none",
            "--max-tokens", "6000", "--eval-every", "1", "--final-round", "0", "--no-baseline",
            "--callbacks", "tests.faults:thread_timeout", "--storage-path", str(tmp_path), "--name", "reuse"]
    r = subprocess.run([sys.executable, "-c", SCRIPT, *args], cwd=ROOT, env=sweep_env(LORASWEEP_TEST_PROBE=str(probe)),
                       capture_output=True, text=True, timeout=900)
    # run_sweep raises on a failed trial ("a bench trial failed: ... reset_config() ...")
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    reports = json.loads(next(line for line in r.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert len(reports) == 3 and all(reps[-1][0] == 1 for reps in reports.values()), reports  # stopped at step 1
    pids = {pid for reps in reports.values() for _, pid in reps}
    assert len(pids) == 1, reports  # one process, reused
    seen = [line.split() for line in probe.read_text().splitlines()]
    assert len(seen) == 3 and all(pid == str(*pids) and wait != "None" and float(wait) >= 60 for pid, wait in seen), seen
