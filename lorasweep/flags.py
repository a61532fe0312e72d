"""The command line of a recipe: one flag per ``SweepOptions`` / ``TrainSettings`` field (TRL's
``SFTConfig`` style), with every default and every choice in ``--help``.

Defaults are SUPPRESSed in the parsed namespace so that ``engine.resolve`` can tell a flag given from
one left to the recipe, its preset or a sweep file; the help shows what each preset makes of it.
A bad flag is one ``ConfigError`` line (argparse's own usage block and exit are replaced).
"""

from __future__ import annotations

import argparse
import json
import typing
from dataclasses import MISSING, fields

from common.errors import ConfigError

USAGE = "%(prog)s [--preset NAME] [--config SWEEP.yaml] [--space KNOB=SPEC ...] [--FLAG VALUE ...]"


class Parser(argparse.ArgumentParser):
    """argparse with our error contract: ``error: <one line>`` and exit 2, raised as ConfigError so
    the caller prints it like every other refusal (argparse prints its usage block and exits)."""

    def error(self, message):
        raise ConfigError(f"{message}; see --help")

    def format_help(self):
        # Registry choices (tasks, families, Transformers' schedulers) are looked up here, for --help
        # only: SchedulerType alone imports torch (~4.5 s), which a bad flag's error need not wait for.
        for action in self._actions:
            lookup = getattr(action, "lazy_choices", None)
            if lookup is not None:
                action.metavar, action.lazy_choices = "{" + ",".join(map(str, lookup())) + "}", None
        return super().format_help()

    def _get_value(self, action, arg_string):
        # argparse rewords a type error as "argument --x: invalid <type> value"; ours name the flag already
        type_func = self._registry_get("type", action.type, action.type)
        try:
            return type_func(arg_string)
        except argparse.ArgumentTypeError as e:
            raise ConfigError(str(e)) from None


def static_choices(cls, f) -> tuple:
    """A field's allowed values known without importing anything: its ``Literal`` type or a tuple in
    ``metadata["choices"]`` (a function there, for registries, is called by ``Parser.format_help``)."""
    choices = f.metadata.get("choices")
    if callable(choices):
        return ()
    if choices:
        return tuple(choices)
    hint = typing.get_type_hints(cls).get(f.name)
    return tuple(typing.get_args(hint)) if typing.get_origin(hint) is typing.Literal else ()


def field_kind(f) -> str:
    """bool, int, float, str, tuple[int], tuple[str], dict or optional int/str, from the annotation."""
    kind = str(f.type)
    if kind in ("bool", "<class 'bool'>"):
        return "bool"
    if kind.startswith("dict"):
        return "dict"
    if kind.startswith("tuple"):
        return "tuple[int]" if "int" in kind else "tuple[str]"
    if kind in ("int", "int | None"):
        return kind
    if kind == "float":
        return "float"
    return "str | None" if "None" in kind else "str"


def show(value) -> str:
    """A value as the help and the sweep files write it."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if value is None or value == "":
        return "unset"
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value)) or "unset"
    if isinstance(value, dict):
        return json.dumps(value) if value else "unset"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    return str(value)


def _default(f):
    return f.default if f.default is not MISSING else f.default_factory()


def preset_defaults(recipe, cls) -> dict[str, dict]:
    """``{preset: {field: value}}``: what each preset of ``recipe`` makes of ``cls``'s fields when no
    flag is given (``TrainSettings``: field default < recipe settings < preset settings)."""
    from lorasweep.recipe import SweepOptions

    out = {}
    for name, preset in recipe.presets.items():
        values = {f.name: _default(f) for f in fields(cls)}
        if cls is SweepOptions:
            values.update({"name": f"{recipe.name}-{name}", **preset.sweep})
        else:
            values.update({"dataset": recipe.dataset, **recipe.settings, **preset.settings})
            if preset.assets is not None:
                for key in ("model", "dataset"):
                    values[key] = "built offline by the preset"
        out[name] = values
    return out


def default_text(name: str, by_preset: dict[str, dict], first: str) -> str:
    """``default: 16`` when every preset agrees, else ``default: 8 (smoke preset: 2)``."""
    mine = by_preset[first][name]
    others = {p: v[name] for p, v in by_preset.items() if p != first and v[name] != mine}
    text = f"default: {show(mine)}"
    if others:
        text += f" ({'; '.join(f'{p} preset: {show(v)}' for p, v in others.items())})"
    return text


def add_dataclass_args(parser, cls, recipe, skip=(), by_preset: dict | None = None) -> None:
    """One flag per field, from its type, ``metadata["help"]``, its choices and each preset's default
    (``by_preset``: ``preset_defaults(recipe, cls)``)."""
    for f in fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        help_ = f.metadata.get("help", "")
        choices = static_choices(cls, f)
        if by_preset is not None:
            help_ = f"{help_} [{default_text(f.name, by_preset, recipe.default_preset)}]" if help_ else \
                f"[{default_text(f.name, by_preset, recipe.default_preset)}]"
        help_ = help_.replace("%", "%%")
        kind = field_kind(f)
        metavar = "{" + ",".join(map(str, choices)) + "}" if choices else None
        if kind == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_)
        elif kind == "dict":
            parser.add_argument(flag, type=json_object(flag), default=argparse.SUPPRESS, metavar="JSON", help=help_)
        elif kind.startswith("tuple"):
            item = int if kind == "tuple[int]" else str
            parser.add_argument(flag, type=csv(flag, item), default=argparse.SUPPRESS, metavar="A,B,...", help=help_)
        else:
            typ = {"int": int, "float": float, "int | None": int}.get(kind, str)
            action = parser.add_argument(flag, type=typed(flag, typ), default=argparse.SUPPRESS, help=help_,
                                         metavar=metavar or ("N" if typ is int else "X" if typ is float else "TEXT"))
            if callable(f.metadata.get("choices")):
                action.lazy_choices = f.metadata["choices"]  # Parser.format_help fills them in


def typed(flag: str, typ):
    def parse(text: str):
        try:
            return typ(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"`{flag}` is {text!r}, not {'an' if typ is int else 'a'} "
                                             f"{typ.__name__}") from None
    parse.__name__ = typ.__name__
    return parse


def json_object(flag: str):
    def parse(text: str) -> dict:
        try:
            value = json.loads(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"`{flag}` is not JSON ({e}); e.g. {flag} '{{\"use_dora\": true}}'") from None
        if not isinstance(value, dict):
            raise argparse.ArgumentTypeError(f"`{flag}` is {text!r}, not a JSON object; e.g. {flag} '{{\"use_dora\": true}}'")
        return value
    parse.__name__ = "JSON object"
    return parse


def csv(flag: str, item):
    def parse(text: str) -> tuple:
        try:
            return tuple(item(v.strip()) for v in text.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"`{flag}` is {text!r}, not a comma-separated list of {item.__name__}") from None
    parse.__name__ = f"list of {item.__name__}"
    return parse


def build_parser(recipe, prog: str | None = None) -> argparse.ArgumentParser:
    from lorasweep.recipe import SweepOptions
    from trainers.config import TrainSettings

    p = Parser(
        prog=prog or f"python sweeps/{recipe.name}.py",
        usage=USAGE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=recipe.doc or recipe.name,
        epilog="Every flag may also be a key of a sweep file (--config); flags given here override the file's.\n"
               "Knob specs: --space r=8,16,32 (a choice), learning_rate=1e-5:1e-3 (the knob's kind of range), "
               "log:1e-5:1e-3 / uniform:0:0.1.",
    )
    presets = ", ".join(f"{k} ({v.description})" for k, v in recipe.presets.items())
    p.add_argument("--preset", default=argparse.SUPPRESS, metavar="{" + ",".join(recipe.presets) + "}",
                   help=f"{presets} [default: {recipe.default_preset}]")
    p.add_argument("--config", default=argparse.SUPPRESS, metavar="SWEEP.yaml",
                   help="a sweep file (YAML) holding any of these flags; flags given here override it "
                        "(a sweep's own sweep.yaml reruns it) [default: unset: the recipe and its preset alone]")
    p.add_argument("--space", action="append", default=[], metavar="KNOB=SPEC",
                   help="search this knob over this range (repeatable): r=8,16 | learning_rate=1e-5:1e-3 | "
                        "warmup_ratio=uniform:0:0.05 | use_dora=true,false; any TrainSettings, LoraConfig or "
                        "TrainingArguments field [default: the recipe's: "
                        + "; ".join(recipe.search_space.describe()) + "]")
    add_dataclass_args(p.add_argument_group("sweep (driver side)"), SweepOptions, recipe,
                       by_preset=preset_defaults(recipe, SweepOptions))
    t = p.add_argument_group("trial (what each Ray Train worker does)")
    by_preset = preset_defaults(recipe, TrainSettings)
    add_dataclass_args(t, TrainSettings, recipe, skip=("seed",), by_preset=by_preset)
    seed = next(f for f in fields(TrainSettings) if f.name == "seed")
    t.add_argument("--data-seed", type=typed("--data-seed", int), dest="data_seed", default=argparse.SUPPRESS,
                   metavar="N", help=f"seed for the eval split, shuffling and LoRA init "
                                     f"[{default_text(seed.name, by_preset, recipe.default_preset)}]")
    return p
