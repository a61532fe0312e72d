"""Exports are all or nothing: a failure half-way leaves no adapter folder that looks complete, and
an earlier export is never overwritten."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lorasweep.resolve import resolve
from sweeps.llama_finetome import RECIPE
from lorasweep.best_adapters import export_best
from lorasweep.leaderboard import write_leaderboard

KNOBS = ["r", "lora_alpha"]


@pytest.fixture(scope="module")
def checkpoints(tiny_assets, tmp_path_factory) -> dict:
    """Two real PEFT adapters saved as trial checkpoints, and one checkpoint without its weights."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("ckpts")
    out = {}
    for name, r in (("good_a", 8), ("good_b", 16)):
        torch.manual_seed(r)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_assets["model"]),
                               LoraConfig(r=r, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"))
        model.save_pretrained(root / name)
        out[name] = root / name
    broken = root / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text((out["good_a"] / "adapter_config.json").read_text())
    out["broken"] = broken
    return out


def _row(i: int, ckpt: Path, r: int) -> dict:
    return {"rank": i, "trial_id": f"t{i}", "r": r, "lora_alpha": 16, "status": "completed",
            "best_eval_loss": 1.0 + i, "best_step": 10, "best_tokens_seen": 1000, "checkpoint": str(ckpt)}


@pytest.fixture()
def sweep(tmp_path):
    s = resolve(RECIPE, ["--preset", "smoke", "--storage-path", str(tmp_path), "--name", "exp"])
    Path(s.sweep_dir).mkdir(parents=True)
    return s


def test_a_failed_export_leaves_nothing_that_looks_complete(sweep, checkpoints):
    rows = [_row(1, checkpoints["good_a"], 8), _row(2, checkpoints["broken"], 16)]
    with pytest.raises(RuntimeError, match="has no adapter_model.safetensors"):
        export_best(rows, KNOBS, sweep, top_k=2)
    assert sorted(p.name for p in Path(sweep.sweep_dir).iterdir()) == []  # no rank_1 alone, no temp folder


def test_a_new_export_keeps_the_previous_one_and_a_failed_one_touches_neither(sweep, checkpoints):
    from peft import PeftConfig

    best = Path(sweep.sweep_dir) / "best_adapters"
    export_best([_row(1, checkpoints["good_a"], 8)], KNOBS, sweep, top_k=1)
    first = (best / "rank_1" / "adapter_model.safetensors").read_bytes()

    with pytest.raises(RuntimeError):
        export_best([_row(1, checkpoints["broken"], 16)], KNOBS, sweep, top_k=1)
    assert (best / "rank_1" / "adapter_model.safetensors").read_bytes() == first
    assert sorted(p.name for p in Path(sweep.sweep_dir).iterdir()) == ["best_adapters"]

    export_best([_row(1, checkpoints["good_b"], 16), _row(2, checkpoints["good_a"], 8)], KNOBS, sweep, top_k=2)
    kept = [p for p in Path(sweep.sweep_dir).iterdir() if p.name.startswith("best_adapters.")]
    assert len(kept) == 1 and (kept[0] / "rank_1" / "adapter_model.safetensors").read_bytes() == first
    assert PeftConfig.from_pretrained(best / "rank_1").r == 16 and PeftConfig.from_pretrained(best / "rank_2").r == 8
    meta = json.loads((best / "rank_1" / "lorasweep.json").read_text())
    assert meta["trial_id"] == "t1" and meta["hyperparameters"] == {"r": 16, "lora_alpha": 16}


def test_leaderboard_files_are_replaced_whole(sweep, tmp_path):
    rows = [_row(1, tmp_path, 8)]
    write_leaderboard(rows, KNOBS, sweep.sweep_dir)
    write_leaderboard(rows + [_row(2, tmp_path, 16)], KNOBS, sweep.sweep_dir)
    assert len(json.loads((Path(sweep.sweep_dir) / "leaderboard.json").read_text())) == 2
    assert sorted(p.name for p in Path(sweep.sweep_dir).iterdir()) == ["leaderboard.csv", "leaderboard.json"]
