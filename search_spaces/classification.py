"""Classification sweeps: the shared LoRA knobs, and what each classification recipe adds.

The objective is F1 (maximised); eval loss is still reported at every step. Packing is not
searched for a head classifier (one label per row: nothing to pack) and is for instruction
classifiers, whose rows are short chats."""

from search_spaces import Bound, Choice, LogUniform, SearchSpace, Uniform
from search_spaces.lora_sft import LORA_BOUNDS

CLASSIFICATION_BOUNDS = {**LORA_BOUNDS, "method": Bound(str, choices=("lora", "full"))}

# Encoders with a classification head (DistilBERT on IMDB). Full fine-tuning is one of the choices:
# for a 66M encoder it is affordable and the projects compare it with LoRA. Full fine-tunes want a
# learning rate ~10x below LoRA's; the log-uniform range covers both (TPE learns the pairing).
ENCODER_CLASSIFICATION = SearchSpace(
    params={
        "method": Choice(("lora", "full")),
        "r": Choice((8, 16, 32)),
        "lora_alpha": Choice((8, 16, 32, 64)),
        "use_rslora": Choice((True, False)),
        "warmup_ratio": Uniform(0.0, 0.1),
        "learning_rate": LogUniform(1e-5, 1e-3),
    },
    bounds=CLASSIFICATION_BOUNDS,
    metric="f1",
    mode="max",
    known_points=(
        # The usual DistilBERT-on-IMDB LoRA notebook: r=16, alpha=32 (2x r), lr 5e-4 with a warmup.
        {"method": "lora", "r": 16, "lora_alpha": 32, "use_rslora": False, "warmup_ratio": 0.1, "learning_rate": 5e-4},
        # The classic full fine-tune: lr 2e-5 (BERT paper's range), no LoRA knobs in play.
        {"method": "full", "r": 16, "lora_alpha": 32, "use_rslora": False, "warmup_ratio": 0.0, "learning_rate": 2e-5},
    ),
)

# Instruction models answering with the label (Mistral-7B-Instruct on IMDB, Llama on SST-2).
INSTRUCT_CLASSIFICATION = SearchSpace(
    params={
        "r": Choice((4, 8, 16, 32)),
        "lora_alpha": Choice((8, 16, 32, 64)),
        "use_rslora": Choice((True, False)),
        "packing": Choice((True, False)),
        "warmup_ratio": Uniform(0.0, 0.1),
        "learning_rate": LogUniform(1e-5, 2e-3),
    },
    bounds=LORA_BOUNDS,
    metric="f1",
    mode="max",
    known_points=(
        # The Mistral-7B IMDB QLoRA project's run: r=8, alpha=16, lr 2e-4, 3% warmup, no packing.
        {"r": 8, "lora_alpha": 16, "use_rslora": False, "packing": False, "warmup_ratio": 0.03, "learning_rate": 2e-4},
    ),
)
