"""LoRA's searchable variants beyond r and alpha: the attention/MLP rank split, LoRA+ and the
initialisations a trial can use.

``--space rank_split=0.5,1,2`` gives the attention modules ``rank_split`` times the MLP modules' rank
at the adapter size of rank ``r`` everywhere, through PEFT's ``rank_pattern``; ``alpha_pattern``
keeps every module's update scale (alpha/r, or alpha/sqrt(r) with rsLoRA) what it is at rank ``r``,
so the split changes only where the capacity goes. A module is an attention module when a part of
its name says so (``self_attn``, ``attention``, T5's ``SelfAttention`` / ``EncDecAttention``); the
rest of the targeted layers (``mlp``, ``ffn``, BERT's ``intermediate`` / ``output``) are the MLP side.

``--space loraplus_lr_ratio=0,8,16`` trains the B matrices at ``learning_rate`` x the ratio (LoRA+,
PEFT's ``create_loraplus_optimizer``, the Trainer's own optimizer class and arguments). Under
DeepSpeed, Transformers asks the Trainer for its optimizer (lorasweep's DeepSpeed config names none)
and hands it to DeepSpeed: checked by hand on two CPU ranks (Dec 4), ZeRO-2 and ZeRO-3 both kept
the two groups, B at 16x A's rate, and eval loss fell 1.21 -> 1.09 in 3 steps.
"""

from __future__ import annotations

import math
import re

_ATTENTION = re.compile(r"attn|attention", re.IGNORECASE)

# init_lora_weights values a trial cannot use as lorasweep trains and exports adapters, and why
INIT_REFUSED = {
    "corda": "CorDA needs a pass over the data first (peft preprocess_corda), which lorasweep does not run; "
             "search true, gaussian or orthogonal",
    "eva": "EVA needs a pass over the data first (peft initialize_lora_eva_weights), which lorasweep does not "
           "run; search true, gaussian or orthogonal",
    "loftq": "LoftQ needs a loftq_config and a base loaded unquantised, which lorasweep's 4-bit path does not "
             "do; use --quantization 4bit with gaussian (QLoRA), or search true, gaussian or orthogonal",
    "lora_ga": "LoRA-GA needs gradients from a pass over the data first, which lorasweep does not run",
    "mica": "MiCA is not searched by lorasweep; search true, gaussian or orthogonal",
}
# what a searched init_lora_weights may take (PEFT's annotation is bool | Literal[...], which a search
# space cannot type; the refused ones are listed so that the refusal says why)
# PiSSA and OLoRA move part of each targeted base weight into the adapter at init (W = W_res + B0 A0,
# the base becoming W_res). A trial's checkpoint keeps the raw adapter: PeftModel.from_pretrained on
# the original base runs the same (deterministic) init again before loading A and B, so the final
# round and a resume see W_res + BA. The exported adapter is converted to a plain LoRA of the original
# base, of rank 2r (PEFT's path_initial_model_for_weight_conversion: [B, B0] [A; -A0]), which any
# LoRA loader applies to the untouched base. Checked on a tiny Llama (Dec 4): the raw reload gives
# the trained model's logits exactly, the converted one within 4e-6, with rsLoRA and rank_pattern too.
CHANGES_BASE = ("pissa", "olora")
INITIAL_ADAPTER = "initial_adapter"  # in the trial's output folder: B0, A0 as the init made them
CONVERTED = "lora_converted"  # in a checkpoint: its adapter as a plain LoRA of the original base

INIT_CHOICES = ("true", "gaussian", "orthogonal", *CHANGES_BASE, *INIT_REFUSED)


def changes_base(lora_config) -> bool:
    return getattr(lora_config, "init_lora_weights", None) in CHANGES_BASE


def save_initial(model, out_dir: str) -> str:
    """The adapter as PiSSA/OLoRA initialised it (before any step), for ``save_converted``."""
    import os

    path = os.path.join(out_dir, INITIAL_ADAPTER)
    model.save_pretrained(path)
    return path


def save_converted(model, checkpoint_dir: str, initial: str) -> None:
    """The trained PiSSA/OLoRA adapter as a plain LoRA of the original base, into
    ``<checkpoint_dir>/lora_converted`` (what the export keeps)."""
    import os

    model.save_pretrained(os.path.join(checkpoint_dir, CONVERTED), path_initial_model_for_weight_conversion=initial)


def lora_kwargs(lora_config: dict) -> dict:
    """``lora_config`` as ``peft.LoraConfig`` takes it: a searched init_lora_weights "true"/"false" as the bool."""
    init = lora_config.get("init_lora_weights")
    if isinstance(init, str) and init.lower() in ("true", "false"):
        return {**lora_config, "init_lora_weights": init.lower() == "true"}
    return lora_config



def _pattern_key(name: str) -> str | None:
    """The name from its attention part on (``model.layers.3.self_attn.q_proj`` -> ``self_attn.q_proj``),
    as a regex PEFT matches at the end of every module name; None for a module outside attention."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if _ATTENTION.search(part):
            return re.escape(".".join(p for p in parts[i:] if not p.isdigit()))
    return None


def targeted_linears(model, config) -> list[tuple[str, int]]:
    """(module name, in + out features) of every layer ``config`` puts LoRA on, found as PEFT finds
    them (its private helpers: pinned peft range in pyproject.toml)."""
    import copy

    from peft.tuners.tuners_utils import _maybe_include_all_linear_layers, check_target_module_exists

    config = _maybe_include_all_linear_layers(copy.deepcopy(config), model)
    out = []
    for name, module in model.named_modules():
        size = (getattr(module, "in_features", None), getattr(module, "out_features", None))
        if None not in size and check_target_module_exists(config, name):
            out.append((name, size[0] + size[1]))
    return out


def rank_split(model, config, split: float) -> tuple[dict, str]:
    """LoraConfig fields that give attention ``split`` x the MLP rank at the size of rank ``r``
    everywhere (``r``, ``lora_alpha``, ``rank_pattern``, ``alpha_pattern``), and a line saying so.
    ({}, line) where there is nothing to split (every target on one side)."""
    r, alpha, rslora = config.r, config.lora_alpha, config.use_rslora  # the even split's
    layers = targeted_linears(model, config)
    attn = sum(c for n, c in layers if _pattern_key(n) is not None)
    mlp = sum(c for n, c in layers if _pattern_key(n) is None)
    if not attn or not mlp:
        side = "attention" if attn else "MLP"
        return {}, f"rank_split {split:g}: every targeted layer is an {side} layer, so rank {r} everywhere"
    # orthogonal initialisation splits each rank in halves: even ranks for it
    step = 2 if config.init_lora_weights == "orthogonal" else 1
    r_mlp = max(step, step * round(r * (attn + mlp) / (split * attn + mlp) / step))
    r_attn = max(step, step * round(split * r * (attn + mlp) / (split * attn + mlp) / step))
    scale = alpha / (math.sqrt(r) if rslora else r)

    def alpha_for(rank: int) -> float:
        return scale * (math.sqrt(rank) if rslora else rank)

    keys = sorted({k for n, _ in layers if (k := _pattern_key(n)) is not None})
    fields = {"r": r_mlp, "lora_alpha": alpha_for(r_mlp),
              "rank_pattern": {k: r_attn for k in keys}, "alpha_pattern": {k: alpha_for(r_attn) for k in keys}}
    size = (r_attn * attn + r_mlp * mlp) / (r * (attn + mlp))
    return fields, (f"rank_split {split:g}: attention r {r_attn}, MLP r {r_mlp} ({size:.2f}x the adapter of r {r} "
                    "everywhere, each module's update scale kept)")


def loraplus_optimizer(trainer, model, ratio: float):
    """The Trainer's optimizer (its class and arguments: --optim, betas, eps) with LoRA+'s groups:
    B matrices at the learning rate x ``ratio``, the rest at the learning rate, weight decay as set."""
    from peft.optimizers import create_loraplus_optimizer

    cls, kwargs = trainer.get_optimizer_cls_and_kwargs(trainer.args, model)
    kwargs = dict(kwargs)
    lr = kwargs.pop("lr", trainer.args.learning_rate)
    return create_loraplus_optimizer(model, cls, lr=lr, loraplus_lr_ratio=ratio,
                                     loraplus_weight_decay=trainer.args.weight_decay, **kwargs)
