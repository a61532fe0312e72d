"""What the driver writes around the trials: the resolved config at the start (``write_start``); at
the end the leaderboard and the export (``finish``: leaderboard.py, best_adapters.py), the report
and the W&B summary run (``publish``), and the command that resumes an unfinished sweep."""

from __future__ import annotations

import json
import math
import os

from lorasweep import log
from lorasweep import storage
from lorasweep.best_adapters import export_best
from lorasweep.leaderboard import best_key, format_table, leaderboard_rows, mark_pareto, write_leaderboard
from common.errors import ConfigError, StorageError
from lorasweep.versions import versions


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


def check_resumable(sweep) -> None:
    """A sweep started by another lorasweep version (its trials' settings have other fields) cannot
    be resumed by this one: Tune's restore would refuse it after Ray started, in a traceback."""
    path = storage.join(sweep.sweep_dir, "sweep_config.json")
    if not storage.exists(path):
        return  # _check_storage says what is missing
    try:
        stored = set(storage.read_json(path).get("settings", {}))
    except (OSError, ValueError, AttributeError):
        return
    current = set(sweep.settings.to_dict())
    if stored and stored != current:
        gone, new = sorted(stored - current), sorted(current - stored)
        raise ConfigError(
            f"`--resume`: sweep {sweep.options.name!r} was started by another lorasweep version: its trial settings differ ("
            + "; ".join(filter(None, [f"this version adds {', '.join(new)}" if new else "",
                                      f"has no {', '.join(gone)}" if gone else ""]))
            + "); resume it with the lorasweep that started it, or start a new --name (nothing was changed)")


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
        log.say(f"Pareto front, {metric} against {second} ({len(front)} of {len(rows)} trials): "
              + "; ".join(f"{r['trial_id']} {r[best_key(metric)]:.4g} at {r[second]:.4g}" for r in front))
    done = grid.num_terminated + grid.num_errors
    # ``interrupted``: a Ctrl-C ended the run. Tune then ends the running trials too (TERMINATED,
    # like finished ones; they resume with --resume), so a sweep whose trials had all started would
    # otherwise look finished, and be exported.
    if interrupted or done < sweep.options.num_samples:
        # Ctrl-C: Tune saved its state and returned. The leaderboard so far is written; the
        # adapters are exported when the sweep completes.
        ended = "" if interrupted else f" after {done} of {sweep.options.num_samples} trials"
        log.say(f"interrupted{ended}; everything written so far is kept in {sweep.sweep_dir}")
        log.say(f"resume with: {resume_command(argv, getattr(sweep, 'command', ''))}")
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
    log.say(f"{len(rows)} trials in {elapsed_s:.0f}s ({len(failed)} failed); "
          f"leaderboard: {storage.join(sweep.sweep_dir, 'leaderboard.csv')}")
    if not exported:
        cap = sweep.options.export_max_cost
        log.say(f"no trial within --export-max-cost {cap:g} device-hours; nothing exported" if cap
              else "no trial produced a checkpoint; nothing exported")
        return 1, rows, exported
    if len(ok) > 1 and not math.isnan(ok[0][best_col]):
        fr = f"final_round_{metric}"
        ci = (f" (final round {ok[0][fr]:.4f}, 95% CI {ok[0][fr + '_low']:.4f}..{ok[0][fr + '_high']:.4f})"
              if fr in ok[0] else "")
        log.say(f"best {metric} {ok[0][best_col]:.4f}{ci}, worst {ok[-1][best_col]:.4f}")
    log.say(f"best adapter: {exported[0]}")
    return 0, rows, exported


def publish(sweep, rows: list[dict], exported: list[str], summary_run: bool = True) -> None:
    """After the leaderboard, the export and the baseline: the sweep report, the MLflow parent run's
    end (KILLED for an interrupted sweep), then (``summary_run``: not for an interrupted sweep, whose
    resume makes one) the W&B summary run, which carries the report's plots. A report that cannot be drawn costs a warning line,
    never the sweep's result, which is on disk already."""
    from lorasweep import report, report_data, report_figures
    from lorasweep.tracking import log_summary

    figs, html_path, data = {}, None, None
    try:
        data = report_data.load(sweep.sweep_dir)
        figs = report_figures.figures(data)
        html_path, _ = report.write(sweep.sweep_dir, data, figs)
        log.say(f"report: {html_path}")
    except StorageError:
        raise
    except Exception as e:  # noqa: BLE001 - a plotting bug must not cost the sweep its W&B summary
        log.warn(f"no report ({type(e).__name__}: {e}); "
              f"retry with: python -m lorasweep.report {sweep.sweep_dir}")
    from lorasweep import mlflow_tracking

    mlflow_tracking.log_summary(sweep, rows, exported, data.baseline if data is not None else None,
                                html_path if html_path and not storage.is_remote(html_path) else None,
                                interrupted=not summary_run)
    if not summary_run:
        return
    options = sweep.options
    log_summary(options.wandb_project, options.name, sweep.sweep_dir, rows, list(sweep.space.params), exported,
                sweep.summary(),
                options.wandb_entity, metric=sweep.space.metric, figures=figs,
                report_html=html_path if html_path and not storage.is_remote(html_path) else None,
                baseline=data.baseline if data is not None else None)
