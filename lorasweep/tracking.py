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
  trial and knobs in its summary; the exported adapter paths; the resolved sweep config as its config.

Mode: ``WANDB_MODE`` when set; else online when ``WANDB_API_KEY`` is in the environment and offline
when it is not, so a sweep never stops at a login prompt (after ``wandb login``, set
``WANDB_MODE=online``). The key is read from the environment only; this module never passes,
logs or writes it.

Files: ``<sweep dir>/wandb/`` for a local sweep; for an ``s3://``/``gs://`` sweep, which W&B cannot
write to, ``~/.cache/lorasweep/wandb/<sweep name>/wandb/`` on the driver's machine. wandb keeps its
own staging copy of the leaderboard table under ``WANDB_DATA_DIR`` (``~/.local/share/wandb``) until
the run is synced.
"""

from __future__ import annotations

import os
from pathlib import Path

import ray
from ray.air.integrations.wandb import WandbLoggerCallback, _WandbLoggingActor
from ray.air.util.node import _force_on_current_node

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
                exported: list[str], config: dict, entity: str | None = None, metric: str = "eval_loss") -> str | None:
    """After the sweep: one summary W&B run (job_type 'sweep-summary', same group) with the
    leaderboard as a wandb.Table, the best eval loss in run.summary, the exported adapter paths and
    the sweep config as the run config. Returns the run's local directory (what ``wandb sync``
    takes), or None when project is None."""
    if project is None:
        return None
    import wandb

    columns = ["rank", "trial_id", *knobs]
    for row in rows:
        columns += [c for c in row if c not in columns]
    table = wandb.Table(columns=columns, data=[[_cell(row.get(c)) for c in columns] for row in rows],
                        allow_mixed_types=True)  # a failed trial has None where others have floats
    with wandb.init(project=project, entity=entity, group=sweep_name, job_type="sweep-summary",
                    name=f"{sweep_name}-summary", config=config, mode=_mode(),
                    dir=_wandb_root(sweep_dir, sweep_name)) as run:
        run.log({"leaderboard": table})
        ranked = sorted(rows, key=lambda r: r.get("rank", len(rows) + 1))
        if ranked and ranked[0].get(f"best_{metric}") is not None:
            best = ranked[0]
            run.summary[f"best_{metric}"] = best[f"best_{metric}"]
            run.summary["best_trial_id"] = best.get("trial_id")
            run.summary["best_knobs"] = {k: _cell(best.get(k)) for k in knobs}
        run.summary["exported_adapters"] = list(exported)
        return run.settings.sync_dir


# ----------------------------------------------------------------------------- internals


def _mode() -> str:
    return os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")


def _wandb_root(sweep_dir: str, sweep_name: str) -> str:
    """wandb.init's ``dir``: W&B writes into ``<dir>/wandb/``."""
    if "://" not in sweep_dir:
        return sweep_dir
    cache = Path(os.environ.get("LORASWEEP_CACHE", Path.home() / ".cache" / "lorasweep"))
    return str(cache / "wandb" / sweep_name)


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
    """

    _logger_actor_cls = _TrialRunActor

    def setup(self, *args, **kwargs):
        # Not calling Ray's setup(): it only looks for the key (and raises without one unless
        # WANDB_MODE says offline, even when offline is our default) and reads WANDB_PROJECT_NAME /
        # WANDB_GROUP_NAME, where project and group are given here.
        # The mode is chosen here, not in tune_callbacks: `Tuner.restore` brings this callback back
        # from tuner.pkl, and a resumed sweep should follow the resuming shell's environment.
        self.kwargs["mode"] = _mode()
        online = self.kwargs["mode"] not in ("offline", "disabled", "dryrun")
        key = os.environ.get("WANDB_API_KEY")
        self._key_ref = [ray.put(key)] if online and key else None  # in a list: not inlined into the task
        self._remote_logger_class = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1,
                                               **_force_on_current_node())(self._logger_actor_cls)

    def _start_logging_actor(self, trial, exclude_results, **init_kwargs):
        super()._start_logging_actor(trial, exclude_results, key_ref=self._key_ref, **init_kwargs)
