"""The six knobs of a (Q)LoRA SFT sweep, and the two points the FineTome project already knew."""

from search_spaces import Bound, Choice, LogUniform, SearchSpace, Uniform

# What the LoRA knobs may take at all (peft.LoraConfig / TrainingArguments semantics).
LORA_BOUNDS = {
    "r": Bound(int, 1, 4096),
    "lora_alpha": Bound(int, 1, 1 << 16),
    "alpha_ratio": Bound(float, 0.0, 1024.0, low_inclusive=False),  # --alpha-mode ratio: alpha/r (alpha/sqrt(r), rsLoRA)
    "use_rslora": Bound(bool),
    "packing": Bound(bool),
    "warmup_ratio": Bound(float, 0.0, 1.0, high_inclusive=False),  # 1.0 would warm up for the whole run
    "learning_rate": Bound(float, 0.0, 1.0, low_inclusive=False),
    "lora_dropout": Bound(float, 0.0, 1.0, high_inclusive=False),
    "weight_decay": Bound(float, 0.0, 1.0),
}

LORA_SFT = SearchSpace(
    params={
        "r": Choice((8, 16, 32, 64)),
        "lora_alpha": Choice((8, 16, 32, 64)),  # usually alpha = r or 2*r; the search decides
        "use_rslora": Choice((True, False)),  # scale alpha/sqrt(r): keeps high ranks from under-training
        "packing": Choice((True, False)),
        "warmup_ratio": Uniform(0.0, 0.1),  # share of the trial's optimizer steps
        "learning_rate": LogUniform(1e-5, 2e-3),
    },
    bounds=LORA_BOUNDS,
    metric="eval_loss",
    mode="min",
    known_points=(
        # The notebook default the FineTome project started from: r=16, alpha=16, no rsLoRA, no
        # packing, 5 warmup steps of its 60 max_steps (5/60 = 0.083), lr 1e-4.
        {"r": 16, "lora_alpha": 16, "use_rslora": False, "packing": False,
         "warmup_ratio": 0.083, "learning_rate": 1e-4},
        # What it tuned by hand: small rank with rsLoRA, packing, 10% warmup, lr 1e-3. Any value
        # that a --space override excludes is clipped into the new range by the driver.
        {"r": 8, "lora_alpha": 16, "use_rslora": True, "packing": True,
         "warmup_ratio": 0.1, "learning_rate": 1e-3},
    ),
)
