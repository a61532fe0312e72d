"""The CUDA paths, on a GPU machine: ``pytest -m gpu -n 0 tests/test_gpu.py`` (bench/gpu_check.sh runs
it with the flagship smoke on CUDA). Skipped without CUDA, and in the default run, which hides the
GPUs (tests/conftest.py). Written without a GPU at hand (Dec 3): none of them has run yet.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.slow,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (pytest -m gpu on a GPU machine)")]

ROOT = Path(__file__).resolve().parents[1]


def _settings(assets, **kw):
    from trainers.config import TrainSettings

    return TrainSettings(model=str(assets["model"]), dataset=str(assets["dataset"]), max_seq_length=256,
                         per_device_batch_size=4, gradient_accumulation_steps=1, max_tokens=6_000, eval_every=2,
                         eval_fraction=0.1, eval_rows=32, **kw).validate()


def test_a_gpu_trains_in_bf16_with_fused_adamw_and_tf32(tiny_assets, tmp_path):
    from trainers.families import get_family
    from trainers.loop import training_arguments
    from trainers.model import pick_precision

    device = torch.device("cuda", 0)
    settings = _settings(tiny_assets)
    precision = pick_precision(settings, device, get_family("llama"))
    assert precision == ("bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16")
    args = training_arguments(settings, precision, device, 10, str(tmp_path))
    assert args.optim == "adamw_torch_fused"
    assert bool(args.tf32) == (torch.cuda.get_device_capability(device)[0] >= 8)


@pytest.mark.parametrize("quantization", ["4bit", "none"])
def test_a_trial_trains_on_cuda_and_reports_its_peak_memory(tiny_assets, quantization):
    """``train_func`` outside Ray, as a one-GPU trial: 4-bit NF4 on CUDA (bitsandbytes' CUDA kernels)
    and a bf16 base; the loss falls and every report carries the CUDA peak (eval included)."""
    from trainers.config import Resources, TrialConfig
    from trainers.loop import train_func

    torch.cuda.reset_peak_memory_stats()
    settings = _settings(tiny_assets, quantization=quantization, learning_rate=1e-3)
    history = train_func(TrialConfig(settings, resources=Resources(gpus=1)).to_tune({}))
    assert history and history[-1]["finished"]
    assert history[-1]["eval_loss"] < history[0]["eval_loss"], [h["eval_loss"] for h in history]
    assert all(0 < h["peak_mem_gb"] < torch.cuda.get_device_properties(0).total_memory / 2**30 for h in history)


def _smoke(args: list[str], tmp_path: Path) -> Path:
    out = subprocess.run([sys.executable, "sweeps/llama_finetome.py", "--preset", "smoke", "--storage-path",
                          str(tmp_path), *args], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, (out.stdout[-3000:], out.stderr[-3000:])
    return tmp_path / args[args.index("--name") + 1]


def test_two_trials_share_one_gpu(tmp_path):
    """--gpus-per-worker 0.5: two one-worker trials in their own processes on one GPU, at once."""
    sweep = _smoke(["--gpus-per-worker", "0.5", "--num-samples", "2", "--max-concurrent", "2", "--scheduler", "none",
                    "--name", "shared"], tmp_path)
    rows = json.loads((sweep / "leaderboard.json").read_text())
    assert [r["status"] for r in rows] == ["completed", "completed"], rows
    spans = []
    for result in sweep.glob("trial_*/result.json"):
        reports = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        spans.append((reports[0]["timestamp"] - reports[0]["time_total_s"], reports[-1]["timestamp"]))
    (a0, a1), (b0, b1) = spans
    assert a0 < b1 and b0 < a1, spans  # they overlapped


def test_zero3_4bit_offload_saves_an_adapter_of_lora_keys_only(tmp_path):
    """One worker that keeps DeepSpeed for its offload: ZeRO-3, a 4-bit base stored as bf16, the
    optimizer state (and the weights) in CPU memory; the exported adapter holds the LoRA weights alone."""
    from safetensors import safe_open

    sweep = _smoke(["--gpus-per-worker", "1", "--zero-stage", "3", "--offload", "--quantization", "4bit",
                    "--num-samples", "1", "--scheduler", "none", "--name", "zero3"], tmp_path)
    with safe_open(str(sweep / "best_adapters" / "rank_1" / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and all("lora_" in k for k in keys), [k for k in keys if "lora_" not in k][:5]


def test_flash_attention_keeps_packed_documents_apart(tiny_assets, tiny_tokenizer):
    """Packed rows under flash_attention_2 (laid flat by the trial's collator: its variable-length
    path) give the logits SDPA gives the padded batch, to bf16 precision."""
    pytest.importorskip("flash_attn", reason="needs the flash-attn package")
    from stand_ins import finetome_rows

    from trainers.chat import pack_examples, tokenize_rows
    from trainers.config import TrainSettings
    from trainers.families import get_family
    from trainers.model import build_model
    from trainers.tasks import get_task

    device = torch.device("cuda", 0)
    base = dict(model=str(tiny_assets["model"]), dataset="unused", quantization="none", r=8, lora_alpha=16,
                packing=True, precision="bf16")
    rows = pack_examples(tokenize_rows(tiny_tokenizer, finetome_rows(12, seed=5), 256).examples, 128)[:3]
    logits = {}
    for attn in ("sdpa", "flash_attention_2"):
        settings = TrainSettings(**base, attn_implementation=attn)
        model = build_model(settings, get_family("llama"), get_task("chat_sft"), "bf16", device).to(device)
        batch = get_task("chat_sft").collator(settings, tiny_tokenizer)(rows)
        with torch.no_grad():
            out = model(**{k: v.to(device) for k, v in batch.items() if k != "num_tokens"}).logits.float()
        logits[attn] = out[0] if attn == "flash_attention_2" else torch.cat(
            [out[i, : len(r["input_ids"])] for i, r in enumerate(rows)])
    assert logits["flash_attention_2"].shape == logits["sdpa"].shape
    assert (logits["flash_attention_2"] - logits["sdpa"]).abs().max().item() < 0.1
