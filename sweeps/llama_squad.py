"""Llama-3.2-1B x SQuAD v2: extractive QA with unanswerable questions, on a causal LM.

    # 4 trials of a tiny Llama on a generated SQuAD v2-format sample; CPU, no Hub, minutes
    python sweeps/llama_squad.py --preset smoke

    # the real sweep: rajpurkar/squad_v2 (train split, 80/20 train/test), QLoRA, GPUs
    python sweeps/llama_squad.py

    # any decoder (the family comes from the checkpoint's config), e.g. a real small instruct model
    python sweeps/llama_squad.py --model HuggingFaceTB/SmolLM2-135M-Instruct --quantization none

Choices of the recipe: the context and the question are the user's turn; the model answers with the
span or with "unanswerable" (``--no-answer``), which SQuAD v2's rules then count as the empty
answer. F1 (SQuAD v2 rules) on a fixed 64-question eval subset, answered greedily at every report,
is what ASHA and the searcher read; the whole test split is answered once by the base model (0-shot
and 1-shot) and once by the best adapter (baseline.json, samples.jsonl).
"""

from pathlib import Path

from lorasweep.recipe import Preset, Recipe, smoke_preset
from search_spaces.generation import EXTRACTIVE_QA

PROMPT = ('Answer the question with a span of the context, or with "unanswerable" if the context does not '
          "answer it.\n\nContext: {context}\n\nQuestion: {question}")


def smoke_assets(cache: Path) -> dict:
    """1,200 generated SQuAD v2-format questions over invented facts (a third unanswerable) and a
    tiny Llama that read their text: built once, then cached."""
    from stand_ins import offline_assets, qa_texts, squad_v2_rows

    rows = squad_v2_rows(1200, seed=0)
    return offline_assets(cache, "llama", rows, qa_texts(rows) + [PROMPT.format(context="", question="")] * 50,
                          "squad_v2_sample.jsonl")


RECIPE = Recipe(
    name="llama_squad",
    dataset="rajpurkar/squad_v2",
    search_space=EXTRACTIVE_QA,
    doc=__doc__,
    settings={
        "task": "extractive_qa",
        "model": "meta-llama/Llama-3.2-1B",
        "prompt": PROMPT, "no_answer": "unanswerable",
        # SQuAD v2's 130k train questions, 80/20; 2,000 test questions keep the two scorings short.
        "test_fraction": 0.2, "test_rows": 2000, "eval_fraction": 0.01, "eval_rows": 256, "gen_eval_rows": 64,
        # contexts are ~160 tokens on average, a few over 600; answers a few tokens
        "max_seq_length": 768, "max_new_tokens": 32,
        "quantization": "4bit",
        # 8 x 2 rows x ~220 tokens = ~3.5k tokens a step; 4M tokens ~ 1,100 steps (~17k questions).
        "per_device_batch_size": 8, "gradient_accumulation_steps": 2, "max_tokens": 4_000_000, "eval_every": 100,
        "zero_stage": 0,
    },
    presets={
        "real": Preset("Llama-3.2-1B on SQuAD v2 (QLoRA), 16 trials, GPUs", sweep={"num_samples": 16, "max_concurrent": 8},
                       # F1 is generated on 64 eval rows per report (<= 6 points); the final round answers
                       # the 256 eval + 1,000 validation questions (<= 1.4 points)
                       settings={"validation_fraction": 0.02, "validation_rows": 1000}),
        "smoke": smoke_preset(
            "tiny Llama on a generated SQuAD v2-format sample, 4 trials, CPU, minutes",
            settings={
                # ~1,000 train questions x ~100 tokens = 100k tokens an epoch; 8 per step -> ~100 steps for 80k.
                "test_fraction": 0.1, "test_rows": 100, "eval_fraction": 0.05, "eval_rows": 60, "gen_eval_rows": 24,
                "max_seq_length": 192, "max_new_tokens": 12, "samples": 6,
                "per_device_batch_size": 8, "gradient_accumulation_steps": 1, "max_tokens": 80_000,
                "eval_every": 25, "gradient_checkpointing": False,
            },
            num_samples=4, grace_tokens=20_000, shots=(0, 1),
            # A tiny model learns at rates a pretrained 1B would diverge at.
            space=("learning_rate=1e-3:1e-2",),
            assets=smoke_assets,
        ),
    },
)

if __name__ == "__main__":
    from lorasweep.engine import main  # the driver; importing the recipe needs only declarations

    raise SystemExit(main(RECIPE))
