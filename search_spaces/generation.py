"""Generation sweeps (extractive QA, summarisation, instruction tuning): the shared LoRA knobs, each
task's objective, and the points the projects started from.

Packing is searched for the decoder recipes (rows are short chats) and not for the encoder-decoder,
whose rows are (input, target) pairs that a decoder-only packing does not apply to. A summary's
generation length is a recipe setting (``max_new_tokens``), not a knob: ROUGE rewards length, so
searching it would tune the metric, not the adapter."""

from search_spaces import Choice, LogUniform, SearchSpace, Uniform
from search_spaces.lora_sft import LORA_BOUNDS

# Llama on SQuAD v2: F1 (SQuAD v2 rules, unanswerable questions included) is the objective.
EXTRACTIVE_QA = SearchSpace(
    params={
        "r": Choice((8, 16, 32, 64)),
        "lora_alpha": Choice((8, 16, 32, 64)),
        "use_rslora": Choice((True, False)),
        "packing": Choice((True, False)),
        "warmup_ratio": Uniform(0.0, 0.1),
        "learning_rate": LogUniform(1e-5, 2e-3),
    },
    bounds=LORA_BOUNDS,
    metric="f1",
    mode="max",
    seeds=(
        # The usual QLoRA SQuAD starting point: r=16, alpha=32 (2x r), lr 2e-4, 3% warmup, unpacked.
        {"r": 16, "lora_alpha": 32, "use_rslora": False, "packing": False, "warmup_ratio": 0.03, "learning_rate": 2e-4},
    ),
)

# FLAN-T5 on DialogSum: ROUGE-L. LoRA on T5 takes higher rates than on decoders (the FLAN-T5
# DialogSum LoRA recipe trains at 1e-3), so the range sits higher.
SUMMARIZATION = SearchSpace(
    params={
        "r": Choice((4, 8, 16, 32)),
        "lora_alpha": Choice((8, 16, 32, 64)),
        "use_rslora": Choice((True, False)),
        "warmup_ratio": Uniform(0.0, 0.1),
        "learning_rate": LogUniform(1e-4, 5e-3),
    },
    bounds=LORA_BOUNDS,
    metric="rougeL",
    mode="max",
    seeds=(
        # That recipe: r=16, alpha=32, lr 1e-3, no warmup.
        {"r": 16, "lora_alpha": 32, "use_rslora": False, "warmup_ratio": 0.0, "learning_rate": 1e-3},
    ),
)

# Gemma-2B on Dolly: eval loss. r goes down to 4, where the known point sits.
INSTRUCTION_SFT = SearchSpace(
    params={
        "r": Choice((4, 8, 16, 32)),
        "lora_alpha": Choice((4, 8, 16, 32)),
        "use_rslora": Choice((True, False)),
        "packing": Choice((True, False)),
        "warmup_ratio": Uniform(0.0, 0.1),
        "learning_rate": LogUniform(1e-5, 1e-3),
    },
    bounds=LORA_BOUNDS,
    metric="eval_loss",
    mode="min",
    seeds=(
        # The Gemma LoRA tutorial's run: rank 4 (Keras scales the update by 1: alpha = r), AdamW at
        # 5e-5 with weight decay 0.01 (the recipe's weight_decay setting), no warmup, unpacked.
        {"r": 4, "lora_alpha": 4, "use_rslora": False, "packing": False, "warmup_ratio": 0.0, "learning_rate": 5e-5},
    ),
)
