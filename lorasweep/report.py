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
report_data.py reads it, report_figures.py draws the plots; this module lays out the tables and
writes both files.
"""

from __future__ import annotations

import html
import math
import sys

from lorasweep import log
from lorasweep import storage
from lorasweep.report_data import SweepData, Trial, best_so_far, load, rung_of
from lorasweep.report_figures import figures


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
    known = {r["trial_id"]: r.get("known_point") or "" for r in data.ranked}
    names = [*sel.get("order", []), *(["base"] if "base" in sel["models"] else [])]
    rows = [[("untrained model" if n == "base" else n), ("" if n == "base" else known.get(n, "")),
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


# title and note for each plot: a key for every name in report_figures.PLOTS
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


# ----------------------------------------------------------------------------- the command


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
    log.say(f"report: {html_path} (and {md_path.rsplit('/', 1)[-1]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
