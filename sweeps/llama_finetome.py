"""Llama-3.2-1B-Instruct x FineTome-100k: chat SFT with QLoRA, the flagship sweep.

    # 6 trials of a tiny Llama on a generated FineTome-format sample; CPU, no Hub, about a minute (its tiny model is built once, first)
    python sweeps/llama_finetome.py --preset smoke

    # the real sweep on a GPU box (HF_TOKEN in the environment for gated checkpoints)
    python sweeps/llama_finetome.py

    # on a `ray up cluster.yaml` cluster: 2 GPUs per trial with DeepSpeed ZeRO-2, results on S3
    python sweeps/llama_finetome.py --address auto --autoscale --workers-per-trial 2 --storage-path s3://bucket/sweeps

    # any chat model (the family comes from its config: Llama, Mistral, Gemma, Qwen2, Phi-3, SmolLM)
    # and any ShareGPT/messages dataset, a narrower space, no early stopping
    python sweeps/llama_finetome.py --model Qwen/Qwen2.5-1.5B-Instruct --dataset data/chats.jsonl \\
        --space r=16,32 --space learning_rate=5e-5:5e-4 --scheduler none

Choices of the recipe: loss only on assistant turns (rendered with the model's own chat template),
QLoRA on every linear projection, packing searched per trial (documents never attend to each
other), budget and ASHA rungs in training tokens so packed and unpacked trials compare fairly.
"""

from pathlib import Path

from lorasweep.recipe import Preset, Recipe, smoke_preset
from search_spaces.lora_sft import LORA_SFT


def smoke_assets(cache: Path) -> dict:
    """A FineTome-format sample (1,200 generated conversations) and a tiny Llama (0.13M params,
    tokenizer trained on that sample, briefly pretrained on its text): built once, then cached."""
    from stand_ins import conversation_texts, finetome_rows, offline_assets

    rows = finetome_rows(1200, seed=0)
    return offline_assets(cache, "llama", rows, conversation_texts(rows), "finetome_sample.jsonl")


RECIPE = Recipe(
    name="llama_finetome",
    dataset="mlabonne/FineTome-100k",
    search_space=LORA_SFT,
    doc=__doc__,
    settings={
        # 1B params in 4-bit: ~1 GB of weights; 2 x 2048-token rows x 4 accumulation = 16k tokens
        # per optimizer step per GPU, so a 2M-token trial is ~120 steps on one GPU.
        "task": "chat_sft",
        "model": "unsloth/Llama-3.2-1B-Instruct",
        "quantization": "4bit",
        "max_seq_length": 2048,
        "per_device_batch_size": 2,
        "gradient_accumulation_steps": 4,
        "max_tokens": 2_000_000,
        "eval_every": 20,
        "eval_rows": 256,
        "zero_stage": 2,
    },
    presets={
        "real": Preset("Llama-3.2-1B-Instruct on FineTome-100k, 16 trials, GPUs",
                       sweep={"num_samples": 16, "max_concurrent": 8}),
        "smoke": smoke_preset(
            "tiny Llama on a generated FineTome-format sample, 6 trials, CPU, minutes",
            settings={
                # 8 rows x ~40 tokens (unpacked) or 8 x ~250 (packed) per step; 60k tokens is
                # ~1.2 epochs of the sample: 160 steps unpacked, 30 packed.
                "max_seq_length": 256, "per_device_batch_size": 8, "gradient_accumulation_steps": 1,
                "max_tokens": 60_000, "eval_every": 10, "eval_fraction": 0.1, "eval_rows": 96,
                "zero_stage": 0, "gradient_checkpointing": False,
            },
            num_samples=6, grace_tokens=15_000,
            assets=smoke_assets,
        ),
    },
)

if __name__ == "__main__":
    from lorasweep.engine import main  # the driver; importing the recipe needs only declarations

    raise SystemExit(main(RECIPE))
