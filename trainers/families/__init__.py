"""Model families: what differs between architectures, found from a checkpoint's ``model_type``.

Every module in this folder is one family and calls ``register(Family(...))`` at import; nothing
else lists them. A family holds only what differs from the generic settings: the ``model_type``
values it covers, its kind (which tasks can train it), a tiny config and tokenizer for offline
tests, LoRA target modules where ``all-linear`` is wrong, and quirks (extra ``from_pretrained``
arguments). A ``model_type`` no module claims still trains, with the generic settings of its kind
and one warning line.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Callable, Literal

from common.errors import ConfigError
from trainers.registry import Registry

Kind = Literal["decoder", "encoder", "encoder-decoder"]


@dataclass(frozen=True)
class TinyTokenizer:
    """How the offline stand-in's tokenizer looks: its model (byte-level BPE or WordPiece), its special
    tokens and, for chat models, a chat template shaped like the real one."""

    kind: Literal["bpe", "wordpiece"] = "bpe"
    specials: dict = field(default_factory=dict)  # bos/eos/pad/unk/cls/sep/mask tokens; "extra": [...]
    chat_template: str | None = None
    append_eos: bool = False  # T5's tokenizer closes every text with </s>; decoders' add nothing


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    kind: Kind
    tiny_config: Callable | None = None  # tokenizer -> a transformers config of a tiny model of this architecture
    tiny_tokenizer: TinyTokenizer = field(default_factory=TinyTokenizer)
    # None: PEFT's "all-linear" (every linear layer but the output head). A list where that is wrong.
    target_modules: tuple[str, ...] | None = None
    # Modules trained in full beside the adapters when a classification head sits on top.
    head_modules: tuple[str, ...] = ("classifier", "score")
    from_pretrained_kwargs: dict = field(default_factory=dict)
    fp16: bool = True  # False: activations overflow fp16's range (T5's feed-forward): fp32 on GPUs without bf16
    generic: bool = False  # made up for an unknown model_type, not registered by a module


_FAMILIES: Registry[Family] = Registry(__name__, "family")


def register(family: Family) -> Family:
    return _FAMILIES.register(family.name, family)


def available() -> list[str]:
    return _FAMILIES.names()


def get_family(name: str) -> Family:
    return _FAMILIES.get(name)


def kind_of(model_type: str) -> Kind | None:
    """An unregistered ``model_type``'s kind, from Transformers' own Auto mappings."""
    from transformers.models.auto import modeling_auto as auto

    if model_type in auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES:
        return "encoder-decoder"
    if model_type in auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES:  # BERT-likes also have an LM-head class
        return "encoder"
    if model_type in auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return "decoder"
    if model_type in auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES:
        return "encoder"
    return None


def family_for(model_type: str, warn: bool = True) -> Family:
    """The family that claims ``model_type``; else a generic one of its kind (with a warning)."""
    for fam in _FAMILIES.discover().values():
        if model_type in fam.model_types:
            return fam
    kind = kind_of(model_type)
    if kind is None:
        raise ConfigError(f"`model` has model_type {model_type!r}, which Transformers cannot train as a causal LM, "
                          f"encoder or encoder-decoder; pass a checkpoint of one of: {', '.join(available())}")
    if warn:
        print(f"warning: no family module claims model_type {model_type!r}; training it with the generic {kind} "
              f"settings (LoRA on all-linear). Add trainers/families/{model_type}.py to tune them.", file=sys.stderr)
    return Family(name=model_type, model_types=(model_type,), kind=kind, generic=True)


def resolve_family(settings, model_config=None) -> Family:
    """``settings.family`` when given; else the family of the checkpoint's ``model_type``."""
    if settings.family:
        try:
            return get_family(settings.family)
        except ConfigError:
            if model_config is None:
                raise
    if model_config is None:
        from transformers import AutoConfig

        from trainers.model import hf_token

        model_config = AutoConfig.from_pretrained(settings.model, token=hf_token())
    return family_for(model_config.model_type, warn=not settings.family)
