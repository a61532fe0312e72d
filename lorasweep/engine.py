"""The driver every sweep script shares: CLI -> validated config -> Ray Tune over Ray Train trials
-> leaderboard and best adapters.

A sweep script declares a ``Recipe`` (family, dataset, search space, presets) and calls ``main``.
Nothing here knows a model family or a dataset: those come from ``trainers/`` and the recipe.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable

from lorasweep.errors import ConfigError, StorageError
from search_spaces import SearchSpace, project
from trainers.config import Resources, TrainSettings, TrialConfig, check_keys


@dataclass
class Preset:
    """Overrides of a recipe's defaults. ``settings`` are ``TrainSettings`` fields and ``sweep`` are
    ``SweepOptions`` fields (unknown keys are refused with the CLI's one-line error).
    ``assets(cache_dir) -> {"model": ..., "dataset": ..., other settings}`` builds offline stand-ins
    (tiny model, generated sample) before Ray starts; ``space`` narrows or moves the recipe's search space."""

    description: str
    settings: dict = field(default_factory=dict)
    sweep: dict = field(default_factory=dict)
    assets: Callable[[Path], dict] | None = None
    # ``--space`` overrides applied before the command line's, e.g. a tiny model's higher learning rates
    space: tuple[str, ...] = ()


@dataclass
class Recipe:
    """A model x dataset sweep: the task and data (``settings``, ``TrainSettings`` fields: ``task``,
    ``model``, ``dataset``, columns, labels, prompt, budget), the search space, and presets. The
    model family is not part of it: it comes from the checkpoint ``--model`` points at."""

    name: str
    dataset: str
    search_space: SearchSpace
    settings: dict = field(default_factory=dict)  # TrainSettings overrides for the real preset
    presets: dict[str, Preset] = field(default_factory=dict)
    default_preset: str = "real"
    doc: str = ""


SEARCHERS = ("tpe", "random", "grid", "cmaes", "gp")


@dataclass
class SweepOptions:
    """Driver-side options (the trial-side ones are ``TrainSettings``); each is a flag."""

    name: str = field(default="", metadata={"help": "sweep name: its folder under --storage-path"})
    storage_path: str = field(default="runs", metadata={"help": "local folder or s3:// / gs:// URI holding everything"})
    address: str | None = field(default=None, metadata={"help": "join a running cluster ('auto' on a `ray up` head); unset: start a local Ray"})
    objective: str = field(default="", metadata={"help": "metric the search optimises (eval_loss, accuracy, f1, ...); unset: the recipe's. "
                                                  "Two, comma-separated (eval_loss,device_hours): a multi-objective search and its Pareto front"})
    alpha_mode: str = field(default="free", metadata={"choices": ("free", "ratio"), "help": "free: search lora_alpha; ratio: search the update's scale alpha_ratio = alpha/r (alpha/sqrt(r) with rsLoRA), 0.25 to 8 log-uniform; the leaderboard shows both"})
    repeats: int = field(default=0, metadata={"help": "run the top 3 configurations this many more times with other training seeds (same data split); the leaderboard then shows their mean and spread"})
    finalize: bool = field(default=False, metadata={"help": "after the sweep: retrain the winner on train + eval rows for its full budget (final_adapter/) and score it once on the test split"})
    export_max_cost: float = field(default=0.0, metadata={"help": "export only adapters whose trial cost at most this many device-hours (0 = no cap)"})
    num_samples: int = field(default=16, metadata={"help": "trials, the seed points included"})
    max_concurrent: int = field(default=4, metadata={"help": "trials at once (also capped by the cluster's free nodes, unless --autoscale)"})
    searcher: str = field(default="tpe", metadata={"choices": SEARCHERS, "help": "tpe (Optuna's TPE, from the recipe's known-good points), random, "
                                                  "grid (every combination of the knobs' choices; every knob must be a choice), "
                                                  "cmaes (CMA-ES on the numeric knobs; choices sampled independently) "
                                                  "or gp (Gaussian-process Bayesian optimisation)"})
    scheduler: str = field(default="asha", metadata={"choices": ("asha", "none"), "help": "asha (early stopping on the objective) or none"})
    grace_tokens: int = field(default=0, metadata={"help": "ASHA's first rung in training tokens (0 = max_tokens/8)"})
    reduction_factor: float = field(default=3.0, metadata={"help": "ASHA keeps 1/this of trials per rung"})
    prune_metric: str = field(default="eval_loss", metadata={"help": "what ASHA prunes on: eval_loss (smooth; accuracy or F1 on a few hundred rows moves in one-row steps) or any metric the task reports; 'objective' = the objective itself"})
    rung_min_results: int = field(default=0, metadata={"help": "ASHA judges a rung once this many trials reached it; one that passed it before is judged again then (0 = 2: one peer)"})
    final_round: int = field(default=3, metadata={"help": "before export, score the top N trials (and the best known point, and the untrained model) again on the eval + validation rows, rank them by it, with 95% intervals (0 = off)"})
    detectable: float = field(default=0.02, metadata={"help": "the smallest difference in a rate objective (accuracy, F1) the sweep should tell apart; a smaller eval split is warned about"})
    seed: int = field(default=0, metadata={"help": "Optuna TPE seed (the data seed is --data-seed)"})
    top_k: int = field(default=3, metadata={"help": "adapters to export"})
    shots: tuple[int, ...] = field(default=(0,), metadata={"help": "baseline: score the base model with these numbers of solved examples in the prompt, e.g. 0,1,3 (instruction models)"})
    baseline: bool = field(default=True, metadata={"help": "score the base model on the test split before the sweep and the best adapter after it"})
    workers_per_trial: int = field(default=1, metadata={"help": "Ray Train workers (GPUs) per trial"})
    gpus_per_worker: float = field(default=-1.0, metadata={"help": "-1: 1 if the cluster has GPUs (with --autoscale: if a node type it can add has them), else 0"})
    cpus_per_worker: float = field(default=1.0, metadata={"help": "CPUs each worker asks Ray for"})
    placement: str = field(default="pack", metadata={"choices": ("pack", "spread"), "help": "a trial's workers as one placement group: pack (fewest nodes: "
                                                     "fast collectives) or spread (one per node where it can)"})
    # Worker-group restarts from the last checkpoint after a worker error. 0: an out-of-memory or a
    # non-finite loss would only fail again; lost spot nodes are retried by Ray Train regardless
    # (FailureConfig.max_preemption_failures, unlimited by default).
    trial_retries: int = field(default=0, metadata={"help": "worker-group restarts per trial, from its last checkpoint"})
    ray_train: bool = field(default=False, metadata={"help": "run one-worker trials through a Ray Train TorchTrainer too "
                                                     "(without it they train in the Tune trial's own process, reused "
                                                     "from trial to trial; trials of several workers always use Ray Train)"})
    autoscale: bool = field(default=False, metadata={"help": "the cluster adds nodes on demand (ray up, min_workers 0): skip the check that a node fits a worker"})
    dashboard_host: str = field(default="127.0.0.1", metadata={"help": "where a local Ray's dashboard listens (127.0.0.1: this machine only)"})
    warm_start_from: str = field(default="", metadata={"help": "a finished sweep's folder: its finished trials that fit this space seed the study (not run again); the space, model or data may differ"})
    optuna_storage: str = field(default="", metadata={"help": "the Optuna study's database, any SQLAlchemy URL (postgresql://... for several drivers); default: sqlite in the sweep's folder (local storage), in memory on s3:// or gs://"})
    wandb_project: str | None = field(default=None, metadata={"help": "log trials and the leaderboard to this W&B project (WANDB_API_KEY from the environment; offline without it)"})
    wandb_entity: str | None = field(default=None, metadata={"help": "W&B team or user (default: the key's)"})
    resume: bool = field(default=False, metadata={"help": "continue the sweep --name from its storage"})
    dry_run: bool = field(default=False, metadata={"help": "check everything, audit the data, print the config, cluster fit and cost estimate; train nothing"})
    verbose: bool = field(default=False, metadata={"help": "Tune's own progress output, Ray's logs and every trial's output in this console "
                                                  "(default: one line per event; a trial's output goes to stdout/stderr in its folder)"})

    def validate(self) -> "SweepOptions":
        if self.searcher not in SEARCHERS:
            raise ConfigError(f"`--searcher` is {self.searcher!r}; choose {', '.join(SEARCHERS)}")
        if self.scheduler not in ("asha", "none"):
            raise ConfigError(f"`--scheduler` is {self.scheduler!r}; choose asha or none")
        for name in ("num_samples", "max_concurrent", "top_k", "workers_per_trial"):
            if getattr(self, name) < 1:
                raise ConfigError(f"`--{name.replace('_', '-')}` is {getattr(self, name)}; it must be at least 1")
        if self.cpus_per_worker <= 0:
            raise ConfigError(f"`--cpus-per-worker` is {self.cpus_per_worker}; it must be > 0")
        if self.placement not in ("pack", "spread"):
            raise ConfigError(f"`--placement` is {self.placement!r}; choose pack or spread")
        if self.reduction_factor <= 1:
            raise ConfigError(f"`--reduction-factor` is {self.reduction_factor}; it must be > 1")
        if self.grace_tokens < 0 or self.trial_retries < 0:
            raise ConfigError("`--grace-tokens` and `--trial-retries` must be >= 0")
        for name in ("rung_min_results", "final_round"):
            if getattr(self, name) < 0:
                raise ConfigError(f"`--{name.replace('_', '-')}` is {getattr(self, name)}; it must be >= 0 (0: "
                                  f"{'the default' if name == 'rung_min_results' else 'off'})")
        if not 0 < self.detectable < 1:
            raise ConfigError(f"`--detectable` is {self.detectable}; give a difference in (0, 1), e.g. 0.02 for 2 points")
        if any(k < 0 for k in self.shots):
            raise ConfigError(f"`--shots` is {','.join(map(str, self.shots))}; give numbers >= 0, e.g. 0,1,3")
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ConfigError(f"`--name` is {self.name!r}; use a plain folder name like llama_finetome-1")
        return self


# ----------------------------------------------------------------------------- CLI


@dataclass
class ResolvedSweep:
    recipe: Recipe
    preset: str
    settings: TrainSettings
    options: SweepOptions
    space: SearchSpace
    warm: object = None  # lorasweep.warm_start.WarmStart, with --warm-start-from
    recipe_ref: str = ""  # how the command named the recipe, when not by its name (a .py file, a module)
    from_assets: frozenset = frozenset()  # settings the preset built offline (model, dataset, ...)
    file: object = None  # lorasweep.sweepfile.SweepFile, with --config
    given: frozenset = frozenset()  # what the command line itself gave (it overrides the file)
    command: str = ""  # what ran it, for the resume line: "lorasweep run llama_finetome" (default: this script)

    @property
    def sweep_dir(self) -> str:
        return _join(self.options.storage_path, self.options.name)

    @property
    def objectives(self) -> list[str]:
        """The search's objectives: the space's metric, and a second one for a Pareto search."""
        return self.options.objective.split(",") if self.options.objective else [self.space.metric]

    def summary(self) -> dict:
        return {
            "recipe": self.recipe.name,
            "preset": self.preset,
            "settings": self.settings.to_dict(),
            "sweep": dataclasses.asdict(self.options),
            "search_space": self.space.describe(),
            "space": self.space.to_json(),
            "metric": self.space.metric,
            "mode": self.space.mode,
            "seeds": list(self.space.seeds),
            "seeds_moved": [self.space.seed_label(seed) for seed in self.space.seeds],
        }


def _stem(dataset: str) -> str:
    """``data/chats.jsonl`` -> chats; ``HuggingFaceH4/ultrachat_200k`` -> ultrachat_200k."""
    base = dataset.rstrip("/").rsplit("/", 1)[-1]
    stem = base.split(".")[0] if "." in base else base
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in stem) or "data"


def _join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts]) if "://" in base else os.path.join(base, *parts)


def resolve(recipe: Recipe, argv: list[str] | None = None, prog: str | None = None,
            recipe_ref: str = "") -> ResolvedSweep:
    """Parse and validate everything; raise ConfigError on the first problem. Starts nothing.

    Precedence, lowest first: the field defaults, the recipe, its preset, a sweep file (``--config``),
    the flags given. An error about a value the sweep file gave names its ``file:line``."""
    from lorasweep import sweepfile

    from lorasweep.flags import build_parser

    args = vars(build_parser(recipe, prog).parse_args(argv))
    given = frozenset(args) - {"space"} | {f"space.{spec.partition('=')[0].strip()}" for spec in args.get("space", [])}
    file = None
    if "config" in args:
        file = sweepfile.load(args.pop("config"))
        if file.recipe and not _names(file.recipe, recipe, recipe_ref, file.path):
            raise ConfigError(f"{file.where('recipe')}: the file's recipe is {file.recipe!r} but this runs "
                              f"{recipe.name!r}; run it with: lorasweep run --config {file.path}")
        args = {**file.values, **args, "space": [*file.values.get("space", []), *args.get("space", [])]}
    try:
        sweep = _resolve(recipe, args)
    except ConfigError as e:
        raise sweepfile.locate(e, file, given) from None
    sweep.recipe_ref, sweep.file, sweep.given = recipe_ref, file, given
    return sweep


def _names(ref: str, recipe: Recipe, recipe_ref: str, path: str) -> bool:
    """Whether a sweep file's ``recipe:`` is the recipe running (by name, module or file)."""
    if ref in (recipe.name, f"sweeps.{recipe.name}", recipe_ref):
        return True
    target = ref.partition(":")[0]
    beside = os.path.join(os.path.dirname(os.path.abspath(path)), target)
    return target.endswith(".py") and recipe_ref.partition(":")[0] in (os.path.abspath(target), beside)


def _resolve(recipe: Recipe, args: dict) -> ResolvedSweep:
    from trainers.tasks import get_task, metric_mode

    preset_name = args.pop("preset", recipe.default_preset)
    if preset_name not in recipe.presets:
        raise ConfigError(f"`--preset` is {preset_name!r}; choose one of: {', '.join(recipe.presets)}")
    preset = recipe.presets[preset_name]
    check_keys(recipe.settings, TrainSettings, f"recipe {recipe.name!r} settings")
    check_keys(preset.settings, TrainSettings, f"recipe {recipe.name!r} preset {preset_name!r} settings")
    check_keys(preset.sweep, SweepOptions, f"recipe {recipe.name!r} preset {preset_name!r} sweep")

    opt_names = {f.name for f in fields(SweepOptions)}
    opts = {"name": f"{recipe.name}-{preset_name}", **preset.sweep,
            **{k: v for k, v in args.items() if k in opt_names}}
    options = SweepOptions(**opts)
    if "://" not in options.storage_path:
        options.storage_path = os.path.abspath(os.path.expanduser(options.storage_path))

    settings_d = {"dataset": recipe.dataset, **recipe.settings, **preset.settings}
    if "data_seed" in args:
        settings_d["seed"] = args.pop("data_seed")
    settings_d.update({k: v for k, v in args.items() if k not in opt_names and k != "space"})
    from_assets = set()
    if preset.assets is not None and not ("model" in args and "dataset" in args):
        # Offline stand-ins (built once, cached); an explicit --model/--dataset still wins.
        made = preset.assets(assets_cache() / recipe.name)
        for key, value in made.items():  # model, dataset, and any other local stand-in (a BERTScore encoder)
            if key not in args:
                settings_d[key] = str(value)
                from_assets.add(key)
    for key, what in (("model", "a Hub id or a local folder"), ("dataset", "a Hub id or a .jsonl/.json/.parquet file")):
        if not settings_d.get(key):  # a recipe for any model or data (sweeps/chat_sft.py) names neither
            raise ConfigError(f"`--{key}` is unset: recipe {recipe.name!r} takes any; pass --{key} ({what})"
                              + (", or --preset smoke to try it offline" if "smoke" in recipe.presets else ""))
    if "name" not in args and "name" not in preset.sweep and not recipe.dataset:
        # named after the data it sweeps, not after a dataset it never used
        options.name = f"{recipe.name}-{_stem(settings_d['dataset'])}" + \
            ("" if preset_name == recipe.default_preset else f"-{preset_name}")
    options.validate()
    settings = TrainSettings.from_dict(settings_d).validate()
    task = get_task(settings.task)

    space = recipe.search_space
    if options.alpha_mode not in ("free", "ratio"):
        raise ConfigError(f"`--alpha-mode` is {options.alpha_mode!r}; choose free or ratio")
    if options.alpha_mode == "ratio":
        space = alpha_as_ratio(space)
    for spec in [*preset.space, *args.get("space", [])]:
        space = space.override(spec)
    wanted = [m.strip() for m in options.objective.split(",") if m.strip()]
    names = (*task.metric_names(settings), "device_hours")  # every trial reports its cost too
    for m in wanted:
        if m not in names:
            said = f"is {m!r}" if len(wanted) == 1 else f"has {m!r}"
            raise ConfigError(f"`--objective` {said}; task `{task.name}` reports: {', '.join(names)}")
    if len(wanted) > 2 or len(set(wanted)) < len(wanted):
        raise ConfigError(f"`--objective` is {options.objective!r}; give one metric, or two different ones "
                          "(quality against cost: eval_loss,device_hours)")
    if wanted:
        space = dataclasses.replace(space, metric=wanted[0], mode=metric_mode(wanted[0]))
    elif space.metric not in task.metric_names(settings):
        raise ConfigError(f"recipe {recipe.name!r}: search space metric {space.metric!r} is not reported by task "
                          f"`{task.name}` ({', '.join(task.metric_names(settings))}); fix the recipe or pass --objective")
    options.objective = ",".join([space.metric, *wanted[1:]])
    if options.prune_metric == "objective":
        options.prune_metric = space.metric
    elif options.prune_metric not in task.metric_names(settings):
        raise ConfigError(f"`--prune-metric` is {options.prune_metric!r}; task `{task.name}` reports: "
                          f"{', '.join(task.metric_names(settings))} (or pass objective)")
    if len(wanted) == 2 and options.searcher == "cmaes":
        raise ConfigError("`--searcher cmaes` optimises one objective; with two in --objective use tpe, random, grid or gp")
    if options.export_max_cost < 0:
        raise ConfigError(f"`--export-max-cost` is {options.export_max_cost}; give device-hours > 0, or 0 for no cap")
    # A knob added with --space: the seed points trained with its unsearched value (the recipe's
    # setting or the library's default), then moved into the space like every other knob.
    from search_spaces.knobs import current

    seeds = [{**{k: current(k, settings) for k in space.params if k not in seed}, **seed} for seed in space.seeds]
    projected = [project(space, s) for s in seeds]
    moved = tuple({k: v for k, v in s.items() if k in space.params and p[k] != v} for s, p in zip(seeds, projected))
    space = dataclasses.replace(space, seeds=tuple(projected), moved=moved).validate()
    check_with_libraries(space, settings)
    if options.searcher == "grid":
        continuous = [k for k, d in space.params.items() if not hasattr(d, "values")]
        if continuous:
            raise ConfigError(f"`--searcher grid` needs every knob to be a choice; {', '.join(continuous)} "
                              f"{'is' if len(continuous) == 1 else 'are'} a range: pass e.g. --space {continuous[0]}=a,b,c")
    method = space.params.get("method")
    if method is not None and "full" in getattr(method, "values", ()) and settings.quantization != "none":
        raise ConfigError(f"search space `method` includes full, which a {settings.quantization} base cannot train; "
                          "pass --quantization none, or --space method=lora")
    if options.scheduler == "asha" and options.grace_tokens >= settings.max_tokens:
        if "grace_tokens" not in args:  # a preset's first rung past a smaller --max-tokens: the default rule
            options.grace_tokens = 0
        else:
            raise ConfigError(f"`--grace-tokens` is {options.grace_tokens:,}, not below max_tokens "
                              f"({settings.max_tokens:,}): ASHA would never stop a trial; lower it, or pass --scheduler none")
    sweep = ResolvedSweep(recipe, preset_name, settings, options, space, from_assets=frozenset(from_assets))
    if options.warm_start_from and not options.resume:  # resumed, the study has them from Tune's checkpoint
        from lorasweep import warm_start

        sweep.warm = warm_start.load(options.warm_start_from, sweep)
        left = warm_start.remaining_seeds(space.seeds, sweep.warm)
        keep = [i for i, seed in enumerate(space.seeds) if seed in left]
        sweep.space = dataclasses.replace(space, seeds=tuple(space.seeds[i] for i in keep),
                                          moved=tuple(space.moved[i] for i in keep))
    return sweep


# ----------------------------------------------------------------------------- Ray


class ResumeFromNewest:
    """Mixed into every trial's Tune trainable (Tune's ``__mixins__`` hook). Tune restores a trial from
    the checkpoint that its last experiment-state snapshot names, but it deletes a checkpoint as soon
    as a newer one pushes it out of ``CheckpointConfig(num_to_keep=2)``'s best two, which can be
    before the next snapshot. A driver killed in that window (1 resume in 3 in tests/test_interrupt.py)
    left the trial failing with "does not exist on storage anymore". Tune deletes a checkpoint only
    for a newer one, so the newest complete checkpoint in the trial's folder is the one to resume."""

    def restore(self, checkpoint_path):
        import pyarrow.fs as pafs

        from trainers.loop import newest_checkpoint

        ckpt = getattr(checkpoint_path, "checkpoint", None)  # Tune passes a _TrainingResult
        if ckpt is not None and ckpt.filesystem.get_file_info(ckpt.path).type == pafs.FileType.NotFound:
            newest = newest_checkpoint(ckpt.filesystem, os.path.dirname(ckpt.path.rstrip("/")))
            if newest is not None:
                print(f"[lorasweep] {os.path.basename(ckpt.path)} was pruned after Tune last saved its state; "
                      f"resuming from {os.path.basename(newest)}", file=sys.stderr)
                checkpoint_path = type(checkpoint_path)(checkpoint=type(ckpt)(newest, filesystem=ckpt.filesystem),
                                                        metrics=checkpoint_path.metrics)
        return super().restore(checkpoint_path)


def lora_trial(config: dict, secrets: list | None = None) -> None:
    """Tune function trainable: one trial = one Ray Train ``TorchTrainer`` run, or for a one-worker
    trial that needs no DeepSpeed (``Resources.in_trial_process``) the same loop in this process.

    Train workers report (metrics + checkpoint) to Train; ``TuneReportCallback`` forwards each
    report to this trial, so ASHA sees ``tokens_seen`` and the objective as they come.
    ``secrets`` is the driver's ``credentials.share()``: passed on to the workers by reference.
    """
    from ray import tune
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from lorasweep.credentials import with_secrets
    from lorasweep.dashboard import mark_trial
    from trainers.loop import train_func, train_in_trial_process
    from trainers.tasks import metric_mode

    mark_trial(tune.get_context().get_trial_id())  # a `trial_<id>` row in the dashboard's task table
    for stream in (sys.stdout, sys.stderr):
        # Tune's log_to_file tees them into the trial's folder through an object with no isatty,
        # which Transformers' weight-loading report calls (every classification trial failed on it)
        if stream is not None and not hasattr(stream, "isatty"):
            stream.isatty = lambda: False
    trial = TrialConfig.from_tune(config)
    res = trial.resources
    if res.in_trial_process:
        return train_in_trial_process(with_secrets(config, secrets))
    objective = trial.objective
    trainer = TorchTrainer(
        train_func,
        train_loop_config=with_secrets(config, secrets),
        scaling_config=ScalingConfig(
            num_workers=res.workers,
            use_gpu=res.gpus > 0,
            resources_per_worker={"CPU": res.cpus, **({"GPU": res.gpus} if res.gpus > 0 else {})},
            placement_strategy=res.placement,
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


def init_ray(options: SweepOptions) -> None:
    import ray

    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    if ray.is_initialized():
        return
    # Ray's own chatter off unless --verbose: its INFO lines, the workers' output forwarded to this
    # console (a trial's goes to its folder: Tune's log_to_file), and the token-auth notice (the
    # dashboard line below says it once, with how to sign in).
    quiet = {} if options.verbose else {"logging_level": logging.WARNING, "log_to_driver": False}
    if not options.verbose:
        logging.getLogger("ray._private.authentication").setLevel(logging.ERROR)
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # "A new study created in memory"
    from lorasweep.dashboard import env_vars

    if options.address:
        ray.init(address=options.address, runtime_env={"env_vars": env_vars()}, **quiet)
    else:
        # The dashboard (and its HTTP API) listens on loopback unless --dashboard-host says
        # otherwise; a cluster's head decides its own (cluster.yaml keeps it on loopback too).
        # Ray's gRPC ports bind every interface whatever is asked, and Ray 2.60 guards them with
        # its cluster auth token.
        #
        # Two local sweeps on one machine (two Ray instances) must not see each other. Ray Train's
        # PlacementGroupCleaner asks the state API whether its trial's controller is alive, finding
        # the API by auto-detection; with two instances that fails or asks the other one, and the
        # cleaner removes a live trial's placement group: its workers die and the sweep hangs
        # (seen here, Ray 2.60). Every process of this instance is pointed at its own dashboard.
        # address="local": a new instance even when a `ray start` cluster (or a test's) runs on this
        # machine; plain ray.init() would join that one, and die with it (seen here). Join one with
        # --address auto.
        port = _free_port()
        api = f"http://{'127.0.0.1' if options.dashboard_host in ('0.0.0.0', '::') else options.dashboard_host}:{port}"
        ray.init(address="local", dashboard_host=options.dashboard_host, dashboard_port=port, include_dashboard=None,
                 runtime_env={"env_vars": {"RAY_API_SERVER_ADDRESS": api, **env_vars()}}, **quiet)
        os.environ["RAY_API_SERVER_ADDRESS"] = api  # the driver's own state-API calls, likewise


def _free_port(preferred: int = 8265) -> int:
    """Ray's usual dashboard port when it is free (a second sweep on the machine gets another)."""
    import socket

    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise OSError("no free port for the Ray dashboard")


def cluster_resources() -> dict:
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    return {
        "cpu": sum(n.get("CPU", 0) for n in nodes),
        "gpu": sum(n.get("GPU", 0) for n in nodes),
        "nodes": nodes,
        "accelerators": sorted({k for n in nodes for k in n if k.startswith("accelerator_type:")}),
    }


def trial_resources(options: SweepOptions, cluster: dict, sweep: "ResolvedSweep | None" = None) -> Resources:
    """``--gpus-per-worker -1``: 1 when the cluster has GPUs (or, with ``--autoscale``, when a node
    type it can add has them: ``cluster["node_types"]``), else 0. With ``sweep``, also whether its
    trials train in the Tune trial's own process (``in_trial_process``)."""
    gpus = options.gpus_per_worker
    if gpus < 0:
        gpus = 1.0 if cluster["gpu"] > 0 else 0.0
        if not gpus and options.autoscale:
            gpus = _gpus_from_node_types(cluster.get("node_types"))
    res = Resources(workers=options.workers_per_trial, gpus=gpus, cpus=options.cpus_per_worker,
                    retries=options.trial_retries, placement=options.placement.upper())
    if sweep is not None:
        res.in_trial_process = trains_in_trial_process(sweep, res)
    return res


def trains_in_trial_process(sweep: "ResolvedSweep", res: Resources) -> bool:
    """One worker, and no trial of the space that needs DeepSpeed (``trainers.config.for_workers``:
    ``offload``, or a full fine-tune in half precision, i.e. on a GPU): Ray Train would only add a
    controller and a worker process per trial. ``--ray-train`` keeps it anyway."""
    from trainers.config import for_workers

    if res.workers != 1 or sweep.options.ray_train:
        return False
    s = sweep.settings
    # what pick_precision gives a worker: a GPU's half precision (bf16 or fp16: the same to for_workers)
    precision = s.precision if s.precision != "auto" else ("bf16" if res.gpus > 0 else "fp32")
    methods = {s.method, *getattr(sweep.space.params.get("method"), "values", ())}
    return all(for_workers(dataclasses.replace(s, method=m), 1, precision)[0].zero_stage == 0 for m in methods)


def _gpus_from_node_types(node_types: dict[str, dict] | None) -> float:
    if node_types and any(r.get("GPU", 0) > 0 for r in node_types.values()):
        return 1.0
    # A node type whose resources Ray could not fill in (no CPU count: its provider does not
    # autodetect them) may well be a GPU type, so only a complete picture without GPUs means CPUs.
    unknown = [name for name, r in (node_types or {}).items() if "CPU" not in r]
    if node_types and not unknown:
        return 0.0
    why = ("no ~/ray_bootstrap_config.yaml on the head" if node_types is None
           else "its autoscaler config lists no node type to add" if not node_types
           else f"its autoscaler config gives no resources for node type(s) {', '.join(unknown)}")
    raise ConfigError(f"`--gpus-per-worker` is -1 (auto) but with --autoscale the GPUs of the nodes the cluster will "
                      f"add are unknown ({why}); pass --gpus-per-worker 1 (or 0 to train on CPUs)")


def concurrency(options: SweepOptions, res: Resources, cluster: dict) -> int:
    """Trials that fit at once, from the worker slots of every node. An autoscaling cluster grows
    to fit the trials asked for: ``--max-concurrent`` of them (cluster.yaml starts with no GPU
    node, which would cap the sweep at one trial at a time)."""
    from lorasweep.preflight import worker_slots

    if options.autoscale:
        return options.max_concurrent
    return max(1, min(options.max_concurrent, sum(worker_slots(n, res) for n in cluster["nodes"]) // res.workers))


def alpha_as_ratio(space: SearchSpace) -> SearchSpace:
    """``--alpha-mode ratio``: the space draws the update's scale (alpha/r, alpha/sqrt(r) with
    rsLoRA) instead of lora_alpha, which then follows from it and r. The same scale means the same
    step size at every rank, so the searcher learns one number instead of a (r, alpha) pairing.
    Seeds keep their scale: r=16, alpha=16 is ratio 1; r=8, alpha=16 with rsLoRA is 16/sqrt(8) = 5.66."""
    import math

    from search_spaces import LogUniform

    if "lora_alpha" not in space.params:
        return space
    params = {("alpha_ratio" if k == "lora_alpha" else k): (LogUniform(0.25, 8.0) if k == "lora_alpha" else d)
              for k, d in space.params.items()}
    seeds = []
    for seed in space.seeds:
        seed = dict(seed)
        alpha, r = seed.pop("lora_alpha"), seed["r"]
        seed["alpha_ratio"] = alpha / (math.sqrt(r) if seed.get("use_rslora") else r)
        seeds.append(seed)
    return dataclasses.replace(space, params=params, seeds=tuple(seeds))


def check_with_libraries(space: SearchSpace, settings: TrainSettings) -> None:
    """Every value a knob may take (each choice, a range's ends, each seed's) built into what it
    configures: the effective TrainSettings, a peft.LoraConfig, a TrainingArguments. A value the
    library refuses is a one-line ConfigError before Ray starts, not a failed trial."""
    from search_spaces import Choice
    from search_spaces.knobs import check_fixed, check_value

    check_fixed(settings)
    for name, dist in space.params.items():
        values = list(dist.values) if isinstance(dist, Choice) else [dist.low, dist.high]
        for value in dict.fromkeys([*values, *(seed[name] for seed in space.seeds if name in seed)]):
            check_value(name, value, settings)


def optuna_url(sweep: ResolvedSweep) -> str:
    """Where the Optuna study lives: ``--optuna-storage``, else SQLite in a local sweep's folder
    (``optuna-dashboard sqlite:///runs/<name>/optuna.db`` shows it), else "" (in memory: SQLite
    cannot live in a bucket; Tune's searcher checkpoint still keeps the study for --resume)."""
    o = sweep.options
    if o.optuna_storage:
        return o.optuna_storage
    if "://" in sweep.sweep_dir:
        return ""
    return f"sqlite:///{os.path.abspath(_join(sweep.sweep_dir, 'optuna.db'))}"


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
        raise ConfigError(f"`--optuna-storage` {url!r} cannot be opened ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:160]}); give an SQLAlchemy URL such as sqlite:///study.db") from None


def _sampler(name: str, space: SearchSpace, seed: int):
    """Optuna's sampler for ``--searcher`` (None: OptunaSearch's default, TPE, seeded)."""
    import optuna

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
    return None


def build_tuner(sweep: ResolvedSweep, res: Resources, max_concurrent: int, trainable=None, callbacks=(), stop=None,
                repeat_points: list[dict] | None = None, suffix: str = "repeats"):
    """The Tuner of a sweep. ``trainable`` replaces the trial function (bench/driver_scale.py times
    the driver with a trivial one), ``callbacks`` are more Tune callbacks (bench/startup.py
    notes when each trial starts) and ``stop`` a Tune stopper (bench/search.py's compute budget);
    ``repeat_points`` (``--repeats``): exactly these configurations, each with its ``repeat``, in an
    experiment of their own (``<name>-repeats``) beside the sweep's, no searcher, no early stopping;
    everything else is what a sweep runs."""
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler
    from ray.tune.search.optuna import OptunaSearch

    from lorasweep.console import Console
    from lorasweep.credentials import share
    from lorasweep.preflight import asha_grace, asha_rungs
    from lorasweep.scheduling import JudgedASHA
    from lorasweep.tracking import tune_callbacks
    from trainers.tasks import metric_mode

    o, s, space = sweep.options, sweep.settings, sweep.space
    param_space = TrialConfig(s, resources=res, train_storage=_join(sweep.sweep_dir, "train_runs"),
                              objective=space.metric).to_tune(space.to_tune())
    sampler = _sampler(o.searcher, space, o.seed)
    storage = optuna_storage(sweep)
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
        searcher = search_cls(**goal, points_to_evaluate=[dict(p) for p in space.seeds],
                                **({"storage": storage, "study_name": o.name} if storage is not None else {}),
                                **({"sampler": sampler} if sampler is not None else {"seed": o.seed}))
    rungs = []
    if o.scheduler == "asha" and repeat_points is None:
        # Rungs on training tokens: e.g. max 2M tokens, grace 250k, factor 3 -> rungs at
        # 250k and 750k; a trial continues past a rung only in the top third of its peers.
        # It prunes on --prune-metric (eval loss by default: smooth, where F1 on the eval rows moves
        # in one-row steps) and judges a rung only once enough trials reached it (scheduling.py).
        grace = asha_grace(s.max_tokens, o.grace_tokens)
        scheduler = JudgedASHA(time_attr="tokens_seen", metric=o.prune_metric, mode=metric_mode(o.prune_metric),
                               max_t=s.max_tokens, grace_period=grace, reduction_factor=o.reduction_factor,
                               min_results=o.rung_min_results)
        rungs = asha_rungs(s.max_tokens, grace, o.reduction_factor)
    else:
        scheduler = FIFOScheduler()
    # A trial that trains in its own process asks for what its one worker would have.
    # Otherwise the trial function only waits on its TorchTrainer, whose workers ask for their own
    # CPUs/GPUs. It must not hold a CPU itself: even 0.01 CPU per trial leaves 2 trials x (1 worker
    # CPU + 0.01) > 2 CPUs, and the second trial's workers wait forever for a CPU its own driver
    # holds. Tune refuses an empty request, so it asks for one byte of Ray's logical memory.
    # HF_TOKEN reaches the trials' workers by reference (lorasweep/credentials.py).
    wants = ({"CPU": res.cpus, **({"GPU": res.gpus} if res.gpus > 0 else {})} if res.in_trial_process
             else {"memory": 1})
    trainable = tune.with_parameters(trainable or lora_trial, secrets=share())
    trainable.__mixins__ = (ResumeFromNewest,)
    trainable = tune.with_resources(trainable, wants)
    # The scheduler and the searcher carry their own metrics; Tune refuses a second one here.
    own = multi or isinstance(scheduler, JudgedASHA)
    tune_config = tune.TuneConfig(metric=None if own else space.metric, mode=None if own else space.mode,
                                  search_alg=searcher, scheduler=scheduler,
                                  num_samples=o.num_samples if repeat_points is None else len(repeat_points),
                                  max_concurrent_trials=max_concurrent,
                                  # the next trial starts in a finished one's process: torch, Transformers,
                                  # the CUDA context and the data cache are already there
                                  reuse_actors=res.in_trial_process)
    tune_config.trial_dirname_creator = lambda trial: f"trial_{trial.trial_id}"  # not the whole config
    # Quiet by default: one line per event (lorasweep/console.py) instead of Tune's boxes, and a
    # trial's stdout/stderr in its folder. Tune snapshots its state at every checkpoint (num_to_keep
    # is set) and warns about it each time: that is the cost of resuming exactly, not news.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if not o.verbose:
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the new one prints its boxes even at verbose=0
        os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")  # the console's failure line names error.txt
        # "The `on_trial_result` operation took 0.6 s" (W&B's queue on a busy driver) and "Trials did
        # not complete: [...]" (the failure lines said it, with the reasons)
        logging.getLogger("ray.tune.utils.util").setLevel(logging.ERROR)
        logging.getLogger("ray.tune.tune").setLevel(logging.CRITICAL)
    console = [] if o.verbose else [Console(list(space.params), space.metric, space.mode, rungs,
                                            prune_metric=o.prune_metric if rungs else "")]
    name = o.name if repeat_points is None else f"{o.name}-{suffix}"
    run_config = tune.RunConfig(name=name, storage_path=o.storage_path, verbose=1 if o.verbose else 0, stop=stop,
                                # a trial's stdout/stderr: written in its working dir on its node, then
                                # synced into its folder under --storage-path with its checkpoints
                                log_to_file=not o.verbose, sync_config=tune.SyncConfig(sync_artifacts=True),
                                # The trial function itself may sit on a node that goes: Tune then runs it
                                # again, and its TorchTrainer (same name and storage) resumes from the
                                # trial's last checkpoint, as a worker-group restart does. A trial in its
                                # own process resumes from its last Tune checkpoint the same way. Like Ray
                                # Train, Tune does not count a preempted node against max_failures.
                                failure_config=tune.FailureConfig(max_failures=o.trial_retries),
                                # Used by trials in their own process (Ray Train keeps its own): the best
                                # two by the objective, and always the latest (what a restart resumes).
                                checkpoint_config=tune.CheckpointConfig(
                                    num_to_keep=2, checkpoint_score_attribute=space.metric,
                                    checkpoint_score_order=space.mode),
                                callbacks=[*console, *tune_callbacks(o.wandb_project, o.name, sweep.sweep_dir, o.wandb_entity),
                                           *callbacks])
    experiment = _join(o.storage_path, name)
    if o.resume and (repeat_points is None or results_exist(experiment)):
        return tune.Tuner.restore(experiment, trainable, resume_unfinished=True, resume_errored=False,
                                  param_space=param_space)
    return tune.Tuner(trainable, param_space=param_space, tune_config=tune_config, run_config=run_config)


# ----------------------------------------------------------------------------- entry point


def dry_run_report(sweep: ResolvedSweep, inputs, res: Resources, cluster: dict, at_once: int) -> str:
    """What the sweep would do, summary first: what it trains, on what, where, and what it costs;
    the full resolved config (JSON) only with --verbose."""
    from lorasweep.preflight import estimate

    s, o, space = sweep.settings, sweep.options, sweep.space
    where = ("this machine, Ray not started" if not o.address else f"the cluster at {o.address}")
    lines = [f"dry run of {sweep.recipe.name} (preset {sweep.preset}) on {where}: nothing is trained or written",
             f"sweep: {o.name} -> {sweep.sweep_dir}; {o.num_samples} trials, {len(space.seeds)} known point(s) first, "
             f"{o.searcher}{' + ASHA' if o.scheduler == 'asha' else ''} on {', '.join(sweep.objectives)} "
             f"({space.mode})" + (f", ASHA pruning on {o.prune_metric}" if o.scheduler == "asha"
                                  and o.prune_metric != space.metric else "")
             + (f"; final round: top {o.final_round} on eval + validation rows" if o.final_round else ""),
             "space: " + "; ".join(space.describe()),
             f"model: {s.model} ({model_line(sweep, inputs, res)})"]
    if inputs.data:
        from lorasweep.selection import sweep_noise_lines

        lines.append(data_line(inputs.data))
        lines += sweep_noise_lines(sweep, inputs.data)
    lines.append(f"per trial: {res.workers} worker(s) x ({res.cpus:g} CPU, {res.gpus:g} GPU); "
                 f"{at_once} trial(s) at once on {'this machine' if not o.address else 'this cluster'} "
                 f"({cluster['cpu']:g} CPU, {cluster['gpu']:g} GPU, {len(cluster['nodes'])} node(s))")
    lines += estimate(sweep, inputs, res, cluster, at_once)
    if res.gpus <= 0:
        lines += cpu_wall_time(sweep, inputs, res, at_once)
    if o.verbose:
        lines += ["resolved config:", json.dumps(sweep.summary(), indent=2, default=str)]
    else:
        lines.append("(--verbose adds the full resolved config; a sweep writes it to sweep.yaml, a sweep file that reruns it)")
    return "\n".join(lines)


# Above this size a CPU probe would itself take minutes (a 1B model: a few seconds per step on 2
# cores, plus loading): the dry run says so instead of measuring.
PROBE_MAX_PARAMS = 500_000_000


def cpu_wall_time(sweep: ResolvedSweep, inputs, res: Resources, at_once: int) -> list[str]:
    """CPU trials: the wall time from a few measured steps of the first known point, in this process
    (lorasweep/probe.py), where a FLOP count at an assumed utilisation would say little."""
    from lorasweep.probe import measure, wall_time_lines
    from trainers.data import first_line

    params = inputs.parameters()
    if params and params > PROBE_MAX_PARAMS:
        return [f"wall time: not probed ({params / 1e9:.1f}B params on CPUs: minutes per optimizer step; "
                "give the trials GPUs, or a smaller --model)"]
    try:
        return wall_time_lines(sweep, inputs, res, at_once, measure(sweep, res))
    except Exception as e:  # noqa: BLE001 - a model that does not load, ...: the rest of the dry run stands
        return [f"wall time: unknown (probe failed: {first_line(e)[:200]})"]


def model_line(sweep: ResolvedSweep, inputs, res: Resources) -> str:
    """``llama, 0.13M params, 4-bit QLoRA (...) on the CPU, fp32``: what each trial loads, and how."""
    s = sweep.settings
    params = inputs.parameters()
    parts = [s.family or "family from its config"]
    if params:
        parts.append(f"{params / 1e9:.2f}B params" if params >= 1e8 else f"{params / 1e6:.2f}M params")
    bits = {"4bit": "4-bit QLoRA (bitsandbytes NF4, double quant)", "8bit": "8-bit (bitsandbytes LLM.int8)"}
    if s.quantization in bits:
        # bitsandbytes >= 0.49 quantises and trains on the CPU too (tests/test_families.py does, on 2 cores)
        parts.append(bits[s.quantization] + (" on the CPU: bitsandbytes runs it without CUDA" if res.gpus <= 0 else ""))
    elif s.method == "full":
        parts.append("full fine-tune")
    precision = s.precision if s.precision != "auto" else ("bf16 (fp16 on GPUs without it)" if res.gpus > 0 else "fp32")
    parts.append(f"{s.method}, {precision}")
    return ", ".join(parts)


def data_line(data: dict) -> str:
    skipped = ", ".join(f"{k}: {v}" for k, v in data["skipped"].items()) or "none"
    val = f" + {data['validation_rows']} validation rows" if data.get("validation_rows") else ""
    return (f"data: {data['rows']} rows -> {data['train_examples']} train + {data['eval_examples']} eval examples{val} "
            f"({data['tokens_per_example']:.0f} tokens each on average); skipped {skipped}; "
            f"{data['truncated']} truncated to max_seq_length")


def assets_cache() -> Path:
    return Path(os.environ.get("LORASWEEP_CACHE", Path.home() / ".cache" / "lorasweep")) / "assets"


def main(recipe: Recipe, argv: list[str] | None = None, command: str = "", recipe_ref: str = "") -> int:
    """Run (or dry-run) a sweep of ``recipe`` from command-line flags. ``command`` is how the user
    called it (``lorasweep run llama_finetome``; default: ``python <this script>``): --help and the
    resume line say it."""
    from lorasweep import dashboard, final_round, preflight, selection, sweepfile
    from lorasweep.results import finish, publish, resume_command, write_start

    argv = sys.argv[1:] if argv is None else argv
    sweep = None
    try:
        sweep = resolve(recipe, argv, prog=command or None, recipe_ref=recipe_ref)
        sweep.command = command
        inputs = preflight.check_inputs(sweep)  # paths, the model's limits, the data: still no Ray
    except ConfigError as e:
        e = sweepfile.locate(e, sweep.file, sweep.given) if sweep is not None else e
        print(f"error: {e}", file=sys.stderr)
        return 2
    o = sweep.options
    if inputs.data and not o.dry_run:
        print(f"[lorasweep] {data_line(inputs.data)}")
        for line in selection.sweep_noise_lines(sweep, inputs.data):
            print(f"[lorasweep] {line}")
    started = False
    try:
        if o.dry_run and not o.address:
            # Nothing to ask a cluster: this machine's CPUs and GPUs are what a local Ray would offer.
            cluster = preflight.local_cluster()
        else:
            init_ray(o)
            if not o.dry_run:
                print(dashboard.line(o.address))
            cluster = cluster_resources()
        if o.autoscale:
            cluster = preflight.with_addable_node_types(cluster)
        res = trial_resources(o, cluster, sweep)
        preflight.check_cluster(o, res, cluster)
        preflight.check_paths_on_nodes(sweep, res)
        n = concurrency(o, res, cluster)
        if o.dry_run:
            print(dry_run_report(sweep, inputs, res, cluster, n))
            return 0
        if o.optuna_storage:  # a URL the user gave: refused here, before any trial
            optuna_storage(sweep)
        write_start(sweep, inputs)
        started = True
    except ConfigError as e:
        print(f"error: {sweepfile.locate(e, sweep.file, sweep.given)}", file=sys.stderr)
        return 2
    finally:
        if not started:  # a dry run or a refusal: the sweep folder the checks made goes again
            preflight.remove_created(inputs.created)

    try:
        for seed in sweep.space.seeds:
            label = sweep.space.seed_label(seed)
            if "moved" in label:  # a narrowed --space changed what the recipe knew worked: say so
                print(f"[lorasweep] {label}")
        baseline = run_baseline(sweep, res) if wants_baseline(sweep) else None
        print(f"[lorasweep] {sweep.options.name}: {sweep.options.num_samples} trials, {n} at once, "
              f"{res.workers} worker(s)/trial; results in {sweep.sweep_dir}")
        if sweep.warm is not None:
            print("\n".join(sweep.warm.lines()))
        if optuna_url(sweep):
            print(f"[lorasweep] Optuna study {sweep.options.name!r}: {optuna_url(sweep)} (optuna-dashboard shows it)")
        t0 = time.time()
        tuner = build_tuner(sweep, res, n)
        try:
            grid, interrupted = fit(tuner)  # a first Ctrl-C makes Tune save its state and return early
        except KeyboardInterrupt:  # a second one lands here
            print(f"\n[lorasweep] interrupted: everything written so far is kept in {sweep.sweep_dir}\n"
                  f"[lorasweep] resume with: {resume_command(argv, sweep.command)}")
            return 130
        rc, rows, exported = finish(sweep, grid, time.time() - t0, argv, interrupted,
                                    select=lambda rows: final_round.run(sweep, res, rows))
        if rc == 0 and sweep.options.repeats:
            rc = run_repeats(sweep, res, n, rows, argv)
        final = run_final(sweep, res, rows, argv) if rc == 0 and sweep.options.finalize else None
        rc = 130 if final == "interrupted" else rc
        if rc == 0 and baseline is not None:
            run_baseline(sweep, res, baseline, final=final)
        publish(sweep, rows, exported, summary_run=rc != 130)  # the report (finished or interrupted), W&B
    except StorageError as e:  # a write under --storage-path failed: what was written before stays
        print(f"error: {e}", file=sys.stderr)
        return 2
    return rc


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
    from lorasweep.results import _exists

    return _exists(_join(experiment, "tuner.pkl"))


def run_repeats(sweep: ResolvedSweep, res: Resources, n: int, rows: list[dict], argv: list[str]) -> int:
    """``--repeats``: the top 3 healthy configurations again, ``repeats`` times each with other
    training seeds, then their mean and spread in the leaderboard (``runs``, ``mean_<metric>``,
    ``std_<metric>``). Returns 0, or 130 when a Ctrl-C ended it (resume continues it)."""
    from lorasweep.results import add_repeats

    knobs = list(sweep.space.params)
    top = [r for r in rows if r["status"] != "failed" and r.get(f"best_{sweep.space.metric}") is not None][:3]
    points = [{**{k: r[k] for k in knobs}, "repeat": i} for r in top for i in range(1, sweep.options.repeats + 1)]
    if not points:
        return 0
    print(f"[lorasweep] repeats: the top {len(top)} configuration(s) {sweep.options.repeats} more time(s) each, "
          "other training seeds, same data")
    grid, interrupted = fit(build_tuner(sweep, res, n, repeat_points=points))
    if interrupted:
        from lorasweep.results import resume_command

        print(f"[lorasweep] interrupted during the repeats; resume with: {resume_command(argv, sweep.command)}")
        return 130
    add_repeats(sweep, rows, grid)
    return 0


def run_final(sweep: ResolvedSweep, res: Resources, rows: list[dict], argv: list[str]) -> str | None:
    """``--finalize``: the winner's knobs once more on train + eval rows for the whole token budget,
    exported to ``final_adapter/rank_1``; its path (the baseline scores it once on the test split),
    "interrupted", or None when there is no winner."""
    from lorasweep.results import export_best, leaderboard_rows, resume_command

    knobs = list(sweep.space.params)
    winner = next((r for r in rows if r["status"] != "failed" and r.get(f"best_{sweep.space.metric}") is not None), None)
    if winner is None:
        return None
    print(f"[lorasweep] final run: {winner['trial_id']}'s knobs on train + eval rows, "
          f"{sweep.settings.max_tokens:,} tokens")
    grid, interrupted = fit(build_tuner(sweep, res, 1, repeat_points=[{**{k: winner[k] for k in knobs}, "train_on_eval": True}],
                                        suffix="final"))
    if interrupted:
        print(f"[lorasweep] interrupted during the final run; resume with: {resume_command(argv, sweep.command)}")
        return "interrupted"
    # Its eval rows trained too, so its eval metric only improves along the run: its best report is
    # its last one, at the whole budget (no early stopping here).
    final_rows = leaderboard_rows(grid, knobs, sweep.space.metric, sweep.space.mode, (), sweep.options.storage_path)
    exported = export_best(final_rows, knobs, sweep, 1, folder="final_adapter")
    if not exported:
        print("[lorasweep] the final run left no checkpoint; nothing exported")
        return None
    print(f"[lorasweep] final adapter: {exported[0]}")
    return exported[0]


def wants_baseline(sweep: ResolvedSweep) -> bool:
    from trainers.tasks import get_task

    return sweep.options.baseline and get_task(sweep.settings.task).has_test_metrics


def run_baseline(sweep: ResolvedSweep, res: Resources, base: dict | None = None, final: str | None = None) -> dict:
    """Before the sweep (``base`` None): the base model at every ``--shots``. After it: the best
    adapter (zero-shot) beside those. Both write ``baseline.json`` and print the table."""
    from lorasweep import baseline
    from lorasweep.results import _exists, _join, _write_text, _writes
    from trainers.tasks import get_task

    path = _join(sweep.sweep_dir, "baseline.json")
    settings = sweep.settings.to_dict()
    if base is None:
        if sweep.options.resume and _exists(path):
            return json.loads(Path(path).read_text()) if "://" not in path else {}
        # k-shot prompts are for instruction models; a classification head reads no examples
        shots = list(sweep.options.shots) if get_task(sweep.settings.task).takes_shots else [0]
        print(f"[lorasweep] scoring the base model ({', '.join(f'{k}-shot' for k in shots)}) on the test split ...")
        results = {f"base {k}": v for k, v in baseline.run_remote(settings, res, None, shots).items()}
    else:
        best = _join(sweep.sweep_dir, "best_adapters", "rank_1")
        results = {**base, "tuned": baseline.run_remote(settings, res, best, [0])["0-shot"]}
        if final:  # --finalize: the winner retrained on train + eval, scored once on the same test rows
            results["final"] = baseline.run_remote(settings, res, final, [0])["0-shot"]
    with _writes(f"check that --storage-path {sweep.options.storage_path!r} has free space and write permission"):
        _write_text(path, json.dumps(results, indent=2, default=str))
        samples = baseline.samples_rows(results)
        if samples:  # generation tasks: base and tuned answers to the same prompts, side by side
            _write_text(_join(sweep.sweep_dir, "samples.jsonl"), "".join(json.dumps(r) + "\n" for r in samples))
    shown = {k: {m: v for m, v in r.items() if m not in baseline.PER_EXAMPLE} for k, r in results.items()}
    print(baseline.table(shown, get_task(sweep.settings.task).metric_names(sweep.settings)))
    return results


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit("run a sweep script, e.g. python sweeps/llama_finetome.py --preset smoke")
