"""The base model (full precision, 8-bit or 4-bit NF4) and the LoRA adapters on it.

QLoRA is the LoRA path with one setting (``quantization="4bit"``), not a second code path. The
family says which modules get adapters and which head is trained in full; the task says which
Auto class loads the checkpoint and what PEFT task type the adapters are. ``save_folder`` writes a
model folder atomically (the merged exports of lorasweep/export.py, the tiny stand-ins, the benchmarks).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from common.errors import TrialError
from trainers.data import hf_token
from trainers.devices import cuda_report, flash_attention_line, flash_attention_problem

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def pick_precision(settings, device: torch.device | None = None, family=None) -> str:
    """From the device this worker was given (not from whether the machine has a GPU somewhere), and
    the family: one that overflows in fp16 (T5) trains in fp32 where a GPU has no bf16."""
    if settings.precision != "auto":
        return settings.precision
    if device is not None and device.type == "cuda":
        # including_emulation=False: T4/V100 "support" bf16 only by emulation, far slower than fp16
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return "bf16"
        return "fp16" if family is None or family.fp16 else "fp32"
    return "fp32"  # CPU autocast in bf16 is slower than fp32 on most CPUs, and lossy


def quantization_config(settings, compute_dtype: torch.dtype, keep_full: tuple[str, ...] = ()):
    """``keep_full``: modules left unquantised (a classification head trained in full)."""
    from transformers import BitsAndBytesConfig

    skip = list(keep_full) or None  # None: Transformers' default (the output head)
    if settings.quantization == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,  # quantises the quantisation constants: ~0.4 bit/param saved
            bnb_4bit_compute_dtype=compute_dtype,
            # ZeRO-3 shards parameters by dtype; 4-bit weights stored as the compute dtype can be
            # sharded like the rest, uint8 storage cannot.
            bnb_4bit_quant_storage=compute_dtype if settings.zero_stage == 3 else torch.uint8,
            llm_int8_skip_modules=skip,
        )
    if settings.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    return None


def load_base_model(settings, family, task, precision: str, device: torch.device | None = None):
    """``from_pretrained`` with the task's Auto class, the family's quirks and the quantisation."""
    dtype = DTYPES[precision]
    # a new classification head starts the same in every trial and the baseline (a --repeats run: its own)
    torch.manual_seed(settings.seed + settings.repeat)
    kwargs: dict = {"dtype": dtype, "token": hf_token(), **family.from_pretrained_kwargs, **task.model_kwargs(settings)}
    if settings.attn_implementation != "auto":  # else the family's choice (Gemma: eager), or sdpa
        if settings.attn_implementation == "flash_attention_2":
            problem = flash_attention_problem(cuda_report())
            if problem:
                raise TrialError(flash_attention_line(problem))
        kwargs["attn_implementation"] = settings.attn_implementation
    qconf = quantization_config(settings, dtype, task.head_modules(family))
    if qconf is not None:
        kwargs["quantization_config"] = qconf
        if settings.zero_stage != 3:  # ZeRO-3 places the shards itself
            kwargs["device_map"] = {"": device.index if device is not None and device.type == "cuda" else "cpu"}
    model = task.auto_class().from_pretrained(settings.model, **kwargs)
    if settings.quantization != "none":
        keep_quantized_bases_out_of_cpu_inference_paths(model)
    if model.config.pad_token_id is None and task.needs_pad_token:
        # Decoder checkpoints often have no pad token; a classification head finds the last real
        # token of each row by it. The tokenizer's pad (its eos when it has none) is set the same way.
        model.config.pad_token_id = model.config.eos_token_id if isinstance(model.config.eos_token_id, int) \
            else (model.config.eos_token_id or [0])[0]
    return model


def keep_quantized_bases_out_of_cpu_inference_paths(model) -> int:
    """Switch off bitsandbytes' AVX512-BF16 CPU inference path on every ``Linear4bit``: once an
    eval repacks a 4-bit weight for it, training matmuls go through a kernel without autograd
    (layers with a bias fail, gradients through the base are lost) and every checkpoint
    re-quantises the base. CUDA never reads the flag. Returns how many layers had it on."""
    try:
        import bitsandbytes as bnb
        from bitsandbytes import functional as bnb_f
    except ImportError:
        return 0
    changed = 0
    for module in model.modules():
        if not isinstance(module, bnb.nn.Linear4bit):
            continue
        changed += bool(getattr(module, "support_avx512bf16_for_cpu", False))
        module.support_avx512bf16_for_cpu = False
        state = getattr(module.weight, "quant_state", None)
        if state is not None and getattr(state, "packing_format_for_cpu", False):  # repacked already: undo
            module.weight.data, module.weight.quant_state = bnb_f._convert_weight_packed_for_cpu_inverse(
                module.weight.data, state)
    return changed


def lora_config(settings, family, task, model=None):
    """The trial's ``peft.LoraConfig``; with ``model`` (the loaded base) and ``rank_split`` != 1, the
    attention/MLP ranks of trainers/lora_variants.rank_split."""
    from peft import LoraConfig

    from trainers.lora_variants import lora_kwargs

    # "q_proj,v_proj" on the command line; "q_proj+v_proj" as one choice of a searched knob
    # (--space target_modules=all-linear,q_proj+v_proj: the comma separates the choices there)
    named = [m.strip() for m in settings.target_modules.replace("+", ",").split(",") if m.strip()]
    targets = ("all-linear" if named == ["all-linear"] else named) if named else \
        (list(family.target_modules) if family.target_modules else "all-linear")
    config = LoraConfig(
        r=int(settings.r),
        lora_alpha=int(settings.lora_alpha),
        use_rslora=bool(settings.use_rslora),  # scale alpha/sqrt(r) instead of alpha/r
        lora_dropout=settings.lora_dropout,
        target_modules=targets,
        modules_to_save=list(task.head_modules(family)) or None,
        task_type=task.peft_task_type,
        **lora_kwargs(settings.lora_config),  # any other LoraConfig field (use_dora, init_lora_weights, ...)
    )
    if model is None or float(settings.rank_split) == 1.0:
        return config
    import dataclasses

    from trainers.lora_variants import rank_split

    fields, line = rank_split(model, config, float(settings.rank_split))
    print(f"[lorasweep] {line}")
    return dataclasses.replace(config, **fields) if fields else config


def build_model(settings, family, task, precision: str, device=None):
    """The model a trial trains: the base with LoRA adapters (or, with ``method="full"``, the base)."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    model = load_base_model(settings, family, task, precision, device)
    # No KV cache in training. Besides saving memory this is what keeps packed documents apart:
    # with a cache object present Transformers skips the position_ids-based packed-sequence mask
    # and a packed row becomes one long causal sequence (tests/test_chat.py checks this).
    model.config.use_cache = False
    if settings.method == "full":
        return model
    if settings.quantization != "none" and settings.zero_stage == 3:
        # ZeRO-3 QLoRA as PEFT's and TRL's sharded recipes do it: the base frozen and every weight left
        # in the one dtype ZeRO-3 partitions (4-bit weights are stored as the compute dtype here);
        # prepare_model_for_kbit_training would put norms, embeddings and the head in fp32 beside them.
        for param in model.parameters():
            param.requires_grad_(False)
        if settings.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    elif settings.quantization != "none":
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=settings.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    torch.manual_seed(settings.seed + settings.repeat)  # same LoRA init for the same seed and repeat
    return get_peft_model(model, lora_config(settings, family, task, model))


def save_folder(out: str | Path, model, tokenizer=None, marker: str | None = None, meta: dict | None = None) -> Path:
    """``model`` (and ``tokenizer``, and a ``marker`` JSON file holding ``meta``) saved as the folder
    ``out``: written to a temp sibling and renamed, so a crash never leaves a folder that looks
    complete; what was at ``out`` before is replaced."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if marker:
            (tmp / marker).write_text(json.dumps(meta or {}))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out
