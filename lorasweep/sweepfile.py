"""Sweep files: everything the flags hold, in YAML, validated into the same typed config.

    recipe: chat_sft                       # `lorasweep recipes` lists them; or a .py file defining RECIPE
    preset: real
    model: HuggingFaceTB/SmolLM2-360M-Instruct
    dataset: data/chats.jsonl
    sweep:                                 # SweepOptions: the driver's flags (--num-samples, ...)
      num_samples: 8
    train:                                 # TrainSettings: the trial's flags (--max-tokens, ...)
      max_tokens: 500_000
    space:                                 # --space, one knob per key
      r: [8, 16, 32]
      learning_rate: {loguniform: [1.0e-5, 1.0e-3]}

Any flag may also sit at the top level under its own name (``num_samples: 8``). The file's values
take the place of flags (flags given on the command line override them), so ``engine.resolve``
validates them with the same one-line errors; a line number is added to any error about a value
that came from the file (``sweep.yaml:9: `max_tokens` is 0; ...``).

Every sweep writes its resolved config as ``sweep.yaml`` in its folder: a sweep file that reruns it.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field, fields

from common.errors import ConfigError

SECTIONS = ("sweep", "train")
TOP = ("recipe", "preset", "space", "config")


@dataclass
class SweepFile:
    path: str
    recipe: str | None = None
    values: dict = field(default_factory=dict)  # resolve's argument names -> values (as the flags give them)
    lines: dict = field(default_factory=dict)  # the same names, and "space.<knob>" -> line in the file

    def where(self, name: str) -> str:
        return f"{self.path}:{self.lines[name]}" if name in self.lines else self.path


def _field_maps():
    from lorasweep.recipe import SweepOptions
    from trainers.config import TrainSettings

    return {f.name: f for f in fields(SweepOptions)}, {f.name: f for f in fields(TrainSettings)}


def load(path: str) -> SweepFile:
    """Read and type-check a sweep file: every key known, every value of its field's type. Raises
    ConfigError with ``path:line`` for a YAML mistake, an unknown key or a value of the wrong type."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        from common.errors import os_reason

        raise ConfigError(f"`--config` {path!r} cannot be read ({os_reason(e)}); give a sweep file (YAML)") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        at = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else path
        what = " ".join(str(getattr(e, "problem", None) or e).split())
        raise ConfigError(f"{at}: not valid YAML ({what}); check the indentation and quoting there") from None
    out = SweepFile(path)
    if root is None:
        return out
    if not isinstance(root, yaml.MappingNode):
        raise ConfigError(f"{path}:{root.start_mark.line + 1}: a sweep file is a mapping of keys (recipe:, model:, "
                          "sweep:, train:, space:), not a YAML list or a single value")
    opts, train = _field_maps()
    for key, node, line in _items(root, path, "the file"):
        if key == "recipe" or key == "preset":
            value = _scalar(node, path, key, str)
            if key == "recipe":
                out.recipe = value
            else:
                out.values["preset"] = value
            out.lines[key] = line
        elif key == "space":
            _space(node, path, out)
        elif key in SECTIONS:
            if not isinstance(node, yaml.MappingNode):
                raise ConfigError(f"{path}:{line}: `{key}` holds {'SweepOptions' if key == 'sweep' else 'TrainSettings'} "
                                  f"fields as a mapping (e.g. {'num_samples: 8' if key == 'sweep' else 'max_tokens: 100000'})")
            known = opts if key == "sweep" else train
            for name, sub, subline in _items(node, path, f"`{key}`"):
                if name not in known:
                    other = "train" if key == "sweep" else "sweep"
                    raise ConfigError(f"{path}:{subline}: `{key}.{name}` is not a {'sweep' if key == 'sweep' else 'trial'} "
                                      f"setting{_close(name, known, other=(other, train if key == 'sweep' else opts))}")
                dest = "data_seed" if key == "train" and name == "seed" else name
                _put(out, dest, _typed(sub, path, f"{key}.{name}", known[name]), subline, path)
        elif key in opts or key in train or key == "data_seed":
            f = opts.get(key) or train.get(key) or train["seed"]
            _put(out, key, _typed(node, path, key, f), line, path)
        else:
            raise ConfigError(f"{path}:{line}: `{key}` is not a sweep-file key{_close(key, {**opts, **train}, extra=(*TOP, *SECTIONS))}")
    return out


def _items(node, path: str, where: str):
    """``(key, value node, line)`` of a mapping node; a key given twice is refused (YAML would keep
    the last silently)."""
    import yaml

    seen = {}
    for k, v in node.value:
        if not isinstance(k, yaml.ScalarNode):
            raise ConfigError(f"{path}:{k.start_mark.line + 1}: keys in {where} are plain names")
        key = k.value.strip().replace("-", "_")
        line = k.start_mark.line + 1
        if key in seen:
            raise ConfigError(f"{path}:{line}: `{key}` is given twice in {where} (first at line {seen[key]}); keep one")
        seen[key] = line
        yield key, v, line


def _put(out: SweepFile, dest: str, value, line: int, path: str) -> None:
    if dest in out.values:
        raise ConfigError(f"{path}:{line}: `{dest}` is given twice (also at line {out.lines[dest]}); keep one")
    out.values[dest], out.lines[dest] = value, line


def _close(name: str, known, other: tuple[str, dict] | None = None, extra=()) -> str:
    """``; did you mean ...``, or the section a key belongs to (``other``: its name and fields)."""
    import difflib

    if other and name in other[1]:
        return f"; it belongs under `{other[0]}:`, or at the top level"
    close = difflib.get_close_matches(name, [*known, *extra], n=1)
    return f"; did you mean `{close[0]}`?" if close else "; `lorasweep run RECIPE --help` lists every key (a flag's name)"


def _construct(node):
    import yaml

    return yaml.SafeLoader("").construct_object(node, deep=True)


def _scalar(node, path: str, name: str, typ):
    value = _construct(node)
    if not isinstance(value, typ) or isinstance(value, bool) and typ is not bool:
        raise ConfigError(f"{path}:{node.start_mark.line + 1}: `{name}` is {value!r}; give a {typ.__name__}")
    return value


def _typed(node, path: str, name: str, f):
    """The node's value, checked against the field's type as the flag would parse it."""
    from lorasweep.flags import field_kind

    kind = field_kind(f)
    value = _construct(node)
    at = f"{path}:{node.start_mark.line + 1}"
    if value is None and kind in ("int | None", "str | None"):
        return None
    if kind == "bool":
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{at}: `{name}` is {value!r}; give true or false")
    if kind in ("int", "int | None"):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{at}: `{name}` is {value!r}; give a whole number (e.g. 2_000_000)")
    if kind == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as text
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{at}: `{name}` is {value!r}; give a number (e.g. 1.0e-4)")
    if kind.startswith("tuple"):
        item = int if kind == "tuple[int]" else str
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list) or any(isinstance(v, (bool, list, dict)) or v is None for v in items):
            raise ConfigError(f"{at}: `{name}` is {value!r}; give a list of {item.__name__} (e.g. [a, b]) "
                              "or comma-separated text")
        try:
            return tuple(item(v.strip() if isinstance(v, str) else v) for v in items if str(v).strip())
        except ValueError:
            raise ConfigError(f"{at}: `{name}` is {value!r}; give a list of {item.__name__} (e.g. [0, 1])") from None
    if kind == "dict":
        if isinstance(value, dict):
            return value
        raise ConfigError(f"{at}: `{name}` is {value!r}; give a mapping (e.g. {{use_dora: true}})")
    if isinstance(value, str):
        return value
    raise ConfigError(f"{at}: `{name}` is {value!r}; give text (quote it: \"{value}\")")


def _space(node, path: str, out: SweepFile) -> None:
    """``space:`` -> ``--space`` specs: ``r: [8, 16]`` is a choice (a list inside a choice is one
    value of modules joined by +), ``learning_rate: 1e-5:1e-3`` a range as on the command line,
    ``{loguniform: [a, b]}`` / ``{uniform: [a, b]}`` / ``{choice: [...]}`` as sweep_config.json has them."""
    import yaml

    if not isinstance(node, yaml.MappingNode):
        raise ConfigError(f"{path}:{node.start_mark.line + 1}: `space` maps each knob to its values, e.g. "
                          "`r: [8, 16]` or `learning_rate: {loguniform: [1.0e-5, 1.0e-3]}`")
    specs = out.values.setdefault("space", [])
    for knob, sub, line in _items(node, path, "`space`"):
        value = _construct(sub)
        at = f"{path}:{line}"
        if isinstance(value, dict) and len(value) == 1:
            (kind, arg), = value.items()
            if kind == "choice" and isinstance(arg, list):
                value = arg
            elif kind in ("loguniform", "log", "uniform") and isinstance(arg, list) and len(arg) == 2:
                value = f"{'log' if kind != 'uniform' else 'uniform'}:{_text(arg[0])}:{_text(arg[1])}"
            else:
                raise ConfigError(f"{at}: `space.{knob}` is {value!r}; give {{loguniform: [low, high]}}, "
                                  "{uniform: [low, high]} or {choice: [a, b]}")
        if isinstance(value, list):
            if not value:
                raise ConfigError(f"{at}: `space.{knob}` has no choices; give at least one, e.g. [8, 16]")
            value = ",".join("+".join(map(_text, v)) if isinstance(v, list) else _text(v) for v in value)
        elif isinstance(value, dict) or value is None:
            raise ConfigError(f"{at}: `space.{knob}` is {value!r}; give a list of choices or a range low:high")
        specs.append(f"{knob}={_text(value)}")
        out.lines[f"space.{knob}"] = line


def _text(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return repr(v) if isinstance(v, float) else str(v)


# ----------------------------------------------------------------------------- where an error came from

_SPACE = re.compile(r"`--space ([\w.]+)=|^search space `([\w.]+)`")
_NAMED = re.compile(r"`(?:--)?([A-Za-z_][\w-]*)")


def locate(e: ConfigError, sf: SweepFile | None, given: set[str]) -> ConfigError:
    """``e`` with ``path:line: `` in front of each of its problems whose value came from the sweep
    file (not from a flag given on the command line, which overrides the file's)."""
    if sf is None:
        return e
    lines = [_locate_line(text, sf, given) for text in e.problems]
    return e if lines == e.problems else type(e)("\n".join(lines))


def _locate_line(text: str, sf: SweepFile, given: set[str]) -> str:
    if text.startswith(sf.path):
        return text
    names = [f"space.{m.group(1) or m.group(2)}" for m in _SPACE.finditer(text)]
    names += [m.group(1).replace("-", "_") for m in _NAMED.finditer(text)]
    for name in names:
        if name in sf.lines and name not in given:  # given: the flags' names, and space.<knob> per --space
            return f"{sf.where(name)}: {text}"
    return text


# ----------------------------------------------------------------------------- the resolved config, written


def _flow(value) -> str:
    """One YAML value on one line (flow style), as safe_load reads it back."""
    import yaml

    if isinstance(value, tuple):
        value = list(value)
    return yaml.safe_dump([value], default_flow_style=True, width=10**9, allow_unicode=True).strip()[1:-1]


# Options that describe this invocation, not the sweep: a rerun decides them anew.
NOT_WRITTEN = ("resume", "retry_failed", "dry_run")


def dump(sweep) -> str:
    """The resolved sweep as a sweep file: every SweepOptions and TrainSettings value (the preset's
    offline stand-ins as comments: the preset builds them again), and the searched space."""
    import dataclasses

    from lorasweep.versions import versions

    options, settings = sweep.options, sweep.settings
    ref = sweep.recipe_ref or sweep.recipe.name
    folder = sweep.sweep_dir
    lines = [
        f"# lorasweep sweep file, written by the sweep {options.name!r} on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"# rerun it:   lorasweep run --config {folder}/sweep.yaml --name {options.name}-2",
        f"# resume it:  lorasweep run --config {folder}/sweep.yaml --resume",
        "# " + ", ".join(f"{k} {v}" for k, v in versions().items()),
        f"recipe: {_flow(ref)}",
        f"preset: {_flow(sweep.preset)}",
        f"sweep:  # the driver's options (--num-samples, ...; `lorasweep run {sweep.recipe.name} --help`)",
    ]
    from lorasweep.storage import redact

    for f in dataclasses.fields(options):
        value = getattr(options, f.name)
        if f.name in NOT_WRITTEN:
            continue
        if isinstance(value, str) and redact(value) != value:  # a database or server URL with a password
            lines.append(f"  # {f.name}: {_flow(redact(value))}  (its password is not written: pass "
                         f"--{f.name.replace('_', '-')} again)")
        else:
            lines.append(f"  {f.name}: {_flow(value)}")
    lines.append("train:  # what each trial trains with (TrainSettings: --max-tokens, ...)")
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if f.name in sweep.from_assets:
            lines.append(f"  # {f.name}: {_flow(value)}  (built offline by the {sweep.preset} preset; uncomment to pin it)")
        else:
            lines.append(f"  {f.name}: {_flow(value)}")
    lines.append("space:  # the searched knobs; the trials start from the recipe's known points:")
    for seed in sweep.space.known_points:
        lines.append("  #   " + ", ".join(f"{k}={v}" for k, v in seed.items()))
    for knob, spec in sweep.space.to_json().items():
        lines.append(f"  {knob}: {_flow(spec['choice'] if 'choice' in spec else spec)}")
    return "\n".join(lines) + "\n"
