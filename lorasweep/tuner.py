"""The Tune side of a sweep: the trial function, Optuna's study and samplers, the ASHA scheduler, the
``Tuner`` that ties them together, and running it with Ctrl-C handled."""

from __future__ import annotations

import functools
import logging
import math
import os
import sys

from lorasweep import log
from lorasweep import storage
from common.errors import ConfigError
from lorasweep.recipe import ResolvedSweep
from search_spaces import SearchSpace
from trainers.config import Resources, TrialConfig


class ResumeFromNewest:
    """Mixed into every trial's Tune trainable (Tune's ``__mixins__`` hook). Tune restores a trial from
    the checkpoint that its last experiment-state snapshot names, but it deletes a checkpoint as soon
    as a newer one pushes it out of ``CheckpointConfig(num_to_keep=2)``'s best two, which can be
    before the next snapshot. A driver killed in that window (1 resume in 3 in tests/test_interrupt.py)
    left the trial failing with "does not exist on storage anymore". Tune deletes a checkpoint only
    for a newer one, so the newest complete checkpoint in the trial's folder is the one to resume."""

    def restore(self, checkpoint_path):
        import pyarrow.fs as pafs

        from trainers.reporting import newest_checkpoint

        ckpt = getattr(checkpoint_path, "checkpoint", None)  # Tune passes a _TrainingResult
        if ckpt is not None and ckpt.filesystem.get_file_info(ckpt.path).type == pafs.FileType.NotFound:
            newest = newest_checkpoint(ckpt.filesystem, os.path.dirname(ckpt.path.rstrip("/")))
            if newest is not None:
                log.say(f"{os.path.basename(ckpt.path)} was pruned after Tune last saved its state; "
                        f"resuming from {os.path.basename(newest)}")
                checkpoint_path = type(checkpoint_path)(checkpoint=type(ckpt)(newest, filesystem=ckpt.filesystem),
                                                        metrics=checkpoint_path.metrics)
        return super().restore(checkpoint_path)


def oom_kill_fails_the_trial() -> None:
    """Ray's memory monitor kills the newest worker when a node runs short of memory, and the trial's
    next call then raises ``ray.exceptions.OutOfMemoryError``. Tune 2.60's actor manager knows only
    ``RayActorError`` and ``RayTaskError`` there and raises anything else out of ``Tuner.fit``: one
    trial's kill ended the whole sweep (bench/quality.py, qa: two 4-bit SmolLM2 trials on a 23.5 GB
    node). Here that kill is what it is, the trial's actor dying: the trial fails with one line
    (retried per ``--trial-retries``) and the sweep goes on. Applied once, on the driver."""
    from ray.air.execution._internal.actor_manager import RayActorManager
    from ray.exceptions import OutOfMemoryError, RayActorError

    task_failed = RayActorManager._actor_task_failed
    if getattr(task_failed, "lorasweep_oom", False):
        return

    class TrialOutOfMemoryError(RayActorError):
        pass

    def patched(self, tracked_actor_task, exception):
        if isinstance(exception, OutOfMemoryError) and not isinstance(exception, RayActorError):
            exception = TrialOutOfMemoryError(error_msg=oom_line(str(exception)))
        return task_failed(self, tracked_actor_task, exception)

    patched.lorasweep_oom = True
    RayActorManager._actor_task_failed = patched


def oom_line(ray_message: str) -> str:
    """Ray's several-paragraph kill notice as one line with the node's figures and what to change."""
    import re

    # Ray 2.60: "... was 4.25GB used / 23.54GB limit (0.18) ... exceeded threshold of 4552244224B (18.0% of ..."
    usage = re.search(r"was ([\d.]+\s*GB)(?: used)?\s*/\s*([\d.]+\s*GB)", ray_message)
    cut = re.search(r"threshold of \d+B \(([\d.]+%)", ray_message)
    node = (f" (node memory {usage.group(1)} of {usage.group(2)}" + (f", Ray kills above {cut.group(1)}" if cut else "")
            + ")") if usage else ""
    return (f"killed by Ray's memory monitor: the node ran out of memory{node}; run fewer trials at once "
            f"(`--max-concurrent`) or use a smaller `--per-device-batch-size`")


def lora_trial(config: dict, secrets: list | None = None, data: list | None = None) -> None:
    """Tune function trainable: one trial = one Ray Train ``TorchTrainer`` run, or for a one-worker
    trial that needs no DeepSpeed (``Resources.in_trial_process``) the same loop in this process.

    Train workers report (metrics + checkpoint) to Train; ``TuneReportCallback`` forwards each
    report to this trial, so ASHA sees ``tokens_seen`` and the objective as they come.
    ``secrets`` is the driver's ``credentials.share()`` and ``data`` its tokenised data
    (trainers/shared_data.py): both passed on to the workers by reference.
    """
    from ray import tune
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from lorasweep.credentials import with_secrets
    from lorasweep.dashboard import mark_trial
    from trainers.loop import train_func, train_in_trial_process
    from trainers.shared_data import CONFIG_KEY as DATA_KEY
    from trainers.tasks import metric_mode

    mark_trial(tune.get_context().get_trial_id())  # a `trial_<id>` row in the dashboard's task table
    for stream in (sys.stdout, sys.stderr):
        # Tune's log_to_file tees them into the trial's folder through an object with no isatty,
        # which Transformers' weight-loading report calls (every classification trial failed on it)
        if stream is not None and not hasattr(stream, "isatty"):
            stream.isatty = lambda: False
    trial = TrialConfig.from_tune(config)
    res = trial.resources
    loop_config = {**with_secrets(config, secrets), **({DATA_KEY: data} if data else {})}
    if res.in_trial_process:
        # A trial ASHA stops while its report uploads in the background ends at its next micro-batch
        # (trainers/reporting.BackgroundReporter); Tune reuses this process for the next trial only if
        # this thread has ended within TUNE_FUNCTION_THREAD_TIMEOUT_S (default 2 s, read at reuse)
        os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", "60")
        return train_in_trial_process(loop_config)
    objective = trial.objective
    trainer = TorchTrainer(
        train_func,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=res.workers,
            use_gpu=res.gpus > 0,
            resources_per_worker={"CPU": res.cpus, **({"GPU": res.gpus} if res.gpus > 0 else {}),
                                  **res.host_resources},
            placement_strategy=res.placement,
            label_selector=res.host_labels or None,
        ),
        run_config=RunConfig(
            name=tune.get_context().get_trial_id(),
            storage_path=trial.train_storage,
            callbacks=[TuneReportCallback()],
            failure_config=FailureConfig(max_failures=res.retries),
            # The best checkpoint is what gets exported; the latest is what a restart resumes.
            checkpoint_config=CheckpointConfig(num_to_keep=2, checkpoint_score_attribute=objective,
                                               checkpoint_score_order=metric_mode(objective)),
        ),
    )
    trainer.fit()


def optuna_url(sweep: ResolvedSweep) -> str:
    """Where the Optuna study lives: ``--optuna-storage``, else SQLite in a local sweep's folder
    (``optuna-dashboard sqlite:///runs/<name>/optuna.db`` shows it), else "" (in memory: SQLite
    cannot live in a bucket; Tune's searcher checkpoint still keeps the study for --resume)."""
    options = sweep.options
    if options.optuna_storage:
        return options.optuna_storage
    if storage.is_remote(sweep.sweep_dir):
        return ""
    return f"sqlite:///{os.path.abspath(storage.join(sweep.sweep_dir, 'optuna.db'))}"


def optuna_storage(sweep: ResolvedSweep):
    import optuna

    url = optuna_url(sweep)
    if not url:
        return None
    if not sweep.options.optuna_storage:  # ours, in the sweep's folder: a tuner built outside main (bench/) may precede it
        os.makedirs(sweep.sweep_dir, exist_ok=True)
    try:
        return optuna.storages.RDBStorage(url)
    except Exception as e:  # noqa: BLE001 - SQLAlchemy's errors for a bad URL, driver or server
        reason = (str(e).splitlines() or [""])[0].replace(url, storage.redact(url))[:160]
        raise ConfigError(f"`--optuna-storage` {storage.redact(url)!r} cannot be opened ({type(e).__name__}: "
                          f"{reason}); give an SQLAlchemy URL such as sqlite:///study.db") from None


def tpe_startup(trials: int, known: int) -> int:
    """How many trials TPE draws before its model proposes: Optuna's 10, or a third of a smaller
    sweep (never fewer than the known points, which count as start-up trials). With the default 10 a
    6-trial sweep is its known points plus random draws and the model never acts (bench/quality.py,
    instruct_movies: all five non-known trials were random, four of them outside the sensible lr band)."""
    return max(1, min(10, max(known, math.ceil(trials / 3))))


def sampler(name: str, space: SearchSpace, seed: int, trials: int = 0):
    """Optuna's sampler for ``--searcher``; TPE (multivariate and constant-liar by Optuna 5's defaults)
    starts its model after ``tpe_startup`` trials of a ``trials``-trial sweep (0: Optuna's 10)."""
    import optuna

    if name == "tpe":
        startup = tpe_startup(trials, len(space.known_points)) if trials else 10
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return optuna.samplers.GridSampler({k: list(d.values) for k, d in space.params.items()}, seed=seed)
    if name == "cmaes":
        # CMA-ES models only numbers: r, alpha and the other choices are drawn at random beside it
        # (warned once here, not at every trial).
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    raise ValueError(f"unknown searcher {name!r}")


def build_tuner(sweep: ResolvedSweep, res: Resources, max_concurrent: int, trainable=None, callbacks=(), stop=None,
                repeat_points: list[dict] | None = None, suffix: str = "repeats"):
    """The Tuner of a sweep. ``trainable`` replaces the trial function (bench/driver_scale.py times
    the driver with a trivial one), ``callbacks`` are more Tune callbacks (bench/startup.py
    notes when each trial starts) and ``stop`` a Tune stopper (bench/search.py's compute budget);
    ``repeat_points`` (``--repeats``): exactly these configurations, each with its ``repeat``, in an
    experiment of their own (``<name>-repeats``) beside the sweep's, no searcher, no early stopping;
    everything else is what a sweep runs."""
    import ray
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler
    from ray.tune.search.optuna import OptunaSearch

    from lorasweep.console import Console
    from lorasweep.credentials import share
    from lorasweep.budget import asha_grace, asha_rungs
    from lorasweep.scheduling import JudgedASHA
    from lorasweep import mlflow_tracking
    from lorasweep.tracking import tune_callbacks
    from trainers.tasks import metric_mode

    oom_kill_fails_the_trial()
    options, settings, space = sweep.options, sweep.settings, sweep.space
    param_space = TrialConfig(settings, resources=res, train_storage=storage.join(sweep.sweep_dir, "train_runs"),
                              objective=space.metric).to_tune(space.to_tune())
    optuna_sampler = sampler(options.searcher, space, options.seed, options.num_samples)
    study_storage = optuna_storage(sweep)
    # Two objectives: Optuna's multi-objective study (TPE/NSGA-style samplers see both), while ASHA
    # and the checkpoints Tune keeps go by the first, the quality one.
    multi = len(sweep.objectives) > 1
    goal = ({"metric": sweep.objectives, "mode": [metric_mode(m) for m in sweep.objectives]} if multi
            else {"metric": space.metric, "mode": space.mode})
    search_cls = OptunaSearch
    if sweep.warm is not None:
        from lorasweep.warm_start import searcher_class

        search_cls = functools.partial(searcher_class(), warm=sweep.warm)
    if repeat_points is not None:
        from ray.tune.search.basic_variant import BasicVariantGenerator

        for key in {k for p in repeat_points for k in p} - set(space.params):  # repeat, train_on_eval
            param_space[key] = tune.choice(sorted({p[key] for p in repeat_points}))
        searcher = BasicVariantGenerator(points_to_evaluate=[dict(p) for p in repeat_points])
    else:
        searcher = search_cls(**goal, points_to_evaluate=[dict(p) for p in space.known_points],
                                **({"storage": study_storage, "study_name": options.name}
                                   if study_storage is not None else {}),
                                sampler=optuna_sampler)
    rungs = []
    if options.scheduler == "asha" and repeat_points is None:
        # Rungs on training tokens: e.g. max 2M tokens, grace 250k, factor 3 -> rungs at
        # 250k and 750k; a trial continues past a rung only in the top third of its peers.
        # It prunes on --prune-metric (eval loss by default: smooth, where F1 on the eval rows moves
        # in one-row steps) and judges a rung only once enough trials reached it (scheduling.py).
        grace = asha_grace(settings.max_tokens, options.grace_tokens)
        scheduler = JudgedASHA(time_attr="tokens_seen", metric=options.prune_metric,
                               mode=metric_mode(options.prune_metric),
                               max_t=settings.max_tokens, grace_period=grace, reduction_factor=options.reduction_factor,
                               min_results=options.rung_min_results)
        rungs = asha_rungs(settings.max_tokens, grace, options.reduction_factor)
    else:
        scheduler = FIFOScheduler()
    # A trial that trains in its own process asks for what its one worker would have.
    # Otherwise the trial function only waits on its TorchTrainer, whose workers ask for their own
    # CPUs/GPUs. It must not hold a CPU itself: even 0.01 CPU per trial leaves 2 trials x (1 worker
    # CPU + 0.01) > 2 CPUs, and the second trial's workers wait forever for a CPU its own driver
    # holds. Tune refuses an empty request, so it asks for one byte of Ray's logical memory.
    # HF_TOKEN reaches the trials' workers by reference (lorasweep/credentials.py).
    # Off the head node where the cluster has other nodes (cluster.trial_host): the trial's own
    # process, and with it its Ray Train controller, which Ray Train starts beside it.
    wants = ({"CPU": res.cpus, **({"GPU": res.gpus} if res.gpus > 0 else {})} if res.in_trial_process
             else {"memory": 1}) | res.host_resources
    # The sweep's tokenised data (trainers/shared_data.py) goes into Ray's object store once, here; a
    # trial reads it through the reference, as it reads the secrets.
    shared = {} if trainable is not None else {"data": [ray.put(sweep.data)] if sweep.data is not None else None}
    trainable = tune.with_parameters(trainable or lora_trial, secrets=share(), **shared)
    trainable.__mixins__ = (ResumeFromNewest,)
    trainable = tune.with_resources(trainable, tune.PlacementGroupFactory(
        [wants], **({"bundle_label_selector": [res.host_labels]} if res.host_labels else {})))
    # The scheduler and the searcher carry their own metrics; Tune refuses a second one here.
    own = multi or isinstance(scheduler, JudgedASHA)
    tune_config = tune.TuneConfig(metric=None if own else space.metric, mode=None if own else space.mode,
                                  search_alg=searcher, scheduler=scheduler,
                                  num_samples=options.num_samples if repeat_points is None else len(repeat_points),
                                  max_concurrent_trials=max_concurrent,
                                  # the next trial starts in a finished one's process: torch, Transformers,
                                  # the CUDA context and the data cache are already there
                                  reuse_actors=res.in_trial_process)
    tune_config.trial_dirname_creator = lambda trial: f"trial_{trial.trial_id}"  # not the whole config
    # Quiet by default: one line per event (lorasweep/console.py) instead of Tune's boxes, and a
    # trial's stdout/stderr in its folder. Tune snapshots its state at every checkpoint (num_to_keep
    # is set) and warns about it each time: that is the cost of resuming exactly, not news.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if not options.verbose:
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the new one prints its boxes even at verbose=0
        os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")  # the console's failure line names error.txt
        # "The `on_trial_result` operation took 0.6 s" (W&B's queue on a busy driver) and "Trials did
        # not complete: [...]" (the failure lines said it, with the reasons)
        logging.getLogger("ray.tune.utils.util").setLevel(logging.ERROR)
        logging.getLogger("ray.tune.tune").setLevel(logging.CRITICAL)
        logging.getLogger("ray.tune.execution.experiment_state").addFilter(_tmp_file_race)
    console = [] if options.verbose else [Console(list(space.params), space.metric, space.mode, rungs,
                                                  prune_metric=options.prune_metric if rungs else "")]
    name = options.name if repeat_points is None else f"{options.name}-{suffix}"
    run_config = tune.RunConfig(name=name, storage_path=options.storage_path, verbose=1 if options.verbose else 0,
                                stop=stop,
                                # a trial's stdout/stderr: written in its working dir on its node, then
                                # synced into its folder under --storage-path with its checkpoints
                                log_to_file=not options.verbose, sync_config=tune.SyncConfig(sync_artifacts=True),
                                # The trial function itself may sit on a node that goes: Tune then runs it
                                # again, and its TorchTrainer (same name and storage) resumes from the
                                # trial's last checkpoint, as a worker-group restart does. A trial in its
                                # own process resumes from its last Tune checkpoint the same way. Like Ray
                                # Train, Tune does not count a preempted node against max_failures.
                                failure_config=tune.FailureConfig(max_failures=options.trial_retries),
                                # Used by trials in their own process (Ray Train keeps its own): the best
                                # two by the objective, and always the latest (what a restart resumes).
                                checkpoint_config=tune.CheckpointConfig(
                                    num_to_keep=2, checkpoint_score_attribute=space.metric,
                                    checkpoint_score_order=space.mode),
                                callbacks=[*console, *tune_callbacks(options.wandb_project, options.name,
                                                                     sweep.sweep_dir, options.wandb_entity),
                                           *mlflow_tracking.tune_callbacks(sweep, new=repeat_points is None), *callbacks])
    experiment = storage.join(options.storage_path, name)
    if options.resume and (repeat_points is None or results_exist(experiment)):
        # --retry-failed: Tune runs an errored trial again from its last checkpoint (restart_errored
        # would start it over); the finished ones are never run again either way.
        return tune.Tuner.restore(experiment, trainable, resume_unfinished=True, resume_errored=options.retry_failed,
                                  param_space=param_space)
    return tune.Tuner(trainable, param_space=param_space, tune_config=tune_config, run_config=run_config)


def _tmp_file_race(record: logging.LogRecord) -> bool:
    """Drops one Tune error, a race inside Ray 2.60: the background sync of the driver's files copied
    the temp file Tune writes its searcher state to, as Tune renamed it into place
    (FileNotFoundError on '.<uuid>-tmp-searcher-state-*.pkl'). Its traceback broke the console's
    one-line-per-event in a CI run (Dec 4); the next snapshot syncs the state again. Any other
    failure to save the experiment state still prints."""
    exc = record.exc_info[1] if record.exc_info else None
    return not (isinstance(exc, FileNotFoundError) and "-tmp-" in str(exc))


def fit(tuner) -> tuple:
    """``(tuner.fit(), whether a Ctrl-C ended it)``. Tune's SIGINT handler, on the first Ctrl-C,
    stops the run and puts back the handler that was there before it: a sentinel set here shows
    whether that happened (the trials it ends look TERMINATED, like finished ones)."""
    import signal

    def sentinel(sig, frame):  # a Ctrl-C that reaches it is a second one: stop now
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, sentinel)
    try:
        grid = tuner.fit()
        tune_handles_it = not int(os.environ.get("TUNE_DISABLE_SIGINT_HANDLER", "0"))
        return grid, tune_handles_it and signal.getsignal(signal.SIGINT) is sentinel
    finally:
        signal.signal(signal.SIGINT, previous)


def results_exist(experiment: str) -> bool:
    return storage.exists(storage.join(experiment, "tuner.pkl"))
