"""MLflow tracking for a sweep: one parent run per sweep, a child run per trial.

    python sweeps/llama_finetome.py --mlflow-tracking-uri http://mlflow.internal:5000   # a server
    python sweeps/llama_finetome.py --mlflow-tracking-uri sqlite:////shared/mlflow.db   # a database
    python sweeps/llama_finetome.py --mlflow-tracking-uri ./mlruns                      # a folder

What goes to MLflow, in the experiment ``--mlflow-experiment`` (default ``lorasweep``):
- a parent run named after the sweep (tag ``lorasweep.sweep_dir``): the fixed settings as params
  (model, dataset, task, searcher, scheduler, budget), at the end the best objective, the trial that
  made it, the base model's scores (``baseline.json``), and as artifacts ``leaderboard.csv``,
  ``sweep_config.json``, ``baseline.json``, the report page and the exported best adapter
  (``best_adapter/``: the PEFT folder, loadable with ``PeftModel.from_pretrained``);
- a child run per trial (``mlflow.parentRunId``; name and tag ``lorasweep.trial_id`` = the Tune
  trial id): the searched knobs as params, every report's numbers as metrics at step =
  ``tokens_seen`` (so the curves of trials line up by training tokens, ASHA's clock), ended
  FINISHED (ran its budget or was stopped by ASHA: tag ``lorasweep.finished``) or FAILED.

A folder is kept as MLflow 3 wants it, a SQLite database in it (MLflow 3.17 refuses its old file
store): ``<folder>/mlflow.db`` with the artifacts in ``<folder>/artifacts``; browse it with
``mlflow ui --backend-store-uri sqlite:///<folder>/mlflow.db``. ``--resume`` goes on in the same
parent run and trial runs. Credentials (``MLFLOW_TRACKING_TOKEN``, ``..._USERNAME``/``..._PASSWORD``,
a Databricks profile) are MLflow's own, read from the environment by MLflow; nothing here logs the
environment, and the sweep config that goes up carries no secret.

Logging runs on the driver (a Tune callback), never in a trial. A tracking server that stops
answering mid-sweep costs one warning line and the rest of the MLflow logging, never the sweep.
Needs ``pip install 'lorasweep[mlflow]'`` (the mlflow package, as tested).
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from pathlib import Path

from ray.tune import Callback

from common.environ import scoped_env
from common.errors import ConfigError
from lorasweep import log, storage

TRIAL_TAG, SWEEP_TAG = "lorasweep.trial_id", "lorasweep.sweep_dir"
URI_ENV = "MLFLOW_TRACKING_URI"  # MLflow's own: where the driver's callback finds the store
# Tune's bookkeeping and lorasweep's clocks: not metrics of the trial
_NOT_METRICS = {"timestamp", "pid", "first_step_at", "reported_at", "done", "training_iteration",
                "time_since_restore", "iterations_since_restore", "should_checkpoint"}
PARENT_PARAMS = ("model", "dataset", "task", "family", "quantization", "max_tokens", "max_seq_length")
SWEEP_PARAMS = ("searcher", "scheduler", "num_samples", "max_concurrent", "prune_metric")


def _is_folder(given: str) -> bool:
    """A local folder, not a URI (``http://``, ``sqlite:///``) or a Databricks profile."""
    return not storage.is_remote(given) and not given.startswith("databricks")


def tracking_uri(given: str) -> str:
    """The URI MLflow is given: a URI as it is; a folder as ``sqlite:///<folder>/mlflow.db``."""
    if not _is_folder(given):
        return given
    folder = Path(os.path.expanduser(given)).resolve()
    return f"sqlite:///{folder / 'mlflow.db'}"


def shown(text: str, given: str) -> str:
    """``text`` with the tracking URI's user:password@ (if any) taken out: safe for the console."""
    return text.replace(given, storage.redact(given))


def artifact_root(given: str) -> str | None:
    """Where a new experiment keeps its artifacts: beside the database for a folder, the server's
    choice otherwise."""
    if not _is_folder(given):
        return None
    return (Path(os.path.expanduser(given)).resolve() / "artifacts").as_uri()


def _client(given: str):
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise ConfigError("`--mlflow-tracking-uri` needs MLflow's client: pip install 'lorasweep[mlflow]' "
                          "(or drop the flag)") from None
    # "Creating initial MLflow database tables..." and the like: not the sweep's news
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # its "View run ... at" pair of lines per ended run: the sweep's closing line gives the parent's
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    if _is_folder(given):
        Path(os.path.expanduser(given)).mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=tracking_uri(given))


def check(options) -> None:
    """Before Ray starts: the client is installed and the store answers (one short try, no retries),
    and the experiment exists or can be made. A ConfigError naming the flag otherwise."""
    if not options.mlflow_tracking_uri:
        return
    dry = getattr(options, "dry_run", False)  # a dry run writes nothing: no database, no experiment
    if dry and _is_folder(options.mlflow_tracking_uri):
        return
    try:
        with scoped_env({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}):
            client = _client(options.mlflow_tracking_uri)
            if dry:
                _not_deleted(client.get_experiment_by_name(options.mlflow_experiment), options.mlflow_experiment)
            else:
                experiment_id(client, options.mlflow_experiment, artifact_root(options.mlflow_tracking_uri))
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever the store says, in one line
        given = options.mlflow_tracking_uri
        reason = shown(" ".join(str(e).split()), given)[:200]
        raise ConfigError(f"`--mlflow-tracking-uri` {storage.redact(given)!r}: MLflow cannot use it "
                          f"({type(e).__name__}: {reason}); start the server, fix the address or the "
                          "credentials, or drop the flag") from None


def _not_deleted(found, name: str) -> None:
    if found is not None and found.lifecycle_stage == "deleted":
        raise ConfigError(f"`--mlflow-experiment` {name!r} is deleted in that store; restore it "
                          "(mlflow experiments restore) or pick another name")


def experiment_id(client, name: str, artifacts: str | None) -> str:
    """The experiment ``name``'s id, made (its artifacts in ``artifacts``, or the store's choice) if new."""
    found = client.get_experiment_by_name(name)
    _not_deleted(found, name)
    if found is not None:
        return found.experiment_id
    return client.create_experiment(name, artifact_location=artifacts)


def _find_run(client, exp: str, tag: str, value: str, parent: str | None = None):
    """The newest run with ``tag`` = ``value`` (under ``parent``), or None."""
    query = f"tags.`{tag}` = '{value}'" + (f" and tags.`mlflow.parentRunId` = '{parent}'" if parent else "")
    runs = client.search_runs([exp], filter_string=query, max_results=1, order_by=["attributes.start_time DESC"])
    return runs[0] if runs else None


def parent_run(client, exp: str, name: str, sweep_dir: str, params: dict | None = None, new: bool = False) -> str:
    """The sweep's parent run id: the newest this sweep folder made (a resume, or the sweep's end),
    or with ``new`` (a sweep that is not a resume: a folder made again under the same name) a new one."""
    found = None if new else _find_run(client, exp, SWEEP_TAG, sweep_dir)
    if found is not None:
        if found.info.status != "RUNNING":
            client.update_run(found.info.run_id, status="RUNNING")
        return found.info.run_id
    run = client.create_run(exp, run_name=name, tags={SWEEP_TAG: sweep_dir, "lorasweep.kind": "sweep"})
    if params:
        client.log_batch(run.info.run_id, params=_params(params))
    return run.info.run_id


def _params(values: dict) -> list:
    from mlflow.entities import Param

    return [Param(k, str(v)[:6000]) for k, v in values.items() if v is not None and v != ""]


def _metrics(result: dict, step: int) -> list:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(k, float(v), now, step) for k, v in result.items()
            if k not in _NOT_METRICS and isinstance(v, (int, float)) and not isinstance(v, bool)
            and math.isfinite(float(v))]


def fixed_params(sweep) -> dict:
    s, o = sweep.settings, sweep.options
    return {**{k: getattr(s, k, None) for k in PARENT_PARAMS}, **{k: getattr(o, k, None) for k in SWEEP_PARAMS},
            "objective": sweep.space.metric, "mode": sweep.space.mode, "recipe": sweep.recipe.name,
            "preset": sweep.preset}


class MLflowCallback(Callback):
    """Tune callback on the driver: a child run per trial under the sweep's parent run.

    Tune pickles it into tuner.pkl and restores that copy on --resume, so it keeps no tracking URI
    (a password may be in one): the driver puts it in ``MLFLOW_TRACKING_URI`` of its own process
    (``tune_callbacks``), where MLflow's client reads it. The parent run and the trials' runs are
    its state in Tune's experiment checkpoints, so a resumed sweep goes on in them."""

    def __init__(self, experiment: str, name: str, artifacts: str | None, sweep_dir: str, knobs: list[str],
                 params: dict, new: bool = True):
        self.experiment, self.name, self.artifacts = experiment, name, artifacts
        self.sweep_dir, self.knobs, self.params, self.new = sweep_dir, knobs, params, new
        self.client = self.exp = self.parent = None
        self.runs: dict[str, str] = {}  # Tune trial id -> MLflow run id
        self.last: dict[str, dict] = {}
        self.broken = False

    def get_state(self) -> dict:
        return {"parent": self.parent, "runs": dict(self.runs)}

    def set_state(self, state: dict) -> None:
        self.parent = state.get("parent") or self.parent
        self.runs.update(state.get("runs") or {})
        self.new = False

    def __getstate__(self):
        return {**self.__dict__, "client": None, "exp": None}

    def _safely(self, what: str, fn, *args):
        if self.broken:
            return None
        try:
            if self.client is None:
                self.client = _client(os.environ.get(URI_ENV, ""))
                self.exp = experiment_id(self.client, self.experiment, self.artifacts)
                if self.parent is None:
                    self.parent = parent_run(self.client, self.exp, self.name, self.sweep_dir, self.params, new=self.new)
                elif self.client.get_run(self.parent).info.status != "RUNNING":
                    self.client.update_run(self.parent, status="RUNNING")
            return fn(*args)
        except Exception as e:  # noqa: BLE001 - the sweep goes on without MLflow
            self.broken = True
            uri = os.environ.get(URI_ENV, "")
            reason = shown(" ".join(str(e).split()), uri)[:160]
            log.warn(f"MLflow logging stopped ({what}: {type(e).__name__}: {reason}); "
                     "the sweep goes on, its results are on disk")
            return None

    def _run_of(self, trial) -> str:
        tid = trial.trial_id
        if tid not in self.runs:
            found = _find_run(self.client, self.exp, TRIAL_TAG, tid, parent=self.parent)  # a resumed trial
            if found is None:
                found = self.client.create_run(self.exp, run_name=tid, tags={
                    TRIAL_TAG: tid, "mlflow.parentRunId": self.parent, "lorasweep.kind": "trial"})
                self.client.log_batch(found.info.run_id, params=_params(
                    {k: trial.config.get(k) for k in self.knobs}))
            self.runs[tid] = found.info.run_id
        return self.runs[tid]

    def on_trial_start(self, iteration, trials, trial, **info):
        self._safely("trial start", self._run_of, trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        def log_result():
            run = self._run_of(trial)
            step = int(result.get("tokens_seen") or result.get("training_iteration") or 0)
            self.client.log_batch(run, metrics=_metrics(result, step))
            self.last[trial.trial_id] = result
        self._safely("a report", log_result)

    def _end(self, trial, status: str):
        def end():
            run = self._run_of(trial)
            finished = bool(self.last.get(trial.trial_id, {}).get("finished"))
            self.client.set_tag(run, "lorasweep.finished", str(finished).lower())
            self.client.set_terminated(run, status)
        self._safely("trial end", end)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._end(trial, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end(trial, "FAILED")


def tune_callbacks(sweep, new: bool = True) -> list:
    """``new``: the sweep's own Tuner (a new parent run unless --resume); False for the later runs
    of the same sweep (--repeats, --finalize), whose trials go under the sweep's parent run. Puts
    the tracking URI in this process's ``MLFLOW_TRACKING_URI`` (never in a file)."""
    o = sweep.options
    if not o.mlflow_tracking_uri:
        return []
    os.environ[URI_ENV] = tracking_uri(o.mlflow_tracking_uri)
    return [MLflowCallback(o.mlflow_experiment, o.name, artifact_root(o.mlflow_tracking_uri), sweep.sweep_dir,
                           list(sweep.space.params), fixed_params(sweep), new=new and not o.resume)]


def log_summary(sweep, rows: list[dict], exported: list[str], baseline: dict | None, report_html: str | None,
                interrupted: bool = False) -> str | None:
    """The parent run's end: the best objective and trial, the baseline's numbers, the sweep's files
    and the best adapter as artifacts; KILLED when the sweep was interrupted (a resume reopens it).
    Returns the parent run id (None without --mlflow-tracking-uri, or when MLflow fails: a warning)."""
    o = sweep.options
    if not o.mlflow_tracking_uri:
        return None
    metric = sweep.space.metric
    try:
        client = _client(o.mlflow_tracking_uri)
        exp = experiment_id(client, o.mlflow_experiment, artifact_root(o.mlflow_tracking_uri))
        run = parent_run(client, exp, o.name, sweep.sweep_dir, fixed_params(sweep))
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        ranked = sorted((r for r in rows if r.get(f"best_{metric}") is not None), key=lambda r: r.get("rank", 1e9))
        metrics = [Metric("trials", float(len(rows)), now, 0),
                   Metric("failed_trials", float(sum(r.get("status") == "failed" for r in rows)), now, 0)]
        if ranked:
            metrics.append(Metric(f"best_{metric}", float(ranked[0][f"best_{metric}"]), now, 0))
            client.set_tag(run, "lorasweep.best_trial_id", str(ranked[0].get("trial_id")))
        for name, scored in (baseline or {}).items():
            for m, v in scored.items() if isinstance(scored, dict) else ():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    metrics.append(Metric(f"baseline.{name}.{m}"[:250].replace("/", "."), float(v), now, 0))
        client.log_batch(run, metrics=metrics)
        with tempfile.TemporaryDirectory(prefix="lorasweep-mlflow-") as tmp:
            for name in ("leaderboard.csv", "sweep_config.json", "baseline.json", "lm_eval.json"):
                path = storage.join(sweep.sweep_dir, name)
                if not storage.exists(path):
                    continue
                if storage.is_remote(path):  # the file as it is, byte for byte
                    storage.download(path, os.path.join(tmp, name))
                    path = os.path.join(tmp, name)
                client.log_artifact(run, path)
            if report_html and os.path.isfile(report_html):
                client.log_artifact(run, report_html)
            if exported:
                best = exported[0]
                if storage.is_remote(best):  # an adapter folder is flat: its files, one by one
                    local = os.path.join(tmp, "best_adapter")
                    os.makedirs(local)
                    for name in storage.list_names(best):
                        storage.download(storage.join(best, name), os.path.join(local, name))
                    best = local
                client.log_artifacts(run, best, "best_adapter")
        client.set_terminated(run, "KILLED" if interrupted else "FINISHED")
    except Exception as e:  # noqa: BLE001 - the sweep's results are on disk already
        log.warn(f"MLflow summary not logged ({type(e).__name__}: "
                 f"{shown(' '.join(str(e).split()), o.mlflow_tracking_uri)[:160]})")
        return None
    uri = tracking_uri(o.mlflow_tracking_uri)
    if uri.startswith(("http://", "https://")):
        where = f": {storage.redact(uri).rstrip('/')}/#/experiments/{client.get_run(run).info.experiment_id}/runs/{run}"
    elif uri.startswith("sqlite:"):
        where = f"; browse with: mlflow ui --backend-store-uri {uri}"
    else:
        where = ""
    log.say(f"MLflow: experiment {o.mlflow_experiment!r}, parent run {run}{where}")
    return run
