"""Ship an adapter: merged into its base, loadable with plain Transformers, with a model card that
records the sweep; optionally pushed to the Hub.

    python -m lorasweep.export runs/llama_finetome-smoke                  # rank 1 -> runs/.../merged/rank_1
    python -m lorasweep.export runs/llama_finetome-smoke --rank 2 --dtype fp32 --out /tmp/m
    python -m lorasweep.export runs/llama_finetome-smoke --gguf f16          # + model-f16.gguf for llama.cpp
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

from lorasweep import log
from common.errors import ConfigError

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
    from trainers.model import save_folder
    from trainers.tasks import get_task

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


def main(argv: list[str] | None = None, prog: str = "python -m lorasweep.export") -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep_dir", help="a finished sweep's folder (with best_adapters/)")
    p.add_argument("--rank", type=int, default=1, help="which exported adapter (1 = the best)")
    p.add_argument("--dtype", choices=DTYPES, default="bf16", help="weights of the merged model")
    p.add_argument("--out", default="", help="where to write it (default: <sweep_dir>/merged/rank_<rank>)")
    p.add_argument("--gguf", choices=("f16", "f32"), default=None,
                   help="also write model-<f16|f32>.gguf for llama.cpp (Llama-architecture models; others are skipped, said why)")
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
            log.say(f"the earlier merge in {out} is kept as {kept}")
        summary, baseline = sweep_summary(a.sweep_dir)
        meta_path = folder / "lorasweep.json"
        with tempfile.TemporaryDirectory() as tmp:  # the card's sweep facts travel in a copy of the folder
            staged = Path(tmp) / folder.name
            shutil.copytree(folder, staged)
            meta = json.loads(meta_path.read_text())
            (staged / "lorasweep.json").write_text(json.dumps({**meta, "sweep_summary": summary, "baseline": baseline}))
            merge(staged, out, a.dtype)
        log.say(f"merged model: {out}")
        if a.gguf:
            try:
                log.say(f"GGUF: {write_gguf(out, out / f'model-{a.gguf}.gguf', a.gguf)}")
            except GGUFUnsupported as e:
                log.say(f"no GGUF: {e}")
        if a.push_to_hub:
            push(out, a.push_to_hub)
            log.say(f"pushed to https://huggingface.co/{a.push_to_hub}")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


# ----------------------------------------------------------------------------- GGUF (llama.cpp)

GGUF_ARCHITECTURES = ("llama",)  # written and read back here; others are skipped with a message


class GGUFUnsupported(Exception):
    """A model this writer cannot turn into GGUF; the message says why (one line)."""


def write_gguf(merged: Path, out_file: Path, dtype: str = "f16") -> Path:
    """The merged model in ``merged`` as one GGUF file for llama.cpp, written with the ``gguf``
    package (tensor names from its Llama map, Q/K rows permuted as llama.cpp's converter does, the
    BPE vocabulary, merges and special tokens from the tokenizer). Llama-architecture models only
    (Llama, SmolLM, TinyLlama...): another architecture raises GGUFUnsupported."""
    import gguf
    import numpy as np
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(merged)
    if config.model_type not in GGUF_ARCHITECTURES:
        raise GGUFUnsupported(f"GGUF export writes {', '.join(GGUF_ARCHITECTURES)} models; {config.model_type!r} is "
                              "not one: use llama.cpp's convert_hf_to_gguf.py on the merged folder")
    if not (merged / "tokenizer.json").is_file():
        raise GGUFUnsupported("GGUF export needs a fast tokenizer's tokenizer.json beside the model")
    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)
    n_head, n_kv = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_head
    rope = getattr(config, "rope_theta", None) or (getattr(config, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
    w = gguf.GGUFWriter(str(out_file), "llama")
    w.add_context_length(config.max_position_embeddings)
    w.add_embedding_length(config.hidden_size)
    w.add_block_count(config.num_hidden_layers)
    w.add_feed_forward_length(config.intermediate_size)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_freq_base(float(rope))
    w.add_rope_dimension_count(head_dim)
    w.add_layer_norm_rms_eps(config.rms_norm_eps)
    w.add_vocab_size(config.vocab_size)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.ALL_F32)
    vocab = gguf.BpeVocab(merged)
    tokens, _, types = zip(*vocab.all_tokens())
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(list(tokens))
    w.add_token_types(list(types))
    gguf.SpecialVocab(merged, load_merges=True, n_vocab=len(tokens)).add_to_gguf(w, quiet=True)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)

    def permute(t, heads):  # llama.cpp's rotary layout of Q and K rows (its converter's LlamaModel.permute)
        return t.reshape(heads, 2, t.shape[0] // heads // 2, *t.shape[1:]).swapaxes(1, 2).reshape(t.shape)

    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # llama.cpp reads the embedding matrix as the output head when it has none
        data = tensor.float().numpy()
        if name.endswith("q_proj.weight"):
            data = permute(data, n_head)
        elif name.endswith("k_proj.weight"):
            data = permute(data, n_kv)
        new = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise GGUFUnsupported(f"no GGUF name for tensor {name!r}")
        w.add_tensor(new, data.astype(np.float16 if dtype == "f16" and data.ndim == 2 else np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out_file
