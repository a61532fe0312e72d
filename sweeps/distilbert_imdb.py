"""DistilBERT x IMDB: sentiment classification with a head, LoRA or a full fine-tune (searched).

    # 6 trials of a tiny DistilBERT on a generated IMDB-format sample; CPU, no Hub, ~3 minutes
    python sweeps/distilbert_imdb.py --preset smoke

    # the real sweep: distilbert-base-uncased on stanfordnlp/imdb (70/10/20 train/eval/test), GPUs
    python sweeps/distilbert_imdb.py

    # any encoder (BERT, RoBERTa, MiniLM: the family comes from the checkpoint's config), LoRA only
    python sweeps/distilbert_imdb.py --model roberta-base --space method=lora

Choices of the recipe: the base model is scored with its untrained head on the test split before
the sweep, the best model after it (baseline.json); the search optimises F1 on the eval split;
LoRA trains the adapters and the head (pre_classifier + classifier), a full fine-tune everything.
"""

from pathlib import Path

from lorasweep.recipe import Preset, Recipe, smoke_preset
from search_spaces.classification import ENCODER_CLASSIFICATION


def smoke_assets(cache: Path) -> dict:
    """1,000 generated IMDB-format reviews and a tiny DistilBERT (WordPiece vocabulary trained on
    them, briefly pretrained as a masked LM): built once, then cached."""
    from stand_ins import imdb_rows, offline_assets, sentiment_texts

    rows = imdb_rows(1000, seed=0)
    return offline_assets(cache, "distilbert", rows, sentiment_texts(rows, "text"), "imdb_sample.jsonl")


RECIPE = Recipe(
    name="distilbert_imdb",
    dataset="stanfordnlp/imdb",
    search_space=ENCODER_CLASSIFICATION,
    doc=__doc__,
    settings={
        "task": "classification",
        "model": "distilbert-base-uncased",
        "text_column": "text", "label_column": "label", "labels": ("negative", "positive"),
        # 70/10/20 of IMDB's 25k labelled train reviews: 17.5k train, 2.5k eval, 5k test.
        "eval_fraction": 0.1, "eval_rows": 2500, "test_fraction": 0.2, "test_rows": 5000,
        "quantization": "none",  # 66M parameters: nothing to gain from 4-bit, and `full` needs none
        "max_seq_length": 512,
        # 16 reviews x 2 accumulation x ~300 tokens = ~10k tokens per step; 5M tokens ~ 1 epoch, ~500 steps.
        "per_device_batch_size": 16, "gradient_accumulation_steps": 2,
        "max_tokens": 5_000_000, "eval_every": 50, "zero_stage": 0, "gradient_checkpointing": False,
    },
    presets={
        "real": Preset("distilbert-base-uncased on IMDB, 16 trials, GPUs", sweep={"num_samples": 16, "max_concurrent": 8}),
        # (2,500 eval reviews already: F1's standard error <= 1.0 point; the final round rescores on them)
        "smoke": smoke_preset(
            "tiny DistilBERT on a generated IMDB-format sample, 6 trials, CPU, minutes",
            settings={
                # 700 train reviews x ~38 tokens = 27k tokens an epoch; 16 per step -> ~500 steps for
                # 300k tokens. The 0.5M-parameter tiny encoder sits at chance for the first ~100k tokens;
                # then a full fine-tune reaches ~0.8 eval accuracy and LoRA ~0.75 (r16, lr 5e-4, 10%
                # warmup), though some LoRA learning rates never leave chance in this budget.
                "max_seq_length": 128, "per_device_batch_size": 16, "gradient_accumulation_steps": 1,
                "max_tokens": 300_000, "eval_every": 50, "eval_rows": 100, "test_rows": 200,
            },
            num_samples=6, grace_tokens=75_000,
            # A tiny random-init encoder learns at rates a pretrained one would diverge at.
            space=("learning_rate=3e-4:3e-3",),
            assets=smoke_assets,
        ),
    },
)

if __name__ == "__main__":
    from lorasweep.engine import main  # the driver; importing the recipe needs only declarations

    raise SystemExit(main(RECIPE))
