"""Preference tuning: which loss (DPO's sigmoid, IPO, hinge, ORPO, KTO), its beta, the learning
rate and the LoRA knobs; the points TRL and the alignment handbook start from."""

from search_spaces import Bound, Choice, LogUniform, SearchSpace, Uniform
from search_spaces.lora_sft import LORA_BOUNDS
from trainers.config import LOSS_TYPES

PREFERENCE_BOUNDS = {
    **LORA_BOUNDS,
    "loss_type": Bound(str, choices=LOSS_TYPES),
    "beta": Bound(float, 0.0, 100.0, low_inclusive=False),
}

PREFERENCE = SearchSpace(
    params={
        "loss_type": Choice(LOSS_TYPES),
        # DPO's beta: lower lets the adapter move further from the base (TRL's default 0.1; the
        # alignment handbook's zephyr run 0.01). ORPO reads it as the odds-ratio weight (also 0.1).
        "beta": LogUniform(0.01, 0.5),
        "r": Choice((16, 32, 64, 128)),
        "lora_alpha": Choice((16, 32, 64, 128)),
        "warmup_ratio": Uniform(0.0, 0.1),
        # TRL's preference configs default to 1e-6 for full weights; a LoRA adapter takes ~10x more
        "learning_rate": LogUniform(1e-6, 1e-4),
    },
    bounds=PREFERENCE_BOUNDS,
    metric="reward_accuracy",
    mode="max",
    known_points=(
        # TRL's DPOConfig defaults (sigmoid, beta 0.1, lr 1e-6, no warmup) with its docs' LoRA (r 16, alpha 32)
        {"loss_type": "sigmoid", "beta": 0.1, "r": 16, "lora_alpha": 32, "warmup_ratio": 0.0, "learning_rate": 1e-6},
        # the alignment handbook's zephyr-7b-beta DPO QLoRA recipe: r 128, alpha 128, beta 0.01, lr 5e-6, 10% warmup
        {"loss_type": "sigmoid", "beta": 0.01, "r": 128, "lora_alpha": 128, "warmup_ratio": 0.1,
         "learning_rate": 5e-6},
    ),
)
