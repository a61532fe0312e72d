"""After the sweep: the leaderboard, the best adapters as plain PEFT folders, their model cards."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

# What an exported adapter folder keeps from a training checkpoint: the adapter and what is
# needed to use it (tokenizer, chat template). Optimizer/scheduler/RNG state stay behind.
_KEEP = ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json",
         "special_tokens_map.json", "chat_template.jinja", "tokenizer.model", "vocab.json", "merges.txt")
LEADERBOARD_FIELDS = ("rank", "trial_id", "status", "best_eval_loss", "best_step", "best_tokens_seen",
                      "final_eval_loss", "steps", "tokens_seen", "tokens_per_s", "wall_time_s", "peak_mem_gb",
                      "checkpoint", "error")


def _is_uri(path: str) -> bool:
    return "://" in path


def leaderboard_rows(grid, knobs: list[str], metric: str = "eval_loss", mode: str = "min") -> list[dict]:
    rows = []
    for result in grid:
        df = result.metrics_dataframe
        config = result.config or {}
        row = {"trial_id": (result.metrics or {}).get("trial_id") or Path(result.path).name.split("_")[1]}
        row.update({k: config.get(k) for k in knobs})
        if df is not None and metric in df and df[metric].notna().any():
            best = df.loc[df[metric].idxmin() if mode == "min" else df[metric].idxmax()]
            last = df.iloc[-1]
            row.update(
                best_eval_loss=float(best[metric]),
                best_step=int(best.get("step", 0)),
                best_tokens_seen=int(best.get("tokens_seen", 0)),
                final_eval_loss=float(last[metric]),
                steps=int(last.get("step", 0)),
                tokens_seen=int(last.get("tokens_seen", 0)),
                tokens_per_s=round(float(last.get("tokens_seen", 0)) / max(float(last.get("train_time_s", 0)) or float(last.get("time_total_s", 1)), 1e-9), 1),
                wall_time_s=round(float(last.get("time_total_s", 0)), 1),
                peak_mem_gb=round(float(df["peak_mem_gb"].max()), 3) if "peak_mem_gb" in df else None,
                checkpoint=best.get("checkpoint_path"),
                status="completed" if bool(last.get("finished", False)) else "stopped early",
            )
        else:
            row.update(status="no report")
        if result.error is not None:
            row["status"] = "failed"
            row["error"] = _one_line(result.error)
        rows.append(row)
    sign = 1 if mode == "min" else -1
    # Failed trials go below every healthy one whatever they reached before failing: their
    # adapters are never exported.
    rows.sort(key=lambda r: (r["status"] == "failed", r.get("best_eval_loss") is None,
                             sign * (r.get("best_eval_loss") or 0)))
    for i, r in enumerate(rows, 1):
        r["rank"] = i
    return rows


def _one_line(err: BaseException) -> str:
    """The root cause of a trial's error, on one line (Ray wraps it a few times)."""
    text = str(err)
    if "TrialError: " in text:  # ours: already says what happened and at which step
        return text[text.rindex("TrialError: ") + len("TrialError: "):].strip().splitlines()[0][:300]
    for marker in ("OutOfMemoryError:", "ConfigError:", "RuntimeError:", "Error:"):
        if marker in text:
            tail = text[text.rindex(marker):]
            return tail.strip().splitlines()[0][:300]
    return text.strip().splitlines()[-1][:300] if text.strip() else type(err).__name__


def write_leaderboard(rows: list[dict], knobs: list[str], sweep_dir: str) -> None:
    columns = ["rank", "trial_id", *knobs, *[c for c in LEADERBOARD_FIELDS if c not in ("rank", "trial_id")]]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    _write_text(_join(sweep_dir, "leaderboard.csv"), buf.getvalue())
    _write_text(_join(sweep_dir, "leaderboard.json"), json.dumps(rows, indent=2, default=str))


def format_table(rows: list[dict], knobs: list[str], limit: int = 20) -> str:
    cols = ["rank", "trial_id", *knobs, "best_eval_loss", "tokens_seen", "wall_time_s", "status"]
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v))  # noqa: E731
    table = [cols] + [[fmt(r.get(c)) for c in cols] for r in rows[:limit]]
    widths = [max(len(line[i]) for line in table) for i in range(len(cols))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)) for line in table)


def model_card(row: dict, knobs: list[str], sweep, rank: int) -> str:
    s = sweep.settings
    hp = "\n".join(f"| `{k}` | {row.get(k)} |" for k in knobs)
    fixed = "\n".join(f"| `{k}` | {v} |" for k, v in s.to_dict().items() if k not in ("model", "dataset"))
    return f"""---
base_model: {s.model}
library_name: peft
tags: [lora, {'qlora, ' if s.quantization == '4bit' else ''}lorasweep, {sweep.recipe.name}]
---
# {sweep.options.name}: rank {rank} adapter

LoRA adapter for `{s.model}`, trained on `{s.dataset}` and chosen by the lorasweep sweep
`{sweep.options.name}` (recipe `{sweep.recipe.name}`, preset `{sweep.preset}`), ranked {rank} of the
sweep's trials by held-out `eval_loss` (token-weighted cross-entropy on assistant tokens).

| metric | value |
|---|---|
| best eval loss | {row.get('best_eval_loss'):.4f} |
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
from transformers import AutoModelForCausalLM, AutoTokenizer
base = AutoModelForCausalLM.from_pretrained("{s.model}")
model = PeftModel.from_pretrained(base, "<this folder>")
tokenizer = AutoTokenizer.from_pretrained("<this folder>")
```
"""


def export_best(rows: list[dict], knobs: list[str], sweep, top_k: int) -> list[str]:
    """Copy the top-k trials' best checkpoints to ``best_adapters/rank_<i>/`` as PEFT folders.

    Built in a temp folder and renamed into place, so a crash never leaves a folder that looks
    complete. A previous export (from an earlier run of a resumed sweep) is kept, renamed with
    its time, never overwritten."""
    from ray.train import Checkpoint

    chosen = [r for r in rows if r.get("checkpoint") and r["status"] != "failed"][:top_k]
    if not chosen:
        return []
    dest = _join(sweep.sweep_dir, "best_adapters")
    staging = Path(tempfile.mkdtemp(prefix="best_adapters-"))
    staging.chmod(0o755)  # mkdtemp makes it owner-only
    try:
        for i, row in enumerate(chosen, 1):
            out = staging / f"rank_{i}"
            with tempfile.TemporaryDirectory() as tmp:
                local = Checkpoint(row["checkpoint"]).to_directory(tmp)
                out.mkdir()
                for name in os.listdir(local):
                    if name in _KEEP:
                        shutil.copy2(os.path.join(local, name), out / name)
            if not (out / "adapter_model.safetensors").exists():
                raise RuntimeError(f"checkpoint {row['checkpoint']} has no adapter_model.safetensors")
            (out / "README.md").write_text(model_card(row, knobs, sweep, i), encoding="utf-8")
            meta = {"rank": i, "sweep": sweep.options.name, "recipe": sweep.recipe.name, "base_model": sweep.settings.model,
                    "dataset": sweep.settings.dataset, "hyperparameters": {k: row.get(k) for k in knobs},
                    "metrics": {k: row.get(k) for k in ("best_eval_loss", "best_step", "best_tokens_seen")},
                    "settings": sweep.settings.to_dict(), "trial_id": row["trial_id"]}
            (out / "lorasweep.json").write_text(json.dumps(meta, indent=2, default=str))
        _publish(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [_join(dest, f"rank_{i}") for i in range(1, len(chosen) + 1)]


def _publish(staging: Path, dest: str) -> None:
    if _is_uri(dest):
        import pyarrow.fs as pafs

        fs, path = pafs.FileSystem.from_uri(dest)
        pafs.copy_files(str(staging), path, destination_filesystem=fs)
        return
    # Copy next to the destination first (the slow part, which can fail), then two renames.
    tmp = f"{dest}.tmp-{os.getpid()}"
    shutil.copytree(staging, tmp)
    if os.path.exists(dest):
        os.replace(dest, f"{dest}.{time.strftime('%Y%m%d-%H%M%S')}")
    os.replace(tmp, dest)


def _join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts]) if _is_uri(base) else os.path.join(base, *parts)


def _write_text(path: str, text: str) -> None:
    if _is_uri(path):
        import pyarrow.fs as pafs

        fs, p = pafs.FileSystem.from_uri(path)
        with fs.open_output_stream(p) as f:
            f.write(text.encode())
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, 0o644)  # mkstemp makes it owner-only
    os.replace(tmp, path)


def write_start(sweep, inputs) -> None:
    """At the start: the resolved config and the data audit. A resumed sweep keeps the first ones."""
    for name, payload in (("sweep_config.json", sweep.summary()), ("data_report.json", inputs.data)):
        path = _join(sweep.sweep_dir, name)
        if payload is not None and not (sweep.options.resume and _exists(path)):
            _write_text(path, json.dumps(payload, indent=2, default=str))


def _exists(path: str) -> bool:
    if _is_uri(path):
        import pyarrow.fs as pafs

        fs, p = pafs.FileSystem.from_uri(path)
        return fs.get_file_info(p).type != pafs.FileType.NotFound
    return os.path.exists(path)


def resume_command(argv: list[str]) -> str:
    import shlex
    import sys

    script = os.path.relpath(sys.argv[0]) if sys.argv and sys.argv[0].endswith(".py") else "sweeps/<recipe>.py"
    args = [a for a in argv if a != "--resume"]
    return " ".join(["python", shlex.quote(script), *map(shlex.quote, args), "--resume"])


def finish(sweep, grid, elapsed_s: float, argv: list[str]) -> int:
    from lorasweep.tracking import log_summary

    knobs = list(sweep.space.params)
    rows = leaderboard_rows(grid, knobs, sweep.space.metric, sweep.space.mode)
    write_leaderboard(rows, knobs, sweep.sweep_dir)
    print()
    print(format_table(rows, knobs))
    print()
    done = grid.num_terminated + grid.num_errors
    if done < sweep.options.num_samples:
        # Ctrl-C: Tune saved its state and returned. The leaderboard so far is written; the
        # adapters are exported when the sweep completes.
        print(f"[lorasweep] interrupted after {done} of {sweep.options.num_samples} trials; everything written so far "
              f"is kept in {sweep.sweep_dir}")
        print(f"[lorasweep] resume with: {resume_command(argv)}")
        return 130
    exported = export_best(rows, knobs, sweep, sweep.options.top_k)
    o = sweep.options
    log_summary(o.wandb_project, o.name, sweep.sweep_dir, rows, knobs, exported, sweep.summary(), o.wandb_entity)
    ok = [r for r in rows if r.get("best_eval_loss") is not None]
    failed = [r for r in rows if r["status"] == "failed"]
    print(f"[lorasweep] {len(rows)} trials in {elapsed_s:.0f}s ({len(failed)} failed); "
          f"leaderboard: {_join(sweep.sweep_dir, 'leaderboard.csv')}")
    if not exported:
        print("[lorasweep] no trial produced a checkpoint; nothing exported")
        return 1
    if len(ok) > 1 and not math.isnan(ok[0]["best_eval_loss"]):
        print(f"[lorasweep] best eval_loss {ok[0]['best_eval_loss']:.4f}, worst {ok[-1]['best_eval_loss']:.4f}")
    print(f"[lorasweep] best adapter: {exported[0]}")
    return 0
