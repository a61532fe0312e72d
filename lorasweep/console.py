"""What a sweep prints while it runs: one line per event that matters, and a compact table of the
trials now and then. It replaces Tune's own output (its per-trial config boxes carry the whole
nested settings) unless ``--verbose``.

    [lorasweep] 5fd7d50b started: r=8 lora_alpha=16 use_rslora=True packing=True warmup_ratio=0.1 learning_rate=0.001
    [lorasweep] 5fd7d50b step 2/31, 1.3k tokens: eval_loss 1.1620
    [lorasweep] 5fd7d50b passed ASHA rung 1 (15k tokens): eval_loss 0.9932
    [lorasweep] f0235a13 stopped by ASHA at rung 1 (15k tokens): eval_loss 1.1490, sweep best 0.9932
    [lorasweep] 5fd7d50b finished: eval_loss 0.9130 at step 31 (best 0.9130), 15.5s
    [lorasweep] 1a2b3c4d failed at step 3: non-finite loss (nan) at step 3; traceback: runs/.../trial_1a2b3c4d/error.txt

A report line is printed for a trial's first report, at each ASHA rung it passes, and otherwise
at most every ``every_s`` seconds per trial; the table at most every ``table_every_s`` seconds, when
something changed. A smoke sweep's console fits on one screen per minute.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

from ray.tune import Callback

from common.errors import root_cause_line
from lorasweep import log
from lorasweep.tables import aligned


def _num(v) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, int):
        return str(v)
    return f"{v:.4g}"


def tokens(n) -> str:
    n = float(n or 0)
    return f"{n / 1e6:.3g}M" if n >= 1e6 else f"{n / 1e3:.3g}k" if n >= 1e3 else f"{n:.0f}"


class Console(Callback):
    def __init__(self, knobs: list[str], metric: str, mode: str, rungs: list[int], every_s: float = 30.0,
                 table_every_s: float = 60.0, out=None, prune_metric: str = ""):
        self.knobs, self.metric, self.mode, self.rungs = knobs, metric, mode, rungs
        self.prune_metric = prune_metric if prune_metric != metric else ""  # what ASHA judges, when it differs
        self.every_s, self.table_every_s = every_s, table_every_s
        self.out = out
        self._printed_at: dict[str, float] = {}
        self._rung: dict[str, int] = {}
        self._best: float | None = None
        self._table_at = time.monotonic()
        self._changed = False

    # ------------------------------------------------------------------ events

    def on_trial_start(self, iteration, trials, trial, **info):
        knobs = " ".join(f"{k}={_num(trial.config.get(k))}" for k in self.knobs)
        self._say(f"{trial.trial_id} started: {knobs}")
        self._printed_at[trial.trial_id] = time.monotonic()
        self._changed = True

    def on_trial_restore(self, iteration, trials, trial, **info):
        self._say(f"{trial.trial_id} restored from its last checkpoint")

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._say(f"{trial.trial_id} hit an error and restarts from its last checkpoint")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        value = result.get(self.metric)
        if _finite(value):
            self._best = value if self._best is None else (min if self.mode == "min" else max)(self._best, value)
        tid, now = trial.trial_id, time.monotonic()
        seen = result.get("tokens_seen", 0)
        rung = sum(1 for r in self.rungs if seen >= r)
        if rung > self._rung.get(tid, 0) and not result.get("finished"):
            self._rung[tid] = rung
            self._say(f"{tid} reached ASHA rung {rung} ({tokens(self.rungs[rung - 1])} tokens): "
                      f"{self.metric} {_num(value)}{self._judged(result)}")
        elif result.get("training_iteration") == 1 or now - self._printed_at.get(tid, 0) >= self.every_s:
            planned = f"/{result['max_steps']}" if result.get("max_steps") else ""
            self._say(f"{tid} step {result.get('step')}{planned}, {tokens(seen)} tokens: {self.metric} {_num(value)}")
        else:
            return
        self._printed_at[tid] = now
        self._changed = True

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        best = _best_of(trial, self.metric, self.mode, last)
        if last.get("finished"):
            self._say(f"{trial.trial_id} finished: {self.metric} {_num(best)} (best of the trial) at "
                      f"{tokens(last.get('tokens_seen'))} tokens, {last.get('time_total_s', 0):.0f}s")
        else:
            rung = sum(1 for r in self.rungs if last.get("tokens_seen", 0) >= r)
            where = f"at rung {rung} ({tokens(self.rungs[rung - 1])} tokens)" if rung else ""
            self._say(f"{trial.trial_id} stopped by ASHA {where}: {self.metric} {_num(last.get(self.metric))}"
                      f"{self._judged(last)}, sweep best {_num(self._best)}")
        self._changed = True

    def on_trial_error(self, iteration, trials, trial, **info):

        last = trial.last_result or {}
        # Tune has just written the traceback to the trial's local folder; storage gets it later
        local = trial.error_file
        text = Path(local).read_text(errors="replace") if local and Path(local).is_file() else trial.get_error()
        reason = root_cause_line(text) if text else "no error text (see the trial's folder)"
        # the last report's step, unless the reason names the step it failed at
        at = f" after step {last['step']}" if last.get("step") is not None and " step " not in reason else ""
        where = f"{trial.path.rstrip('/')}/error.txt" if trial.path else "its trial folder"  # under --storage-path
        self._say(f"{trial.trial_id} failed{at}: {reason}; traceback: {where}")
        self._changed = True

    def on_step_end(self, iteration, trials, **info):
        now = time.monotonic()
        if self._changed and now - self._table_at >= self.table_every_s:
            self._table_at, self._changed = now, False
            self._print(table(trials, self.knobs, self.metric, self.mode))

    def _judged(self, result: dict) -> str:
        return f" (ASHA judges {self.prune_metric} {_num(result.get(self.prune_metric))})" if self.prune_metric else ""

    # ------------------------------------------------------------------ output

    def _say(self, text: str) -> None:
        if self.out is None:
            log.say(text)
        else:  # a stream of its own (bench/): the same line
            self._print(f"[lorasweep] {text}")

    def _print(self, text: str) -> None:
        print(text, file=self.out or sys.stdout, flush=True)


def table(trials, knobs: list[str], metric: str, mode: str, limit: int = 12) -> str:
    """Knobs, the best objective and the state of each trial: running ones first, then the best."""

    sign = 1 if mode == "min" else -1
    order = {"RUNNING": 0, "PENDING": 1}

    def key(t):
        best = _best_of(t, metric, mode, t.last_result or {})
        return (order.get(t.status, 2), best is None, sign * (best or 0))

    shown = sorted(trials, key=key)
    cols = ["trial", *knobs, f"best {metric}", "tokens", "state"]
    rows = []
    for t in shown[:limit]:
        last = t.last_result or {}
        state = {"RUNNING": "running", "PENDING": "pending", "ERROR": "failed"}.get(
            t.status, "finished" if last.get("finished") else "stopped")
        best = _best_of(t, metric, mode, last)
        rows.append([t.trial_id, *(_num(t.config.get(k)) for k in knobs),
                     "" if best is None else _num(best), tokens(last.get("tokens_seen")), state])
    lines = aligned([cols, *rows])
    counts = {}
    for t in trials:
        name = {"ERROR": "failed", "TERMINATED": "ended"}.get(t.status, t.status.lower())
        counts[name] = counts.get(name, 0) + 1
    head = f"[lorasweep] trials: {', '.join(f'{n} {s}' for s, n in sorted(counts.items()))}"
    more = [f"  ... and {len(shown) - limit} more"] if len(shown) > limit else []
    return "\n".join([head, *("  " + line for line in lines), *more])


def _best_of(trial, metric: str, mode: str, last: dict):
    """The trial's best ``metric`` so far (Tune keeps min/max of every reported number)."""
    stats = getattr(trial, "metric_analysis", {}).get(metric) or {}
    value = stats.get(mode, last.get(metric))
    return value if _finite(value) else None


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
