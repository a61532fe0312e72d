"""The dry run's measured wall time for CPU sweeps (lorasweep/probe.py): the probe runs the real trial
code for a few steps on the flagship's tiny smoke assets (no Ray), and its arithmetic is checked by
hand on a made-up probe."""

from __future__ import annotations

import math
import tempfile

import pytest
import torch

from lorasweep.cluster import trial_resources
from lorasweep.resolve import resolve
from lorasweep.budget import asha_grace, asha_tokens, expected_tokens
from lorasweep.preflight import Inputs
from lorasweep.probe import Probe, measure, wall_time_lines, wall_time_s
from sweeps.llama_finetome import RECIPE
from common.errors import first_line

CPU_CLUSTER = {"cpu": 2, "gpu": 0, "nodes": [{"CPU": 2}], "accelerators": []}
# the smoke sample's audit, as check_inputs reports it (tokens per example rounded)
DATA = {"rows": 1200, "train_examples": 1104, "eval_examples": 96, "test_rows": 0, "tokens_per_example": 50.0}


@pytest.fixture(autouse=True)
def keep_threads():
    """These tests set torch's thread count to see it restored; the session's own comes back after."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def smoke(tmp_path, *argv):
    sweep = resolve(RECIPE, ["--preset", "smoke", "--storage-path", str(tmp_path), "--name", "p", *argv])
    return sweep, trial_resources(sweep.options, CPU_CLUSTER, sweep)


def test_measure_times_both_packings_and_restores_threads(tiny_assets, tmp_path, monkeypatch):
    sweep, res = smoke(tmp_path)
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))  # where the trial's checkpoints go
    torch.set_num_threads(2)
    probe = measure(sweep, res, steps=2)
    assert not list(temp.iterdir())  # removed again
    assert torch.get_num_threads() == 2  # the trial's 1 thread was for the probe only
    assert probe.threads == 1 and probe.steps == 2
    assert set(probe.tokens_per_s) == {False, True}  # the space searches packing
    assert all(rate > 0 for rate in probe.tokens_per_s.values())
    assert probe.eval_s > 0 and probe.setup_s > 0
    assert [p.name for p in tmp_path.iterdir()] == ["temp"]  # no sweep folder


def test_fixed_packing_is_measured_once(tiny_assets, tmp_path):
    sweep, res = smoke(tmp_path, "--space", "packing=true")
    probe = measure(sweep, res, steps=1)
    assert list(probe.tokens_per_s) == [True] and probe.steps == 1


def test_missing_model_raises_for_the_callers_fallback(tmp_path):
    sweep, res = smoke(tmp_path, "--model", str(tmp_path / "no-such-model"))
    torch.set_num_threads(2)
    with pytest.raises(Exception) as e:
        measure(sweep, res, steps=1)
    assert str(tmp_path / "no-such-model") in first_line(e.value)  # what the dry run's fallback line shows
    assert torch.get_num_threads() == 2


def test_gpu_trials_are_not_probed(tmp_path):
    sweep, res = smoke(tmp_path)
    res.gpus = 1
    with pytest.raises(ValueError, match="CPU trials only"):
        measure(sweep, res)


def test_the_estimate_follows_the_measured_rates_and_the_slots(tmp_path):
    """How the estimate moves with what the probe measured and with the sweep's shape (its accuracy
    against a real sweep's wall time: tests/test_sweep.py)."""
    sweep, res = smoke(tmp_path, "--scheduler", "none", "--num-samples", "4", "--space", "packing=false")
    probe = Probe(tokens_per_s={False: 1000.0}, eval_s=2.0, setup_s=3.0, steps=3, threads=1)
    w = wall_time_s(sweep, Inputs(data=DATA), res, 2, probe)
    # no ASHA: every trial trains the whole budget; a report every eval_every x batch x tokens per example
    assert w["per_trial_tokens"] == sweep.settings.max_tokens == 60_000
    assert w["train_s"] == pytest.approx(60.0)
    assert w["reports"] == math.ceil(60_000 / (sweep.settings.eval_every * 8 * 50))
    # twice the measured speed: the same reports, half the training time
    fast = wall_time_s(sweep, Inputs(data=DATA), res, 2, Probe({False: 2000.0}, 2.0, 3.0, 3, 1))
    assert fast["train_s"] == pytest.approx(w["train_s"] / 2) and fast["reports"] == w["reports"]
    # slower evals cost each trial its reports' worth, spread over the 2 slots
    slow_eval = wall_time_s(sweep, Inputs(data=DATA), res, 2, Probe({False: 1000.0}, 4.0, 3.0, 3, 1))
    assert slow_eval["total"] - w["total"] == pytest.approx(4 * w["reports"] * 2.0 / 2)
    # one slot instead of two: the trials' part doubles, what happens once does not
    one = wall_time_s(sweep, Inputs(data=DATA), res, 1, probe)
    assert one["trials_s"] > 1.9 * w["trials_s"] and one["driver_s"] == w["driver_s"]
    lines = wall_time_lines(sweep, Inputs(data=DATA), res, 2, probe)
    assert lines[0].startswith(f"wall time on this machine: ~{w['total'] / 60:.1f} min (probe: 3 steps each, "
                               "unpacked 1.0k tokens/s")
    assert f"4 trials x (60,000 tokens 60.0 s + {w['reports']} evals x 2.00 s)" in lines[1]


def test_asha_and_a_searched_packing_in_the_estimate(tmp_path):
    sweep, res = smoke(tmp_path)  # 6 trials, 2 at once, ASHA
    probe = Probe(tokens_per_s={False: 1000.0, True: 2000.0}, eval_s=1.0, setup_s=2.0, steps=3, threads=1)
    w = wall_time_s(sweep, Inputs(data=DATA), res, 2, probe)
    o, s = sweep.options, sweep.settings
    # ASHA's expected tokens per trial, not the budget; half the trials packed (seconds average, not rates)
    assert w["per_trial_tokens"] == expected_tokens(s, o) < s.max_tokens
    assert expected_tokens(s, o) == asha_tokens(s.max_tokens, asha_grace(s.max_tokens, o.grace_tokens), o.reduction_factor)
    assert w["train_s"] == pytest.approx((w["per_trial_tokens"] / 1000 + w["per_trial_tokens"] / 2000) / 2)
    none, _ = smoke(tmp_path, "--scheduler", "none")
    assert wall_time_s(none, Inputs(data=DATA), res, 2, probe)["total"] > w["total"]
    assert "(half packed)" in wall_time_lines(sweep, Inputs(data=DATA), res, 2, probe)[1]


def test_ray_train_trials_pay_their_start_up_every_time(tmp_path):
    sweep, res = smoke(tmp_path, "--ray-train")
    assert not res.in_trial_process
    probe = Probe(tokens_per_s={False: 1000.0, True: 1000.0}, eval_s=1.0, setup_s=2.0, steps=3, threads=1)
    own, own_res = smoke(tmp_path)
    reused = wall_time_s(own, Inputs(data=DATA), own_res, 2, probe)["total"]
    # 4 later trials over 2 slots, each ~12 s of new processes + 2 s of loading instead of 0.5 s
    assert wall_time_s(sweep, Inputs(data=DATA), res, 2, probe)["total"] > reused + 4 / 2 * 10
