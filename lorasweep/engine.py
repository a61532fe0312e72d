"""The driver every sweep script shares: CLI -> validated config -> Ray Tune over Ray Train trials
-> leaderboard and best adapters.

A sweep script declares a ``Recipe`` (family, dataset, search space, presets) and calls ``main``.
Nothing here knows a model family or a dataset: those come from ``trainers/`` and the recipe.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable

from search_spaces import SearchSpace, project
from trainers.config import TrainSettings
from lorasweep.errors import ConfigError


@dataclass
class Preset:
    """Overrides of a recipe's defaults. ``assets(cache_dir) -> {"model": ..., "dataset": ...}``
    builds offline stand-ins (tiny model, generated sample) before Ray starts."""

    description: str
    settings: dict = field(default_factory=dict)
    sweep: dict = field(default_factory=dict)
    assets: Callable[[Path], dict] | None = None


@dataclass
class Recipe:
    name: str
    family: str
    dataset: str
    search_space: SearchSpace
    settings: dict = field(default_factory=dict)  # TrainSettings overrides for the real preset
    presets: dict[str, Preset] = field(default_factory=dict)
    default_preset: str = "real"
    doc: str = ""


@dataclass
class SweepOptions:
    """Driver-side options (the trial-side ones are ``TrainSettings``)."""

    name: str = ""
    storage_path: str = "runs"
    address: str | None = None
    num_samples: int = 16
    max_concurrent: int = 4
    scheduler: str = "asha"
    grace_tokens: int = 0  # ASHA's first rung in training tokens; 0 = max_tokens / 8
    reduction_factor: float = 3.0
    seed: int = 0
    top_k: int = 3
    workers_per_trial: int = 1
    gpus_per_worker: float = -1.0  # -1 = 1 when the cluster has GPUs, else 0
    cpus_per_worker: float = 1.0
    # Worker-group restarts from the last checkpoint after a worker error. 0: an out-of-memory or a
    # non-finite loss would only fail again; lost spot nodes are retried by Ray Train regardless
    # (FailureConfig.max_preemption_failures, unlimited by default).
    trial_retries: int = 0
    autoscale: bool = False  # the cluster adds nodes on demand: don't refuse shapes no node has yet
    dashboard_host: str = "127.0.0.1"  # a local Ray's dashboard; 0.0.0.0 to reach it from elsewhere
    wandb_project: str | None = None
    wandb_entity: str | None = None
    resume: bool = False
    dry_run: bool = False

    def validate(self) -> "SweepOptions":
        if self.scheduler not in ("asha", "none"):
            raise ConfigError(f"`--scheduler` is {self.scheduler!r}; choose asha or none")
        for name in ("num_samples", "max_concurrent", "top_k", "workers_per_trial"):
            if getattr(self, name) < 1:
                raise ConfigError(f"`--{name.replace('_', '-')}` is {getattr(self, name)}; it must be at least 1")
        if self.cpus_per_worker <= 0:
            raise ConfigError(f"`--cpus-per-worker` is {self.cpus_per_worker}; it must be > 0")
        if self.reduction_factor <= 1:
            raise ConfigError(f"`--reduction-factor` is {self.reduction_factor}; it must be > 1")
        if self.grace_tokens < 0 or self.trial_retries < 0:
            raise ConfigError("`--grace-tokens` and `--trial-retries` must be >= 0")
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ConfigError(f"`--name` is {self.name!r}; use a plain folder name like llama_finetome-1")
        return self


# ----------------------------------------------------------------------------- CLI


def _add_dataclass_args(parser: argparse._ActionsContainer, cls, skip=()) -> None:
    for f in fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        help_ = f.metadata.get("help", "").replace("%", "%%")
        if f.type in ("bool", bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_)
        else:
            kind = {"int": int, "float": float, "int | None": int, "str | None": str}.get(str(f.type), str)
            parser.add_argument(flag, type=kind, default=argparse.SUPPRESS, metavar=f.name.upper(), help=help_)


def build_parser(recipe: Recipe) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"python sweeps/{recipe.name}.py",
        description=recipe.doc.strip().splitlines()[0] if recipe.doc else recipe.name,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=recipe.doc,
    )
    p.add_argument("--preset", default=recipe.default_preset,
                   help=f"one of: {', '.join(f'{k} ({v.description})' for k, v in recipe.presets.items())}")
    p.add_argument("--space", action="append", default=[], metavar="KNOB=SPEC",
                   help="override one searched knob: r=8,16 | learning_rate=1e-5:1e-3 | warmup_ratio=uniform:0:0.05")
    g = p.add_argument_group("sweep (driver side)")
    g.add_argument("--name", default=argparse.SUPPRESS, help="sweep name (folder under --storage-path); default: recipe-preset")
    g.add_argument("--storage-path", default=argparse.SUPPRESS, help="local folder or s3:// / gs:// URI holding everything")
    g.add_argument("--address", default=argparse.SUPPRESS, help="join a running cluster ('auto' on a `ray up` head); default: start a local Ray")
    g.add_argument("--num-samples", type=int, default=argparse.SUPPRESS, help="trials, the seed points included")
    g.add_argument("--max-concurrent", type=int, default=argparse.SUPPRESS, help="trials at once (also capped by the cluster)")
    g.add_argument("--scheduler", choices=None, default=argparse.SUPPRESS, help="asha (early stopping on eval loss) or none")
    g.add_argument("--grace-tokens", type=int, default=argparse.SUPPRESS, help="ASHA's first rung in training tokens (0 = max_tokens/8)")
    g.add_argument("--reduction-factor", type=float, default=argparse.SUPPRESS, help="ASHA keeps 1/this of trials per rung")
    g.add_argument("--seed", type=int, default=argparse.SUPPRESS, help="Optuna TPE seed (the data seed is --data-seed)")
    g.add_argument("--top-k", type=int, default=argparse.SUPPRESS, help="adapters to export")
    g.add_argument("--workers-per-trial", type=int, default=argparse.SUPPRESS, help="Ray Train workers (GPUs) per trial")
    g.add_argument("--gpus-per-worker", type=float, default=argparse.SUPPRESS, help="-1: 1 if the cluster has GPUs, else 0")
    g.add_argument("--cpus-per-worker", type=float, default=argparse.SUPPRESS)
    g.add_argument("--trial-retries", type=int, default=argparse.SUPPRESS, help="worker-group restarts per trial, from its last checkpoint")
    g.add_argument("--autoscale", action="store_true", default=argparse.SUPPRESS,
                   help="the cluster adds nodes on demand (ray up, min_workers 0): skip the check that a node fits a worker")
    g.add_argument("--dashboard-host", default=argparse.SUPPRESS,
                   help="where a local Ray's dashboard listens (default 127.0.0.1: this machine only)")
    g.add_argument("--wandb-project", default=argparse.SUPPRESS,
                   help="log trials and the leaderboard to this W&B project (WANDB_API_KEY from the environment; offline without it)")
    g.add_argument("--wandb-entity", default=argparse.SUPPRESS, help="W&B team or user (default: the key's)")
    g.add_argument("--resume", action="store_true", default=argparse.SUPPRESS, help="continue the sweep --name from its storage")
    g.add_argument("--dry-run", action="store_true", default=argparse.SUPPRESS, help="check everything, audit the data, print the config, cluster fit and cost estimate; train nothing")
    t = p.add_argument_group("trial (what each Ray Train worker does)")
    _add_dataclass_args(t, TrainSettings, skip=("family", "seed"))
    t.add_argument("--data-seed", type=int, dest="data_seed", default=argparse.SUPPRESS, help="seed for the eval split, shuffling and LoRA init")
    return p


@dataclass
class ResolvedSweep:
    recipe: Recipe
    preset: str
    settings: TrainSettings
    options: SweepOptions
    space: SearchSpace

    @property
    def sweep_dir(self) -> str:
        return _join(self.options.storage_path, self.options.name)

    def summary(self) -> dict:
        return {
            "recipe": self.recipe.name,
            "preset": self.preset,
            "settings": self.settings.to_dict(),
            "sweep": dataclasses.asdict(self.options),
            "search_space": self.space.describe(),
            "metric": self.space.metric,
            "mode": self.space.mode,
            "seeds": list(self.space.seeds),
        }


def _join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts]) if "://" in base else os.path.join(base, *parts)


def resolve(recipe: Recipe, argv: list[str] | None = None) -> ResolvedSweep:
    """Parse and validate everything; raise ConfigError on the first problem. Starts nothing."""
    args = vars(build_parser(recipe).parse_args(argv))
    preset_name = args.pop("preset")
    if preset_name not in recipe.presets:
        raise ConfigError(f"`--preset` is {preset_name!r}; choose one of: {', '.join(recipe.presets)}")
    preset = recipe.presets[preset_name]
    space = recipe.search_space
    for spec in args.pop("space"):
        space = space.override(spec)
    space = dataclasses.replace(space, seeds=tuple(project(space, s) for s in space.seeds)).validate()

    opt_names = {f.name for f in fields(SweepOptions)}
    opts = {"name": f"{recipe.name}-{preset_name}", **preset.sweep,
            **{k: v for k, v in args.items() if k in opt_names}}
    options = SweepOptions(**opts)
    if "://" not in options.storage_path:
        options.storage_path = os.path.abspath(os.path.expanduser(options.storage_path))
    options.validate()

    settings_d = {"family": recipe.family, "dataset": recipe.dataset, **recipe.settings, **preset.settings}
    if "data_seed" in args:
        settings_d["seed"] = args.pop("data_seed")
    settings_d.update({k: v for k, v in args.items() if k not in opt_names})
    if preset.assets is not None and not ("model" in args and "dataset" in args):
        # Offline stand-ins (built once, cached); an explicit --model/--dataset still wins.
        made = preset.assets(assets_cache() / recipe.name)
        for key in ("model", "dataset"):
            if key not in args:
                settings_d[key] = str(made[key])
    if not settings_d.get("model"):
        from trainers.registry import get_family

        settings_d["model"] = get_family(recipe.family).default_model
    settings = TrainSettings.from_dict(settings_d).validate()
    return ResolvedSweep(recipe, preset_name, settings, options, space)


# ----------------------------------------------------------------------------- Ray


def lora_trial(config: dict) -> None:
    """Tune function trainable: one trial = one Ray Train ``TorchTrainer`` run.

    Train workers report (metrics + checkpoint) to Train; ``TuneReportCallback`` forwards each
    report to this trial, so ASHA sees ``tokens_seen`` and ``eval_loss`` as they come.
    """
    from ray import tune
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from trainers.registry import get_family

    res = config["resources"]
    trainer = TorchTrainer(
        get_family(config["settings"]["family"]).train_func,
        train_loop_config=config,
        scaling_config=ScalingConfig(
            num_workers=res["workers"],
            use_gpu=res["gpus"] > 0,
            resources_per_worker={"CPU": res["cpus"], **({"GPU": res["gpus"]} if res["gpus"] > 0 else {})},
        ),
        run_config=RunConfig(
            name=tune.get_context().get_trial_id(),
            storage_path=config["train_storage"],
            callbacks=[TuneReportCallback()],
            failure_config=FailureConfig(max_failures=res["retries"]),
            # The best checkpoint is what gets exported; the latest is what a restart resumes.
            checkpoint_config=CheckpointConfig(num_to_keep=2, checkpoint_score_attribute="eval_loss",
                                               checkpoint_score_order="min"),
        ),
    )
    trainer.fit()


def init_ray(options: SweepOptions) -> None:
    import ray

    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    if ray.is_initialized():
        return
    if options.address:
        ray.init(address=options.address)
    else:
        # The dashboard (and its HTTP API) listens on loopback unless --dashboard-host says
        # otherwise; a cluster's head decides its own (cluster.yaml keeps it on loopback too).
        # Ray's gRPC ports bind every interface whatever is asked, and Ray 2.60 guards them with
        # its cluster auth token.
        ray.init(dashboard_host=options.dashboard_host, include_dashboard=None, log_to_driver=True)


def cluster_resources() -> dict:
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    return {
        "cpu": sum(n.get("CPU", 0) for n in nodes),
        "gpu": sum(n.get("GPU", 0) for n in nodes),
        "nodes": nodes,
        "accelerators": sorted({k for n in nodes for k in n if k.startswith("accelerator_type:")}),
    }


def trial_resources(options: SweepOptions, cluster: dict) -> dict:
    gpus = options.gpus_per_worker
    if gpus < 0:
        gpus = 1.0 if cluster["gpu"] > 0 else 0.0
    return {"workers": options.workers_per_trial, "gpus": gpus, "cpus": options.cpus_per_worker,
            "retries": options.trial_retries}


def concurrency(options: SweepOptions, res: dict, cluster: dict) -> int:
    """Trials that fit at once, from the worker slots of every node."""
    from lorasweep.preflight import worker_slots

    return max(1, min(options.max_concurrent, sum(worker_slots(n, res) for n in cluster["nodes"]) // res["workers"]))


def build_tuner(sweep: ResolvedSweep, res: dict, max_concurrent: int):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.optuna import OptunaSearch

    from lorasweep.tracking import tune_callbacks

    o, s, space = sweep.options, sweep.settings, sweep.space
    param_space = {
        **space.to_tune(),
        "settings": s.to_dict(),
        "resources": res,
        "train_storage": _join(sweep.sweep_dir, "train_runs"),
    }
    searcher = OptunaSearch(metric=space.metric, mode=space.mode, points_to_evaluate=[dict(p) for p in space.seeds],
                            seed=o.seed)
    if o.scheduler == "asha":
        # Rungs on training tokens: e.g. max 2M tokens, grace 250k, factor 3 -> rungs at
        # 250k and 750k; a trial continues past a rung only in the top third of its peers.
        grace = o.grace_tokens or max(1, s.max_tokens // 8)
        scheduler = ASHAScheduler(time_attr="tokens_seen", max_t=s.max_tokens, grace_period=min(grace, s.max_tokens),
                                  reduction_factor=o.reduction_factor)
    else:
        scheduler = FIFOScheduler()
    # The trial function only waits on its TorchTrainer, whose workers ask for their own CPUs/GPUs.
    # It must not hold a CPU itself: even 0.01 CPU per trial leaves 2 trials x (1 worker CPU +
    # 0.01) > 2 CPUs, and the second trial's workers wait forever for a CPU its own driver holds.
    # Tune refuses an empty request, so it asks for one byte of Ray's logical memory.
    trainable = tune.with_resources(lora_trial, {"memory": 1})
    tune_config = tune.TuneConfig(metric=space.metric, mode=space.mode, search_alg=searcher, scheduler=scheduler,
                                  num_samples=o.num_samples, max_concurrent_trials=max_concurrent)
    tune_config.trial_dirname_creator = lambda trial: f"trial_{trial.trial_id}"  # not the whole config
    run_config = tune.RunConfig(name=o.name, storage_path=o.storage_path, verbose=1,
                                failure_config=tune.FailureConfig(max_failures=0),
                                callbacks=tune_callbacks(o.wandb_project, o.name, sweep.sweep_dir, o.wandb_entity))
    if o.resume:
        return tune.Tuner.restore(sweep.sweep_dir, trainable, resume_unfinished=True, resume_errored=False,
                                  param_space=param_space)
    return tune.Tuner(trainable, param_space=param_space, tune_config=tune_config, run_config=run_config)


# ----------------------------------------------------------------------------- entry point


def dry_run_report(sweep: ResolvedSweep, inputs, res: dict, cluster: dict, at_once: int) -> str:
    from lorasweep.preflight import estimate

    lines = [json.dumps(sweep.summary(), indent=2, default=str)]
    if inputs.data:
        lines.append(data_line(inputs.data))
    lines.append(f"per trial: {res['workers']} worker(s) x ({res['cpus']:g} CPU, {res['gpus']:g} GPU); "
                 f"{at_once} trial(s) at once on this cluster ({cluster['cpu']:g} CPU, {cluster['gpu']:g} GPU, "
                 f"{len(cluster['nodes'])} node(s))")
    lines += estimate(sweep, inputs, res, cluster, at_once)
    return "\n".join(lines)


def data_line(data: dict) -> str:
    skipped = ", ".join(f"{k}: {v}" for k, v in data["skipped"].items()) or "none"
    return (f"data: {data['rows']} rows -> {data['train_examples']} train + {data['eval_examples']} eval examples "
            f"({data['tokens_per_example']:.0f} tokens each on average); skipped {skipped}; "
            f"{data['truncated']} truncated to max_seq_length")


def assets_cache() -> Path:
    return Path(os.environ.get("LORASWEEP_CACHE", Path.home() / ".cache" / "lorasweep")) / "assets"


def main(recipe: Recipe, argv: list[str] | None = None) -> int:
    from lorasweep import preflight
    from lorasweep.results import finish, resume_command, write_start

    argv = sys.argv[1:] if argv is None else argv
    try:
        sweep = resolve(recipe, argv)
        inputs = preflight.check_inputs(sweep)  # paths, the model's limits, the data: still no Ray
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if inputs.data:
        print(f"[lorasweep] {data_line(inputs.data)}")
    init_ray(sweep.options)
    cluster = cluster_resources()
    res = trial_resources(sweep.options, cluster)
    try:
        preflight.check_cluster(sweep.options, res, cluster)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    n = concurrency(sweep.options, res, cluster)
    if sweep.options.dry_run:
        print(dry_run_report(sweep, inputs, res, cluster, n))
        return 0

    write_start(sweep, inputs)
    print(f"[lorasweep] {sweep.options.name}: {sweep.options.num_samples} trials, {n} at once, "
          f"{res['workers']} worker(s)/trial; results in {sweep.sweep_dir}")
    t0 = time.time()
    tuner = build_tuner(sweep, res, n)
    try:
        grid = tuner.fit()  # a first Ctrl-C makes Tune save its state and return early
    except KeyboardInterrupt:  # a second one lands here
        print(f"\n[lorasweep] interrupted: everything written so far is kept in {sweep.sweep_dir}\n"
              f"[lorasweep] resume with: {resume_command(argv)}")
        return 130
    return finish(sweep, grid, time.time() - t0, argv)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit("run a sweep script, e.g. python sweeps/llama_finetome.py --preset smoke")
