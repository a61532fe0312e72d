"""The leaderboard: one row per trial from Tune's results (its knobs, the objective at its best and
last report, cost, status), ranked, the Pareto front marked, written to ``leaderboard.csv`` and
``leaderboard.json`` and printed; after ``--repeats``, each configuration's spread."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from lorasweep import log
from lorasweep import storage
from lorasweep.tables import aligned
from common.errors import root_cause_line

LEADERBOARD_FIELDS = ("rank", "trial_id", "known_point", "status", "pareto", "device_hours", "best_step", "best_tokens_seen", "steps", "tokens_seen",
                      "tokens_per_s", "wall_time_s", "peak_mem_gb", "checkpoint", "error")


def best_key(metric: str) -> str:
    return f"best_{metric}"


def leaderboard_rows(grid, knobs: list[str], metric: str = "eval_loss", mode: str = "min",
                     reported: tuple[str, ...] = (), storage_path: str = "", space=None) -> list[dict]:
    """One row per trial: its knobs, the objective at its best report (``best_<metric>``) and at its
    last (``final_<metric>``), the task's other metrics at that best report, cost and status.
    ``storage_path``: the sweep's --storage-path; on s3:// or gs:// Ray reports checkpoint paths without
    the scheme ('bucket/...'), which is put back here so they can be read. ``space``: the sweep's
    SearchSpace, whose ``known_point_label`` marks the trials at the recipe's known points (``seed``)."""
    best_col, final_col = best_key(metric), f"final_{metric}"
    scheme = storage.scheme(storage_path)
    rows = []
    for result in grid:
        df = result.metrics_dataframe
        if df is not None and "checkpoint_path" not in df and "checkpoint_dir_name" in df:
            # a trial trained in its own process checkpoints to Tune: <trial folder>/<checkpoint_dir_name>
            df["checkpoint_path"] = df["checkpoint_dir_name"].map(
                lambda name: f"{result.path.rstrip('/')}/{name}" if isinstance(name, str) and name else None)
        if scheme and df is not None and "checkpoint_path" in df:
            df["checkpoint_path"] = df["checkpoint_path"].map(
                lambda p: storage.with_scheme(p, scheme) if isinstance(p, str) else p)
        config = result.config or {}
        row = {"trial_id": (result.metrics or {}).get("trial_id") or Path(result.path).name.split("_")[1]}
        row.update({k: config.get(k) for k in knobs})
        if "alpha_ratio" in knobs and "trial" in config:  # --alpha-mode ratio: the alpha it trained with too
            from trainers.config import TrialConfig

            row["lora_alpha"] = TrialConfig.from_tune(config).effective.lora_alpha
        if space is not None:
            row["known_point"] = space.known_point_label(config)
        if df is not None and metric in df and df[metric].notna().any():
            best = _best_report(df, metric, mode)
            last = df.iloc[-1]
            row[best_col] = float(best[metric])
            row.update({m: float(best[m]) for m in reported if m != metric and m in df and best[m] == best[m]})
            if "eval_loss" in df and best.get("eval_loss") == best.get("eval_loss"):
                row.setdefault("eval_loss", float(best["eval_loss"]))  # the tie-break, always at hand
            row.update(
                best_step=int(best.get("step", 0)),
                best_tokens_seen=int(best.get("tokens_seen", 0)),
                steps=int(last.get("step", 0)),
                tokens_seen=int(last.get("tokens_seen", 0)),
                tokens_per_s=round(float(last.get("tokens_seen", 0)) / max(float(last.get("train_time_s", 0)) or float(last.get("time_total_s", 1)), 1e-9), 1),
                wall_time_s=round(float(last.get("time_total_s", 0)), 1),
                peak_mem_gb=round(float(df["peak_mem_gb"].max()), 3) if "peak_mem_gb" in df else None,
                checkpoint=best.get("checkpoint_path"),
                status="completed" if bool(last.get("finished", False)) else "stopped early",
            )
            row[final_col] = float(last[metric])
            if "device_hours" in df and last.get("device_hours") == last.get("device_hours"):
                row["device_hours"] = float(last["device_hours"])  # what the whole trial cost
        else:
            row.update(status="no report")
        if result.error is not None:
            row["status"] = "failed"
            row["error"] = root_cause_line(result.error)
        rows.append(row)
    sign = 1 if mode == "min" else -1
    # Failed trials go below every healthy one whatever they reached before failing: their
    # adapters are never exported. Ties (F1 on a few hundred rows ties often) go to the lower eval
    # loss at the best report, a smooth signal, never to the order trials ran in.
    rows.sort(key=lambda r: (r["status"] == "failed", r.get(best_col) is None, sign * (r.get(best_col) or 0),
                             tie_loss(r)))
    for i, r in enumerate(rows, 1):
        r["rank"] = i
    return rows


def add_repeats(sweep, rows: list[dict], grid) -> None:
    """After ``--repeats``: each repeated configuration's row gets ``runs``, ``mean_<metric>`` and
    ``std_<metric>`` (sample standard deviation) over its first run and its repeats, each at its best
    report; the leaderboard is written again and the console says which of the top are within noise."""
    import statistics

    from trainers.tasks import get_task

    knobs, metric, mode = list(sweep.space.params), sweep.space.metric, sweep.space.mode
    best = best_key(metric)
    repeats = leaderboard_rows(grid, [*knobs, "repeat"], metric, mode, (), sweep.options.storage_path)
    summary = []
    for row in rows:
        same = [r for r in repeats if r.get(best) is not None and all(r.get(k) == row.get(k) for k in knobs)]
        if not same or row.get(best) is None:
            continue
        values = [row[best], *(r[best] for r in same)]
        row.update({"runs": len(values), f"mean_{metric}": statistics.fmean(values),
                    f"std_{metric}": statistics.stdev(values)})
        summary.append(row)
    with storage.writes(f"check that --storage-path {sweep.options.storage_path!r} has free space and write permission"):
        write_leaderboard(rows, knobs, sweep.sweep_dir, metric, get_task(sweep.settings.task).metric_names(sweep.settings))
    mean, std = f"mean_{metric}", f"std_{metric}"
    log.say("over repeats: " + "; ".join(
        f"{r['trial_id']} {metric} {r[mean]:.4g} ± {r[std]:.2g} ({r['runs']} runs)" for r in summary))
    if len(summary) >= 2:
        a, b = summary[0], summary[1]
        close = abs(a[mean] - b[mean]) <= a[std] + b[std]
        log.say(f"{a['trial_id']} and {b['trial_id']} are {'within' if close else 'outside'} each "
              f"other's spread{': either is as good, by this budget' if close else ''}")


def mark_pareto(rows: list[dict], objectives: list[str]) -> list[dict]:
    """With two objectives, ``pareto`` on each healthy row: True where no other trial is at least as
    good on both and better on one (the first objective at its best report, the second as the
    leaderboard holds it: device_hours is the trial's whole cost). Returns the front, best first."""
    from trainers.tasks import metric_mode

    if len(objectives) < 2:
        return []
    (first, second), sign = objectives, [1 if metric_mode(m) == "min" else -1 for m in objectives]
    points = {id(r): (sign[0] * r[best_key(first)], sign[1] * r[second]) for r in rows
              if r["status"] != "failed" and r.get(best_key(first)) is not None and r.get(second) is not None}
    front = []
    for r in rows:
        p = points.get(id(r))
        dominated = p is not None and any(q[0] <= p[0] and q[1] <= p[1] and q != p for q in points.values())
        r["pareto"] = p is not None and not dominated
        if r["pareto"]:
            front.append(r)
    return front


def tie_loss(row: dict) -> float:
    """A row's eval loss at its best report, the tie-break (inf when it has none)."""
    v = row.get("eval_loss")
    return float(v) if isinstance(v, (int, float)) and v == v else float("inf")


def _best_report(df, metric: str, mode: str):
    """The report with the best ``metric`` whose checkpoint Ray kept, among equals the one with the
    lowest eval loss. Ray Train keeps the best two by the same metric, but a tie (accuracy and F1
    tie often on a small eval split) may have been resolved the other way round: among equals,
    take a report whose checkpoint still exists."""
    scored = df[df[metric].notna()]
    ordered = scored.sort_values(metric, ascending=(mode == "min"), kind="stable")
    top = ordered[ordered[metric] == ordered[metric].iloc[0]]
    fallback = top.iloc[0]  # no checkpoint left: the first report that reached it
    # later reports first (Ray replaced the earlier ones), then the lowest eval loss first
    top = top.iloc[::-1]
    if "eval_loss" in top and metric != "eval_loss":
        top = top.sort_values("eval_loss", kind="stable", na_position="last")
        fallback = top.iloc[0]
    if "checkpoint_path" in top:
        for _, report in top.iterrows():
            if isinstance(report.get("checkpoint_path"), str) and storage.exists(report["checkpoint_path"]):
                return report
    return fallback


def write_leaderboard(rows: list[dict], knobs: list[str], sweep_dir: str, metric: str = "eval_loss",
                      reported: tuple[str, ...] = ()) -> None:
    columns = ["rank", "trial_id", *knobs, best_key(metric), f"final_{metric}",
               *[c for c in (f"final_round_{metric}", f"final_round_{metric}_low", f"final_round_{metric}_high")
                 if any(c in r for r in rows)],
               *[c for c in ("runs", f"mean_{metric}", f"std_{metric}") if any(c in r for r in rows)],
               *[m for m in reported if m != metric],
               *[c for c in LEADERBOARD_FIELDS if c not in ("rank", "trial_id")]]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    storage.write_text(storage.join(sweep_dir, "leaderboard.csv"), buf.getvalue())
    storage.write_text(storage.join(sweep_dir, "leaderboard.json"), json.dumps(rows, indent=2, default=str))


def format_table(rows: list[dict], knobs: list[str], limit: int = 20, metric: str = "eval_loss") -> str:
    cols = ["rank", "trial_id", *knobs, best_key(metric), "tokens_seen", "wall_time_s", "status"]
    cols += [c for c in ("pareto", "known_point") if any(r.get(c) for r in rows)]
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v))  # noqa: E731
    return "\n".join(aligned([cols] + [[fmt(r.get(c)) for c in cols] for r in rows[:limit]]))
