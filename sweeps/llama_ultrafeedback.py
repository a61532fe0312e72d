"""Llama-3.2-1B-Instruct x UltraFeedback (binarised): preference tuning of a QLoRA adapter, the loss
searched among DPO (sigmoid), IPO, hinge, ORPO and KTO with its beta.

    # 6 trials of a tiny Llama on generated pairs in UltraFeedback's schema; CPU, no Hub, minutes
    python sweeps/llama_ultrafeedback.py --preset smoke

    # the real sweep on a GPU box (HF_TOKEN in the environment for gated checkpoints)
    python sweeps/llama_ultrafeedback.py

    # DPO only, its beta and learning rate (the search TRL's tracker asks for), on a `ray up` cluster
    python sweeps/llama_ultrafeedback.py --address auto --autoscale --space loss_type=sigmoid \\
        --space beta=0.01:0.5 --storage-path s3://bucket/sweeps

    # your own pairs: `chosen`/`rejected` message lists, or `prompt` + `chosen` + `rejected`
    python sweeps/llama_ultrafeedback.py --model Qwen/Qwen2.5-1.5B-Instruct --dataset data/pairs.jsonl

Choices of the recipe: the reference model is the base with the adapter switched off (no second
copy of the weights); every trial is scored on the held-out pairs by the same reward accuracy
(implicit reward log pi/ref of the chosen reply above the rejected one's), whatever loss it trained
with, and ASHA prunes on it (eval loss differs in kind between losses); the baseline is the base
model's own preference (per-token likelihood, chosen over rejected) on the test pairs; the budget is
training tokens, both replies of a pair with their prompt.
"""

from pathlib import Path

from lorasweep.recipe import Preset, Recipe, smoke_preset
from search_spaces.preference import PREFERENCE


def smoke_assets(cache: Path) -> dict:
    """1,200 generated pairs in ultrafeedback_binarized's schema and a tiny Llama (tokenizer trained
    on their text, briefly pretrained on it): built once, then cached."""
    from stand_ins import offline_assets, preference_texts, ultrafeedback_rows

    rows = ultrafeedback_rows(1200, seed=0)
    return offline_assets(cache, "llama", rows, preference_texts(rows), "ultrafeedback_sample.jsonl")


RECIPE = Recipe(
    name="llama_ultrafeedback",
    dataset="HuggingFaceH4/ultrafeedback_binarized",
    search_space=PREFERENCE,
    doc=__doc__,
    settings={
        # A pair is ~2 x 250 prompt + 2 x 350 reply tokens = ~1.2k tokens through the policy (and
        # again through the reference, without gradients). 2 pairs x 4 accumulation = 8 pairs,
        # ~10k tokens per optimizer step, so a 2M-token trial is ~200 steps: 1.6k of the 61k pairs.
        "task": "preference",
        "model": "unsloth/Llama-3.2-1B-Instruct",
        "dataset_split": "train_prefs",
        "quantization": "4bit",
        "max_seq_length": 1024,
        "per_device_batch_size": 2,
        "gradient_accumulation_steps": 4,
        "max_tokens": 2_000_000,
        "eval_every": 25,
        "eval_fraction": 0.01,
        "eval_rows": 256,
        # held-out pairs for the baseline (the base model's own preference) and the tuned adapter
        "test_fraction": 0.01,
        "test_rows": 500,
        "zero_stage": 2,
    },
    presets={
        "real": Preset("Llama-3.2-1B-Instruct on UltraFeedback binarised, 16 trials, GPUs",
                       sweep={"num_samples": 16, "max_concurrent": 8, "prune_metric": "objective"}),
        "smoke": smoke_preset(
            "tiny Llama on generated pairs in UltraFeedback's schema, 6 trials, CPU, minutes",
            settings={
                # 8 pairs x ~2 x (12 prompt + 10 reply) = ~350 tokens per step; 40k tokens is ~110
                # steps, ~0.9 epochs of the ~1,000 training pairs.
                "max_seq_length": 64, "per_device_batch_size": 8, "gradient_accumulation_steps": 1,
                "max_tokens": 40_000, "eval_every": 10, "eval_fraction": 0.1, "eval_rows": 96,
                "test_fraction": 0.1, "test_rows": 120, "zero_stage": 0, "gradient_checkpointing": False,
            },
            # a 0.1M-parameter model from scratch wants learning rates far above a 1B model's
            space=("learning_rate=1e-4:1e-2",),
            num_samples=6, grace_tokens=10_000, prune_metric="objective",
            assets=smoke_assets,
        ),
    },
)

if __name__ == "__main__":
    from lorasweep.engine import main  # the driver; importing the recipe needs only declarations

    raise SystemExit(main(RECIPE))
