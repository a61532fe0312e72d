"""The dry run's measured wall time for CPU sweeps (lorasweep/probe.py): the probe runs the real trial
code for a few steps on the flagship's tiny smoke assets (no Ray), and its arithmetic is checked by
hand on a made-up probe."""

from __future__ import annotations

import math
import tempfile

import pytest
import torch

from lorasweep import engine
from lorasweep.preflight import Inputs, asha_tokens
from lorasweep.probe import DRIVER_S, REUSED_START_S, TRIAL_PROCESS_S, Probe, measure, wall_time_lines, wall_time_s
from sweeps.llama_finetome import RECIPE
from trainers.data import first_line

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
    sweep = engine.resolve(RECIPE, ["--preset", "smoke", "--storage-path", str(tmp_path), "--name", "p", *argv])
    return sweep, engine.trial_resources(sweep.options, CPU_CLUSTER, sweep)


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


def test_arithmetic_without_asha(tmp_path):
    sweep, res = smoke(tmp_path, "--scheduler", "none", "--num-samples", "4", "--space", "packing=false")
    probe = Probe(tokens_per_s={False: 1000.0}, eval_s=2.0, setup_s=3.0, steps=3, threads=1)
    w = wall_time_s(sweep, Inputs(data=DATA), res, 2, probe)
    # 60k tokens at 1,000 tokens/s = 60 s; a report every 10 steps x 8 rows x 50 tokens = 4,000
    # tokens -> 15 reports x 2 s = 30 s; 4 trials x 90 s + 2 later starts x 0.5 s, over 2 slots.
    assert w["train_s"] == 60 and w["reports"] == 15
    # Around them: the driver (20 s + its 3 s data audit) and the first start-up (8 s process + 3 s setup).
    assert (DRIVER_S, TRIAL_PROCESS_S, REUSED_START_S) == (20, 8, 0.5)
    assert w["total"] == pytest.approx((20 + 3) + (8 + 3) + (4 * 90 + 2 * 0.5) / 2)  # 214.5 s
    lines = wall_time_lines(sweep, Inputs(data=DATA), res, 2, probe)
    assert lines[0].startswith("wall time on this machine: ~3.6 min (probe: 3 steps each, unpacked 1.0k tokens/s")
    assert "4 trials x (60,000 tokens 60.0 s + 15 evals x 2.00 s)" in lines[1]


def test_arithmetic_with_asha_and_searched_packing(tmp_path):
    sweep, res = smoke(tmp_path)  # 6 trials, 2 at once, ASHA: grace 15k, factor 2, max 60k
    probe = Probe(tokens_per_s={False: 1000.0, True: 2000.0}, eval_s=1.0, setup_s=2.0, steps=3, threads=1)
    w = wall_time_s(sweep, Inputs(data=DATA), res, 2, probe)
    # 15k + 15k/2 + 30k/4 = 30k expected tokens; half the trials at 1k, half at 2k tokens/s:
    # (30 + 15) / 2 = 22.5 s; 30k / 4k tokens per report = 8 reports x 1 s
    assert w["per_trial_tokens"] == asha_tokens(60_000, 15_000, 2) == 30_000
    assert w["train_s"] == 22.5 and w["reports"] == math.ceil(30_000 / 4_000) == 8
    assert w["total"] == pytest.approx((20 + 2) + (8 + 2) + (6 * 30.5 + 4 * 0.5) / 2)  # 124.5 s
    assert "(half packed)" in wall_time_lines(sweep, Inputs(data=DATA), res, 2, probe)[1]


def test_ray_train_trials_pay_their_start_up_every_time(tmp_path):
    sweep, res = smoke(tmp_path, "--ray-train")
    assert not res.in_trial_process
    probe = Probe(tokens_per_s={False: 1000.0, True: 1000.0}, eval_s=1.0, setup_s=2.0, steps=3, threads=1)
    own, own_res = smoke(tmp_path)
    reused = wall_time_s(own, Inputs(data=DATA), own_res, 2, probe)["total"]
    # 4 later trials over 2 slots, each ~12 s of new processes + 2 s of loading instead of 0.5 s
    assert wall_time_s(sweep, Inputs(data=DATA), res, 2, probe)["total"] > reused + 4 / 2 * 10
