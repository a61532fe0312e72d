"""Generation sweeps (extractive QA, summarisation, instruction tuning): the shared LoRA knobs, each
task's objective, and the points the projects started from.

Packing is searched for the decoder recipes (rows are short chats) and not for the encoder-decoder,
whose rows are (input, target) pairs that a decoder-only packing does not apply to. A summary's
generation length is a recipe setting (``max_new_tokens``), not a knob: ROUGE rewards length, so
searching it would tune the metric, not the adapter."""

from dataclasses import replace

from search_spaces import Choice, LogUniform
from search_spaces.lora_sft import LORA_SFT

# Llama on SQuAD v2: the chat SFT knobs and ranges; F1 (SQuAD v2 rules, unanswerable questions
# included) is the objective.
EXTRACTIVE_QA = replace(
    LORA_SFT,
    metric="f1",
    mode="max",
    known_points=(
        # The usual QLoRA SQuAD starting point: r=16, alpha=32 (2x r), lr 2e-4, 3% warmup, unpacked.
        {"r": 16, "lora_alpha": 32, "use_rslora": False, "packing": False, "warmup_ratio": 0.03, "learning_rate": 2e-4},
    ),
)

# FLAN-T5 on DialogSum: ROUGE-L. LoRA on T5 takes higher rates than on decoders (the FLAN-T5
# DialogSum LoRA recipe trains at 1e-3), so the range sits higher; ranks go down to 4.
SUMMARIZATION = replace(
    LORA_SFT,
    params={**{k: v for k, v in LORA_SFT.params.items() if k != "packing"},
            "r": Choice((4, 8, 16, 32)), "learning_rate": LogUniform(1e-4, 5e-3)},
    metric="rougeL",
    mode="max",
    known_points=(
        # That recipe: r=16, alpha=32, lr 1e-3, no warmup.
        {"r": 16, "lora_alpha": 32, "use_rslora": False, "warmup_ratio": 0.0, "learning_rate": 1e-3},
    ),
)

# Gemma-2B on Dolly: eval loss. r goes down to 4, where the known point sits, and alpha with it.
INSTRUCTION_SFT = replace(
    LORA_SFT,
    params={**LORA_SFT.params, "r": Choice((4, 8, 16, 32)), "lora_alpha": Choice((4, 8, 16, 32)),
            "learning_rate": LogUniform(1e-5, 1e-3)},
    known_points=(
        # The Gemma LoRA tutorial's run: rank 4 (Keras scales the update by 1: alpha = r), AdamW at
        # 5e-5 with weight decay 0.01 (the recipe's weight_decay setting), no warmup, unpacked.
        {"r": 4, "lora_alpha": 4, "use_rslora": False, "packing": False, "warmup_ratio": 0.0, "learning_rate": 5e-5},
    ),
)
