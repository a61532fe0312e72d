"""A recipe and a command line -> one ``ResolvedSweep``: the precedence merge (field defaults <
recipe < preset < sweep file < flags) and the checks that need no cluster. Starts nothing."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import fields
from pathlib import Path

from lorasweep import storage
from common.errors import ConfigError, Problems
from common.paths import cache_root
from lorasweep.recipe import Recipe, ResolvedSweep, SweepOptions
from search_spaces import SearchSpace, project
from trainers.config import TrainSettings, check_keys


def _stem(dataset: str) -> str:
    """``data/chats.jsonl`` -> chats; ``HuggingFaceH4/ultrachat_200k`` -> ultrachat_200k."""
    base = dataset.rstrip("/").rsplit("/", 1)[-1]
    stem = base.split(".")[0] if "." in base else base
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in stem) or "data"


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
        if file.recipe and not is_this_recipe(file.recipe, recipe, recipe_ref, file.path):
            raise ConfigError(f"{file.where('recipe')}: the file's recipe is {file.recipe!r} but this runs "
                              f"{recipe.name!r}; run it with: lorasweep run --config {file.path}")
        args = {**file.values, **args, "space": [*file.values.get("space", []), *args.get("space", [])]}
    try:
        sweep = _resolve(recipe, args)
    except ConfigError as e:
        raise sweepfile.locate(e, file, given) from None
    sweep.recipe_ref, sweep.file, sweep.given = recipe_ref, file, given
    return sweep


def is_this_recipe(ref: str, recipe: Recipe, recipe_ref: str, path: str) -> bool:
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
    options.storage_path = storage.absolute(options.storage_path)

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
    # Every problem of the flags at once, grouped by what a later check needs: the options and the
    # settings, then the objective and the space, then the checks against the built space.
    problems = Problems()
    with problems.collecting():
        options.validate()
    with problems.collecting():
        settings = TrainSettings.from_dict(settings_d).validate()
    problems.raise_any()
    if options.tensorboard:  # each trial's step curves: a Trainer callback of the trial's own
        from trainers.step_curves import SPEC

        settings.callbacks = (*[c for c in settings.callbacks if c != SPEC], SPEC)
    task = get_task(settings.task)

    space = recipe.search_space
    if not options.known_points:
        space = dataclasses.replace(space, known_points=(), moved=())
    if options.alpha_mode not in ("free", "ratio"):
        problems.add(f"`--alpha-mode` is {options.alpha_mode!r}; choose free or ratio")
    if options.alpha_mode == "ratio":
        space = alpha_as_ratio(space)
    for spec in [*preset.space, *args.get("space", [])]:
        with problems.collecting():
            space = space.override(spec)
    wanted = [m.strip() for m in options.objective.split(",") if m.strip()]
    names = (*task.metric_names(settings), "device_hours")  # every trial reports its cost too
    unknown = [m for m in wanted if m not in names]
    for m in unknown:
        said = f"is {m!r}" if len(wanted) == 1 else f"has {m!r}"
        problems.add(f"`--objective` {said}; task `{task.name}` reports: {', '.join(names)}")
    if len(wanted) > 2 or len(set(wanted)) < len(wanted):
        problems.add(f"`--objective` is {options.objective!r}; give one metric, or two different ones "
                     "(quality against cost: eval_loss,device_hours)")
    if wanted and not unknown:
        space = dataclasses.replace(space, metric=wanted[0], mode=metric_mode(wanted[0]))
    elif not wanted and space.metric not in task.metric_names(settings):
        problems.add(f"recipe {recipe.name!r}: search space metric {space.metric!r} is not reported by task "
                     f"`{task.name}` ({', '.join(task.metric_names(settings))}); fix the recipe or pass --objective")
    options.objective = ",".join([space.metric, *wanted[1:]])
    if options.prune_metric == "objective":
        options.prune_metric = space.metric
    elif options.prune_metric not in task.metric_names(settings):
        problems.add(f"`--prune-metric` is {options.prune_metric!r}; task `{task.name}` reports: "
                     f"{', '.join(task.metric_names(settings))} (or pass objective)")
    if len(wanted) == 2 and options.searcher == "cmaes":
        problems.add("`--searcher cmaes` optimises one objective; with two in --objective use tpe, random, grid or gp")
    if options.export_max_cost < 0:
        problems.add(f"`--export-max-cost` is {options.export_max_cost}; give device-hours > 0, or 0 for no cap")
    if settings.attn_implementation == "flash_attention_2" and options.gpus_per_worker == 0:
        problems.add("`attn_implementation` flash_attention_2 runs on CUDA GPUs only and `--gpus-per-worker` is 0; "
                     "pass --attn-implementation sdpa (or auto), or --gpus-per-worker 1")
    problems.raise_any()
    # A knob added with --space: the seed points trained with its unsearched value (the recipe's
    # setting or the library's default), then moved into the space like every other knob.
    from search_spaces.knobs import current

    seeds = [{**{k: current(k, settings) for k in space.params if k not in seed}, **seed} for seed in space.known_points]
    projected = [project(space, s) for s in seeds]
    moved = tuple({k: v for k, v in s.items() if k in space.params and p[k] != v} for s, p in zip(seeds, projected))
    space = dataclasses.replace(space, known_points=tuple(projected), moved=moved).validate()
    with problems.collecting():
        check_with_libraries(space, settings)
    if options.searcher == "grid":
        continuous = [k for k, d in space.params.items() if not hasattr(d, "values")]
        if continuous:
            problems.add(f"`--searcher grid` needs every knob to be a choice; {', '.join(continuous)} "
                         f"{'is' if len(continuous) == 1 else 'are'} a range: pass e.g. --space {continuous[0]}=a,b,c")
    method = space.params.get("method")
    if method is not None and "full" in getattr(method, "values", ()) and settings.quantization != "none":
        problems.add(f"search space `method` includes full, which a {settings.quantization} base cannot train; "
                     "pass --quantization none, or --space method=lora")
    if options.scheduler == "asha" and options.grace_tokens >= settings.max_tokens:
        if "grace_tokens" not in args:  # a preset's first rung past a smaller --max-tokens: the default rule
            options.grace_tokens = 0
        else:
            problems.add(f"`--grace-tokens` is {options.grace_tokens:,}, not below max_tokens "
                         f"({settings.max_tokens:,}): ASHA would never stop a trial; lower it, or pass --scheduler none")
    problems.raise_any()
    sweep = ResolvedSweep(recipe, preset_name, settings, options, space, from_assets=frozenset(from_assets))
    if options.warm_start_from and not options.resume:  # resumed, the study has them from Tune's checkpoint
        from lorasweep import warm_start

        sweep.warm = warm_start.load(options.warm_start_from, sweep)
        left = warm_start.remaining_known_points(space.known_points, sweep.warm)
        keep = [i for i, seed in enumerate(space.known_points) if seed in left]
        sweep.space = dataclasses.replace(space, known_points=tuple(space.known_points[i] for i in keep),
                                          moved=tuple(space.moved[i] for i in keep))
    return sweep


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
    for seed in space.known_points:
        seed = dict(seed)
        alpha, r = seed.pop("lora_alpha"), seed["r"]
        seed["alpha_ratio"] = alpha / (math.sqrt(r) if seed.get("use_rslora") else r)
        seeds.append(seed)
    return dataclasses.replace(space, params=params, known_points=tuple(seeds))


def check_with_libraries(space: SearchSpace, settings: TrainSettings) -> None:
    """Every value a knob may take (each choice, a range's ends, each seed's) built into what it
    configures: the effective TrainSettings, a peft.LoraConfig, a TrainingArguments. A value the
    library refuses is a one-line ConfigError before Ray starts, not a failed trial."""
    from search_spaces import Choice
    from search_spaces.knobs import check_fixed, check_value

    check_fixed(settings)
    for name, dist in space.params.items():
        values = list(dist.values) if isinstance(dist, Choice) else [dist.low, dist.high]
        for value in dict.fromkeys([*values, *(seed[name] for seed in space.known_points if name in seed)]):
            check_value(name, value, settings)


def assets_cache() -> Path:
    return cache_root() / "assets"
