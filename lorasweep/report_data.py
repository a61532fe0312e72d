"""A sweep folder read into a ``SweepData`` for the report (lorasweep/report.py): the config, each
trial's reports, status, error and cost, ASHA's rungs, the baseline, the leaderboard and the final
round; and what is computed from them alone (the best so far, the knobs' importances)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import cached_property

from lorasweep.budget import asha_grace, asha_rungs
from lorasweep import storage
from common.errors import root_cause_line


@dataclass
class Trial:
    trial_id: str
    knobs: dict
    reports: list[dict]  # every result.json line, in order
    status: str  # completed | stopped early | failed | running (an interrupted or live sweep)
    error: str | None = None
    error_file: str | None = None
    device_hours: float = 0.0
    started: float = 0.0  # unix time
    ended: float = 0.0

    def best(self, metric: str, mode: str) -> float | None:
        values = [r[metric] for r in self.reports if _finite(r.get(metric))]
        return (min if mode == "min" else max)(values) if values else None


@dataclass
class SweepData:
    sweep_dir: str
    config: dict
    knobs: list[str]
    metric: str
    mode: str
    trials: list[Trial]
    resources: dict  # what each trial held (TrialConfig.resources: the same for every trial)
    rungs: list[float] = field(default_factory=list)  # ASHA's milestones in tokens seen
    baseline: dict = field(default_factory=dict)
    ranked: list[dict] = field(default_factory=list)  # leaderboard.json, when the sweep wrote one
    selection: dict = field(default_factory=dict)  # selection.json: the final round (lorasweep/final_round.py)

    @property
    def unit(self) -> str:
        """What a trial's device-hours count: the GPUs it held, else its CPUs, times its wall time."""
        return "GPU-hours" if self.resources.get("gpus", 0) > 0 else "CPU-hours"

    @cached_property
    def importance(self) -> tuple[dict[str, dict[str, float]], str]:
        """``importances(self)``, computed once (a random forest per evaluator): the figure, the page
        and the Markdown all show it."""
        return importances(self)

    @property
    def name(self) -> str:
        return self.config.get("sweep", {}).get("name") or self.sweep_dir.rstrip("/").rsplit("/", 1)[-1]


# ----------------------------------------------------------------------------- reading a sweep


def load(sweep_dir: str) -> SweepData:
    config = storage.read_json(storage.join(sweep_dir, "sweep_config.json"))
    if config is None:
        raise FileNotFoundError(f"{sweep_dir} has no sweep_config.json: not a lorasweep sweep folder "
                                "(pass the folder --storage-path/--name made, e.g. runs/llama_finetome-smoke)")
    metric, mode = config["metric"], config["mode"]
    knobs = list(config.get("space") or [s.split(":", 1)[0] for s in config.get("search_space", [])])
    ranked = storage.read_json(storage.join(sweep_dir, "leaderboard.json")) or []
    status = {r["trial_id"]: r for r in ranked}
    tune_status = _tune_status(sweep_dir)  # before a leaderboard exists: a live or killed sweep
    trials, resources = [], {}
    for name in sorted(storage.list_names(sweep_dir)):
        if not name.startswith("trial_"):
            continue
        folder = storage.join(sweep_dir, name)
        text = storage.read_text(storage.join(folder, "result.json")) or ""
        reports = [json.loads(line) for line in text.splitlines() if line.strip()]
        params = storage.read_json(storage.join(folder, "params.json")) or (reports[-1]["config"] if reports else {})
        trial_id = name[len("trial_"):]
        error_text = storage.read_text(storage.join(folder, "error.txt"))
        row = status.get(trial_id, {})
        if error_text is not None or row.get("status") == "failed":
            state = "failed"
        elif row.get("status"):
            state = row["status"]
        elif reports and reports[-1].get("finished"):
            state = "completed"
        elif tune_status.get(trial_id) == "TERMINATED":
            state = "stopped early"
        else:
            state = "running"  # or pending: a live sweep, or one killed before it finished
        error = row.get("error") or (root_cause_line(error_text) if error_text else None)
        last = reports[-1] if reports else {}
        res = (params.get("trial") or {}).get("resources") or {}
        resources = resources or res
        held = res.get("workers", 1) * (res.get("gpus") or res.get("cpus") or 1)
        trials.append(Trial(
            trial_id=trial_id, knobs={k: params.get(k) for k in knobs}, reports=reports, status=state, error=error,
            error_file=storage.join(folder, "error.txt") if error_text is not None else None,
            device_hours=held * float(last.get("time_total_s", 0.0)) / 3600,
            started=float(last.get("timestamp", 0)) - float(last.get("time_total_s", 0)),
            ended=float(last.get("timestamp", 0))))
    sweep, settings = config.get("sweep", {}), config.get("settings", {})
    rungs = []
    if sweep.get("scheduler") == "asha" and settings.get("max_tokens"):
        max_t = settings["max_tokens"]
        rungs = asha_rungs(max_t, asha_grace(max_t, sweep.get("grace_tokens", 0)), sweep.get("reduction_factor", 3))
    return SweepData(sweep_dir=sweep_dir, config=config, knobs=knobs, metric=metric, mode=mode, trials=trials,
                     resources=resources, rungs=rungs,
                     baseline=storage.read_json(storage.join(sweep_dir, "baseline.json")) or {}, ranked=ranked,
                     selection=storage.read_json(storage.join(sweep_dir, "selection.json")) or {})


def _tune_status(sweep_dir: str) -> dict[str, str]:
    """Trial id -> Tune's status (TERMINATED, RUNNING, ERROR, ...) from its newest experiment state."""
    states = sorted(n for n in storage.list_names(sweep_dir) if n.startswith("experiment_state-") and n.endswith(".json"))
    state = storage.read_json(storage.join(sweep_dir, states[-1])) if states else None
    out = {}
    for entry in (state or {}).get("trial_data", []):
        trial = json.loads(entry[0]) if isinstance(entry[0], str) else entry[0]
        out[trial.get("trial_id")] = trial.get("status")
    return out


def rung_of(tokens: float, rungs: list[int]) -> int:
    """How many of ASHA's rungs a trial with ``tokens`` seen has passed (1 = the first)."""
    return sum(1 for r in rungs if tokens >= r)


# ----------------------------------------------------------------------------- analysis


def importances(data: SweepData) -> tuple[dict[str, dict[str, float]], str]:
    """``({evaluator: {knob: importance}}, why-not)``: Optuna's evaluators on an in-memory study
    rebuilt from the trials (each trial's best report is its value, as the leaderboard ranks them).
    fANOVA (Optuna's own, a random forest from scikit-learn) and PED-ANOVA; a knob that never
    varied is left out (its importance is undefined)."""
    import optuna

    from search_spaces import distributions

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    done = [(t, t.best(data.metric, data.mode)) for t in data.trials if t.status != "failed"]
    done = [(t, v) for t, v in done if v is not None and all(t.knobs.get(k) is not None for k in data.knobs)]
    if len(done) < 3:
        return {}, f"{len(done)} trial(s) with a {data.metric}: importances need at least 3"
    dists = distributions(data.config.get("space") or {})
    varied = [k for k in data.knobs if k in dists and len({json.dumps(t.knobs[k]) for t, _ in done}) > 1]
    if not varied:
        return {}, "no knob took more than one value"
    study = optuna.create_study(direction="minimize" if data.mode == "min" else "maximize")
    for t, value in done:
        params = {k: t.knobs[k] for k in varied}
        try:
            study.add_trial(optuna.trial.create_trial(params=params, distributions={k: dists[k] for k in varied},
                                                      value=value))
        except ValueError:  # a value outside the recorded space (a seed moved by hand): leave it out
            continue
    out = {}
    evaluators = {"fANOVA": optuna.importance.FanovaImportanceEvaluator(seed=0),
                  "PED-ANOVA": optuna.importance.PedAnovaImportanceEvaluator()}
    reasons = []
    for name, evaluator in evaluators.items():
        try:
            out[name] = dict(optuna.importance.get_param_importances(study, evaluator=evaluator))
        except (ValueError, RuntimeError, ZeroDivisionError) as e:
            reasons.append(f"{name}: {e}")
    return out, "; ".join(reasons)


def best_so_far(data: SweepData) -> list[dict]:
    """Trials in the order they ended, with the cumulative device-hours and the best objective so far."""
    better = min if data.mode == "min" else max
    out, best, hours = [], None, 0.0
    for t in sorted((t for t in data.trials if t.reports), key=lambda t: t.ended):
        value = t.best(data.metric, data.mode)
        hours += t.device_hours
        if value is not None and t.status != "failed":
            best = value if best is None else better(best, value)
        out.append({"trial_id": t.trial_id, "value": value, "best": best, "hours": hours, "status": t.status})
    return out



def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
