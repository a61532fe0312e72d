"""FLAN-T5 x DialogSum: dialogue summarisation with LoRA on an encoder-decoder.

    # 4 trials of a tiny T5 on a generated DialogSum-format sample; CPU, no Hub, minutes
    python sweeps/flan_t5_dialogsum.py --preset smoke

    # the real sweep: google/flan-t5-base on knkarthick/dialogsum (its train split, 80/20), GPUs
    python sweeps/flan_t5_dialogsum.py

    # a bigger T5, BERTScore with another encoder (a local folder works offline)
    python sweeps/flan_t5_dialogsum.py --model google/flan-t5-large --bertscore-model microsoft/deberta-xlarge-mnli

Choices of the recipe: FLAN-T5 is instruction-tuned, so the dialogue goes in after the instruction it
was trained with ("Summarize the following conversation."); LoRA sits on every linear layer of the
encoder and decoder, in full precision (a 250M base needs no quantisation, and T5 overflows in fp16).
ROUGE-L on a fixed 64-dialogue eval subset, summarised greedily at every report, is the objective;
the test split is summarised once by the base model and once by the best adapter, with ROUGE-1/2/L and
BERTScore F1 (roberta-large, layer 17: bert-score's default for English).
"""

from pathlib import Path

from lorasweep.recipe import Preset, Recipe, smoke_preset
from search_spaces.generation import SUMMARIZATION

PROMPT = "Summarize the following conversation.\n\n{dialogue}"


def smoke_assets(cache: Path) -> dict:
    """1,000 generated DialogSum-format dialogues, a tiny T5 that read them (denoising), and a tiny
    BERT as BERTScore's encoder: built once, then cached."""
    from stand_ins import dialogsum_rows, dialogue_texts, offline_assets
    from stand_ins.tiny import write_tiny_model
    from trainers.families import get_family

    rows = dialogsum_rows(1000, seed=0)
    texts = dialogue_texts(rows) + [PROMPT.format(dialogue="")] * 50
    made = offline_assets(cache, "t5", rows, texts, "dialogsum_sample.jsonl")
    return {**made, "bertscore_model": write_tiny_model(cache / "tiny-bert-scorer", get_family("bert"), texts)}


RECIPE = Recipe(
    name="flan_t5_dialogsum",
    dataset="knkarthick/dialogsum",
    search_space=SUMMARIZATION,
    doc=__doc__,
    settings={
        "task": "summarization",
        "model": "google/flan-t5-base",
        "prompt": PROMPT, "target_column": "summary",
        # DialogSum's 12.5k train dialogues, 80/20; 1,000 test dialogues keep the two scorings short.
        "test_fraction": 0.2, "test_rows": 1000, "eval_fraction": 0.02, "eval_rows": 256, "gen_eval_rows": 64,
        # dialogues ~190 T5 tokens on average (a few past 512: cut); summaries ~30, a few past 96
        "max_seq_length": 512, "max_new_tokens": 96,
        "quantization": "none", "precision": "auto",
        "bertscore_model": "roberta-large", "bertscore_layers": 17,
        # 16 x 2 rows x ~220 tokens (input + target) = ~7k tokens a step; 6M tokens ~ 850 steps, 2.2 epochs.
        "per_device_batch_size": 16, "gradient_accumulation_steps": 2, "max_tokens": 6_000_000, "eval_every": 100,
        "zero_stage": 0,
    },
    presets={
        "real": Preset("FLAN-T5-base on DialogSum (LoRA), 16 trials, GPUs", sweep={"num_samples": 16, "max_concurrent": 8},
                       # ROUGE-L on 64 dialogues per report; the final round summarises 256 eval + 500 validation
                       settings={"validation_fraction": 0.04, "validation_rows": 500}),
        "smoke": smoke_preset(
            "tiny T5 on a generated DialogSum-format sample, 4 trials, CPU, minutes",
            settings={
                # ~850 train dialogues x ~130 tokens (input + summary) = 110k tokens an epoch; 8 per
                # step -> ~70 steps for 70k tokens.
                "test_fraction": 0.1, "test_rows": 60, "eval_fraction": 0.05, "eval_rows": 50, "gen_eval_rows": 16,
                "max_seq_length": 192, "max_new_tokens": 40, "samples": 6, "bertscore_layers": 2,
                "per_device_batch_size": 8, "gradient_accumulation_steps": 1, "max_tokens": 70_000,
                "eval_every": 20, "gradient_checkpointing": False,
            },
            num_samples=4, grace_tokens=25_000,
            space=("learning_rate=1e-3:2e-2",),
            assets=smoke_assets,
        ),
    },
)

if __name__ == "__main__":
    from lorasweep.engine import main  # the driver; importing the recipe needs only declarations

    raise SystemExit(main(RECIPE))
