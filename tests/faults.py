"""Test-side fault injection: real failures inside a trial's Ray Train workers, plugged in through
the product's own extension point (``--callbacks tests.faults:seed_faults``), so the product's loop
carries no test hook.

``oom`` asks the allocator for 1 PiB; ``nan`` sets a LoRA weight to inf, so the next forward
produces a non-finite loss. ``seed_faults`` picks the flagship's two seed points by their learning
rates: the notebook default (1e-4) runs out of memory at step 2, the hand-tuned point (1e-3) goes
non-finite at step 3.
"""

from __future__ import annotations

import torch
from transformers import TrainerCallback

FAULTS = {1e-4: ("oom", 2), 1e-3: ("nan", 3)}


class Fault(TrainerCallback):
    def __init__(self, kind: str, step: int):
        self.kind, self.step = kind, step

    def on_step_begin(self, args, state, control, model=None, **kw):
        if state.global_step + 1 != self.step:
            return
        if self.kind == "oom":
            torch.empty(1 << 50, dtype=torch.uint8, device=next(model.parameters()).device)
        else:
            with torch.no_grad():
                next(p for n, p in model.named_parameters() if "lora_B" in n).fill_(float("inf"))


def seed_faults(trial):
    fault = FAULTS.get(trial.knobs.get("learning_rate"))
    return Fault(*fault) if fault else None


class ThreadTimeout(TrainerCallback):
    """Writes, from inside the trial, the process id and the TUNE_FUNCTION_THREAD_TIMEOUT_S that Tune
    reads in this process when it reuses it for the next trial (to $LORASWEEP_TEST_PROBE)."""

    def on_train_begin(self, args, state, control, **kw):
        import os

        with open(os.environ["LORASWEEP_TEST_PROBE"], "a") as f:
            f.write(f"{os.getpid()} {os.environ.get('TUNE_FUNCTION_THREAD_TIMEOUT_S')}\n")


def thread_timeout(trial):
    import os

    return ThreadTimeout() if os.environ.get("LORASWEEP_TEST_PROBE") else None  # a rerun from sweep.yaml


class CrashOnce(TrainerCallback):
    """Raises at ``step`` the first time only: a marker file in $LORASWEEP_TEST_FAULT_DIR remembers
    it (a lost node or a neighbour's out-of-memory, which a retry gets past)."""

    def __init__(self, marker, step: int):
        self.marker, self.step = marker, step

    def on_step_begin(self, args, state, control, **kw):
        if state.global_step + 1 == self.step and not self.marker.exists():
            self.marker.touch()
            raise RuntimeError(f"crash_once: injected failure at step {self.step}")


def crash_once(trial):
    import os
    from pathlib import Path

    folder = os.environ.get("LORASWEEP_TEST_FAULT_DIR")
    return CrashOnce(Path(folder) / f"crashed-{trial.knobs.get('learning_rate')}", 5) if folder else None
