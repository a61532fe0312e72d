"""The sweep report: ``report.html`` (one file that opens from disk with no network: Plotly's
JavaScript and the data are inlined) and ``report.md`` (the same tables, for a terminal, a pull
request or a wiki). Written at the end of every sweep, finished or interrupted, and on demand:

    python -m lorasweep.report runs/llama_finetome-smoke          # any sweep folder, even mid-sweep
    python -m lorasweep.report s3://bucket/sweeps/llama_finetome-real

What it shows: the leaderboard; the best objective so far against trials and against device-hours;
the knobs against the objective (parallel coordinates); which knobs mattered (Optuna's fANOVA and
PED-ANOVA importance evaluators on a study rebuilt from the trials); every trial's objective against
tokens seen, with ASHA's rungs and stops marked; failed trials and why; baseline against tuned with
the per-example distributions; the settings and the versions of the libraries the sweep ran with.

Everything is read from the sweep folder (``sweep_config.json``, each ``trial_*/result.json``,
``error.txt``, ``leaderboard.json``, ``baseline.json``): no Ray, no recipe, no model.
"""

from __future__ import annotations

import html
import json
import math
import sys
from dataclasses import dataclass, field
from functools import cached_property

from lorasweep.preflight import asha_grace, asha_rungs
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


# ----------------------------------------------------------------------------- figures


def figures(data: SweepData) -> dict:
    """name -> plotly Figure, for every plot the sweep has data for (``PLOTS`` order)."""
    figs = {}
    for name, draw in PLOTS.items():
        fig = draw(data)
        if fig is not None:
            m = fig.layout.margin
            fig.update_layout(template="plotly_white", margin=dict(l=m.l or 60, r=30, b=50, t=m.t or 60))
            figs[name] = fig
    return figs


def _fig_best_so_far(data: SweepData):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    seq = [p for p in best_so_far(data) if p["value"] is not None]
    if not seq:
        return None
    fig = make_subplots(rows=1, cols=2, subplot_titles=("against trials (in the order they ended)",
                                                        f"against {data.unit} spent"))
    n = list(range(1, len(seq) + 1))
    hours = [p["hours"] for p in seq]
    text = [f"{p['trial_id']} ({p['status']})" for p in seq]
    for col, x in ((1, n), (2, hours)):
        fig.add_trace(go.Scatter(x=x, y=[p["value"] for p in seq], mode="markers", name="trial's best",
                                 text=text, marker=dict(color="#9aa5b1"), showlegend=col == 1), row=1, col=col)
        fig.add_trace(go.Scatter(x=x, y=[p["best"] for p in seq], mode="lines", line_shape="hv",
                                 name="best so far", line=dict(color="#1f77b4", width=3), showlegend=col == 1),
                      row=1, col=col)
    fig.update_xaxes(title_text="trials ended", row=1, col=1)
    fig.update_xaxes(title_text=data.unit, row=1, col=2)
    fig.update_yaxes(title_text=data.metric)
    fig.update_layout(title=f"Best {data.metric} so far", height=420)
    return fig


def _fig_parallel(data: SweepData):
    import plotly.graph_objects as go

    rows = [(t, t.best(data.metric, data.mode)) for t in data.trials]
    rows = [(t, v) for t, v in rows if v is not None and t.status != "failed"]
    if len(rows) < 2:
        return None
    space = data.config.get("space") or {}
    dims = []
    for k in data.knobs:
        values = [t.knobs.get(k) for t, _ in rows]
        spec = space.get(k, {})
        if "choice" in spec or any(isinstance(v, (bool, str)) or v is None for v in values):
            levels = list(spec.get("choice") or sorted({str(v) for v in values}))
            index = {json.dumps(v): i for i, v in enumerate(levels)}
            dims.append(dict(label=k, values=[index.get(json.dumps(v), 0) for v in values],
                             tickvals=list(range(len(levels))), ticktext=[str(v) for v in levels],
                             range=[-0.25, len(levels) - 0.75]))
        elif "loguniform" in spec:
            low, high = spec["loguniform"]
            ticks = [10 ** e for e in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)]
            dims.append(dict(label=f"{k} (log)", values=[math.log10(v) for v in values],
                             range=[math.log10(low), math.log10(high)],
                             tickvals=[math.log10(x) for x in ticks], ticktext=[f"{x:g}" for x in ticks]))
        else:
            dims.append(dict(label=k, values=values))
    objective = [v for _, v in rows]
    dims.append(dict(label=data.metric, values=objective))
    fig = go.Figure(go.Parcoords(
        dimensions=dims,
        # the better end of the objective is bright, whichever way it points
        line=dict(color=objective, colorscale="Viridis", reversescale=data.mode == "min", showscale=True,
                  colorbar=dict(title=data.metric))))
    fig.update_layout(title=f"Knobs against {data.metric} (one line per trial; bright is better)", height=480,
                      margin=dict(t=110, l=80))
    return fig


def _fig_importance(data: SweepData):
    import plotly.graph_objects as go

    found, _ = data.importance
    if not found:
        return None
    fig = go.Figure()
    knobs = list(next(iter(found.values())))
    for evaluator, values in found.items():
        fig.add_trace(go.Bar(y=knobs, x=[values.get(k, 0.0) for k in knobs], orientation="h", name=evaluator))
    fig.update_layout(title=f"Which knobs mattered for {data.metric} (Optuna importance evaluators)",
                      xaxis_title="importance (each evaluator's sum is 1)", barmode="group",
                      yaxis=dict(type="category", autorange="reversed", automargin=True), height=140 + 60 * len(knobs))
    return fig


def _fig_curves(data: SweepData):
    import plotly.graph_objects as go

    fig = go.Figure()
    stops_x, stops_y, stops_text, fail_x, fail_y, fail_text = [], [], [], [], [], []
    for t in data.trials:
        pts = [(r.get("tokens_seen", 0), r[data.metric]) for r in t.reports if _finite(r.get(data.metric))]
        if not pts:
            continue
        fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines+markers",
                                 name=f"{t.trial_id} ({t.status})", marker=dict(size=4),
                                 hovertemplate=f"{t.trial_id}<br>tokens %{{x:,}}<br>{data.metric} %{{y:.4f}}"))
        if t.status == "stopped early":
            stops_x.append(pts[-1][0])
            stops_y.append(pts[-1][1])
            stops_text.append(f"{t.trial_id}: stopped by ASHA at rung {rung_of(pts[-1][0], data.rungs)}")
        elif t.status == "failed":
            fail_x.append(pts[-1][0])
            fail_y.append(pts[-1][1])
            fail_text.append(f"{t.trial_id}: failed: {t.error or ''}")
    if not fig.data:
        return None
    if stops_x:
        fig.add_trace(go.Scatter(x=stops_x, y=stops_y, mode="markers", name="stopped by ASHA", text=stops_text,
                                 marker=dict(symbol="x", size=12, color="black")))
    if fail_x:
        fig.add_trace(go.Scatter(x=fail_x, y=fail_y, mode="markers", name="failed", text=fail_text,
                                 marker=dict(symbol="x-open", size=14, color="red")))
    for i, rung in enumerate(data.rungs, 1):
        fig.add_vline(x=rung, line_dash="dash", line_color="#888",
                      annotation_text=f"ASHA rung {i}", annotation_position="top")
    fig.update_layout(title=f"{data.metric} against tokens seen, every trial", xaxis_title="tokens seen",
                      yaxis_title=data.metric, height=480)
    return fig


def _fig_baseline(data: SweepData):
    """Base against tuned: the per-example distributions where the recipe keeps them (``per_example``
    lists of numbers: box plots), else per-label accuracy from ``predictions``/``references``."""
    import plotly.graph_objects as go

    runs = {k: v for k, v in data.baseline.items() if isinstance(v, dict)}
    if not runs:
        return None
    fig = go.Figure()
    boxes = {name: r.get("per_example") for name, r in runs.items() if isinstance(r.get("per_example"), dict)}
    if boxes:
        for name, per in boxes.items():
            for metric, values in per.items():
                fig.add_trace(go.Box(y=values, name=f"{name}: {metric}", boxpoints="outliers"))
        fig.update_layout(title="Per-example metrics, base against tuned", yaxis_title="score", height=460)
        return fig
    labelled = {name: r for name, r in runs.items() if r.get("predictions") and r.get("references")}
    if not labelled:
        return None
    labels = sorted({str(x) for r in labelled.values() for x in r["references"]})
    for name, r in labelled.items():
        acc = []
        for label in labels:
            pairs = [(p, y) for p, y in zip(r["predictions"], r["references"]) if str(y) == label]
            acc.append(sum(str(p) == str(y) for p, y in pairs) / len(pairs) if pairs else 0.0)
        fig.add_trace(go.Bar(x=[f"label {x}" for x in labels], y=acc, name=name))
    fig.update_layout(title="Per-label accuracy on the test split, base against tuned", yaxis_title="accuracy",
                      yaxis_range=[0, 1], barmode="group", height=420)
    return fig


def _fig_pareto(data: SweepData):
    """Quality against cost for a two-objective sweep: every trial, the Pareto front joined up."""
    import plotly.graph_objects as go

    objectives = str(data.config.get("sweep", {}).get("objective", "")).split(",")
    if len(objectives) != 2 or not any("pareto" in r for r in data.ranked):
        return None
    first, second = objectives
    rows = [r for r in data.ranked if r.get(f"best_{first}") is not None and r.get(second) is not None]
    front = sorted((r for r in rows if r.get("pareto")), key=lambda r: r[second])
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[r[second] for r in rows], y=[r[f"best_{first}"] for r in rows], mode="markers",
                             name="trials", text=[r["trial_id"] for r in rows], marker=dict(color="#999", size=9)))
    fig.add_trace(go.Scatter(x=[r[second] for r in front], y=[r[f"best_{first}"] for r in front],
                             mode="lines+markers", name="Pareto front", text=[r["trial_id"] for r in front],
                             marker=dict(color="crimson", size=11)))
    fig.update_layout(title=f"{first} against {second}: the Pareto front", xaxis_title=second,
                      yaxis_title=f"best {first}", height=440)
    return fig


# name -> drawing function, in the order the page shows them
PLOTS = {"best_so_far": _fig_best_so_far, "pareto": _fig_pareto, "parallel": _fig_parallel,
         "importance": _fig_importance, "curves": _fig_curves, "baseline": _fig_baseline}


# ----------------------------------------------------------------------------- tables


def leaderboard_table(data: SweepData) -> tuple[list[str], list[list]]:
    best_col = f"best_{data.metric}"
    cols = ["rank", "trial", *data.knobs, best_col, "tokens seen", data.unit, "status"]
    order = {r["trial_id"]: r.get("rank", 0) for r in data.ranked}
    better = 1 if data.mode == "min" else -1

    def key(t: Trial):
        v = t.best(data.metric, data.mode)
        return (order.get(t.trial_id, math.inf), t.status == "failed", v is None, better * (v or 0))

    rows = []
    for i, t in enumerate(sorted(data.trials, key=key), 1):
        last = t.reports[-1] if t.reports else {}
        status = t.status
        if status == "stopped early" and data.rungs:
            status = f"stopped by ASHA at rung {rung_of(last.get('tokens_seen', 0), data.rungs)}"
        rows.append([i, t.trial_id, *[t.knobs.get(k) for k in data.knobs], t.best(data.metric, data.mode),
                     last.get("tokens_seen"), round(t.device_hours, 4), status])
    return cols, rows


def selection_table(data: SweepData) -> tuple[list[str], list[list]] | None:
    """The final round: each model scored again on the eval + validation rows, with its 95% interval."""
    sel = data.selection
    if not sel.get("models"):
        return None
    seeds = {r["trial_id"]: r.get("seed") or "" for r in data.ranked}
    names = [*sel.get("order", []), *(["base"] if "base" in sel["models"] else [])]
    rows = [[("untrained model" if n == "base" else n), ("" if n == "base" else seeds.get(n, "")),
             sel["models"][n]["value"], sel["models"][n]["low"], sel["models"][n]["high"]] for n in names]
    return ["model", "known point", sel["metric"], "95% CI low", "95% CI high"], rows


def selection_note(data: SweepData) -> str:
    sel = data.selection
    return (f"The top trials, the best known point and the untrained model scored again on {sel.get('rows')} rows "
            f"({sel.get('eval_rows')} eval + {sel.get('validation_rows')} validation; never the test split); the "
            "leaderboard's top follows this. Intervals by bootstrap over rows; comparisons paired on the same rows.")


def settings_table(data: SweepData) -> list[tuple[str, str]]:
    c, s, o = data.config, data.config.get("settings", {}), data.config.get("sweep", {})
    res = data.resources
    return [
        ("recipe / preset", f"{c.get('recipe')} / {c.get('preset')}"),
        ("model", s.get("model")), ("dataset", s.get("dataset")), ("task", s.get("task")),
        ("method / quantization / precision", f"{s.get('method')} / {s.get('quantization')} / {s.get('precision')}"),
        ("token budget per trial", f"{s.get('max_tokens'):,}" if s.get("max_tokens") else None),
        ("objective", f"{data.metric} ({data.mode})"),
        ("searcher / scheduler", f"{o.get('searcher')} / {o.get('scheduler')}"
         + (f" (rungs at {', '.join(f'{r:,.0f}' for r in data.rungs)} tokens)" if data.rungs else "")),
        ("trials / at once", f"{o.get('num_samples')} / {o.get('max_concurrent')}"),
        ("resources per trial", f"{res.get('workers', '?')} worker(s) x ({res.get('cpus', '?')} CPU, "
                                f"{res.get('gpus', '?')} GPU)" + (" in the trial's process" if res.get("in_trial_process") else "")),
        ("search seed / data seed", f"{o.get('seed')} / {s.get('seed')}"),
        ("search space", "; ".join(c.get("search_space", []))),
    ]


def samples_table(data: SweepData) -> tuple[list[str], list[list]] | None:
    """The generation recipes' sample prompts, with the reference and every scored model's answer."""
    from lorasweep.baseline import samples_rows

    rows = samples_rows(data.baseline)
    if not rows:
        return None
    cols = list(dict.fromkeys(k for r in rows for k in r))
    return cols, [[r.get(c) for c in cols] for r in rows]


def unavailable_notes(data: SweepData) -> list[str]:
    """``metric: reason`` for each metric the baseline could not compute (METEOR without WordNet)."""
    found = {m: why for r in data.baseline.values() if isinstance(r, dict)
             for m, why in (r.get("unavailable") or {}).items()}
    return [f"{m}: unavailable ({why})" for m, why in found.items()]


def baseline_table(data: SweepData) -> tuple[list[str], list[list]] | None:
    runs = {k: v for k, v in data.baseline.items() if isinstance(v, dict)}
    if not runs:
        return None
    metrics = [m for m in next(iter(runs.values())) if isinstance(next(iter(runs.values()))[m], float)]
    return ["metric", *runs], [[m, *(runs[r].get(m) for r in runs)] for m in metrics]


# ----------------------------------------------------------------------------- writing


def write(sweep_dir: str, data: SweepData | None = None, figs: dict | None = None) -> tuple[str, str]:
    """Write ``report.html`` and ``report.md`` into ``sweep_dir``; return their paths."""
    data = data or load(sweep_dir)
    figs = figures(data) if figs is None else figs
    html_path, md_path = storage.join(sweep_dir, "report.html"), storage.join(sweep_dir, "report.md")
    storage.write_text(html_path, render_html(data, figs))
    storage.write_text(md_path, render_md(data))
    return html_path, md_path


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    return "" if v is None else str(v)


def _html_table(cols, rows) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _md_table(cols, rows) -> str:
    cell = lambda v: _fmt(v).replace("|", "\\|")  # noqa: E731
    return "\n".join(["| " + " | ".join(map(cell, cols)) + " |", "|" + "---|" * len(cols),
                      *("| " + " | ".join(map(cell, row)) + " |" for row in rows)])


def _summary_line(data: SweepData) -> str:
    counts = {}
    for t in data.trials:
        counts[t.status] = counts.get(t.status, 0) + 1
    seq = [p for p in best_so_far(data) if p["best"] is not None]
    best = f"best {data.metric} {seq[-1]['best']:.4f}" if seq else f"no {data.metric} yet"
    total = sum(t.device_hours for t in data.trials)
    return (f"{len(data.trials)} trials ({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))}); {best}; "
            f"{total:.3f} {data.unit} in all")


SECTIONS = {
    "best_so_far": ("Progress", "The best objective so far, against trials and against what they cost. A curve that "
                    "is still falling says more trials would help."),
    "pareto": ("Quality against cost", "Each trial's best objective against the second objective; the red line "
               "joins the trials no other beats on both (--export-max-cost picks among them by a budget)."),
    "parallel": ("Knobs against the objective", "Drag along an axis to select a range."),
    "importance": ("Which knobs mattered", "How much of the objective's variance each knob explains, by two of "
                   "Optuna's evaluators on the trials' best values. With few trials, read it as a hint."),
    "curves": ("Learning curves", "Each trial's objective at every report. A cross marks a trial ASHA stopped at a "
               "rung (dashed lines); a red circle-cross a trial that failed."),
    "baseline": ("Baseline against tuned", "The base model and the best adapter on the same test rows."),
}

_CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.9em}th,td{border:1px solid #ddd;padding:.3em .6em;text-align:left}
th{background:#f3f5f7}.note{color:#555}.plot{margin-bottom:2em}code{background:#f3f5f7;padding:0 .2em}"""


def render_html(data: SweepData, figs: dict) -> str:
    found, why = data.importance
    parts = [f"<h1>Sweep {html.escape(data.name)}</h1>", f"<p>{html.escape(_summary_line(data))}</p>"]
    cols, rows = leaderboard_table(data)
    parts += ["<h2>Leaderboard</h2>", _html_table(cols, rows)]
    sel = selection_table(data)
    if sel is not None:
        parts += ["<h2>Final round: can the winner be told apart?</h2>",
                  f"<p class='note'>{html.escape(selection_note(data))}</p>", _html_table(*sel)]
        parts += [f"<p><b>{html.escape(v)}</b></p>" for v in data.selection.get("verdicts", [])]
    first = True
    for name, fig in figs.items():
        title, note = SECTIONS[name]
        parts += [f"<h2>{title}</h2>", f"<p class='note'>{html.escape(note)}</p>"]
        # plotly.js inlined once, with the first plot; no CDN, no MathJax: the file opens offline
        parts.append(f"<div class='plot'>{fig.to_html(full_html=False, include_plotlyjs=first, include_mathjax=False, div_id=f'plot-{name}', config={'displaylogo': False, 'responsive': True})}</div>")
        first = False
        if name == "importance":
            parts.append(_html_table(["knob", *found], [[k, *(found[e].get(k) for e in found)]
                                                        for k in next(iter(found.values()))]))
    if "importance" not in figs:
        parts += ["<h2>Which knobs mattered</h2>", f"<p class='note'>Not computed: {html.escape(why)}.</p>"]
    base = baseline_table(data)
    if base is not None:
        if "baseline" not in figs:
            parts += ["<h2>Baseline against tuned</h2>"]
        parts.append(_html_table(*base))
        parts += [f"<p class='note'>{html.escape(n)}</p>" for n in unavailable_notes(data)]
    samples = samples_table(data)
    if samples is not None:
        parts += ["<h2>Sample generations</h2>",
                  "<p class='note'>The first test prompts, answered by the base model and the best adapter "
                  "(samples.jsonl).</p>", _html_table(*samples)]
    failed = [t for t in data.trials if t.status == "failed"]
    parts.append(f"<h2>Failed trials ({len(failed)})</h2>")
    parts.append(_html_table(["trial", "at step", "reason", "traceback"],
                             [[t.trial_id, (t.reports[-1].get("step") if t.reports else None), t.error, t.error_file]
                              for t in failed]) if failed else "<p class='note'>None.</p>")
    parts += ["<h2>Settings</h2>", _html_table(["setting", "value"], settings_table(data))]
    versions = data.config.get("versions") or {}
    if versions:
        parts += ["<h2>Versions</h2>", _html_table(["library", "version"], list(versions.items()))]
    body = "\n".join(parts)
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(data.name)}: "
            f"lorasweep report</title><style>{_CSS}</style></head><body>\n{body}\n</body></html>\n")


def render_md(data: SweepData) -> str:
    found, why = data.importance
    out = [f"# Sweep {data.name}", "", _summary_line(data), "",
           "Interactive plots: `report.html` in this folder (opens offline).", "", "## Leaderboard", "",
           _md_table(*leaderboard_table(data)), ""]
    sel = selection_table(data)
    if sel is not None:
        out += ["## Final round: can the winner be told apart?", "", selection_note(data), "", _md_table(*sel), "",
                *(f"- **{v}**" for v in data.selection.get("verdicts", [])), ""]
    out += ["## Which knobs mattered", ""]
    if found:
        knobs = list(next(iter(found.values())))
        out.append(_md_table(["knob", *found], [[k, *(found[e].get(k) for e in found)] for k in knobs]))
    else:
        out.append(f"Not computed: {why}.")
    base = baseline_table(data)
    if base is not None:
        out += ["", "## Baseline against tuned", "", _md_table(*base), *(f"\n{n}" for n in unavailable_notes(data))]
    samples = samples_table(data)
    if samples is not None:
        out += ["", "## Sample generations", "", _md_table(*samples)]
    failed = [t for t in data.trials if t.status == "failed"]
    out += ["", f"## Failed trials ({len(failed)})", ""]
    out.append(_md_table(["trial", "reason", "traceback"], [[t.trial_id, t.error, t.error_file] for t in failed])
               if failed else "None.")
    out += ["", "## Settings", "", _md_table(["setting", "value"], settings_table(data))]
    if data.config.get("versions"):
        out += ["", "## Versions", "", _md_table(["library", "version"], list(data.config["versions"].items()))]
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------- storage


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def main(argv: list[str] | None = None, prog: str = "python -m lorasweep.report") -> int:
    import argparse

    p = argparse.ArgumentParser(prog=prog,
                                description="Write report.html and report.md for a sweep folder (finished, "
                                            "interrupted or still running).")
    p.add_argument("sweep_dir", help="the sweep's folder: <--storage-path>/<--name>, local or s3:// / gs://")
    args = p.parse_args(argv)
    try:
        html_path, md_path = write(args.sweep_dir.rstrip("/"))
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"[lorasweep] report: {html_path} (and {md_path.rsplit('/', 1)[-1]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
