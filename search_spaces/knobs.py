"""What each searchable knob may take (which field it sets: ``trainers.config.owner``): any ``TrainSettings`` field that is a
hyperparameter, any ``peft.LoraConfig`` field and any ``transformers.TrainingArguments`` field,
typed from the libraries' own dataclass fields and checked by building the library's own object
with the value (PEFT's and Transformers' ``__post_init__`` checks are the validation).

A recipe's space lists the knobs it searches by default; ``--space use_dora=true,false`` or
``--space lora_dropout=0:0.2`` adds any other. Values of a ``LoraConfig`` field reach the trial's
``LoraConfig`` through ``TrainSettings.lora_config``, those of a ``TrainingArguments`` field its
``TrainingArguments`` through ``TrainSettings.training_args``; a ``TrainSettings`` field (batch size,
weight decay, the scheduler, the token budget) replaces the field itself.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
import types
import typing
from dataclasses import dataclass
from typing import Literal

from common.errors import ConfigError
from trainers.config import MANAGED_ARGS, MANAGED_LORA, args_fields, lora_fields, owner, owners

def _simple(tp):
    """(kind, choices) for a field annotation: bool/int/float/str, Literal and Enum choices;
    Optional[X] is X; other unions take their first simple member."""
    if isinstance(tp, str):  # postponed annotations (PEFT, TrainSettings)
        tp = {"bool": bool, "int": int, "float": float, "str": str}.get(tp.split(" |")[0].strip(), tp)
    origin = typing.get_origin(tp)
    if origin is Literal:
        values = typing.get_args(tp)
        return type(values[0]), tuple(values)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if arg is not type(None):
                found = _simple(arg)
                if found is not None:
                    return found
        return None
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return str, tuple(m.value for m in tp)
    if tp in (bool, int, float, str):
        return tp, ()
    return None


@dataclass(frozen=True)
class Bound:
    """What one knob may take at all, checked on every space, seed and ``--space`` override, so a
    typo in a recipe is caught like a typo on the command line. ``kind`` is int, float, bool or
    str (then ``choices`` lists the allowed values)."""

    kind: type
    low: float = 0.0
    high: float = 0.0
    low_inclusive: bool = True
    high_inclusive: bool = True
    choices: tuple = ()
    free: bool = False  # a string the library itself judges (search_spaces.knobs.check_value)

    def allowed(self) -> str:
        if self.free:
            return "a string"
        if self.choices:
            return "one of " + ", ".join(map(str, self.choices))
        return f"{'[' if self.low_inclusive else '('}{self.low:g}, {self.high:g}{']' if self.high_inclusive else ')'}"


def bound_for(name: str):
    """The ``Bound`` of any searchable knob (its kind, and its choices where the library lists
    them); the range is left open: the library's own checks (``check_value``) judge the values."""
    where = owner(name)
    if where is None:
        raise ConfigError(f"unknown knob {name!r}; searchable: any TrainSettings hyperparameter, "
                          "peft.LoraConfig field or transformers.TrainingArguments field")
    if name == "init_lora_weights":  # PEFT: bool | Literal[...]; true is its default (Kaiming A, B = 0)
        from trainers.lora_variants import INIT_CHOICES

        return Bound(str, choices=INIT_CHOICES)
    if where == "settings":
        from trainers.config import TrainSettings

        f = {f.name: f for f in dataclasses.fields(TrainSettings)}[name]
        found = _simple(f.type)
    else:
        f = (lora_fields() if where == "lora" else args_fields())[name]
        try:
            hints = typing.get_type_hints(type(_library_default(where)))
        except Exception:  # noqa: BLE001 - an annotation that does not resolve: fall back to the raw one
            hints = {}
        found = _simple(hints.get(name, f.type))
    if found is None:
        raise ConfigError(f"knob {name!r} is a {where} field of a type a search cannot vary (not a bool, "
                          "number, string or choice); set it in the recipe instead")
    kind, choices = found
    if kind is str and not choices:
        return Bound(str, choices=(), free=True)
    if kind is str:
        return Bound(str, choices=choices)
    return Bound(kind, -math.inf, math.inf) if kind is not bool else Bound(bool)


@functools.cache
def _library_default(where: str):
    import tempfile

    if where == "lora":
        from peft import LoraConfig

        return LoraConfig(r=8, target_modules="all-linear")
    from transformers import TrainingArguments

    return TrainingArguments(output_dir=tempfile.gettempdir(), use_cpu=True, report_to=[])


def check_value(name: str, value, settings, what: str = "") -> None:
    """Build what the value goes into (the effective ``TrainSettings``, a ``LoraConfig``, a
    ``TrainingArguments``) with it: the library's own validation, as a one-line ConfigError."""
    from trainers.config import TrialConfig

    where = owner(name)
    try:
        effective = TrialConfig(settings, knobs={name: value}).effective
        effective.validate()
        if where == "lora":
            from peft import LoraConfig

            from trainers.lora_variants import lora_kwargs

            LoraConfig(r=8, target_modules="all-linear", **lora_kwargs(effective.lora_config))
        elif where == "args":
            import tempfile

            from transformers import TrainingArguments

            TrainingArguments(output_dir=tempfile.gettempdir(), use_cpu=True, report_to=[], **effective.training_args)
    except ConfigError as e:
        raise ConfigError(f"{what or 'search space'} `{name}` value {value!r}: {e}") from None
    except (ValueError, TypeError) as e:
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        lib = "peft.LoraConfig" if where == "lora" else "transformers.TrainingArguments"
        raise ConfigError(f"{what or 'search space'} `{name}` value {value!r} is refused by {lib}: {text[:200]}") from None


def current(name: str, settings):
    """The value a knob has when it is not searched: the recipe's setting, or the library default.
    A seed point that predates the knob (the recipe's known-good points) trained with it."""
    where = owner(name)
    if where == "settings":
        return getattr(settings, name)
    given = settings.lora_config if where == "lora" else settings.training_args
    return given[name] if name in given else getattr(_library_default(where), name)


def check_fixed(settings) -> None:
    """``lora_config`` / ``training_args`` given in a recipe or on the command line: every key a
    field of the library's class that the trial does not set itself, the whole built once."""
    import difflib

    for flag, given, fields_, managed in (("lora_config", settings.lora_config, lora_fields, MANAGED_LORA),
                                          ("training_args", settings.training_args, args_fields, MANAGED_ARGS)):
        known = fields_()
        for key in given:
            if key in managed or key in owners() and owners()[key] == "settings":
                raise ConfigError(f"`{flag}` sets {key!r}, which lorasweep sets from its own setting; "
                                  f"pass --{key.replace('_', '-')} (or search it) instead")
            if key not in known:
                close = difflib.get_close_matches(key, list(known), n=1)
                hint = f"did you mean `{close[0]}`?" if close else "see the library's documentation for its fields"
                raise ConfigError(f"`{flag}` has {key!r}, which is no field there; {hint}")
    for flag, given in (("lora_config", settings.lora_config), ("training_args", settings.training_args)):
        for name, value in given.items():
            check_value(name, value, settings, what=f"`{flag}`")
