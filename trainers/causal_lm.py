"""Chat SFT of a causal LM with (Q)LoRA, run inside each Ray Train worker of one trial.

Shared by the causal-LM families (``trainers/llama.py`` and friends only say which architecture and
checkpoint). One trial = one ``train_func(config)`` per worker:

  load tokenizer -> read rows -> fixed-seed eval split -> chat template + assistant-only labels
  -> pack (if the trial says so) -> load base (4-bit NF4 / 8-bit / full) -> attach LoRA
  -> transformers.Trainer (DDP, or DeepSpeed ZeRO from a config dict)
  -> every ``eval_every`` steps: eval loss on the held-out split, a checkpoint, ``ray.train.report``.

The budget is training tokens seen (non-padding), not steps: a packed trial takes far fewer steps
for the same data, and ASHA's rungs must compare packed and unpacked trials on equal terms.
"""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

from trainers.chat import Collator, TokenizedSplit, pack_examples, require_chat_columns, split_rows, tokenize_rows
from trainers.config import TrainSettings, deepspeed_config
from lorasweep.errors import ConfigError, TrialError

STATE_FILE = "lorasweep_state.json"  # metrics + tokens_seen, written into every checkpoint
EVAL_BATCH_SIZE = 8


# ----------------------------------------------------------------------------- environment


def pick_precision(settings: TrainSettings) -> str:
    if settings.precision != "auto":
        return settings.precision
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"  # CPU autocast in bf16 is slower than fp32 on most CPUs, and lossy


DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _hf_token() -> str | None:
    # Secrets come from the environment only; they are never put in a config that gets written.
    return os.environ.get("HF_TOKEN") or None


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_reduce_sum(values: list[float]) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        if dist.get_backend() == "nccl":
            t = t.cuda()
        dist.all_reduce(t)
    return t.cpu().tolist()


# ----------------------------------------------------------------------------- data


def load_tokenizer(settings: TrainSettings):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(settings.model, token=_hf_token())
    if not tok.chat_template:
        raise ConfigError(f"`model` {settings.model!r} has no chat template; use an instruct/chat checkpoint")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_rows(settings: TrainSettings) -> list[dict]:
    """A Hub dataset id, or a local .jsonl/.json/.parquet file, read with ``datasets``."""
    import datasets

    datasets.disable_progress_bars()  # one bar per file read: noise in every worker's log
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # a bad file is our one-line ConfigError
    src = settings.dataset
    if os.path.exists(src):
        kind = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}.get(Path(src).suffix.lower())
        if kind is None:
            raise ConfigError(f"`dataset` {src!r} is not .jsonl, .json or .parquet")
        try:
            ds = datasets.load_dataset(kind, data_files=src, split="train")
        except Exception as e:  # datasets wraps a bad line in its own error types, several deep
            raise ConfigError(f"`dataset` {src!r} could not be read as {Path(src).suffix} ({_first_line(e)}); "
                              "expected one JSON object per line (.jsonl), a JSON array (.json) or parquet") from None
    else:
        ds = datasets.load_dataset(src, split=settings.dataset_split, token=_hf_token())
    require_chat_columns(ds.column_names, src)
    if settings.max_train_rows:
        ds = ds.select(range(min(len(ds), settings.max_train_rows + int(settings.max_train_rows * settings.eval_fraction) + 1)))
    return ds.to_list()


def _first_line(exc: BaseException) -> str:
    """The innermost cause's first line: what actually went wrong, not the wrapper's summary."""
    while exc.__cause__ is not None:  # `raise ... from`: the wrapped error (not what its handler hit)
        exc = exc.__cause__
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:200]}" if text else type(exc).__name__


def prepare_data(settings: TrainSettings, tokenizer) -> tuple[TokenizedSplit, TokenizedSplit]:
    train_rows, eval_rows = split_rows(load_rows(settings), settings.eval_fraction, settings.eval_rows, settings.seed)
    train = tokenize_rows(tokenizer, train_rows, settings.max_seq_length)
    held = tokenize_rows(tokenizer, eval_rows, settings.max_seq_length)
    if not train.examples:
        raise ConfigError(f"`dataset` {settings.dataset!r} has no usable training rows (skipped: {dict(train.skipped)})")
    if not held.examples:
        raise ConfigError(f"`dataset` {settings.dataset!r} has no usable eval rows; raise `eval_fraction`")
    return train, held


def audit_data(settings: TrainSettings) -> dict:
    """Driver-side, before Ray starts: the same reading, split and tokenisation a trial does, to
    count the rows kept and skipped (by reason) and size the budget. Raises ConfigError when the
    data is unusable (missing column, no usable rows)."""
    tokenizer = load_tokenizer(settings)
    train, held = prepare_data(settings, tokenizer)
    skipped = train.skipped + held.skipped
    return {
        "dataset": settings.dataset,
        "rows": len(train.examples) + len(held.examples) + sum(skipped.values()),
        "train_examples": len(train.examples),
        "eval_examples": len(held.examples),
        "skipped": dict(sorted(skipped.items())),
        "truncated": train.truncated + held.truncated,
        "tokens_per_example": round(train.num_tokens / len(train.examples), 1),
        "train_tokens": train.num_tokens,
        "eval_tokens": held.num_tokens,
    }


# QLoRA under ZeRO-3 needs 4-bit weights stored as the compute dtype so ZeRO can partition them
# (bnb_4bit_quant_storage) and a Trainer that gathers only the adapter on save: PEFT's
# "QLoRA + DeepSpeed ZeRO-3" guide names these releases as the first that do.
ZERO3_4BIT_MINIMUM = {"bitsandbytes": "0.43.0", "transformers": "4.39.0", "peft": "0.10.0", "accelerate": "0.28.0",
                      "deepspeed": "0.13.0"}


def zero3_4bit_unsupported(installed: dict[str, str]) -> list[str]:
    """The packages (``name version < minimum``) too old for 4-bit + ZeRO-3; [] when all fit."""
    from packaging.version import Version

    return [f"{name} {installed[name]} < {low}" for name, low in ZERO3_4BIT_MINIMUM.items()
            if name in installed and Version(installed[name]) < Version(low)]


def check_settings(settings: TrainSettings) -> None:
    """Pairs of settings that the installed libraries cannot train together (or not usefully)."""
    if settings.zero_stage != 3 or settings.quantization == "none":
        return
    if settings.quantization == "8bit":
        # It runs, but bitsandbytes' 8-bit forward keeps a whole int8 copy of every weight on
        # every rank (Linear8bitLt's state.CB), so ZeRO-3 partitions nothing of the base.
        raise ConfigError("`zero_stage` 3 with `quantization` 8bit saves no memory (bitsandbytes keeps the whole "
                          "int8 base on every rank); use --quantization 4bit with ZeRO-3, or --zero-stage 2")
    from importlib.metadata import PackageNotFoundError, version

    installed = {}
    for name in ZERO3_4BIT_MINIMUM:
        try:
            installed[name] = version(name)
        except PackageNotFoundError:
            pass
    too_old = zero3_4bit_unsupported(installed)
    if too_old:
        raise ConfigError(f"`zero_stage` 3 with `quantization` 4bit needs newer packages ({'; '.join(too_old)}); "
                          "upgrade them or use --zero-stage 2")


def eval_batches(held: TokenizedSplit, pad_id: int) -> list[dict]:
    """Unpacked, length-sorted, fixed batches: every trial (packed or not) and the reload check
    score exactly the same tokens the same way."""
    collate = Collator(pad_id, packed=False)
    ex = sorted(held.examples, key=lambda e: len(e["input_ids"]))
    return [collate(ex[i : i + EVAL_BATCH_SIZE]) for i in range(0, len(ex), EVAL_BATCH_SIZE)]


@torch.no_grad()
def evaluate_loss(model, batches: list[dict], shard: tuple[int, int] = (0, 1)) -> float:
    """Token-weighted mean cross-entropy over every assistant token of the eval split.

    Summed per token (not averaged per batch), so it does not depend on batch size or the number
    of workers; each worker scores every ``world``-th batch and the sums are all-reduced.
    """
    rank, world = shard
    was_training = model.training
    model.eval()
    device = next(p for p in model.parameters()).device
    loss_sum, count = 0.0, 0.0
    for batch in batches[rank::world]:
        inputs = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
        logits = model(**inputs).logits.float()
        labels = batch["labels"].to(device)[:, 1:]
        loss_sum += torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100, reduction="sum"
        ).item()
        count += (labels != -100).sum().item()
    if was_training:
        model.train()
    loss_sum, count = _all_reduce_sum([loss_sum, count])
    return loss_sum / max(count, 1.0)


# ----------------------------------------------------------------------------- model


def quantization_config(settings: TrainSettings, compute_dtype: torch.dtype):
    from transformers import BitsAndBytesConfig

    if settings.quantization == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,  # quantises the quantisation constants: ~0.4 bit/param saved
            bnb_4bit_compute_dtype=compute_dtype,
            # ZeRO-3 shards parameters by dtype; 4-bit weights stored as the compute dtype can be
            # sharded like the rest, uint8 storage cannot.
            bnb_4bit_quant_storage=compute_dtype if settings.zero_stage == 3 else torch.uint8,
        )
    if settings.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return None


def load_base_model(settings: TrainSettings, precision: str, device: torch.device | None = None):
    from transformers import AutoModelForCausalLM

    dtype = DTYPES[precision]
    kwargs: dict = {"dtype": dtype, "token": _hf_token()}
    qconf = quantization_config(settings, dtype)
    if qconf is not None:
        kwargs["quantization_config"] = qconf
        if settings.zero_stage != 3:  # ZeRO-3 places the shards itself
            kwargs["device_map"] = {"": device.index if device is not None and device.type == "cuda" else "cpu"}
    return AutoModelForCausalLM.from_pretrained(settings.model, **kwargs)


def lora_config(config: dict, settings: TrainSettings):
    from peft import LoraConfig

    return LoraConfig(
        r=int(config["r"]),
        lora_alpha=int(config["lora_alpha"]),
        use_rslora=bool(config["use_rslora"]),  # scale alpha/sqrt(r) instead of alpha/r
        lora_dropout=settings.lora_dropout,
        target_modules=settings.target_modules,
        task_type="CAUSAL_LM",
    )


def build_model(config: dict, settings: TrainSettings, precision: str, device=None):
    from peft import get_peft_model, prepare_model_for_kbit_training

    model = load_base_model(settings, precision, device)
    # No KV cache in training. Besides saving memory this is what keeps packed documents apart:
    # with a cache object present Transformers skips the position_ids-based packed-sequence mask
    # and a packed row becomes one long causal sequence (tests/test_chat.py checks this).
    model.config.use_cache = False
    if settings.quantization != "none":
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=settings.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    torch.manual_seed(settings.seed)  # same LoRA init for the same seed
    return get_peft_model(model, lora_config(config, settings))


# ----------------------------------------------------------------------------- training


class _TokenCountingTrainer(Trainer):
    """Counts non-padding training tokens and refuses non-finite losses."""

    tokens_local = 0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        n = inputs.pop("num_tokens", None)
        out = super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        if model.training:
            loss = out[0] if return_outputs else out
            if not torch.isfinite(loss.detach()).all():
                raise TrialError(f"non-finite loss at step {self.state.global_step + 1} "
                                 f"(learning_rate {self.args.learning_rate:g}); the trial stops, the sweep goes on")
            if n is not None:
                self.tokens_local += int(n)
        return out


class _ReportCallback(TrainerCallback):
    """Every ``eval_every`` steps (and at the end of the budget): eval, checkpoint, report."""

    def __init__(self, trainer: _TokenCountingTrainer, settings: TrainSettings, batches, report):
        self.trainer, self.settings, self.batches, self.report = trainer, settings, batches, report
        self.last_loss = float("nan")
        self.t_last, self.tokens_last = time.time(), 0
        self.tokens_seen = 0
        self.train_time_s = 0.0  # carried over on resume

    def on_train_begin(self, args, state, control, **kw):
        self.t_last = time.time()

    def on_step_end(self, args, state, control, **kw):
        if state.global_step % self.settings.eval_every == 0 or state.global_step >= state.max_steps:
            control.should_log = control.should_save = True
        return control

    def on_log(self, args, state, control, logs=None, **kw):
        if logs and "loss" in logs:
            self.last_loss = float(logs["loss"])

    def on_save(self, args, state, control, model=None, **kw):
        now = time.time()  # before eval: tokens/s and train time count training only
        rank, world = _world()
        (self.tokens_seen,) = _all_reduce_sum([float(self.trainer.tokens_local)])
        eval_loss = evaluate_loss(model, self.batches, (rank, world))
        self.train_time_s += now - self.t_last
        finished = state.global_step >= state.max_steps or self.tokens_seen >= self.settings.max_tokens
        metrics = {
            "eval_loss": eval_loss,
            "train_loss": self.last_loss,
            "tokens_seen": int(self.tokens_seen),
            "step": state.global_step,
            "epoch": round(state.epoch or 0.0, 4),
            "tokens_per_s": (self.tokens_seen - self.tokens_last) / max(now - self.t_last, 1e-9),
            "peak_mem_gb": _peak_memory_gb(),
            "train_time_s": self.train_time_s,
            "finished": finished,
        }
        self.tokens_last = self.tokens_seen
        ckpt_dir = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if rank == 0:
            Path(ckpt_dir, STATE_FILE).write_text(json.dumps(metrics))
        if finished:
            control.should_training_stop = True
        self.report(metrics, ckpt_dir)
        self.t_last = time.time()  # eval, checkpoint upload and report are not training time
        return control


def _peak_memory_gb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def _ray_report(metrics: dict, ckpt_dir: str) -> None:
    import ray.train
    from ray.train import Checkpoint

    # Each rank hands in what it wrote (DeepSpeed: its own shard files; DDP: only rank 0 writes)
    # and Ray uploads them into one checkpoint directory.
    has = os.path.isdir(ckpt_dir) and any(os.scandir(ckpt_dir))
    ray.train.report(metrics, checkpoint=Checkpoint.from_directory(ckpt_dir) if has else None)


def _in_ray_train() -> bool:
    try:
        import ray.train

        ray.train.get_context().get_world_rank()
        return True
    except Exception:
        return False


def plan_steps(train: list[dict], settings: TrainSettings, world: int) -> int:
    """Optimizer steps that consume ``max_tokens`` on this data, e.g. 2 rows x 4 accum x 2 workers
    x 1,500 tokens/packed row = 24,000 tokens/step -> 2M tokens = 84 steps."""
    tokens_per_row = sum(len(e["input_ids"]) for e in train) / len(train)
    tokens_per_step = tokens_per_row * settings.per_device_batch_size * settings.gradient_accumulation_steps * world
    return max(1, math.ceil(settings.max_tokens / tokens_per_step))


def train_func(config: dict) -> list[dict]:
    """Ray Train per-worker loop (also runs outside Ray, reporting to the returned list)."""
    settings = TrainSettings.from_dict(config["settings"])
    in_ray = _in_ray_train()
    history: list[dict] = []
    if in_ray:
        import ray.train

        device = ray.train.torch.get_device()
        report, resume = _ray_report, ray.train.get_checkpoint()
    else:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        report, resume = (lambda m, d: history.append(m)), None
    rank, world = _world()
    precision = pick_precision(settings)

    tokenizer = load_tokenizer(settings)
    train_split, held = prepare_data(settings, tokenizer)
    packed = bool(config["packing"])
    train = pack_examples(train_split.examples, settings.max_seq_length) if packed else train_split.examples
    batches = eval_batches(held, tokenizer.pad_token_id)
    max_steps = plan_steps(train, settings, world)
    if rank == 0:
        print(f"[lorasweep] {len(train_split.examples)} train examples -> {len(train)} rows (packing={packed}), "
              f"{len(held.examples)} eval, skipped {dict(train_split.skipped)}, {max_steps} steps planned")

    model = build_model(config, settings, precision, device)
    out_dir = tempfile.mkdtemp(prefix="lorasweep-")
    args = TrainingArguments(
        output_dir=out_dir,
        per_device_train_batch_size=settings.per_device_batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        learning_rate=float(config["learning_rate"]),
        warmup_steps=int(round(float(config["warmup_ratio"]) * max_steps)),
        lr_scheduler_type=settings.lr_scheduler_type,
        weight_decay=settings.weight_decay,
        max_grad_norm=settings.max_grad_norm,
        max_steps=max_steps,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=device.type == "cpu",
        gradient_checkpointing=settings.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        deepspeed=deepspeed_config(settings.zero_stage, settings.offload),
        optim="adamw_torch",
        logging_strategy="no",  # the report callback decides when to log, save and report
        save_strategy="no",
        save_total_limit=1,
        eval_strategy="no",
        report_to=[],
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,
        seed=settings.seed,
        data_seed=settings.seed,
    )
    trainer = _TokenCountingTrainer(
        model=model,
        args=args,
        train_dataset=train,
        data_collator=Collator(tokenizer.pad_token_id, packed=packed),
        processing_class=tokenizer,
    )
    trainer.remove_callback(PrinterCallback)  # the report callback prints what matters
    callback = _ReportCallback(trainer, settings, batches, report)
    trainer.add_callback(callback)

    resume_dir = None
    if resume is not None:
        resume_dir = resume.to_directory(os.path.join(out_dir, "resume"))
        state = json.loads(Path(resume_dir, STATE_FILE).read_text())
        trainer.tokens_local = int(state["tokens_seen"]) // world
        callback.tokens_last = state["tokens_seen"]
        callback.train_time_s = float(state.get("train_time_s", 0.0))
    fault = injected_fault(config)
    if fault is not None:
        trainer.add_callback(fault)
    try:
        trainer.train(resume_from_checkpoint=resume_dir)
    except RuntimeError as e:  # torch.OutOfMemoryError is one
        if not _is_oom(e):
            raise
        step = trainer.state.global_step + 1
        del trainer, model  # let the allocator have it back before the error travels up
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        raise TrialError(f"out of memory at step {step} on {device.type} ({_first_line(e)[:120]}); lower "
                         "per_device_batch_size or max_seq_length, or turn on gradient_checkpointing") from None
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    return history


def _is_oom(e: BaseException) -> bool:
    # CUDA raises torch.OutOfMemoryError; the CPU allocator a RuntimeError that says so.
    return isinstance(e, torch.OutOfMemoryError) or "can't allocate memory" in str(e) or "out of memory" in str(e)


class _InjectedFault(TrainerCallback):
    """Test instrumentation: a real failure at a given step, so tests drive the real handling.
    ``oom`` asks the allocator for 1 PiB; ``nan`` sets a LoRA weight to inf, so the next forward
    produces a non-finite loss."""

    def __init__(self, kind: str, step: int):
        self.kind, self.step = kind, step

    def on_step_begin(self, args, state, control, model=None, **kw):
        if state.global_step + 1 != self.step:
            return
        if self.kind == "oom":
            torch.empty(1 << 50, dtype=torch.uint8, device=next(model.parameters()).device)
        else:
            with torch.no_grad():
                next(p for n, p in model.named_parameters() if "lora_B" in n).fill_(float("inf"))


def injected_fault(config: dict) -> _InjectedFault | None:
    """``LORASWEEP_INJECT_FAULT=<oom|nan>@<step>:<knob>=<value>[;...]``: fail the trials whose
    searched knob has that value (e.g. ``oom@2:r=64``). Read from the worker's environment, which
    a local Ray inherits from the driver; unset in real use."""
    for spec in filter(None, os.environ.get("LORASWEEP_INJECT_FAULT", "").split(";")):
        head, _, cond = spec.partition(":")
        kind, _, step = head.partition("@")
        knob, _, value = cond.partition("=")
        if kind not in ("oom", "nan") or not step.isdigit() or knob not in config:
            raise ValueError(f"LORASWEEP_INJECT_FAULT={spec!r}: expected <oom|nan>@<step>:<knob>=<value>")
        if str(config[knob]) == value:
            return _InjectedFault(kind, int(step))
    return None
