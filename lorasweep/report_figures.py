"""The report's Plotly figures, one per entry of ``PLOTS`` (in the page's order), drawn from a
``SweepData`` (lorasweep/report_data.py); a plot the sweep has no data for yet is left out.
lorasweep/report.py puts them on the page, the W&B summary run logs them."""

from __future__ import annotations

import json
import math

from lorasweep.report_data import SweepData, _finite, best_so_far, rung_of


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

