"""What one trial's workers receive, defined once: ``TrainSettings`` (the sweep's fixed settings,
every field a flag) and ``TrialConfig`` (those settings, the searched knobs, the worker resources
and where checkpoints go).

Searched knobs are ``TrainSettings`` fields under their library names (``r``, ``lora_alpha``,
``use_rslora`` from ``peft.LoraConfig``; ``packing`` from TRL; ``warmup_ratio``, ``learning_rate``
from ``transformers.TrainingArguments``): a knob's sampled value replaces the field for that trial,
so any field can be searched and an unsearched one keeps the recipe's value.

A Ray Train ``train_func(config)`` reads only from ``config``: Tune hands the trial a flat dict
(searched knobs at the top level, where Optuna samples them, plus one ``"trial"`` entry with the
rest), and ``TrialConfig.from_tune`` turns it back into this typed object.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

from common.errors import ConfigError, Problems

Quantization = Literal["4bit", "8bit", "none"]
Precision = Literal["auto", "bf16", "fp16", "fp32"]
Attention = Literal["auto", "sdpa", "flash_attention_2", "eager"]
Method = Literal["lora", "full"]


# The preference losses (trainers/preference.py): DPO's sigmoid, IPO, hinge, ORPO, KTO.
LOSS_TYPES = ("sigmoid", "ipo", "hinge", "orpo", "kto")

# Choices shown by --help that come from registries (imported when asked, not at import).
def _tasks() -> list[str]:
    from trainers.tasks import available

    return available()


def _families() -> list[str]:
    from trainers.families import available

    return available()


def _schedulers() -> list[str]:
    from transformers import SchedulerType

    return [t.value for t in SchedulerType]


@dataclass
class TrainSettings:
    # --- what to train
    task: str = field(default="chat_sft", metadata={"choices": _tasks, "help": "what the model learns and how it is scored: a module in trainers/tasks/ (chat_sft, classification, instruct_classification, extractive_qa, summarization, instruction_sft, preference)"})
    family: str = field(default="", metadata={"choices": _families, "help": "model family in trainers/families/; empty = found from the checkpoint's config.model_type"})
    model: str = field(default="", metadata={"help": "Hub id or local folder of the base model"})
    dataset: str = field(default="", metadata={"help": "Hub id, or a local .jsonl/.json/.parquet file"})
    dataset_split: str = field(default="train", metadata={"help": "split to read from a Hub dataset"})
    max_train_rows: int | None = field(default=None, metadata={"help": "use at most this many training rows (after the eval/test split)"})
    eval_fraction: float = field(default=0.02, metadata={"help": "share of rows held out for eval during the sweep (fixed seed)"})
    eval_rows: int = field(default=256, metadata={"help": "cap on held-out eval rows, so eval stays cheap on 100k-row sets"})
    test_fraction: float = field(default=0.0, metadata={"help": "share of rows held out as the test split, scored once for the base model and once for the best adapter (0 = none)"})
    test_rows: int = field(default=2500, metadata={"help": "cap on test rows"})
    validation_fraction: float = field(default=0.0, metadata={"help": "share of rows held out for the final round only: the top trials are scored again on eval + these rows before export (0 = the eval rows alone)"})
    validation_rows: int = field(default=2000, metadata={"help": "cap on validation rows"})
    balance: bool = field(default=False, metadata={"help": "classification: take the same number of rows from every label before splitting"})
    max_seq_length: int = field(default=2048, metadata={"help": "tokens per example / per packed row"})
    # --- the task's columns and labels (classification tasks)
    text_column: str = field(default="text", metadata={"help": "classification: the column with the input text"})
    label_column: str = field(default="label", metadata={"help": "classification: the column with the label (its id, or its name)"})
    labels: tuple[str, ...] = field(default=(), metadata={"help": "classification: label names in id order, e.g. negative,positive"})
    prompt: str = field(default="{text}", metadata={"help": "the user turn: instruct_classification puts the text where {text} is; generation tasks fill {column} with that column of the row, e.g. 'Context: {context}\\nQuestion: {question}'"})
    gen_eval_rows: int = field(default=32, metadata={"help": "eval rows answered by free greedy generation at every report (instruct_classification: to count valid labels; generation tasks: their text metrics, so ASHA can stop on them); the same fixed rows every time"})
    # --- generation tasks (extractive_qa, summarization, instruction_sft)
    target_column: str = field(default="response", metadata={"help": "summarization/instruction_sft: the column with the reference output (dialogsum: summary; dolly: response)"})
    no_answer: str = field(default="unanswerable", metadata={"help": "extractive_qa: what the model answers when the context does not hold the answer (SQuAD v2's unanswerable questions)"})
    max_new_tokens: int = field(default=64, metadata={"help": "generation tasks: new tokens at most per greedy answer (also the cap on a seq2seq target's length in training)"})
    bertscore_model: str = field(default="", metadata={"help": "summarization: encoder for BERTScore (a Hub id or a local folder; empty = not scored); scored on the test split only"})
    bertscore_layers: int = field(default=0, metadata={"help": "summarization: the encoder layer BERTScore reads (0 = bert-score's choice for known models, else the last)"})
    skip_rows_with: tuple[str, ...] = field(default=(), metadata={"help": "generation tasks: skip rows where any of these columns is non-empty (dolly: context, as the Gemma tutorial does)"})
    samples: int = field(default=8, metadata={"help": "generation tasks: test prompts whose base and tuned generations are saved side by side in samples.jsonl"})
    # --- how to train
    method: Method = field(default="lora", metadata={"help": "lora (adapters on a frozen base) or full (every weight; no quantization)"})
    quantization: Quantization = field(default="4bit", metadata={"help": "4bit = QLoRA (NF4, double quant); 8bit; none"})
    precision: Precision = field(default="auto", metadata={"help": "auto: bf16 on GPUs that have it, fp16 on older GPUs, fp32 on CPU"})
    attn_implementation: Attention = field(default="auto", metadata={"help": "attention kernel: auto (the family's choice, else Transformers' sdpa), sdpa, eager, or flash_attention_2 (CUDA GPUs from Ampere on with the flash-attn package, in bf16/fp16; packed rows take its variable-length path)"})
    per_device_batch_size: int = field(default=2, metadata={"help": "micro-batch per worker (rows; a packed row holds several examples)"})
    gradient_accumulation_steps: int = field(default=4, metadata={"help": "micro-batches per optimizer step"})
    gradient_checkpointing: bool = field(default=True, metadata={"help": "trade ~30% more compute for far less activation memory"})
    zero_stage: int = field(default=2, metadata={"choices": (0, 1, 2, 3), "help": "DeepSpeed ZeRO stage; 0 = plain DDP, no DeepSpeed"})
    offload: bool = field(default=False, metadata={"help": "ZeRO offload of optimizer state (and params at stage 3) to CPU"})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoraConfig.lora_dropout"})
    target_modules: str = field(default="", metadata={"help": "LoraConfig.target_modules (comma-separated); empty = the family's choice, all-linear for most"})
    lr_scheduler_type: str = field(default="linear", metadata={"choices": _schedulers, "help": "transformers scheduler name"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping"})
    # --- searched by default (a search space's value replaces these per trial)
    r: int = field(default=16, metadata={"help": "LoraConfig.r"})
    lora_alpha: int = field(default=16, metadata={"help": "LoraConfig.lora_alpha (update scale alpha/r)"})
    alpha_ratio: float = field(default=0.0, metadata={"help": "the update's scale itself (--alpha-mode ratio searches it): lora_alpha = alpha_ratio x r, x sqrt(r) with rsLoRA; 0 = lora_alpha as given"})
    use_rslora: bool = field(default=False, metadata={"help": "LoraConfig.use_rslora: scale alpha/sqrt(r)"})
    loraplus_lr_ratio: float = field(default=0.0, metadata={"help": "LoRA+: the B matrices learn at learning_rate x this (PEFT's create_loraplus_optimizer; its paper suggests ~16 with a lower learning_rate); 0 = plain LoRA"})
    rank_split: float = field(default=1.0, metadata={"help": "the attention modules' LoRA rank / the MLP modules', at the adapter size of rank r everywhere (PEFT rank_pattern, alpha_pattern keeping each module's update scale); 1 = rank r everywhere"})
    loss_type: str = field(default="sigmoid", metadata={"choices": LOSS_TYPES, "help": "preference: sigmoid (DPO), ipo, hinge (DPO variants, TRL DPOConfig.loss_type), orpo (ORPO, no reference) or kto (KTO, the pairs unpaired)"})
    beta: float = field(default=0.1, metadata={"help": "preference: TRL's beta of the loss (DPO/IPO/hinge/KTO: how far from the reference the adapter may move, lower = further; ORPO: the odds-ratio term's weight)"})
    packing: bool = field(default=False, metadata={"help": "pack several examples per row (documents kept apart)"})
    warmup_ratio: float = field(default=0.0, metadata={"help": "share of the trial's optimizer steps spent warming up"})
    learning_rate: float = field(default=1e-4, metadata={"help": "AdamW learning rate (at the reference batch, with --lr-scaling)"})
    lr_scaling: str = field(default="none", metadata={"choices": ("none", "sqrt", "linear"), "help": "none, sqrt or linear: scale learning_rate by (tokens per optimizer step / lr_reference_tokens)^(1/2 or 1), so trials with more workers or packing compare fairly"})
    lr_reference_tokens: int = field(default=0, metadata={"help": "the batch, in tokens per optimizer step, at which learning_rate is meant (0 = one worker, unpacked, the recipe's batch)"})
    # --- budget and reporting
    max_tokens: int = field(default=2_000_000, metadata={"help": "training tokens (non-padding) per trial; ASHA's time axis"})
    eval_every: int = field(default=50, metadata={"help": "optimizer steps between reports (eval + metrics; a checkpoint where --checkpoint-minutes says), counted unpacked: packed trials report at the same tokens"})
    checkpoint_minutes: float = field(default=10.0, metadata={"help": "a checkpoint at a trial's best report so far and its last (the export reads them), and at the first report at least this many minutes after the previous one (what a restarted trial resumes from); other reports carry metrics only. 0: a checkpoint at every report"})
    background_upload: bool = field(default=True, metadata={"help": "reports and their checkpoints go to Ray from a thread of their own, so a trial trains on while a checkpoint uploads (--no-background-upload: training waits for each, as before Dec 2026)"})
    seed: int = field(default=3407, metadata={"help": "seed for data split, shuffling and LoRA init"})
    train_on_eval: bool = field(default=False, metadata={"help": "the final run (--finalize): the eval rows train too, so the test split is the only held-out data"})
    repeat: int = field(default=0, metadata={"help": "a repeat of a configuration (--repeats): shuffling and LoRA init take seed + repeat; the data split stays"})
    callbacks: tuple[str, ...] = field(default=(), metadata={"help": "extra transformers TrainerCallbacks, as module:factory; factory(trial) returns a callback or None"})
    # --- any other library field (a searched knob of LoraConfig / TrainingArguments lands here too)
    lora_config: dict = field(default_factory=dict, metadata={"help": 'more peft.LoraConfig fields, as JSON, e.g. \'{"use_dora": true}\''})
    training_args: dict = field(default_factory=dict, metadata={"help": 'more transformers.TrainingArguments fields, as JSON, e.g. \'{"adam_beta2": 0.95}\''})

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainSettings":
        check_keys(d, cls, "settings")
        out = cls(**d)
        for f in fields(cls):  # tuples come back from JSON as lists
            if _is_tuple(f) and isinstance(getattr(out, f.name), (list, str)):
                setattr(out, f.name, _as_tuple(getattr(out, f.name)))
        return out

    def validate(self) -> "TrainSettings":
        problems = Problems()

        def positive(name):
            v = getattr(self, name)
            if v is None or v <= 0:
                problems.add(f"`{name}` is {v!r}; it must be a positive number")

        for name in ("max_seq_length", "per_device_batch_size", "gradient_accumulation_steps",
                     "max_tokens", "eval_every", "eval_rows", "test_rows", "validation_rows", "r", "lora_alpha"):
            positive(name)
        if self.max_train_rows is not None:
            positive("max_train_rows")
        eval_ok = 0 < self.eval_fraction < 1  # the sums below mean something only with it right
        if not eval_ok:
            problems.add(f"`eval_fraction` is {self.eval_fraction!r}; it must be in (0, 1), e.g. 0.02")
        if not 0 <= self.test_fraction < 1 or (eval_ok and self.eval_fraction + self.test_fraction >= 1):
            problems.add(f"`test_fraction` is {self.test_fraction!r}; it must be in [0, 1) and leave rows to "
                              f"train on beside eval_fraction {self.eval_fraction}")
        if not 0 <= self.validation_fraction < 1 or \
                (eval_ok and self.eval_fraction + self.test_fraction + self.validation_fraction >= 1):
            problems.add(f"`validation_fraction` is {self.validation_fraction!r}; it must be in [0, 1) and leave "
                              f"rows to train on beside eval_fraction {self.eval_fraction} and test_fraction "
                              f"{self.test_fraction}")
        for name, allowed in (("quantization", Quantization), ("precision", Precision), ("method", Method),
                              ("attn_implementation", Attention)):
            choices = typing.get_args(allowed)
            if getattr(self, name) not in choices:
                problems.add(f"`{name}` is {getattr(self, name)!r}; choose {', '.join(choices)}")
        if self.method == "full" and self.quantization != "none":
            problems.add(f"`method` full trains every weight, which a {self.quantization} base cannot hold; "
                              "pass --quantization none (or search method only with quantization none)")
        if self.zero_stage not in (0, 1, 2, 3):
            problems.add(f"`zero_stage` is {self.zero_stage!r}; choose 0 (DDP), 1, 2 or 3")
        if self.attn_implementation == "flash_attention_2" and self.precision == "fp32":
            problems.add("`attn_implementation` flash_attention_2 runs in bf16 or fp16, not `precision` fp32; pass "
                         "--precision auto (bf16 where the GPU has it) or --attn-implementation sdpa")
        if self.offload and self.zero_stage == 0:  # DeepSpeed's offload: without ZeRO nothing moves
            problems.add("`offload` is on but `zero_stage` is 0 (no DeepSpeed), which offloads nothing; pass "
                         "--zero-stage 2 (optimizer state in CPU memory) or 3 (weights too), or drop --offload")
        if not (isinstance(self.checkpoint_minutes, (int, float)) and 0 <= self.checkpoint_minutes < float("inf")):
            problems.add(f"`checkpoint_minutes` is {self.checkpoint_minutes!r}; give minutes >= 0, e.g. 10 (0: a "
                         "checkpoint at every report)")
        if not (isinstance(self.beta, (int, float)) and 0 < self.beta <= 100):
            problems.add(f"`beta` is {self.beta!r}; give a number in (0, 100], e.g. 0.1 (TRL's default)")
        if self.loss_type not in LOSS_TYPES:
            problems.add(f"`loss_type` is {self.loss_type!r}; choose {', '.join(LOSS_TYPES)}")
        if self.task == "preference":  # per searched value too (search_spaces.knobs.check_value)
            if self.method != "lora":  # its reference model is the base with the adapter off
                problems.add(f"`method` is {self.method!r}; task `preference` trains a LoRA adapter; pass --method lora")
            if self.loss_type == "kto" and self.per_device_batch_size < 2:
                problems.add("`loss_type` kto with `per_device_batch_size` 1: KTO's reference point pairs each prompt "
                             "with another pair's reply in the micro-batch; pass --per-device-batch-size 2 or more")
            if self.packing:
                problems.add("`packing` is on; task `preference` does not pack pairs; drop it from the space")
        if not 0 <= self.lora_dropout < 1:
            problems.add(f"`lora_dropout` is {self.lora_dropout!r}; it must be in [0, 1)")
        if not 0 <= self.warmup_ratio < 1:
            problems.add(f"`warmup_ratio` is {self.warmup_ratio!r}; it must be in [0, 1)")
        if not (self.loraplus_lr_ratio == 0 or 1 <= self.loraplus_lr_ratio <= 1000):
            problems.add(f"`loraplus_lr_ratio` is {self.loraplus_lr_ratio!r}; give 0 (plain LoRA) or a ratio in "
                         "[1, 1000], e.g. 16")
        if not 0.05 <= self.rank_split <= 20:
            problems.add(f"`rank_split` is {self.rank_split!r}; give the attention/MLP rank ratio in [0.05, 20] "
                         "(1: the same rank everywhere)")
        from trainers.lora_variants import INIT_REFUSED

        init = self.lora_config.get("init_lora_weights", True)
        if init in INIT_REFUSED:
            problems.add(f"`init_lora_weights` {init}: {INIT_REFUSED[init]}")
        elif str(init).startswith("pissa_niter_"):
            problems.add(f"`init_lora_weights` {init} is PiSSA by a randomised SVD, which a reload would not "
                         "repeat (the adapter belongs to the base that init made); search pissa")
        elif init in ("pissa", "olora") and (self.quantization != "none" or self.zero_stage == 3):
            why = f"a {self.quantization} base" if self.quantization != "none" else "ZeRO-3's partitioned weights"
            problems.add(f"`init_lora_weights` {init} rewrites the base weights it decomposes, which {why} "
                         "cannot take; search it with --quantization none and --zero-stage 0 or 2")
        elif init == "orthogonal" and self.quantization != "none":
            problems.add(f"`init_lora_weights` orthogonal writes float LoRA weights in the base layer's dtype, which "
                         f"a {self.quantization} base does not have; search it with --quantization none, or use gaussian")
        elif init == "orthogonal" and int(self.r) % 2:
            problems.add(f"`init_lora_weights` orthogonal needs an even `r`; r is {self.r}")
        if not 0 < self.learning_rate <= 1:
            problems.add(f"`learning_rate` is {self.learning_rate!r}; it must be in (0, 1]")
        for name in ("max_new_tokens", "gen_eval_rows"):
            positive(name)
        if self.lr_scaling not in ("none", "sqrt", "linear"):
            problems.add(f"`lr_scaling` is {self.lr_scaling!r}; choose none, sqrt or linear")
        if self.alpha_ratio < 0 or self.lr_reference_tokens < 0:
            name = "alpha_ratio" if self.alpha_ratio < 0 else "lr_reference_tokens"
            problems.add(f"`{name}` is {getattr(self, name)!r}; it must be 0 or more")
        if self.samples < 0 or self.bertscore_layers < 0:
            name = "samples" if self.samples < 0 else "bertscore_layers"
            problems.add(f"`{name}` is {getattr(self, name)!r}; it must be 0 or more")
        with problems.collecting():
            prompt_fields(self.prompt)  # well-formed; which placeholders it needs is the task's check
        if not self.model:
            problems.add("`model` is empty; pass --model with a Hub id or a local folder")
        if not self.dataset:
            problems.add("`dataset` is empty; pass --dataset with a Hub id or a local .jsonl/.parquet file")
        problems.raise_any()
        return self


def prompt_fields(prompt: str) -> list[str]:
    """The ``{name}`` placeholders of a prompt, in order; a malformed one is a ConfigError."""
    import string

    try:
        names = [name for _, name, spec, conv in string.Formatter().parse(prompt) if name is not None]
    except ValueError as e:
        raise ConfigError(f"`prompt` is {prompt!r}: {e}; write placeholders as {{column}} and a literal brace as {{{{ or }}}}") from None
    bad = [n for n in names if not n.isidentifier()]
    if bad:
        raise ConfigError(f"`prompt` has the placeholder {{{bad[0]}}}; placeholders name a column, e.g. {{text}} or {{question}}")
    return names


def _is_tuple(f) -> bool:
    return str(f.type).startswith("tuple")


def _as_tuple(value) -> tuple:
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    return tuple(value)


def check_keys(d: dict, cls, where: str) -> None:
    """Refuse keys that are no field of ``cls`` (a typo in a recipe must not be dropped silently)."""
    known = [f.name for f in fields(cls)]
    for key in d:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"did you mean `{close[0]}`?" if close else f"known: {', '.join(known)}"
            raise ConfigError(f"{where}: unknown key {key!r}; {hint}")


HEAD_RESOURCE = "node:__internal_head__"  # Ray's own marker of the head node


@dataclass
class Resources:
    """One trial's Ray Train workers: ``workers`` x (``cpus`` CPU + ``gpus`` GPU)."""

    workers: int = 1
    cpus: float = 1.0
    gpus: float = 0.0
    retries: int = 0  # worker-group restarts from the last checkpoint after a worker error
    placement: str = "PACK"  # the workers' placement group: PACK (fewest nodes) or SPREAD (one per node)
    # One worker that needs no DeepSpeed: it trains in the Tune trial's own process (no Ray Train
    # controller and worker actors to start and import torch in), and Tune reuses that process.
    in_trial_process: bool = False
    # What keeps the trial's processes off the head node (lorasweep/cluster.py ``trial_host``): a
    # resource only worker nodes declare, or the head's node id for a label selector to exclude.
    host_resources: dict[str, float] = field(default_factory=dict)
    not_on_node: str = ""

    @property
    def host_labels(self) -> dict[str, str]:
        """Ray's label selector for ``not_on_node`` (kept out of the trial's config: Tune flattens a
        config on '/', which the label key has)."""
        return {"ray.io/node-id": f"!{self.not_on_node}"} if self.not_on_node else {}

    def may_use(self, node: dict) -> bool:
        """Whether a node (its Ray resources) may host this trial's processes."""
        return all(k in node for k in self.host_resources) and not (self.not_on_node and HEAD_RESOURCE in node)

    def host_options(self) -> dict:
        """``ray.remote`` options that place a task or actor where the trial's workers may run."""
        return {**({"resources": dict(self.host_resources)} if self.host_resources else {}),
                **({"label_selector": self.host_labels} if self.not_on_node else {})}


@dataclass
class TrialConfig:
    settings: TrainSettings
    knobs: dict[str, Any] = field(default_factory=dict)  # this trial's sampled values, by field name
    resources: Resources = field(default_factory=Resources)
    train_storage: str = ""  # where Ray Train keeps this sweep's checkpoints
    objective: str = "eval_loss"  # the metric the sweep optimises: the best checkpoint is kept by it

    def __post_init__(self):
        unknown = {k: v for k, v in self.knobs.items() if owner(k) is None}
        check_keys(unknown, TrainSettings, "searched knobs")  # names the field it resembles

    @property
    def effective(self) -> TrainSettings:
        """The settings this trial trains with: the fixed ones, with the searched knobs applied (a
        LoraConfig or TrainingArguments field's value into ``lora_config`` / ``training_args``)."""
        # a TrainSettings field that is no searchable knob (``repeat``) is still the trial's setting
        own = {k: v for k, v in self.knobs.items() if owner(k) in ("settings", None)}
        lora = {k: v for k, v in self.knobs.items() if owner(k) == "lora"}
        args = {k: v for k, v in self.knobs.items() if owner(k) == "args"}
        out = replace(self.settings, **own, lora_config={**self.settings.lora_config, **lora},
                      training_args={**self.settings.training_args, **args})
        if out.alpha_ratio > 0:  # --alpha-mode ratio: the scale was drawn, alpha follows from it and r
            import math

            out.lora_alpha = max(1, round(out.alpha_ratio * (math.sqrt(out.r) if out.use_rslora else out.r)))
        return out

    def to_tune(self, space: dict) -> dict:
        """Tune's ``param_space``: searched knobs (Tune domains) at the top level, the rest under
        ``"trial"`` as plain data (printable, picklable, JSON in Tune's params.json)."""
        return {**space, "trial": {"settings": self.settings.to_dict(), "resources": asdict(self.resources),
                                   "train_storage": self.train_storage, "objective": self.objective}}

    @classmethod
    def from_tune(cls, config: dict) -> "TrialConfig":
        fixed = config["trial"]
        return cls(settings=TrainSettings.from_dict(fixed["settings"]),
                   knobs={k: v for k, v in config.items() if k != "trial"},
                   resources=Resources(**fixed["resources"]), train_storage=fixed["train_storage"],
                   objective=fixed.get("objective", "eval_loss"))


def for_workers(settings: TrainSettings, workers: int, precision: str) -> tuple[TrainSettings, str]:
    """The settings a trial of ``workers`` workers trains with, and a line saying what changed ("" if nothing).

    ZeRO partitions optimizer state (stage 1), gradients (2) and weights (3) across workers; a single
    worker has nothing to partition, and DeepSpeed only adds its start-up and its own optimizer
    step, so one worker trains plain (``zero_stage`` 0). DeepSpeed stays where it still does what one
    plain process cannot: ``offload`` (optimizer state, and weights at stage 3, in CPU memory), and a
    full fine-tune in fp16/bf16, where DeepSpeed keeps fp32 master weights (the plain Trainer would
    update the half-precision weights themselves: lossy in bf16, and an error in fp16).
    """
    if workers > 1 or settings.zero_stage == 0 or settings.offload or \
            (settings.method == "full" and precision in ("bf16", "fp16")):
        return settings, ""
    return replace(settings, zero_stage=0), (
        f"one worker: training without DeepSpeed (ZeRO-{settings.zero_stage} partitions across workers; "
        "with one it only adds overhead)")


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


# ----------------------------------------------------------------------------- knob ownership
# Which field a searched knob sets: a TrainSettings field, a peft.LoraConfig field or a
# transformers.TrainingArguments field (search_spaces/ declares spaces over them; a trial applies them).

# TrainSettings fields that say what is trained on what, or how it is scored: never searched.
NOT_KNOBS = frozenset({
    "task", "family", "model", "dataset", "dataset_split", "max_train_rows", "eval_fraction", "eval_rows",
    "test_fraction", "test_rows", "balance", "text_column", "label_column", "labels", "prompt", "gen_eval_rows",
    "target_column", "no_answer", "bertscore_model", "bertscore_layers", "samples", "skip_rows_with",
    "seed", "callbacks", "eval_every", "lora_config", "training_args", "quantization", "zero_stage", "offload",
    "lr_reference_tokens", "repeat", "train_on_eval",
})
# Set by the trial itself (from its settings, its device and its budget): a knob there would be ignored.
MANAGED_ARGS = frozenset({"output_dir", "max_steps", "num_train_epochs", "deepspeed", "use_cpu", "bf16", "fp16",
                          "logging_strategy", "save_strategy", "eval_strategy", "report_to", "disable_tqdm",
                          "remove_unused_columns", "seed", "data_seed", "per_device_train_batch_size",
                          "gradient_accumulation_steps", "learning_rate", "warmup_steps", "warmup_ratio",
                          "lr_scheduler_type", "weight_decay", "max_grad_norm", "gradient_checkpointing"})
MANAGED_LORA = frozenset({"r", "lora_alpha", "use_rslora", "lora_dropout", "target_modules", "modules_to_save",
                          "task_type", "base_model_name_or_path", "peft_type", "revision", "inference_mode"})


def lora_fields() -> dict:
    from peft import LoraConfig

    return {f.name: f for f in dataclasses.fields(LoraConfig) if f.name not in MANAGED_LORA and f.init}


def args_fields() -> dict:
    from transformers import TrainingArguments

    return {f.name: f for f in dataclasses.fields(TrainingArguments) if f.name not in MANAGED_ARGS and f.init}


@functools.cache
def owners() -> dict[str, str]:
    """knob name -> "settings", "lora" or "args" (a TrainSettings field wins over the libraries')."""
    out = {name: "args" for name in args_fields()}
    out.update({name: "lora" for name in lora_fields()})
    out.update({f.name: "settings" for f in dataclasses.fields(TrainSettings) if f.name not in NOT_KNOBS})
    return out


def owner(name: str) -> str | None:
    """Where a searched knob's value goes: "settings", "lora", "args", or None (no such knob)."""
    return owners().get(name)
