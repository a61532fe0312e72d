"""Weights & Biases tracking for a sweep: one W&B run per trial, one summary run at the end.

    python sweeps/llama_finetome.py --wandb-project lorasweep                    # offline files, no account
    WANDB_API_KEY=... python sweeps/llama_finetome.py --wandb-project lorasweep  # live in the W&B UI
    wandb sync runs/llama_finetome-real/wandb/offline-run-*                    # upload offline runs later

What goes to W&B, all in the group ``<sweep name>`` of the project:
- one run per trial (``job_type="trial"``, run id and name = the Tune trial id): every report of
  the trial (``eval_loss``, ``train_loss``, ``tokens_seen``, ``tokens_per_s``, ...) at Tune's
  ``training_iteration``, and the searched knobs (``r``, ``lora_alpha``, ``use_rslora``,
  ``packing``, ``warmup_ratio``, ``learning_rate``) as its config. The fixed settings are the same
  for every trial, so they go once, to the summary run.
- one summary run (``job_type="sweep-summary"``): the leaderboard as a table; the best eval loss,
  trial and knobs in its summary; the exported adapter paths; the resolved sweep config as its config;
  the sweep report's plots (``report/<plot>``) and page (``report/html``); and the exported adapters
  as versions of the model artifact ``<sweep name>-adapter`` (aliases ``best``, ``rank-<i>``), each
  with its trial's knobs and metrics as metadata.
- online only, a W&B Report of the trial runs (``sweep_report``): knobs against the objective,
  parameter importance, learning curves, the best trial and where its adapter is.

Mode: ``WANDB_MODE`` when set; else online when ``WANDB_API_KEY`` is in the environment and offline
when it is not, so a sweep never stops at a login prompt (after ``wandb login``, set
``WANDB_MODE=online``). The key is read from the environment only; this module never passes,
logs or writes it.

Files: ``<sweep dir>/wandb/`` for a local sweep; for an ``s3://``/``gs://`` sweep, which W&B cannot
write to, ``~/.cache/lorasweep/wandb/<sweep name>/wandb/`` on the driver's machine. wandb keeps its
own staging copy of the leaderboard table and of the adapter folders under ``WANDB_DATA_DIR``
(``~/.local/share/wandb``) until the run is synced.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import ray
from ray.air.integrations.wandb import WandbLoggerCallback, _WandbLoggingActor
from ray.air.util.node import _force_on_current_node

from lorasweep import log
from lorasweep import storage

# Trial config keys kept out of each trial's W&B config: the nested driver plumbing
# (TrainSettings, worker resources, storage path), identical across trials.
_NOT_TRIAL_CONFIG = ["trial"]  # TrialConfig.to_tune puts all of it under this one key


def tune_callbacks(project: str | None, sweep_name: str, sweep_dir: str, entity: str | None = None) -> list:
    """Ray Tune callbacks that log every trial's reports to W&B (one W&B run per trial, grouped by
    sweep_name). [] when project is None."""
    if project is None:
        return []
    return [_TrialLogger(
        project=project,
        group=sweep_name,
        excludes=_NOT_TRIAL_CONFIG,
        # The rest goes to wandb.init in each trial's logging actor.
        entity=entity,
        job_type="trial",
        dir=_wandb_root(sweep_dir, sweep_name),
        # A trial restarted by `--resume` continues its run instead of clashing on the same id.
        resume="allow",
        # quiet: no 20-line run summary per trial in the sweep's console. No system metrics: the
        # logging actor sits on the driver's node, not where the trial trains, so they would
        # describe the wrong machine (and the same one once per trial).
        settings={"quiet": True, "x_disable_stats": True},
    )]


def log_summary(project: str | None, sweep_name: str, sweep_dir: str, rows: list[dict], knobs: list[str],
                exported: list[str], config: dict, entity: str | None = None, metric: str = "eval_loss",
                figures: dict[str, object] | None = None, report_html: str | None = None,
                baseline: dict | None = None) -> str | None:
    """After the sweep: one summary W&B run (job_type 'sweep-summary', same group) with the
    leaderboard as a wandb.Table, the best eval loss in run.summary, the exported adapter paths and
    the sweep config as the run config; each exported adapter folder as a model artifact
    (``<sweep_name>-adapter``, aliases ``rank-<i>``, ``best`` for rank 1); ``figures`` (name ->
    plotly Figure) as ``report/<name>`` and the local ``report_html`` as ``report/html``; the
    ``baseline`` (baseline.json) as ``baseline/<model>/<metric>`` in the summary and, for the
    generation recipes, its sample answers side by side as the ``samples`` table. Online, it
    also saves the sweep's W&B Report (``sweep_report``), whose URL goes into the run's summary.
    The sweep's mode (min/max) is ``config["mode"]``, as the resolved sweep config carries it.
    Returns the run's local directory (what ``wandb sync`` takes), or None when project is None."""
    if project is None:
        return None
    import wandb

    columns = ["rank", "trial_id", *knobs]
    for row in rows:
        columns += [c for c in row if c not in columns]
    table = wandb.Table(columns=columns, data=[[_cell(row.get(c)) for c in columns] for row in rows],
                        allow_mixed_types=True)  # a failed trial has None where others have floats
    media = {f"report/{name}": wandb.Plotly(fig) for name, fig in (figures or {}).items()}
    if report_html:
        # 0.31 takes a str as a path only when it names an existing *.html file, and as the HTML
        # itself otherwise: read here, the page is what gets logged whatever the file is called.
        media["report/html"] = wandb.Html(Path(report_html).read_text(encoding="utf-8"), inject=False,
                                          data_is_not_path=True)
    ranked = sorted(rows, key=lambda r: r.get("rank", len(rows) + 1))
    best = ranked[0] if ranked and ranked[0].get(f"best_{metric}") is not None else None
    # silent: no header, no 20-line run summary; wandb's own warnings still print. quiet would
    # still print 3-5 header/footer lines. The one line that matters is printed below.
    with wandb.init(project=project, entity=entity, group=sweep_name, job_type="sweep-summary",
                    name=f"{sweep_name}-summary", config=config, mode=_mode(),
                    dir=_wandb_root(sweep_dir, sweep_name), settings={"silent": True, "x_disable_stats": True}) as run:
        run.log({"leaderboard": table, **media})
        if best:
            run.summary[f"best_{metric}"] = best[f"best_{metric}"]
            run.summary["best_trial_id"] = best.get("trial_id")
            run.summary["best_knobs"] = {k: _cell(best.get(k)) for k in knobs}
        run.summary["exported_adapters"] = list(exported)
        for name, scored in (baseline or {}).items():
            for m, v in scored.items() if isinstance(scored, dict) else ():
                if isinstance(v, float):
                    run.summary[f"baseline/{name}/{m}"] = v
        from lorasweep.baseline import samples_rows

        samples = samples_rows(baseline or {})
        if samples:
            cols = list(dict.fromkeys(k for r in samples for k in r))
            run.log({"samples": wandb.Table(columns=cols, data=[[r.get(c) for c in cols] for r in samples])})
        _log_adapters(run, sweep_name, exported)
        # run.entity: the key's default entity when none is given (online; '' offline).
        report = sweep_report(project, entity or run.entity, sweep_name, knobs, metric, config.get("mode", "min"),
                              best=best, exported=exported)
        url = save_report(report)
        if url:
            run.summary["report_url"] = url
        sync_dir, run_url = run.settings.sync_dir, run.url if _online() else None  # offline, run.url warns
    # finish() does not wait for wandb-core to close the run's files: the sync dir is whole, and the
    # uploads done, once wandb-core has exited.
    wandb.teardown()
    if run_url:
        log.say(f"W&B summary run: {run_url}")
    elif _mode() != "disabled":
        log.say(f"W&B runs saved offline in {Path(sync_dir).parent}; "
              f"upload with: wandb sync {Path(sync_dir).parent / 'offline-run-*'}")
    return sync_dir


def sweep_report(project: str, entity: str | None, sweep_name: str, knobs: list[str], metric: str, mode: str, *,
                 best: dict | None = None, exported: list[str] | None = None):
    """The sweep's W&B Report, not saved: the trial runs (group ``sweep_name``, job_type trial) of
    ``project``, best first; the knobs (config) and ``metric`` (summary) in parallel coordinates;
    parameter importance for ``metric``; ``metric`` against tokens seen for every trial; ``metric``
    of each trial in the order they started, with the running best; a markdown block with the best
    trial (``best``: its leaderboard row) and where the adapters are. Building it needs no network;
    ``entity`` None leaves the report's entity empty (``save_report`` needs one)."""
    import wandb_workspaces.reports.v2 as wr
    from wandb_workspaces import expr

    runset = wr.Runset(
        entity=entity or "", project=project, name=sweep_name,
        filters=expr.And(expr.Metric("Group") == sweep_name, expr.Metric("JobType") == "trial"),
        order=[wr.OrderBy(wr.SummaryMetric(metric), ascending=mode == "min")],
    )
    panels = [
        wr.ParallelCoordinatesPlot(
            title=f"knobs and {metric}",
            columns=[*(wr.ParallelCoordinatesPlotColumn(wr.Config(k)) for k in knobs),
                     wr.ParallelCoordinatesPlotColumn(wr.SummaryMetric(metric))],
            layout=wr.Layout(x=0, y=0, w=24, h=8)),
        wr.ParameterImportancePlot(with_respect_to=metric, layout=wr.Layout(x=0, y=8, w=12, h=8)),
        wr.ScatterPlot(title=f"{metric} of each trial, with the best so far", x=wr.Metric("CreatedTimestamp"),
                       y=wr.SummaryMetric(metric), running_ymin=mode == "min", running_ymax=mode == "max",
                       layout=wr.Layout(x=12, y=8, w=12, h=8)),
        wr.LinePlot(title=f"{metric} against tokens seen", x="tokens_seen", y=[metric],
                    layout=wr.Layout(x=0, y=16, w=24, h=8)),
    ]
    artifact = f"{entity}/{project}/{sweep_name}-adapter" if entity else f"{project}/{sweep_name}-adapter"
    if best:
        knob_text = ", ".join(f"`{k}={best.get(k)}`" for k in knobs)
        lines = [f"**Best trial**: `{best.get('trial_id')}`, the {'lowest' if mode == 'min' else 'highest'} "
                 f"{metric} of the sweep ({best[f'best_{metric}']:.4g}), with {knob_text}."]
    else:
        lines = ["**Best trial**: none (no trial reported the objective)."]
    if exported:
        lines += ["", f"**Adapters**: W&B model artifact `{artifact}` (aliases `best`, `rank-<i>`), "
                      "logged by the summary run; exported to:", "",
                  *(f"{i}. `{path}`" for i, path in enumerate(exported, 1))]
    return wr.Report(
        project=project, entity=entity or "", title=f"lorasweep {sweep_name}"[:128],
        description=f"The trials of the sweep {sweep_name}: {metric} ({mode}) against the knobs {', '.join(knobs)}.",
        blocks=[wr.MarkdownBlock(text="\n".join(lines)), wr.PanelGrid(runsets=[runset], panels=panels)],
    )


def save_report(report) -> str | None:
    """Online: save ``report`` to W&B and return its URL. Offline: None, without touching the
    network. A failure to save costs one warning line, never the sweep (its results are on disk)."""
    if not _online():
        return None
    try:
        report.save()
        url = report.url
    except Exception as e:  # noqa: BLE001 - any API or network error: the report is an extra
        reason = (str(e).strip().splitlines() or [""])[0][:300]
        log.warn(f"W&B report not saved ({type(e).__name__}: {reason}); "
              "the W&B runs and the sweep's files are unaffected")
        return None
    log.say(f"W&B report: {url}")
    return url


# ----------------------------------------------------------------------------- internals


def _mode() -> str:
    return os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")


def _online() -> bool:
    return _mode() not in ("offline", "disabled", "dryrun")


# From each adapter folder's lorasweep.json into its artifact's metadata: what tells the ranks apart.
# Not `settings` (nor anything from the environment): the same for every rank and full of this
# machine's paths; they stay in the folder's lorasweep.json and README.md, among the artifact's files.
_ARTIFACT_METADATA = ("rank", "trial_id", "base_model", "objective", "hyperparameters", "metrics")


def _log_adapters(run, sweep_name: str, exported: list[str]) -> None:
    """Each exported folder as a version of the model artifact ``<sweep_name>-adapter``.

    One collection with a version per rank, not one artifact per rank: W&B's artifact page then
    compares the ranks side by side (files, metadata), ``<sweep_name>-adapter:best`` resolves the
    best adapter and ``:rank-2`` the runner-up, and a resumed sweep's new export moves those
    aliases instead of leaving stale collections. Logged worst first, so that W&B's automatic
    ``latest`` alias lands on the best one too (what ``use_artifact("<sweep_name>-adapter")`` gets).
    ``add_dir`` stages a copy of the files (under ``WANDB_DATA_DIR``) until the run is uploaded: an
    offline run stays whole when a later export renames the folder to ``best_adapters.<time>``."""
    import wandb

    for folder in reversed(exported):
        if storage.is_remote(folder):
            log.warn(f"{folder} is not a local folder; not logged as a W&B model artifact")
            continue
        meta = json.loads((Path(folder) / "lorasweep.json").read_text(encoding="utf-8"))
        rank = meta["rank"]
        artifact = wandb.Artifact(
            f"{sweep_name}-adapter", type="model",
            description=f"rank {rank} of the sweep {sweep_name} by {meta.get('objective')}: a PEFT adapter folder",
            metadata={k: _json_safe(meta.get(k)) for k in _ARTIFACT_METADATA})
        artifact.add_dir(folder)
        run.log_artifact(artifact, aliases=[f"rank-{rank}", *(["best"] if rank == 1 else [])])


def _json_safe(value):
    # Artifact metadata is strict JSON, which has no NaN or inf; an exported trial can have them
    # (a final_eval_loss of NaN after a good best checkpoint), and log_artifact would raise.
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _wandb_root(sweep_dir: str, sweep_name: str) -> str:
    """wandb.init's ``dir``: W&B writes into ``<dir>/wandb/``."""
    if not storage.is_remote(sweep_dir):
        return sweep_dir
    from common.paths import cache_root

    return str(cache_root() / "wandb" / sweep_name)


def _cell(value):
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)


class _TrialRunActor(_WandbLoggingActor):
    """Ray's per-trial logging actor, named by trial id, given the API key by the driver, and
    keeping excluded keys out of the run config."""

    def __init__(self, *args, key_ref: list | None = None, **init_kwargs):
        if key_ref:
            # This is the actor's own worker process: the env var is wandb's way in and touches no one else.
            os.environ["WANDB_API_KEY"] = ray.get(key_ref[0])
        init_kwargs["name"] = init_kwargs.get("id") or init_kwargs.get("name")  # not '<trainable>_<id>'
        super().__init__(*args, **init_kwargs)

    def run(self):
        super().run()
        # Ray's run() ends with wandb.finish(), which only asks wandb-core (this actor's child
        # process) to close the run's files; Ray kills the actor and its children as soon as run()
        # returns. On a busy machine that left a run's transaction log with its header only.
        # teardown() returns once wandb-core has written everything and exited.
        self._wandb.teardown()

    def _handle_result(self, result: dict) -> tuple[dict, dict]:
        # Ray merges each result's whole `config` into the run config, `excludes` or not.
        log, config_update = super()._handle_result(result)
        return log, {k: v for k, v in config_update.items() if k not in self._exclude}


class _TrialLogger(WandbLoggerCallback):
    """``WandbLoggerCallback`` minus its key handling.

    Ray's callback builds its logging-actor class with ``runtime_env={"env_vars": {"WANDB_API_KEY":
    <key>}}`` whenever the key is in the environment, offline or not. Ray's runtime env agent then
    writes that env verbatim to ``/tmp/ray/session_*/logs/runtime_env_agent.log``, and the
    dashboard, ``ray list actors --detail`` and ``ray list runtime-envs`` show it. Here the class
    is built without it, and only an online run gets the key: as a ``ray.put`` object passed by
    reference, so it waits in Ray's shared-memory object store until the actor fetches it, and is in
    no runtime env, task spec or log.

    Resources are Ray's own: the logging actors and their queues ask for ``num_cpus=0`` and are
    pinned to the driver's node (so a local ``dir`` is reachable), so they never take a CPU a
    trial's workers need.

    Unlike Ray's, a logging actor is never restarted. Its constructor takes the trial's queue (an
    actor handle) and the key's reference, both of which Ray counts as constructor arguments in
    the object store; with ``max_restarts`` not 0 the driver then prints a ``core_worker.cc`` error
    line for every sweep (ray-project/ray#53727; Ray's own callback prints it too, for the queue).
    A restart would buy little: the actor lives on the driver's node, whose loss ends the sweep
    anyway, and the reports it had taken from the queue would be lost all the same. A logging
    actor that crashes costs its trial's W&B history from then on, never the trial.
    """

    _logger_actor_cls = _TrialRunActor

    def setup(self, *args, **kwargs):
        # Not calling Ray's setup(): it only looks for the key (and raises without one unless
        # WANDB_MODE says offline, even when offline is our default) and reads WANDB_PROJECT_NAME /
        # WANDB_GROUP_NAME, where project and group are given here.
        # The mode is chosen here, not in tune_callbacks: `Tuner.restore` brings this callback back
        # from tuner.pkl, and a resumed sweep should follow the resuming shell's environment.
        self.kwargs["mode"] = _mode()
        key = os.environ.get("WANDB_API_KEY")
        self._key_ref = [ray.put(key)] if _online() and key else None  # in a list: not inlined into the task
        self._remote_logger_class = ray.remote(num_cpus=0, **_force_on_current_node())(self._logger_actor_cls)

    def _start_logging_actor(self, trial, exclude_results, **init_kwargs):
        super()._start_logging_actor(trial, exclude_results, key_ref=self._key_ref, **init_kwargs)

    def __del__(self, _finalizing=sys.is_finalizing):  # bound now: module globals are None at exit
        # Ray's __del__ stops the logging actors still running when the callback is collected. At
        # interpreter exit it raises instead (its module's `ray` is None by then: "Exception
        # ignored in ... 'NoneType' object has no attribute 'is_initialized'"), while there is
        # nothing to stop: atexit has shut Ray down, taking the actors with it.
        if not _finalizing():
            super().__del__()
