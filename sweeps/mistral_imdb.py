"""Mistral-7B-Instruct x IMDB: sentiment as an instruction task, QLoRA, the label as the answer.

    # 6 trials of a tiny Mistral on a generated IMDB-format sample; CPU, no Hub, minutes
    python sweeps/mistral_imdb.py --preset smoke

    # the real sweep: 900 train / 100 eval / 2,500 test reviews, balanced; base scored 0/1/3-shot
    python sweeps/mistral_imdb.py --shots 0,1,3

    # any instruction model (Llama, Gemma, Qwen2, Phi-3, SmolLM2: the family comes from its config)
    python sweeps/mistral_imdb.py --model Qwen/Qwen2.5-1.5B-Instruct

Choices of the recipe: the review goes into a fixed instruction; the answer is `positive` or
`negative` and only it (and its end-of-turn) is trained on. Predictions score both labels by
their likelihood as the answer, so a tuned and an untuned model are compared on the same footing;
how often free generation gives a valid label is reported too (`valid_label_rate`).
"""

from pathlib import Path

from lorasweep.recipe import Preset, Recipe, smoke_preset
from search_spaces.classification import INSTRUCT_CLASSIFICATION

PROMPT = ("Classify the sentiment of this movie review. Answer with one word, positive or negative.\n\n"
          "Review: {text}")


def smoke_assets(cache: Path) -> dict:
    """800 generated IMDB-format reviews and a tiny Mistral ([INST] chat template, tokenizer trained
    on the reviews and the prompt): built once, then cached."""
    from stand_ins import imdb_rows, offline_assets, sentiment_texts

    rows = imdb_rows(800, seed=1)
    texts = sentiment_texts(rows, "text") + [PROMPT.format(text="")] * 50
    return offline_assets(cache, "mistral", rows, texts, "imdb_sample.jsonl")


RECIPE = Recipe(
    name="mistral_imdb",
    dataset="stanfordnlp/imdb",
    search_space=INSTRUCT_CLASSIFICATION,
    doc=__doc__,
    settings={
        "task": "instruct_classification",
        "model": "mistralai/Mistral-7B-Instruct-v0.2",
        "text_column": "text", "label_column": "label", "labels": ("negative", "positive"), "prompt": PROMPT,
        # From IMDB's 25k train reviews, balanced: 2,500 test (test_fraction caps at test_rows),
        # 100 eval, 900 train.
        "balance": True, "test_fraction": 0.5, "test_rows": 2500, "eval_fraction": 0.01, "eval_rows": 100,
        "max_train_rows": 900,
        "quantization": "4bit", "max_seq_length": 1024,
        # 900 reviews x ~330 tokens = 300k tokens an epoch; 2 epochs. 4 x 4 rows per step -> ~110 steps.
        "per_device_batch_size": 4, "gradient_accumulation_steps": 4, "max_tokens": 600_000, "eval_every": 10,
        "zero_stage": 0,
    },
    presets={
        "real": Preset("Mistral-7B-Instruct-v0.2 on IMDB (QLoRA), 12 trials, GPUs",
                       sweep={"num_samples": 12, "max_concurrent": 4, "shots": (0, 1, 3)},
                       # 300 eval rows (F1's standard error <= 2.9 points) at every report; the final round
                       # scores the top trials on those + 2,000 validation rows (<= 1.0 point).
                       settings={"eval_fraction": 0.02, "eval_rows": 300,
                                 "validation_fraction": 0.1, "validation_rows": 2000}),
        "smoke": smoke_preset(
            "tiny Mistral on a generated IMDB-format sample, 6 trials, CPU, minutes",
            settings={
                # 560 train chats x ~75 tokens = 42k tokens an epoch; 8 per step -> ~200 steps for
                # 120k tokens (~3 epochs: a 0.2M-parameter model needs them).
                "test_fraction": 0.2, "test_rows": 160, "eval_fraction": 0.1, "eval_rows": 80, "max_train_rows": None,
                "max_seq_length": 256, "per_device_batch_size": 8, "gradient_accumulation_steps": 1,
                "max_tokens": 120_000, "eval_every": 20, "gradient_checkpointing": False, "gen_eval_rows": 16,
            },
            num_samples=6, grace_tokens=30_000, shots=(0, 1),
            # A tiny model learns at rates a pretrained 7B would diverge at (the known point moves up to 1e-3).
            space=("learning_rate=1e-3:1e-2",),
            assets=smoke_assets,
        ),
    },
)

if __name__ == "__main__":
    from lorasweep.engine import main  # the driver; importing the recipe needs only declarations

    raise SystemExit(main(RECIPE))
