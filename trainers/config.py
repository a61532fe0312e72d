"""What one trial's workers receive: the sweep's fixed settings plus the searched knobs.

A Ray Train ``train_func(config)`` reads only from ``config`` (no module globals, no closures over
driver state): ``config["settings"]`` is ``asdict(TrainSettings)``, and the searched knobs sit at
the top level under their library names (``r``, ``lora_alpha``, ``use_rslora``, ``packing``,
``warmup_ratio``, ``learning_rate``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Literal

from lorasweep.errors import ConfigError

Quantization = Literal["4bit", "8bit", "none"]
Precision = Literal["auto", "bf16", "fp16", "fp32"]


@dataclass
class TrainSettings:
    # --- what to train
    family: str = field(default="llama", metadata={"help": "model family module in trainers/ (llama, ...)"})
    model: str = field(default="", metadata={"help": "Hub id or local folder of the base model"})
    dataset: str = field(default="", metadata={"help": "Hub id, or a local .jsonl/.json/.parquet file"})
    dataset_split: str = field(default="train", metadata={"help": "split to read from a Hub dataset"})
    max_train_rows: int | None = field(default=None, metadata={"help": "use at most this many rows (before the eval split)"})
    eval_fraction: float = field(default=0.02, metadata={"help": "share of rows held out for eval (fixed seed)"})
    eval_rows: int = field(default=256, metadata={"help": "cap on held-out rows, so eval stays cheap on 100k-row sets"})
    max_seq_length: int = field(default=2048, metadata={"help": "tokens per example / per packed row"})
    # --- how to train
    quantization: Quantization = field(default="4bit", metadata={"help": "4bit = QLoRA (NF4, double quant); 8bit; none"})
    precision: Precision = field(default="auto", metadata={"help": "auto: bf16 on GPUs that have it, fp16 on older GPUs, fp32 on CPU"})
    per_device_batch_size: int = field(default=2, metadata={"help": "micro-batch per worker (rows; a packed row holds several examples)"})
    gradient_accumulation_steps: int = field(default=4, metadata={"help": "micro-batches per optimizer step"})
    gradient_checkpointing: bool = field(default=True, metadata={"help": "trade ~30% more compute for far less activation memory"})
    zero_stage: int = field(default=2, metadata={"help": "DeepSpeed ZeRO stage; 0 = plain DDP, no DeepSpeed"})
    offload: bool = field(default=False, metadata={"help": "ZeRO offload of optimizer state (and params at stage 3) to CPU"})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoraConfig.lora_dropout"})
    target_modules: str = field(default="all-linear", metadata={"help": "LoraConfig.target_modules; all-linear = every projection"})
    lr_scheduler_type: str = field(default="linear", metadata={"help": "transformers scheduler name"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping"})
    # --- budget and reporting
    max_tokens: int = field(default=2_000_000, metadata={"help": "training tokens (non-padding) per trial; ASHA's time axis"})
    eval_every: int = field(default=50, metadata={"help": "optimizer steps between eval + checkpoint + report"})
    seed: int = field(default=3407, metadata={"help": "seed for data split, shuffling and LoRA init"})

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainSettings":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def validate(self) -> "TrainSettings":
        def positive(name):
            v = getattr(self, name)
            if v is None or v <= 0:
                raise ConfigError(f"`{name}` is {v!r}; it must be a positive number")

        for name in ("max_seq_length", "per_device_batch_size", "gradient_accumulation_steps",
                     "max_tokens", "eval_every", "eval_rows"):
            positive(name)
        if self.max_train_rows is not None:
            positive("max_train_rows")
        if not 0 < self.eval_fraction < 1:
            raise ConfigError(f"`eval_fraction` is {self.eval_fraction!r}; it must be in (0, 1), e.g. 0.02")
        if self.quantization not in ("4bit", "8bit", "none"):
            raise ConfigError(f"`quantization` is {self.quantization!r}; choose 4bit, 8bit or none")
        if self.precision not in ("auto", "bf16", "fp16", "fp32"):
            raise ConfigError(f"`precision` is {self.precision!r}; choose auto, bf16, fp16 or fp32")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(f"`zero_stage` is {self.zero_stage!r}; choose 0 (DDP), 1, 2 or 3")
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"`lora_dropout` is {self.lora_dropout!r}; it must be in [0, 1)")
        if not self.model:
            raise ConfigError("`model` is empty; pass --model with a Hub id or a local folder")
        if not self.dataset:
            raise ConfigError("`dataset` is empty; pass --dataset with a Hub id or a local .jsonl/.parquet file")
        return self


def deepspeed_config(zero_stage: int, offload: bool) -> dict | None:
    """The DeepSpeed config dict the HF Trainer receives (None at stage 0: plain DDP).

    "auto" values are filled by transformers from TrainingArguments, so batch size, accumulation,
    clipping and precision are stated once. Stage 2 partitions gradients + optimizer state: for
    LoRA that state is small, so stage 2's main win is overlap_comm; stage 3 also partitions the
    frozen base weights, which is what lets a 7B base span several GPUs.
    """
    if zero_stage == 0:
        return None
    zero: dict = {"stage": zero_stage, "overlap_comm": True, "contiguous_gradients": True,
                  "reduce_bucket_size": "auto"}
    if zero_stage == 3:
        zero.update({"stage3_gather_16bit_weights_on_model_save": True,
                     "stage3_prefetch_bucket_size": "auto",
                     "stage3_param_persistence_threshold": "auto"})
    if offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        if zero_stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return {
        "zero_optimization": zero,
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "zero_allow_untested_optimizer": True,
    }
