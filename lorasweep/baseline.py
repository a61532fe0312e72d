"""Baseline against tuned, as the projects report it: the base model scored on the test split before
the sweep (instruction models zero-shot and k-shot, encoders with their untrained head), the best
adapter scored on the same rows after it. ``baseline.json`` holds every metric; the console gets
the table.

Scoring runs as a Ray task with one trial worker's resources, so on a cluster it lands on a GPU
node like the trials do, not on the head.
"""

from __future__ import annotations

import tempfile
from contextlib import contextmanager
from pathlib import Path


# kept in baseline.json (per-example plots, samples.jsonl), not printed as rows
PER_EXAMPLE = ("predictions", "references", "per_example", "samples")


@contextmanager
def loaded(settings_dict: dict, adapter: str | None = None, secrets: list | None = None):
    """``(settings, task, tokenizer, model)``: the base model (``adapter`` None), plus an exported
    adapter/model folder or a trial's checkpoint (a local path or a storage URI). ``secrets``: the
    driver's ``credentials.share()`` (HF_TOKEN for a gated base)."""
    from common.credentials import apply
    from trainers.config import TrainSettings
    from trainers.loop import load_trained

    apply(secrets)
    s = TrainSettings.from_dict(settings_dict)
    with tempfile.TemporaryDirectory() as tmp:
        if adapter is not None:
            from lorasweep.best_adapters import fetch_adapter

            # the adapter's files only, copied from a local folder or downloaded from a storage URI
            fetch_adapter(adapter, Path(tmp))
            adapter = tmp
        yield (s, *load_trained(s, adapter))


def score(settings_dict: dict, adapter: str | None = None, shots: int = 0, secrets: list | None = None) -> dict:
    """Metrics of the base model (``adapter`` None) or of an exported adapter/model folder on the test
    split (the eval split when the recipe has no test split)."""
    with loaded(settings_dict, adapter, secrets) as (s, task, tokenizer, model):
        split, _ = task.read(s)
        rows, which = (split.test, "test") if split.test else (split.eval, "eval")
        out = task.score(model, tokenizer, s, rows, split.train, shots)
    return {"split": which, "shots": shots, **out}


def run_remote(settings_dict: dict, resources, adapter: str | None, shots: list[int]) -> dict[str, dict]:
    """``score`` for each number of shots, as Ray tasks sized like one trial worker."""
    import ray

    from lorasweep.credentials import share

    remote = ray.remote(num_cpus=resources.cpus, num_gpus=resources.gpus or 0, **resources.host_options())(score)
    secrets = share()  # a reference in a list: the token itself is in no task spec
    refs = {f"{k}-shot": remote.remote(settings_dict, adapter, k, secrets) for k in shots}
    return {name: ray.get(ref) for name, ref in refs.items()}


def table(results: dict[str, dict], metric_names: tuple[str, ...]) -> str:
    """``metric  base 0-shot  base 3-shot  tuned`` with one row per metric."""
    from lorasweep.tables import aligned

    cols = list(results)
    lines = [["metric", *cols]]
    for m in metric_names:
        if any(m in r for r in results.values()):
            lines.append([m, *(f"{results[c][m]:.4f}" if isinstance(results[c].get(m), float) else "" for c in cols)])
    missing = {m: why for r in results.values() for m, why in (r.get("unavailable") or {}).items()}
    for m in metric_names:
        if m in missing and not any(m in r for r in results.values()):
            lines.append([m, *(["unavailable"] * len(cols))])
    n = next(iter(results.values()), {}).get("n")
    which = next(iter(results.values()), {}).get("split", "test")
    body = "\n".join(aligned(lines))
    notes = "".join(f"\n  {m}: {why}" for m, why in missing.items())
    return f"baseline vs tuned on the {which} split ({n} rows):\n{body}{notes}"


def samples_rows(results: dict[str, dict]) -> list[dict]:
    """``samples.jsonl``: one row per sample prompt, the generation of every scored model side by
    side (``base 0-shot``, ``base 1-shot``, ``tuned``), from the ``samples`` each scoring kept."""
    runs = {name: r["samples"] for name, r in results.items() if isinstance(r, dict) and r.get("samples")}
    if not runs:
        return []
    first = next(iter(runs.values()))
    out = []
    for i, sample in enumerate(first):
        row = {"prompt": sample["prompt"], "reference": sample["reference"]}
        for name, samples in runs.items():
            if i < len(samples) and samples[i]["prompt"] == sample["prompt"]:
                row[name] = samples[i]["generation"]
        out.append(row)
    return out
