"""Gemma-2B x Dolly: instruction tuning on instruction/response pairs.

    # 4 trials of a tiny Gemma on a generated Dolly-format sample; CPU, no Hub, minutes
    python sweeps/gemma_dolly.py --preset smoke

    # the real sweep: google/gemma-2b on databricks/databricks-dolly-15k, GPUs (gated: HF_TOKEN)
    python sweeps/gemma_dolly.py

Choices of the recipe, from the Gemma LoRA tutorial it reproduces: rows with a context are left out
and the context column is not read (``skip_rows_with``), 1,000 training examples, 256 tokens at most,
AdamW with weight decay 0.01, and its run (rank 4, lr 5e-5) as the search's first point. The
instruction is the user's turn (gemma-2b's template, or a plain "Answer:" layout for a base tokenizer
without one) and the loss is on the response. Eval loss is the objective, perplexity beside it; the
test split's losses (base against tuned) and sample generations are kept (baseline.json, samples.jsonl).
"""

from pathlib import Path

from lorasweep.recipe import Preset, Recipe, smoke_preset
from search_spaces.generation import INSTRUCTION_SFT

PROMPT = "{instruction}"


def smoke_assets(cache: Path) -> dict:
    """1,500 generated Dolly-format rows and a tiny Gemma that read their text: built once, then cached."""
    from stand_ins import dolly_rows, dolly_texts, offline_assets

    rows = dolly_rows(1500, seed=0)
    return offline_assets(cache, "gemma", rows, dolly_texts(rows), "dolly_sample.jsonl")


RECIPE = Recipe(
    name="gemma_dolly",
    dataset="databricks/databricks-dolly-15k",
    search_space=INSTRUCTION_SFT,
    doc=__doc__,
    settings={
        "task": "instruction_sft",
        "model": "google/gemma-2b",
        "prompt": PROMPT, "target_column": "response", "skip_rows_with": ("context",),
        "max_train_rows": 1000, "max_seq_length": 256, "max_new_tokens": 128,
        "test_fraction": 0.1, "test_rows": 500, "eval_fraction": 0.02, "eval_rows": 200,
        "weight_decay": 0.01, "quantization": "none",
        # 4 x 2 rows x ~110 tokens = ~900 tokens a step; 1 epoch of 1,000 examples = ~110k tokens,
        # 3 epochs ~ 330k tokens ~ 370 steps.
        "per_device_batch_size": 4, "gradient_accumulation_steps": 2, "max_tokens": 330_000, "eval_every": 25,
        "zero_stage": 0,
    },
    presets={
        "real": Preset("gemma-2b on Dolly (LoRA), 16 trials, GPUs", sweep={"num_samples": 16, "max_concurrent": 8}),
        "smoke": smoke_preset(
            "tiny Gemma on a generated Dolly-format sample, 4 trials, CPU, minutes",
            settings={
                # ~1,000 train rows (those without context) x ~45 tokens; 8 per step -> ~140 steps for 50k.
                "max_train_rows": 1000, "max_seq_length": 128, "max_new_tokens": 32, "samples": 6,
                "test_fraction": 0.1, "test_rows": 100, "eval_fraction": 0.05, "eval_rows": 60,
                "per_device_batch_size": 8, "gradient_accumulation_steps": 1, "max_tokens": 50_000,
                "eval_every": 25, "gradient_checkpointing": False,
            },
            num_samples=4, grace_tokens=15_000,
            space=("learning_rate=1e-3:1e-2",),
            assets=smoke_assets,
        ),
    },
)

if __name__ == "__main__":
    from lorasweep.engine import main  # the driver; importing the recipe needs only declarations

    raise SystemExit(main(RECIPE))
