"""``--lm-eval TASKS``: lm-evaluation-harness benchmarks of the base model and every exported adapter,
after the sweep, as Axolotl and torchtune run them after training.

Each model is scored in a Ray task sized like one trial worker (on a cluster it lands on a GPU
node, not the head), loaded as a trial loads it (4-bit, the adapter on the base) and handed to
lm-eval's Hugging Face backend as the model object, so nothing is loaded twice or merged. Tasks are
lm-eval's own (``hellaswag``, ``arc_easy``, ...; their data come from the Hub) or your YAMLs in
``--lm-eval-include`` over local files, which run offline. ``--lm-eval-args`` passes more
``simple_evaluate`` arguments (``num_fewshot``, ``limit``, ``apply_chat_template``).

Results: ``lm_eval.json`` (every model, every metric with its standard error) and, as
``lm_eval/<task>/<metric>`` beside the task's own metrics, the base and tuned rows of
``baseline.json``, which the console table, the report, W&B and MLflow read."""

from __future__ import annotations

import inspect
import json
import os

from common.errors import ConfigError
from lorasweep import log, storage

INSTALL = "pip install 'lorasweep[lm-eval]'"
# simple_evaluate arguments lorasweep sets itself
OWN = {"model", "model_args", "tasks", "task_manager", "device", "batch_size", "log_samples"}


def _task_manager(include: str):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include or None)


def check(options, task) -> None:
    """Before Ray: lm-eval installed, the model a language model, every task known (lm-eval's own or
    in ``--lm-eval-include``), every ``--lm-eval-args`` key an argument of ``simple_evaluate``."""
    if not options.lm_eval:
        return
    try:
        from lm_eval import simple_evaluate
    except ImportError:
        raise ConfigError(f"`--lm-eval` needs lm-evaluation-harness, which is not installed; {INSTALL}") from None
    if task.peft_task_type not in ("CAUSAL_LM", "SEQ_2_SEQ_LM"):
        raise ConfigError(f"`--lm-eval` scores language models; task `{task.name}` trains a classifier head; "
                          "drop --lm-eval")
    if options.lm_eval_include and not os.path.isdir(options.lm_eval_include):
        raise ConfigError(f"`--lm-eval-include` {options.lm_eval_include!r} is not a folder; give the folder of "
                          "your task YAMLs")
    known = set(_task_manager(options.lm_eval_include).all_tasks)
    unknown = [t for t in options.lm_eval if t not in known]
    if unknown:
        raise ConfigError(f"`--lm-eval` task(s) {', '.join(map(repr, unknown))} unknown to lm-eval "
                          f"{_version()}{' and --lm-eval-include' if options.lm_eval_include else ''}; "
                          "`lm-eval ls tasks` lists them, or give your YAMLs' folder with --lm-eval-include")
    allowed = set(inspect.signature(simple_evaluate).parameters) - OWN
    bad = sorted(set(options.lm_eval_args) - allowed)
    if bad:
        raise ConfigError(f"`--lm-eval-args` key(s) {', '.join(bad)} are not simple_evaluate arguments lorasweep "
                          f"leaves to you; e.g. num_fewshot, limit, apply_chat_template")


def _version() -> str:
    from importlib.metadata import version

    return version("lm-eval")


# ----------------------------------------------------------------------------- on a worker


def score(settings_dict: dict, adapter: str | None, tasks: list[str], include: str, args: dict,
          secrets: list | None = None) -> dict:
    """``{task: {metric: value}}`` of the base model (``adapter`` None) or an exported adapter."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    from lorasweep.baseline import loaded
    from trainers.evaluation import EVAL_BATCH_SIZE

    with loaded(settings_dict, adapter, secrets) as (s, task, tokenizer, model):
        backend = "seq2seq" if task.peft_task_type == "SEQ_2_SEQ_LM" else "causal"
        lm = HFLM(pretrained=model, tokenizer=tokenizer, backend=backend, batch_size=EVAL_BATCH_SIZE,
                  max_length=s.max_seq_length)
        out = simple_evaluate(model=lm, tasks=list(tasks), task_manager=_task_manager(include), log_samples=False,
                              **args)
    # lm-eval names a metric "acc,none" (metric, filter): kept as "acc", or "exact_match,strict-match" whole
    return {name: {k.removesuffix(",none"): float(v) for k, v in metrics.items()
                   if "," in k and isinstance(v, (int, float)) and not isinstance(v, bool)}
            for name, metrics in out["results"].items()}


# ----------------------------------------------------------------------------- on the driver


def run(sweep, res, exported: list[str]) -> dict:
    """Score the base model and each exported adapter; write lm_eval.json, add the base's and the
    best adapter's numbers to baseline.json, print the table. Returns lm_eval.json's content."""
    import ray

    from lorasweep.credentials import share

    options = sweep.options
    names = ["base", *(os.path.basename(p.rstrip("/")) for p in exported)]
    log.say(f"lm-eval {_version()}: {', '.join(options.lm_eval)} on the base model and {len(exported)} adapter(s) ...")
    remote = ray.remote(num_cpus=res.cpus, num_gpus=res.gpus or 0, **res.host_options())(score)
    secrets = share()
    refs = [remote.remote(sweep.settings.to_dict(), adapter, list(options.lm_eval), options.lm_eval_include,
                          dict(options.lm_eval_args), secrets) for adapter in [None, *exported]]
    results = dict(zip(names, ray.get(refs)))
    out = {"lm_eval_version": _version(), "tasks": list(options.lm_eval), "args": dict(options.lm_eval_args),
           "models": results}
    path = storage.join(sweep.sweep_dir, "baseline.json")
    with storage.writes(f"check that --storage-path {options.storage_path!r} has free space and write permission"):
        storage.write_text(storage.join(sweep.sweep_dir, "lm_eval.json"), json.dumps(out, indent=2))
        merged = storage.read_json(path) or {}
        rows = {"base": next((k for k in merged if k.startswith("base")), "base 0-shot"), names[1]: "tuned"} \
            if len(names) > 1 else {"base": "base 0-shot"}
        for name, entry in rows.items():
            flat = {f"lm_eval/{t}/{m}": v for t, ms in results[name].items() for m, v in ms.items()}
            merged[entry] = {**merged.get(entry, {}), **flat}
        storage.write_text(path, json.dumps(merged, indent=2, default=str))
    print(table(results))
    return out


def table(results: dict[str, dict]) -> str:
    """``task  metric  base  rank_1 ...``, standard errors left out."""
    from lorasweep.tables import aligned

    cols = list(results)
    first = results[cols[0]]
    lines = [["task", "metric", *cols]]
    for t, metrics in first.items():
        for m in metrics:
            if "stderr" not in m:
                lines.append([t, m, *(f"{results[c].get(t, {}).get(m, float('nan')):.4f}" for c in cols)])
    return "lm-eval on the base model and the exported adapters:\n" + "\n".join(aligned(lines))
