"""Ship an adapter: merged into its base, loadable with plain Transformers, with a model card that
records the sweep; optionally pushed to the Hub.

    python -m lorasweep.export runs/llama_finetome-smoke                  # rank 1 -> runs/.../merged/rank_1
    python -m lorasweep.export runs/llama_finetome-smoke --rank 2 --dtype fp32 --out /tmp/m
    python -m lorasweep.export runs/llama_finetome-smoke --push-to-hub me/llama-finetome   # HF_TOKEN from the env

The base is loaded unquantised in ``--dtype`` (bf16 by default: a QLoRA adapter trained on a 4-bit
base is merged into the 16-bit weights, as PEFT's ``merge_and_unload`` needs real weights), the
adapter is applied and merged, and the result is written with the tokenizer and the generation
config as safetensors: ``AutoModelForCausalLM.from_pretrained(folder)`` (or the task's Auto class)
loads it, with no PEFT. A full fine-tune's folder is already a model: it is copied as it is.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from lorasweep.errors import ConfigError

DTYPES = ("bf16", "fp16", "fp32")


def adapter_folder(sweep_dir: str, rank: int) -> Path:
    folder = Path(sweep_dir) / "best_adapters" / f"rank_{rank}"
    if not (folder / "lorasweep.json").is_file():
        raise ConfigError(f"{folder} holds no exported adapter (no lorasweep.json); give a sweep folder whose "
                          f"best_adapters/rank_{rank} exists (a finished sweep, --rank within its --top-k)")
    return folder


def merge(folder: Path, out: Path, dtype: str = "bf16") -> Path:
    """The adapter in ``folder`` merged into its base, written to ``out`` (temp sibling, then renamed)."""
    import torch
    from transformers.utils import logging as hf_logging

    from trainers.config import TrainSettings
    from trainers.families import resolve_family
    from trainers.model import DTYPES as TORCH_DTYPES
    from trainers.tasks import get_task
    from trainers.tiny import save_folder

    hf_logging.disable_progress_bar()  # "Writing model shards" for a one-file model
    meta = json.loads((folder / "lorasweep.json").read_text())
    settings = TrainSettings.from_dict(meta["settings"])
    task = get_task(settings.task)
    family = resolve_family(settings)
    tokenizer = task.load_tokenizer(settings)
    if not (folder / "adapter_config.json").is_file():  # a full fine-tune: already a plain model folder
        model = task.auto_class().from_pretrained(folder, dtype=TORCH_DTYPES[dtype])
    else:
        from peft import PeftModel

        base = task.auto_class().from_pretrained(settings.model, dtype=TORCH_DTYPES[dtype],
                                                 **family.from_pretrained_kwargs, **task.model_kwargs(settings))
        if base.config.pad_token_id is None and task.needs_pad_token:
            base.config.pad_token_id = tokenizer.pad_token_id
        model = PeftModel.from_pretrained(base, folder).merge_and_unload()
    model.config.use_cache = True  # trials train without the KV cache; a shipped model generates with it
    with torch.no_grad():
        save_folder(out, model, tokenizer, "lorasweep.json", {**meta, "merged": True, "dtype": dtype})
    (out / "README.md").write_text(card(meta, dtype))
    return out


def card(meta: dict, dtype: str) -> str:
    """The merged model's card: the sweep that chose it (space, trials, the winner's knobs and
    metrics, cost, base model, data) and its baseline against tuned where the sweep scored one."""
    s = meta["settings"]
    rows = "\n".join(f"| `{k}` | {v} |" for k, v in meta.get("hyperparameters", {}).items())
    metrics = "\n".join(f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |"
                        for k, v in meta.get("metrics", {}).items())
    sweep = meta.get("sweep_summary", {})
    space = "\n".join(f"- {line}" for line in sweep.get("search_space", []))
    baseline = meta.get("baseline") or {}
    base_rows = ""
    if baseline:
        names = [m for m in next(iter(baseline.values())) if isinstance(next(iter(baseline.values()))[m], float)]
        base_rows = "\n\n## Baseline against tuned (test split)\n\n| metric | " + " | ".join(baseline) + " |\n|---|" + \
            "---|" * len(baseline) + "\n" + "\n".join(
                f"| {m} | " + " | ".join(f"{r.get(m, float('nan')):.4f}" for r in baseline.values()) + " |" for m in names)
    return f"""---
base_model: {s['model']}
library_name: transformers
tags: [lorasweep, merged-lora, {s['task']}]
---
# {meta.get('sweep')}: rank {meta.get('rank')} adapter, merged into its base ({dtype})

`{s['model']}` with the LoRA adapter of trial `{meta.get('trial_id')}` merged in: a plain Transformers
model (no PEFT needed). Trained on `{s['dataset']}` (task `{s['task']}`) and chosen by the lorasweep
sweep `{meta.get('sweep')}` (recipe `{meta.get('recipe')}`) by `{meta.get('objective')}`.

## The winner's knobs

| knob | value |
|---|---|
{rows}

## Its metrics (eval split, at its best report)

| metric | value |
|---|---|
{metrics}

## The search

{sweep.get('trials', '?')} trials; searcher `{sweep.get('searcher', '?')}`, scheduler `{sweep.get('scheduler', '?')}`.
{space}{base_rows}
"""


def push(folder: Path, repo: str, private: bool = True, api=None) -> dict:
    """Upload ``folder`` to the Hub repo ``repo`` (private unless it exists) with ``HF_TOKEN`` from
    the environment. Returns the arguments given to ``upload_folder``. ``api``: an ``HfApi``
    (made here with the token); the offline test hands in one that records the calls instead."""
    token = os.environ.get("HF_TOKEN")
    if not token:
        raise ConfigError("`--push-to-hub` needs HF_TOKEN in the environment (a write token); it is never read from a file")
    if not repo.count("/") == 1 or repo.startswith("/") or repo.endswith("/"):
        raise ConfigError(f"`--push-to-hub` is {repo!r}; give a Hub repo id as owner/name")
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    api.create_repo(repo, private=private, exist_ok=True)
    args = {"repo_id": repo, "folder_path": str(folder), "commit_message": f"lorasweep: {folder.name}"}
    api.upload_folder(**args)
    return args


def sweep_summary(sweep_dir: str) -> tuple[dict, dict]:
    """What the card says of the sweep (sweep_config.json, leaderboard.json) and its baseline."""
    root = Path(sweep_dir)
    config = json.loads((root / "sweep_config.json").read_text()) if (root / "sweep_config.json").is_file() else {}
    board = json.loads((root / "leaderboard.json").read_text()) if (root / "leaderboard.json").is_file() else []
    baseline = json.loads((root / "baseline.json").read_text()) if (root / "baseline.json").is_file() else {}
    sweep = config.get("sweep", {})
    return ({"search_space": config.get("search_space", []), "trials": len(board),
             "searcher": sweep.get("searcher"), "scheduler": sweep.get("scheduler")},
            {k: {m: v for m, v in r.items() if isinstance(v, float)} for k, r in baseline.items() if isinstance(r, dict)})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lorasweep.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep_dir", help="a finished sweep's folder (with best_adapters/)")
    p.add_argument("--rank", type=int, default=1, help="which exported adapter (1 = the best)")
    p.add_argument("--dtype", choices=DTYPES, default="bf16", help="weights of the merged model")
    p.add_argument("--out", default="", help="where to write it (default: <sweep_dir>/merged/rank_<rank>)")
    p.add_argument("--push-to-hub", default="", metavar="REPO", help="upload the merged model and card (HF_TOKEN from the env)")
    a = p.parse_args(argv)
    try:
        folder = adapter_folder(a.sweep_dir, a.rank)
        out = Path(a.out) if a.out else Path(a.sweep_dir) / "merged" / f"rank_{a.rank}"
        if out.exists() and any(out.iterdir()):
            if not (out / "lorasweep.json").is_file():
                raise ConfigError(f"`--out` {str(out)!r} holds files that are not a lorasweep export; give an empty "
                                  "or new folder (nothing there is overwritten)")
            kept = out.with_name(f"{out.name}.{time.strftime('%Y%m%d-%H%M%S')}")
            out.rename(kept)  # an earlier merge is kept, never overwritten
            print(f"[lorasweep] the earlier merge in {out} is kept as {kept}")
        summary, baseline = sweep_summary(a.sweep_dir)
        meta_path = folder / "lorasweep.json"
        with tempfile.TemporaryDirectory() as tmp:  # the card's sweep facts travel in a copy of the folder
            staged = Path(tmp) / folder.name
            shutil.copytree(folder, staged)
            meta = json.loads(meta_path.read_text())
            (staged / "lorasweep.json").write_text(json.dumps({**meta, "sweep_summary": summary, "baseline": baseline}))
            merge(staged, out, a.dtype)
        print(f"[lorasweep] merged model: {out}")
        if a.push_to_hub:
            push(out, a.push_to_hub)
            print(f"[lorasweep] pushed to https://huggingface.co/{a.push_to_hub}")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
