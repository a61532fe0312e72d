"""The export at the end of a sweep: the top trials' best checkpoints copied to
``best_adapters/rank_<i>/`` as plain PEFT folders with a model card, put in place whole or not at
all (the ``EXPORT_COMPLETE`` marker). Merging one into its base is lorasweep/export.py's job."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from lorasweep import storage
from common.errors import os_reason
from trainers.lora_variants import CONVERTED

# What an exported adapter folder keeps from a training checkpoint: the adapter and what is
# needed to use it (tokenizer, chat template). Optimizer/scheduler/RNG state stay behind.
_KEEP = ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json",
         "special_tokens_map.json", "chat_template.jinja", "tokenizer.model", "vocab.json", "merges.txt", "vocab.txt",
         # a full fine-tune's checkpoint is the whole model
         "config.json", "model.safetensors", "generation_config.json")


def fetch_adapter(checkpoint: str, out: Path) -> None:
    """The files of a trial's checkpoint (a local folder or a storage URI) that make the adapter,
    copied into the folder ``out``: the optimizer state (twice the adapter, or a whole model's
    partitions under ZeRO-3) stays where it is."""
    checkpoint = storage.absolute(checkpoint)
    names = set(storage.list_names(checkpoint))
    for name in sorted(names & set(_KEEP)):
        storage.download(storage.join(checkpoint, name), str(out / name))
    if CONVERTED in names:  # PiSSA/OLoRA: the plain LoRA of the original base replaces the raw adapter
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            storage.download(storage.join(checkpoint, CONVERTED, name), str(out / name))


def model_card(row: dict, knobs: list[str], sweep, rank: int) -> str:
    from trainers.tasks import get_task

    s, metric = sweep.settings, sweep.space.metric
    auto = get_task(s.task).auto_class().__name__
    full = row.get("method", s.method) == "full"
    hp = "\n".join(f"| `{k}` | {row.get(k)} |" for k in knobs)
    fixed = "\n".join(f"| `{k}` | {v} |" for k, v in s.to_dict().items() if k not in ("model", "dataset"))
    metrics = "\n".join(f"| {k} | {v:.4f} |" for k, v in row.items()
                        if isinstance(v, float) and k not in knobs and k not in ("tokens_per_s", "wall_time_s", "peak_mem_gb"))
    init = str(row.get("init_lora_weights", s.lora_config.get("init_lora_weights", "")))
    converted = (f"\nTrained from a {'PiSSA' if init == 'pissa' else 'OLoRA'} initialisation (on the base with the part "
                 "of each targeted weight it moved into the adapter taken out); exported converted to a plain LoRA "
                 "of the original base at twice the trained rank, which loads as any LoRA does.\n"
                 if init in ("pissa", "olora") and not full else "")
    use = (f"model = {auto}.from_pretrained(\"<this folder>\")" if full else
           f"model = PeftModel.from_pretrained({auto}.from_pretrained(\"{s.model}\"), \"<this folder>\")")
    return f"""---
base_model: {s.model}
library_name: {'transformers' if full else 'peft'}
tags: [{'full-finetune' if full else 'lora'}, {'qlora, ' if s.quantization == '4bit' and not full else ''}lorasweep, {sweep.recipe.name}, {s.task}]
---
# {sweep.options.name}: rank {rank} {'model' if full else 'adapter'}

{'Fine-tuned' if full else 'LoRA adapter for'} `{s.model}`, trained on `{s.dataset}` (task `{s.task}`) and chosen by
the lorasweep sweep `{sweep.options.name}` (recipe `{sweep.recipe.name}`, preset `{sweep.preset}`), ranked
{rank} of the sweep's trials by `{metric}` on the held-out eval split.
{converted}
| metric (at the best report) | value |
|---|---|
{metrics}
| at step / tokens seen | {row.get('best_step')} / {row.get('best_tokens_seen')} |
| trial | {row.get('trial_id')} |

## Searched hyperparameters
| knob | value |
|---|---|
{hp}

## Fixed settings
| setting | value |
|---|---|
{fixed}

## Use
```python
from peft import PeftModel
from transformers import {auto}, AutoTokenizer
{use}
tokenizer = AutoTokenizer.from_pretrained("<this folder>")
```

## Reproduce
The sweep's folder holds `sweep.yaml`, its resolved config as a sweep file:
`lorasweep run --config sweep.yaml --name {sweep.options.name}-2` runs the same sweep again.
"""


def export_best(rows: list[dict], knobs: list[str], sweep, top_k: int, folder: str = "best_adapters") -> list[str]:
    """Copy the top-k trials' best checkpoints to ``best_adapters/rank_<i>/`` as PEFT folders.

    Built in a temp folder and renamed into place, so a crash never leaves a folder that looks
    complete. A previous export (from an earlier run of a resumed sweep) is kept, renamed with
    its time, never overwritten."""
    from trainers.data import progress

    cap = sweep.options.export_max_cost
    chosen = [r for r in rows if r.get("checkpoint") and r["status"] != "failed"
              and (not cap or (r.get("device_hours") is not None and r["device_hours"] <= cap))][:top_k]
    if not chosen:
        return []
    dest = storage.join(sweep.sweep_dir, folder)
    staging = Path(tempfile.mkdtemp(prefix=f"{folder}-"))
    staging.chmod(0o755)  # mkdtemp makes it owner-only
    try:
        for i, row in enumerate(progress(chosen, "exporting the best adapters"), 1):
            out = staging / f"rank_{i}"
            out.mkdir()
            try:
                fetch_adapter(row["checkpoint"], out)
            except OSError as e:  # reading a trial's checkpoint: not a failed write of the export
                raise RuntimeError(f"checkpoint {row['checkpoint']} could not be read ({os_reason(e)})") from e
            if not (out / "adapter_model.safetensors").exists() and not (out / "model.safetensors").exists():
                raise RuntimeError(f"checkpoint {row['checkpoint']} has no adapter_model.safetensors")
            (out / "README.md").write_text(model_card(row, knobs, sweep, i), encoding="utf-8")
            meta = {"rank": i, "sweep": sweep.options.name, "recipe": sweep.recipe.name, "base_model": sweep.settings.model,
                    "dataset": sweep.settings.dataset, "hyperparameters": {k: row.get(k) for k in knobs},
                    "objective": sweep.space.metric,
                    "metrics": {k: v for k, v in row.items() if k not in knobs and isinstance(v, (int, float))
                                and k not in ("rank",)},
                    "settings": sweep.settings.to_dict(), "trial_id": row["trial_id"]}
            (out / "lorasweep.json").write_text(json.dumps(meta, indent=2, default=str))
        _publish(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [storage.join(dest, f"rank_{i}") for i in range(1, len(chosen) + 1)]


EXPORT_MARKER = "EXPORT_COMPLETE"  # written last: an export without it is partial (or being written)


def _publish(staging: Path, dest: str) -> None:
    """Put ``staging`` at ``dest``: never half-written where a reader could take it for whole.

    Local: copied next to ``dest``, then renamed into place (the marker comes with it). Object
    storage (s3://, gs://) has no rename: the marker goes up last, after every other file, and is
    the first thing removed before anything else changes. Either way an earlier export is kept,
    as ``best_adapters.<time>``."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if storage.is_remote(dest):
        import pyarrow.fs as pafs

        fs, path = pafs.FileSystem.from_uri(dest)
        if fs.get_file_info(path).type != pafs.FileType.NotFound:
            if fs.get_file_info(f"{path}/{EXPORT_MARKER}").type == pafs.FileType.File:
                fs.delete_file(f"{path}/{EXPORT_MARKER}")  # readers stop trusting it before it changes
            pafs.copy_files(path, f"{path}.{stamp}", source_filesystem=fs, destination_filesystem=fs)
            fs.delete_dir(path)
        pafs.copy_files(str(staging), path, destination_filesystem=fs)
        with fs.open_output_stream(f"{path}/{EXPORT_MARKER}") as f:
            f.write(stamp.encode())
        return
    (staging / EXPORT_MARKER).write_text(stamp)
    # Copy next to the destination first (the slow part, which can fail), then two renames.
    tmp = f"{dest}.tmp-{os.getpid()}"
    try:
        shutil.copytree(staging, tmp)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    earlier = None
    if os.path.exists(dest):
        earlier = f"{dest}.{stamp}"
        os.replace(dest, earlier)
    try:
        os.replace(tmp, dest)
    except OSError:
        if earlier:
            os.replace(earlier, dest)  # the earlier export back in its place
        shutil.rmtree(tmp, ignore_errors=True)
        raise
