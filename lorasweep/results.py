"""After the sweep: the leaderboard, the best adapters as plain PEFT folders, their model cards."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

from lorasweep import storage
from lorasweep.tables import aligned
from common.errors import StorageError, root_cause_line, os_reason
from lorasweep.versions import versions

# What an exported adapter folder keeps from a training checkpoint: the adapter and what is
# needed to use it (tokenizer, chat template). Optimizer/scheduler/RNG state stay behind.
_KEEP = ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json",
         "special_tokens_map.json", "chat_template.jinja", "tokenizer.model", "vocab.json", "merges.txt", "vocab.txt",
         # a full fine-tune's checkpoint is the whole model
         "config.json", "model.safetensors", "generation_config.json")
LEADERBOARD_FIELDS = ("rank", "trial_id", "seed", "status", "pareto", "device_hours", "best_step", "best_tokens_seen", "steps", "tokens_seen",
                      "tokens_per_s", "wall_time_s", "peak_mem_gb", "checkpoint", "error")


def best_key(metric: str) -> str:
    return f"best_{metric}"


def leaderboard_rows(grid, knobs: list[str], metric: str = "eval_loss", mode: str = "min",
                     reported: tuple[str, ...] = (), storage_path: str = "", space=None) -> list[dict]:
    """One row per trial: its knobs, the objective at its best report (``best_<metric>``) and at its
    last (``final_<metric>``), the task's other metrics at that best report, cost and status.
    ``storage_path``: the sweep's --storage-path; on s3:// or gs:// Ray reports checkpoint paths without
    the scheme ('bucket/...'), which is put back here so they can be read. ``space``: the sweep's
    SearchSpace, whose ``seed_label`` marks the trials at the recipe's known points (``seed``)."""
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
            row["seed"] = space.seed_label(config)
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
    print("[lorasweep] over repeats: " + "; ".join(
        f"{r['trial_id']} {metric} {r[mean]:.4g} ± {r[std]:.2g} ({r['runs']} runs)" for r in summary))
    if len(summary) >= 2:
        a, b = summary[0], summary[1]
        close = abs(a[mean] - b[mean]) <= a[std] + b[std]
        print(f"[lorasweep] {a['trial_id']} and {b['trial_id']} are {'within' if close else 'outside'} each "
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
    cols += [c for c in ("pareto", "seed") if any(r.get(c) for r in rows)]
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v))  # noqa: E731
    return "\n".join(aligned([cols] + [[fmt(r.get(c)) for c in cols] for r in rows[:limit]]))


def model_card(row: dict, knobs: list[str], sweep, rank: int) -> str:
    from trainers.tasks import get_task

    s, metric = sweep.settings, sweep.space.metric
    auto = get_task(s.task).auto_class().__name__
    full = row.get("method", s.method) == "full"
    hp = "\n".join(f"| `{k}` | {row.get(k)} |" for k in knobs)
    fixed = "\n".join(f"| `{k}` | {v} |" for k, v in s.to_dict().items() if k not in ("model", "dataset"))
    metrics = "\n".join(f"| {k} | {v:.4f} |" for k, v in row.items()
                        if isinstance(v, float) and k not in knobs and k not in ("tokens_per_s", "wall_time_s", "peak_mem_gb"))
    use = (f"model = {auto}.from_pretrained(\"<this folder>\")" if full else
           f"model = PeftModel.from_pretrained({auto}.from_pretrained(\"{s.model}\"), \"<this folder>\")")
    return f"""---
base_model: {s.model}
library_name: {'transformers' if full else 'peft'}
tags: [{'full-finetune' if full else 'lora'}, {'qlora, ' if s.quantization == '4bit' and not full else ''}lorasweep, {sweep.recipe.name}, {s.task}]
---
# {sweep.options.name}: rank {rank} {'model' if full else 'adapter'}

{'Fine-tuned' if full else 'LoRA adapter for'} `{s.model}`, trained on `{s.dataset}` (task `{s.task}`) and chosen by
the lorasweep sweep `{sweep.options.name}` (recipe `{sweep.recipe.name}`, preset `{sweep.preset}`), ranked
{rank} of the sweep's trials by `{metric}` on the held-out eval split.

| metric (at the best report) | value |
|---|---|
{metrics}
| at step / tokens seen | {row.get('best_step')} / {row.get('best_tokens_seen')} |
| trial | {row.get('trial_id')} |

## Searched hyperparameters
| knob | value |
|---|---|
{hp}

## Fixed settings
| setting | value |
|---|---|
{fixed}

## Use
```python
from peft import PeftModel
from transformers import {auto}, AutoTokenizer
{use}
tokenizer = AutoTokenizer.from_pretrained("<this folder>")
```

## Reproduce
The sweep's folder holds `sweep.yaml`, its resolved config as a sweep file:
`lorasweep run --config sweep.yaml --name {sweep.options.name}-2` runs the same sweep again.
"""


def export_best(rows: list[dict], knobs: list[str], sweep, top_k: int, folder: str = "best_adapters") -> list[str]:
    """Copy the top-k trials' best checkpoints to ``best_adapters/rank_<i>/`` as PEFT folders.

    Built in a temp folder and renamed into place, so a crash never leaves a folder that looks
    complete. A previous export (from an earlier run of a resumed sweep) is kept, renamed with
    its time, never overwritten."""
    from ray.train import Checkpoint

    from trainers.data import progress

    cap = sweep.options.export_max_cost
    chosen = [r for r in rows if r.get("checkpoint") and r["status"] != "failed"
              and (not cap or (r.get("device_hours") is not None and r["device_hours"] <= cap))][:top_k]
    if not chosen:
        return []
    dest = storage.join(sweep.sweep_dir, folder)
    staging = Path(tempfile.mkdtemp(prefix=f"{folder}-"))
    staging.chmod(0o755)  # mkdtemp makes it owner-only
    try:
        for i, row in enumerate(progress(chosen, "exporting the best adapters"), 1):
            out = staging / f"rank_{i}"
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    local = Checkpoint(row["checkpoint"]).to_directory(tmp)
                except OSError as e:  # reading a trial's checkpoint: not a failed write of the export
                    raise RuntimeError(f"checkpoint {row['checkpoint']} could not be read ({os_reason(e)})") from e
                out.mkdir()
                for name in os.listdir(local):
                    if name in _KEEP:
                        shutil.copy2(os.path.join(local, name), out / name)
            if not (out / "adapter_model.safetensors").exists() and not (out / "model.safetensors").exists():
                raise RuntimeError(f"checkpoint {row['checkpoint']} has no adapter_model.safetensors")
            (out / "README.md").write_text(model_card(row, knobs, sweep, i), encoding="utf-8")
            meta = {"rank": i, "sweep": sweep.options.name, "recipe": sweep.recipe.name, "base_model": sweep.settings.model,
                    "dataset": sweep.settings.dataset, "hyperparameters": {k: row.get(k) for k in knobs},
                    "objective": sweep.space.metric,
                    "metrics": {k: v for k, v in row.items() if k not in knobs and isinstance(v, (int, float))
                                and k not in ("rank",)},
                    "settings": sweep.settings.to_dict(), "trial_id": row["trial_id"]}
            (out / "lorasweep.json").write_text(json.dumps(meta, indent=2, default=str))
        _publish(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [storage.join(dest, f"rank_{i}") for i in range(1, len(chosen) + 1)]


EXPORT_MARKER = "EXPORT_COMPLETE"  # written last: an export without it is partial (or being written)


def _publish(staging: Path, dest: str) -> None:
    """Put ``staging`` at ``dest``: never half-written where a reader could take it for whole.

    Local: copied next to ``dest``, then renamed into place (the marker comes with it). Object
    storage (s3://, gs://) has no rename: the marker goes up last, after every other file, and is
    the first thing removed before anything else changes. Either way an earlier export is kept,
    as ``best_adapters.<time>``."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if storage.is_remote(dest):
        import pyarrow.fs as pafs

        fs, path = pafs.FileSystem.from_uri(dest)
        if fs.get_file_info(path).type != pafs.FileType.NotFound:
            if fs.get_file_info(f"{path}/{EXPORT_MARKER}").type == pafs.FileType.File:
                fs.delete_file(f"{path}/{EXPORT_MARKER}")  # readers stop trusting it before it changes
            pafs.copy_files(path, f"{path}.{stamp}", source_filesystem=fs, destination_filesystem=fs)
            fs.delete_dir(path)
        pafs.copy_files(str(staging), path, destination_filesystem=fs)
        with fs.open_output_stream(f"{path}/{EXPORT_MARKER}") as f:
            f.write(stamp.encode())
        return
    (staging / EXPORT_MARKER).write_text(stamp)
    # Copy next to the destination first (the slow part, which can fail), then two renames.
    tmp = f"{dest}.tmp-{os.getpid()}"
    try:
        shutil.copytree(staging, tmp)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    earlier = None
    if os.path.exists(dest):
        earlier = f"{dest}.{stamp}"
        os.replace(dest, earlier)
    try:
        os.replace(tmp, dest)
    except OSError:
        if earlier:
            os.replace(earlier, dest)  # the earlier export back in its place
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_start(sweep, inputs) -> None:
    """At the start: the resolved config and the data audit. A resumed sweep keeps the first ones.
    A failed write takes back the files this call wrote, so the folder is as the checks left it."""
    written = []
    fix = (f"check that --storage-path {sweep.options.storage_path!r} has free space and write permission, "
           "or pick another")
    with storage.writes(fix):
        try:
            from lorasweep.sweepfile import dump

            config = {**sweep.summary(), "versions": versions()}
            for name, payload in (("sweep_config.json", json.dumps(config, indent=2, default=str)),
                                  ("data_report.json", json.dumps(inputs.data, indent=2, default=str) if inputs.data else None),
                                  # the same config as a sweep file: `lorasweep run --config <it>` reruns the sweep
                                  ("sweep.yaml", dump(sweep))):
                path = storage.join(sweep.sweep_dir, name)
                if payload is not None and not (sweep.options.resume and storage.exists(path)):
                    storage.write_text(path, payload)
                    written.append(path)
        except StorageError:
            for path in written:
                storage.remove_local(path)
            raise


def resume_command(argv: list[str], command: str = "") -> str:
    """The command that ran the sweep (``command``: ``lorasweep run llama_finetome``; else this
    script), its flags, and ``--resume``."""
    import shlex
    import sys

    if not command:
        script = os.path.relpath(sys.argv[0]) if sys.argv and sys.argv[0].endswith(".py") else "sweeps/<recipe>.py"
        command = f"python {shlex.quote(script)}"
    args = [a for a in argv if a != "--resume"]
    return " ".join([command, *map(shlex.quote, args), "--resume"])


def finish(sweep, grid, elapsed_s: float, argv: list[str], interrupted: bool = False,
           select=None) -> tuple[int, list[dict], list[str]]:
    """The leaderboard (always) and the export (a complete sweep): ``(exit code, rows, exported)``.
    ``select(rows) -> rows``: the final round (lorasweep/final_round.py), which may reorder the top
    of a complete sweep's leaderboard before the export."""
    from trainers.tasks import get_task

    knobs = list(sweep.space.params)
    metric, mode = sweep.space.metric, sweep.space.mode
    reported = get_task(sweep.settings.task).metric_names(sweep.settings)
    rows = leaderboard_rows(grid, knobs, metric, mode, reported, sweep.options.storage_path, sweep.space)
    if "alpha_ratio" in knobs and "lora_alpha" not in knobs:
        knobs.insert(knobs.index("alpha_ratio") + 1, "lora_alpha")  # shown beside the ratio it follows from
    front = mark_pareto(rows, sweep.objectives)
    # The trials' results and checkpoints are Tune's, already on disk: a resume rewrites these.
    fix = (f"the trials' results stay in {sweep.sweep_dir}; free space or fix its permissions, then write the "
           f"leaderboard and export with: {resume_command(argv, getattr(sweep, 'command', ''))}")
    with storage.writes(fix):
        write_leaderboard(rows, knobs, sweep.sweep_dir, metric, reported)
    print()
    print(format_table(rows, knobs, metric=metric))
    print()
    if front:
        second = sweep.objectives[1]
        print(f"[lorasweep] Pareto front, {metric} against {second} ({len(front)} of {len(rows)} trials): "
              + "; ".join(f"{r['trial_id']} {r[best_key(metric)]:.4g} at {r[second]:.4g}" for r in front))
    done = grid.num_terminated + grid.num_errors
    # ``interrupted``: a Ctrl-C ended the run. Tune then ends the running trials too (TERMINATED,
    # like finished ones; they resume with --resume), so a sweep whose trials had all started would
    # otherwise look finished, and be exported.
    if interrupted or done < sweep.options.num_samples:
        # Ctrl-C: Tune saved its state and returned. The leaderboard so far is written; the
        # adapters are exported when the sweep completes.
        ended = "" if interrupted else f" after {done} of {sweep.options.num_samples} trials"
        print(f"[lorasweep] interrupted{ended}; everything written so far is kept in {sweep.sweep_dir}")
        print(f"[lorasweep] resume with: {resume_command(argv, getattr(sweep, 'command', ''))}")
        return 130, rows, []
    if select is not None:
        rows = select(rows)
        with storage.writes(fix):
            write_leaderboard(rows, knobs, sweep.sweep_dir, metric, reported)
    with storage.writes(fix):
        exported = export_best(rows, knobs, sweep, sweep.options.top_k)
    best_col = best_key(metric)
    ok = [r for r in rows if r.get(best_col) is not None]
    failed = [r for r in rows if r["status"] == "failed"]
    print(f"[lorasweep] {len(rows)} trials in {elapsed_s:.0f}s ({len(failed)} failed); "
          f"leaderboard: {storage.join(sweep.sweep_dir, 'leaderboard.csv')}")
    if not exported:
        cap = sweep.options.export_max_cost
        print(f"[lorasweep] no trial within --export-max-cost {cap:g} device-hours; nothing exported" if cap
              else "[lorasweep] no trial produced a checkpoint; nothing exported")
        return 1, rows, exported
    if len(ok) > 1 and not math.isnan(ok[0][best_col]):
        fr = f"final_round_{metric}"
        ci = (f" (final round {ok[0][fr]:.4f}, 95% CI {ok[0][fr + '_low']:.4f}..{ok[0][fr + '_high']:.4f})"
              if fr in ok[0] else "")
        print(f"[lorasweep] best {metric} {ok[0][best_col]:.4f}{ci}, worst {ok[-1][best_col]:.4f}")
    print(f"[lorasweep] best adapter: {exported[0]}")
    return 0, rows, exported


def publish(sweep, rows: list[dict], exported: list[str], summary_run: bool = True) -> None:
    """After the leaderboard, the export and the baseline: the sweep report, then (``summary_run``:
    not for an interrupted sweep, whose resume makes one) the W&B summary run, which carries the
    report's plots. A report that cannot be drawn costs a warning line,
    never the sweep's result, which is on disk already."""
    from lorasweep import report
    from lorasweep.tracking import log_summary

    figs, html_path, data = {}, None, None
    try:
        data = report.load(sweep.sweep_dir)
        figs = report.figures(data)
        html_path, _ = report.write(sweep.sweep_dir, data, figs)
        print(f"[lorasweep] report: {html_path}")
    except StorageError:
        raise
    except Exception as e:  # noqa: BLE001 - a plotting bug must not cost the sweep its W&B summary
        print(f"[lorasweep] warning: no report ({type(e).__name__}: {e}); "
              f"retry with: python -m lorasweep.report {sweep.sweep_dir}")
    if not summary_run:
        return
    o = sweep.options
    log_summary(o.wandb_project, o.name, sweep.sweep_dir, rows, list(sweep.space.params), exported, sweep.summary(),
                o.wandb_entity, metric=sweep.space.metric, figures=figs,
                report_html=html_path if html_path and not storage.is_remote(html_path) else None,
                baseline=data.baseline if data is not None else None)
