"""What a sweep script declares (``Recipe``, its ``Preset``s) and what a command line resolves it to
(``SweepOptions``, the driver's flags, and ``ResolvedSweep``). Declarations only: resolving is
``lorasweep/resolve.py``, running ``lorasweep/engine.py``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from lorasweep import storage
from common.errors import Problems
from search_spaces import SearchSpace
from trainers.config import TrainSettings


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


# What every smoke preset shares: a 2-core CPU machine, two one-CPU trials at once, ASHA halving.
SMOKE_SWEEP = {"max_concurrent": 2, "reduction_factor": 2, "gpus_per_worker": 0, "cpus_per_worker": 1}


def smoke_preset(description: str, *, assets: Callable[[Path], dict], settings: dict, space: tuple[str, ...] = (),
                 **sweep) -> Preset:
    """A recipe's offline preset: ``assets`` builds its tiny model and generated sample, ``settings``
    sizes the run for a CPU, ``sweep`` adds to (or overrides) ``SMOKE_SWEEP``: ``num_samples`` and
    the first rung, ``grace_tokens``, at least."""
    return Preset(description, settings=settings, sweep={**SMOKE_SWEEP, **sweep}, assets=assets, space=space)


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
    known_points: bool = field(default=True, metadata={"help": "start the search at the recipe's known-good points (--no-known-points: the searcher's own draws only, e.g. to see what guessing gets)"})
    warm_start_from: str = field(default="", metadata={"help": "a finished sweep's folder: its finished trials that fit this space seed the study (not run again); the space, model or data may differ"})
    optuna_storage: str = field(default="", metadata={"help": "the Optuna study's database, any SQLAlchemy URL (postgresql://... for several drivers); default: sqlite in the sweep's folder (local storage), in memory on s3:// or gs://"})
    wandb_project: str | None = field(default=None, metadata={"help": "log trials and the leaderboard to this W&B project (WANDB_API_KEY from the environment; offline without it)"})
    wandb_entity: str | None = field(default=None, metadata={"help": "W&B team or user (default: the key's)"})
    mlflow_tracking_uri: str = field(default="", metadata={"help": "log the sweep to MLflow: a server (http://host:5000), a database (sqlite:///...) or a folder; a parent run per sweep, a child run per trial, the best adapter as an artifact (pip install 'lorasweep[mlflow]')"})
    mlflow_experiment: str = field(default="lorasweep", metadata={"help": "the MLflow experiment the sweep's runs go to"})
    tensorboard: bool = field(default=False, metadata={"help": "also write each trial's per-step training curves (loss, learning rate, tokens) beside the reports Tune writes to its event files; tensorboard --logdir <sweep folder>"})
    lm_eval: tuple[str, ...] = field(default=(), metadata={"help": "lm-evaluation-harness tasks (comma-separated) that score the base model and every exported adapter after the sweep, e.g. arc_easy,hellaswag or your own (--lm-eval-include); results in lm_eval.json and baseline.json (pip install 'lorasweep[lm-eval]')"})
    lm_eval_include: str = field(default="", metadata={"help": "a folder of your own lm-eval task YAMLs (lm-eval's include_path); over local data files they run offline"})
    lm_eval_args: dict = field(default_factory=dict, metadata={"help": 'more lm_eval.simple_evaluate arguments, as JSON, e.g. \'{"num_fewshot": 5, "limit": 200, "apply_chat_template": true}\''})
    resume: bool = field(default=False, metadata={"help": "continue the sweep --name from its storage"})
    retry_failed: bool = field(default=False, metadata={"help": "with --resume: run the sweep's failed trials again, each "
                                                        "from its last checkpoint (a node lost, a neighbour's "
                                                        "out-of-memory); without it they stay failed"})
    dry_run: bool = field(default=False, metadata={"help": "check everything, audit the data, print the config, cluster fit and cost estimate; train nothing"})
    verbose: bool = field(default=False, metadata={"help": "Tune's own progress output, Ray's logs and every trial's output in this console "
                                                  "(default: one line per event; a trial's output goes to stdout/stderr in its folder)"})

    def validate(self) -> "SweepOptions":
        problems = Problems()
        if self.searcher not in SEARCHERS:
            problems.add(f"`--searcher` is {self.searcher!r}; choose {', '.join(SEARCHERS)}")
        if self.scheduler not in ("asha", "none"):
            problems.add(f"`--scheduler` is {self.scheduler!r}; choose asha or none")
        for name in ("num_samples", "max_concurrent", "top_k", "workers_per_trial"):
            if getattr(self, name) < 1:
                problems.add(f"`--{name.replace('_', '-')}` is {getattr(self, name)}; it must be at least 1")
        if self.cpus_per_worker <= 0:
            problems.add(f"`--cpus-per-worker` is {self.cpus_per_worker}; it must be > 0")
        if self.gpus_per_worker > 1:  # a Ray Train worker (or a trial's own process) trains on one device
            problems.add(f"`--gpus-per-worker` is {self.gpus_per_worker:g}, but a worker trains on one GPU and the "
                         f"others would idle; pass at most 1 (a fraction shares one GPU between trials) and "
                         f"--workers-per-trial N for N GPUs per trial")
        elif self.gpus_per_worker < 0 and self.gpus_per_worker != -1:
            problems.add(f"`--gpus-per-worker` is {self.gpus_per_worker:g}; pass -1 (auto), 0 (CPUs), a fraction or 1")
        if self.placement not in ("pack", "spread"):
            problems.add(f"`--placement` is {self.placement!r}; choose pack or spread")
        if self.reduction_factor <= 1:
            problems.add(f"`--reduction-factor` is {self.reduction_factor}; it must be > 1")
        if self.grace_tokens < 0 or self.trial_retries < 0:
            problems.add("`--grace-tokens` and `--trial-retries` must be >= 0")
        for name in ("rung_min_results", "final_round"):
            if getattr(self, name) < 0:
                problems.add(f"`--{name.replace('_', '-')}` is {getattr(self, name)}; it must be >= 0 (0: "
                                  f"{'the default' if name == 'rung_min_results' else 'off'})")
        if not 0 < self.detectable < 1:
            problems.add(f"`--detectable` is {self.detectable}; give a difference in (0, 1), e.g. 0.02 for 2 points")
        if any(k < 0 for k in self.shots):
            problems.add(f"`--shots` is {','.join(map(str, self.shots))}; give numbers >= 0, e.g. 0,1,3")
        if not self.name or "/" in self.name or self.name.startswith("."):
            problems.add(f"`--name` is {self.name!r}; use a plain folder name like llama_finetome-1")
        if self.retry_failed and not self.resume:
            problems.add("`--retry-failed` runs the failed trials of a sweep again; pass --resume with it")
        problems.raise_any()
        return self


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
    data: object = None  # trainers.shared_data.SharedData: the tokenised data every trial reads (preflight)

    @property
    def sweep_dir(self) -> str:
        return storage.join(self.options.storage_path, self.options.name)

    @property
    def objectives(self) -> list[str]:
        """The search's objectives: the space's metric, and a second one for a Pareto search."""
        return self.options.objective.split(",") if self.options.objective else [self.space.metric]

    def summary(self) -> dict:
        return {
            "recipe": self.recipe.name,
            "preset": self.preset,
            "settings": self.settings.to_dict(),
            # a database or tracking server URL's password stays out of every file the sweep writes
            "sweep": {k: storage.redact(v) if isinstance(v, str) else v  # as sweepfile.dump: any URL's
                      for k, v in dataclasses.asdict(self.options).items()},
            "search_space": self.space.describe(),
            "space": self.space.to_json(),
            "metric": self.space.metric,
            "mode": self.space.mode,
            "seeds": list(self.space.known_points),
            "seeds_moved": [self.space.known_point_label(seed) for seed in self.space.known_points],
        }
