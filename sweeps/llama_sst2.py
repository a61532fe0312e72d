"""Llama-3.2-1B x SST-2: sentence sentiment, as an instruction task (the label as the answer) or
with a classification head on the decoder (``--task classification``).

    # 6 trials of a tiny Llama on a generated SST-2-format sample; CPU, no Hub, minutes
    python sweeps/llama_sst2.py --preset smoke
    python sweeps/llama_sst2.py --preset smoke --task classification   # a `score` head instead

    # the real sweep: stanfordnlp/sst2, 80/20 train/test, QLoRA
    python sweeps/llama_sst2.py

Choices of the recipe: Llama-3.2-1B is a base model; its tokenizer's chat template frames the
sentence as a user turn (a plain "prompt / answer" template is used for tokenizers without one).
As a head classifier the decoder reads the last token of each sentence (``LlamaForSequenceClassification``).
"""

from pathlib import Path

from lorasweep.recipe import Preset, Recipe, smoke_preset
from search_spaces.classification import INSTRUCT_CLASSIFICATION

PROMPT = "Is the sentiment of this sentence positive or negative?\n\nSentence: {text}"


def smoke_assets(cache: Path) -> dict:
    """1,000 generated SST-2-format sentences and a tiny Llama: built once, then cached. The tiny
    base also reads generated reviews, where words of one polarity keep company, so its word
    embeddings carry sentiment as a real base model's do (LoRA leaves embeddings frozen)."""
    from stand_ins import imdb_rows, offline_assets, sentiment_texts, sst2_rows

    rows = sst2_rows(1000, seed=0)
    texts = sentiment_texts(rows, "sentence") + sentiment_texts(imdb_rows(1000, seed=9), "text")
    texts += [PROMPT.format(text="")] * 50
    return offline_assets(cache, "llama", rows, texts, "sst2_sample.jsonl")


RECIPE = Recipe(
    name="llama_sst2",
    dataset="stanfordnlp/sst2",
    search_space=INSTRUCT_CLASSIFICATION,
    doc=__doc__,
    settings={
        "task": "instruct_classification",
        "model": "meta-llama/Llama-3.2-1B",
        "text_column": "sentence", "label_column": "label", "labels": ("negative", "positive"), "prompt": PROMPT,
        # 80/20 of SST-2's 67k labelled train sentences (test capped at 5k to keep scoring short).
        "test_fraction": 0.2, "test_rows": 5000, "eval_fraction": 0.01, "eval_rows": 256,
        "quantization": "4bit", "max_seq_length": 256,
        # 8 x 4 rows x ~60 tokens = ~2k tokens a step; 1M tokens ~ 500 steps, a quarter epoch.
        "per_device_batch_size": 8, "gradient_accumulation_steps": 4, "max_tokens": 1_000_000, "eval_every": 25,
        "zero_stage": 0,
    },
    presets={
        "real": Preset("Llama-3.2-1B on SST-2 (QLoRA), 16 trials, GPUs", sweep={"num_samples": 16, "max_concurrent": 8},
                       # the final round: the top trials on the 256 eval + 2,000 validation sentences (<= 1.0 point)
                       settings={"validation_fraction": 0.05, "validation_rows": 2000}),
        "smoke": smoke_preset(
            "tiny Llama on a generated SST-2-format sample, 6 trials, CPU, minutes",
            settings={
                # 700 train chats x ~55 tokens = 38k tokens an epoch; 8 per step -> ~270 steps for
                # 120k tokens (~3 epochs).
                "eval_fraction": 0.1, "eval_rows": 100, "test_rows": 200, "max_seq_length": 128,
                "per_device_batch_size": 8, "gradient_accumulation_steps": 1, "max_tokens": 120_000,
                "eval_every": 25, "gradient_checkpointing": False, "gen_eval_rows": 16,
            },
            num_samples=6, grace_tokens=30_000, shots=(0, 1),
            # A tiny model learns at rates a pretrained 1B would diverge at (the known point moves up to 1e-3).
            space=("learning_rate=1e-3:1e-2",),
            assets=smoke_assets,
        ),
    },
)

if __name__ == "__main__":
    from lorasweep.engine import main  # the driver; importing the recipe needs only declarations

    raise SystemExit(main(RECIPE))
