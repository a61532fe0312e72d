"""The dry run's wall time for a CPU sweep, from a short measured probe instead of a FLOP count.

A FLOP count at an assumed utilisation says little on CPUs (thread count, memory bandwidth, 4-bit
dequantisation in software), and less about the start-up and the evaluations, which dominate a tiny
sweep. So the probe runs the trial's own code (``trainers.loop._train``: the same ``TrialConfig``, data,
model, ``TokenCountingTrainer`` and ``ReportCallback``) in this process, with the trial's threads,
for a few optimizer steps and one report per packing value the space can take, and extrapolates:

    probe = measure(sweep, res)   # per packing value: setup + 1 + 3 steps + 2 reports (~3 s on the smoke)
    lines = wall_time_lines(sweep, inputs, res, at_once, probe)

``measure`` raises whatever the trial would (a model that does not load, a dataset it cannot read):
the caller prints ``wall time: unknown (probe failed: <one line>)`` and the dry run goes on.
"""

from __future__ import annotations

import contextlib
import io
import math
import time
import warnings
from dataclasses import dataclass, replace

from transformers import TrainerCallback

# Fixed costs around the trials, timed on a 2-core machine: the flagship smoke sweep (6 trials, 2 at
# once, 51 s in all) against this estimate, and bench/results.json "startup".
# The command around its trials: Python and its imports + the checks ~8 s, ray.init + the Tuner ~11 s
# before the first trial; the leaderboard, export and report ~2 s after the last. The data audit
# comes on top (``setup_s``: the driver reads and tokenises the data as a trial's setup does).
DRIVER_S = 20.0
# A slot's first trial: Tune schedules it and Ray starts a process that imports torch, Transformers
# and PEFT before ``setup`` (timed in the probe) begins. 5 s alone on 2 cores (bench "startup": 5.9 s
# to the first step, 1.1 s of it setup); two side by side with the driver on 2 cores, ~9 s (the smoke
# sweep: 10.9 s to the first step, 1.9 s of it setup).
TRIAL_PROCESS_S = 8.0
REUSED_START_S = 0.5  # README "Where a trial trains": a reused process starts the next trial in ~0.5 s
# A Ray Train trial (several workers, ZeRO offload, --ray-train) gets a new controller and worker
# processes every time: 17 s to its first step in bench "startup" (ray_train_mean_s), setup included.
RAY_TRAIN_START_S = 15.0


@dataclass
class Probe:
    tokens_per_s: dict[bool, float]  # training tokens/s per trial, keyed by packing (only values the space can take)
    eval_s: float  # seconds of one report as a trial makes it: checkpoint, the task's eval, report
    setup_s: float  # seconds from nothing to the first step: tokenizer + data + model load (cold, in this process)
    steps: int  # optimizer steps measured per packing value (after one warm-up step)
    threads: int  # torch threads used (= the trial's cpus per worker, as Ray's OMP_NUM_THREADS gives a trial)
    probe_s: float = 0.0  # what the probe itself took, all packing values


def packings(sweep) -> list[bool]:
    """The packing values a trial of this sweep can train with: the knob's choices, else the setting."""
    knob = sweep.space.params.get("packing")
    values = getattr(knob, "values", None)
    return sorted({bool(v) for v in values}) if values else [bool(sweep.settings.packing)]


# ----------------------------------------------------------------------------- measuring


class _Probe(TrainerCallback):
    """The trial's callback (made by ``probe_callback``) last in the trial's list, so its word on
    ``control`` is final: a report after the warm-up step and after the last timed step, none between
    (a packed trial would otherwise report every ~2 steps), then stop. It times each report from the
    end of its step to the end of ``on_save`` (checkpoint write, the task's eval, the report)."""

    def __init__(self, steps: int):
        self.steps = steps
        self.step_end = 0.0
        self.report_s: list[float] = []

    def on_step_end(self, args, state, control, **kw):
        last = min(1 + self.steps, state.max_steps)
        report = state.global_step in (1, last)
        control.should_log = control.should_save = report
        control.should_training_stop = state.global_step >= last
        self.step_end = time.time()
        return control

    def on_save(self, args, state, control, **kw):
        self.report_s.append(time.time() - self.step_end)
        return control


_ACTIVE: list[_Probe] = []  # the probe running in this process; its callback factory hands it over


def probe_callback(trial):
    """``settings.callbacks`` factory (``lorasweep.probe:probe_callback``): the probe's callback goes
    through the trial's own extension point, so the trial code runs unchanged. The probe trains in
    this process, so the callback is passed through this module rather than the trial's config."""
    return _ACTIVE[-1] if _ACTIVE else None


@contextlib.contextmanager
def _quiet(threads: int):
    """The trial's thread count, and no console output: the trial's ``[lorasweep]`` lines, warnings
    and the tokenising progress bar (drawn only when stderr is a terminal) go to a buffer."""
    import torch
    import transformers

    before, level = torch.get_num_threads(), transformers.logging.get_verbosity()
    torch.set_num_threads(threads)
    transformers.logging.set_verbosity_error()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        torch.set_num_threads(before)
        transformers.logging.set_verbosity(level)


def _probe_one(sweep, res, knobs: dict, steps: int) -> tuple[list[dict], list[float]]:
    """One trial of ``knobs`` through ``_train`` on the CPU: its reports and the probe's report times."""
    import torch

    from trainers.config import TrialConfig
    from trainers.loop import _train

    # every report with its checkpoint (--checkpoint-minutes 0): a report is timed as the dearest a
    # trial makes, which its early reports (each a new best) mostly are
    s = replace(sweep.settings, callbacks=(*sweep.settings.callbacks, "lorasweep.probe:probe_callback"),
                checkpoint_minutes=0)
    probe = _Probe(steps)
    reports: list[dict] = []
    _ACTIVE.append(probe)
    try:
        # No storage: outside Ray, _train checkpoints into a temp folder of its own and removes it.
        config = TrialConfig(s, resources=res, objective=sweep.space.metric).to_tune(knobs)
        _train(config, torch.device("cpu"), lambda metrics, ckpt_dir: reports.append(metrics), None)
    finally:
        _ACTIVE.remove(probe)
    if not reports:
        raise RuntimeError("the probe trial made no report")
    return reports, probe.report_s


def measure(sweep, res, steps: int = 3) -> Probe:
    """Time ``steps`` optimizer steps and one report of the sweep's first seed point, once per
    packing value the space allows, on the CPU with the trial's threads.

    The trial reports after a warm-up step (its first report, which also builds the eval batches, and
    starts the trial's own tokens/s window) and after the timed steps. Tokens/s is that second
    report's ``tokens_per_s`` (tokens counted by ``TokenCountingTrainer`` over training time only;
    noisy over 3 steps of a tiny model: +-30% from run to run here), times the workers of a trial (each
    trains its own batch; LoRA's gradient all-reduce is small next to a CPU step). The first packing
    value's start-up is the cold one; the second reuses the tokenised data, as a reused trial
    process does. Raises what the trial would raise: the caller reports the probe as failed."""
    from trainers import loop

    if res.gpus > 0:
        raise ValueError(f"the probe times CPU trials only; this sweep's trials take {res.gpus:g} GPU(s) per worker")
    if steps < 1:
        raise ValueError(f"`steps` is {steps}; time at least 1 step")
    threads = max(1, int(res.cpus))
    seed = dict(sweep.space.known_points[0]) if sweep.space.known_points else {}
    t0 = time.time()
    rates, report_s, setup_s, timed = {}, [], None, steps
    try:
        with _quiet(threads):
            for packing in packings(sweep):
                reports, reports_s = _probe_one(sweep, res, {**seed, "packing": packing}, steps)
                last = reports[-1]
                setup_s = last["setup_s"] if setup_s is None else setup_s
                rates[packing] = last["tokens_per_s"] * res.workers
                report_s.append(reports_s[-1])  # the warm one: a trial's first report also builds its eval batches
                timed = min(timed, last["step"] - 1 if len(reports) > 1 else last["step"])
    finally:
        loop._DATA.clear()  # the driver trains nothing: the tokenised data's memory goes back
    return Probe(tokens_per_s=rates, eval_s=min(report_s), setup_s=setup_s, steps=timed, threads=threads,
                 probe_s=time.time() - t0)


# ----------------------------------------------------------------------------- the estimate


def _fmt_rate(x: float) -> str:
    return f"{x / 1000:.1f}k" if x >= 1000 else f"{x:.0f}"


def _fmt_time(s: float) -> str:
    return f"{s:.0f} s" if s < 90 else f"{s / 60:.1f} min" if s < 5400 else f"{s / 3600:.1f} h"


def wall_time_s(sweep, inputs, res, at_once: int, probe: Probe) -> dict[str, float]:
    """The estimate's terms, in seconds (``total`` is the wall time) and counts; see the comments."""
    from lorasweep.extra_runs import wants_baseline
    from lorasweep.budget import expected_tokens

    settings, options = sweep.settings, sweep.options
    n = options.num_samples
    slots = max(1, min(at_once, n))
    per_trial = expected_tokens(settings, options)
    # Training: the expected tokens at each packing's rate; a searched packing is drawn half the time,
    # so the seconds (not the rates) average: 30k tokens at 15k and 20k tokens/s = (2.0 + 1.5) / 2 = 1.75 s.
    train_s = sum(per_trial / rate for rate in probe.tokens_per_s.values()) / len(probe.tokens_per_s)
    # Reports: eval_every counts optimizer steps over unpacked examples, and packed trials report at
    # the same tokens (trainers/loop.report_interval), so a report every eval_every x rows per step x
    # tokens per example: 10 x 8 x 46 = 3,680 tokens -> 30k expected tokens = 9 reports (the last at
    # the budget's end or at the ASHA rung the trial stops at).
    data = inputs.data or {}
    tokens_per_example = data.get("tokens_per_example") or settings.max_seq_length
    rows_per_step = settings.per_device_batch_size * settings.gradient_accumulation_steps * res.workers
    reports = math.ceil(per_trial / (settings.eval_every * rows_per_step * tokens_per_example))
    trial_s = train_s + reports * probe.eval_s
    # Start-up: the `slots` first trials each start a process and load cold, all at once (so it counts
    # once in wall time); a later one reuses its slot's process (~0.5 s), or through Ray Train starts
    # new worker processes and loads again.
    first_start = TRIAL_PROCESS_S + probe.setup_s
    later_start = REUSED_START_S if res.in_trial_process else RAY_TRAIN_START_S + probe.setup_s
    # Trials of different lengths (ASHA stops most early) fill the slots evenly: total work / slots.
    trials = (n * trial_s + (n - slots) * later_start) / slots
    # The baseline (tasks with test metrics): the base model scored on the test split before the
    # sweep (every --shots at once) and the best adapter after it, each a Ray task that starts a
    # process, loads like a trial and evaluates test_rows / eval_examples times an eval's rows.
    baseline = 0.0
    if wants_baseline(sweep):
        scale = max(1.0, data.get("test_rows", 0) / max(1, data.get("eval_examples", 1)))
        baseline = 2 * (TRIAL_PROCESS_S + probe.setup_s + scale * probe.eval_s)
    driver = DRIVER_S + probe.setup_s  # the command's own start, its data audit included, and its end
    return {"total": driver + first_start + trials + baseline, "driver_s": driver, "first_start_s": first_start,
            "trials_s": trials, "baseline_s": baseline, "per_trial_tokens": per_trial, "train_s": train_s,
            "reports": reports, "later_start_s": later_start, "slots": slots}


def wall_time_lines(sweep, inputs, res, at_once: int, probe: Probe) -> list[str]:
    """The dry run's wall time on this machine, from ``probe``, and the arithmetic behind it."""
    w = wall_time_s(sweep, inputs, res, at_once, probe)
    n = sweep.options.num_samples
    rates = ", ".join(f"{'packed' if p else 'unpacked'} {_fmt_rate(r)} tokens/s"
                      for p, r in sorted(probe.tokens_per_s.items()))
    threads = f"{probe.threads} thread{'s' if probe.threads > 1 else ''}"
    mixed = " (half packed)" if len(probe.tokens_per_s) > 1 else ""
    baseline = f" + {w['baseline_s']:.0f} s baseline scoring" if w["baseline_s"] else ""
    options = sweep.options
    skipped = [flag for flag, on in (("--repeats", options.repeats), ("--finalize", options.finalize)) if on]
    return [
        f"wall time on this machine: ~{_fmt_time(w['total'])} (probe: {probe.steps} steps each, {rates} per trial "
        f"at {threads}; one eval {probe.eval_s:.1f} s; start-up {probe.setup_s:.1f} s)",
        f"  = {w['driver_s']:.0f} s driver + Ray + {w['first_start_s']:.1f} s first start-up + ({n} trials x "
        f"({w['per_trial_tokens']:,.0f} tokens{mixed} {w['train_s']:.1f} s + {w['reports']} evals x "
        f"{probe.eval_s:.2f} s) + {n - w['slots']} later starts x {w['later_start_s']:.1f} s) / {w['slots']} at once"
        f"{baseline}" + (f"; not counted: {', '.join(skipped)}" if skipped else ""),
    ]
