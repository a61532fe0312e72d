"""Search spaces as data: distributions by knob name, the metric and its direction, and seeds.

A space is plain data so it can be printed (``--dry-run``), overridden from the command line
(``--space learning_rate=1e-5:1e-3 --space r=8,16``) and turned into Ray Tune distributions, which
``OptunaSearch`` converts to Optuna's. Knobs keep their library names (``r``, ``lora_alpha``,
``use_rslora`` from peft.LoraConfig; ``packing`` from TRL; ``warmup_ratio``, ``learning_rate`` from
transformers).
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field, replace
from typing import Any

from common.errors import ConfigError
from search_spaces.knobs import Bound, bound_for
from trainers.config import owners


@dataclass(frozen=True)
class Choice:
    values: tuple

    def describe(self) -> str:
        return "{" + ", ".join(map(str, self.values)) + "}"


@dataclass(frozen=True)
class Uniform:
    low: float
    high: float

    def describe(self) -> str:
        return f"uniform[{self.low:g}, {self.high:g}]"


@dataclass(frozen=True)
class LogUniform:
    low: float
    high: float

    def describe(self) -> str:
        return f"log-uniform[{self.low:g}, {self.high:g}]"


Dist = Choice | Uniform | LogUniform


@dataclass(frozen=True)
class SearchSpace:
    params: dict[str, Dist]
    bounds: dict[str, Bound]  # every knob this space may search (a superset of ``params``)
    metric: str = "eval_loss"
    mode: str = "min"
    # Known-good points evaluated before the searcher proposes anything (Optuna enqueues them).
    known_points: tuple[dict[str, Any], ...] = field(default_factory=tuple)
    # Per seed: the knobs ``--space`` moved it on, with the value the recipe gave (``known_point_label``).
    moved: tuple[dict[str, Any], ...] = field(default_factory=tuple)

    def known_point_label(self, point: dict) -> str:
        """"known point 2" for a trial at the second seed, "known point 2 (moved: learning_rate
        0.001 -> 0.0005)" when a narrowed space moved it; "" for a point the searcher proposed."""
        for i, seed in enumerate(self.known_points, 1):
            if all(point.get(k) == v for k, v in seed.items() if k in self.params):
                moved = self.moved[i - 1] if i <= len(self.moved) else {}
                shifts = ", ".join(f"{k} {v:g} -> {seed[k]:g}" if isinstance(v, float) else f"{k} {v} -> {seed[k]}"
                                   for k, v in moved.items())
                return f"known point {i}" + (f" (moved: {shifts})" if shifts else "")
        return ""

    def validate(self) -> "SearchSpace":
        if self.mode not in ("min", "max"):
            raise ConfigError(f"search space `mode` is {self.mode!r}; choose min or max")
        for name, dist in self.params.items():
            _check_dist(name, dist, self.bounds)
        for i, seed in enumerate(self.known_points):
            missing = set(self.params) - set(seed)
            if missing:
                raise ConfigError(f"seed point {i} lacks {sorted(missing)}; give every searched knob a value")
            for name, value in seed.items():
                if name in self.params:
                    _check_value(name, value, f"seed point {i}", self.bounds[name])
        return self

    def override(self, spec: str) -> "SearchSpace":
        """``name=v1,v2,...`` -> a choice; ``name=low:high`` -> same kind as before, new range
        (``name=log:low:high`` / ``name=uniform:low:high`` to pick the kind)."""
        shown = spec if spec.isprintable() else repr(spec)[1:-1]  # keep the message on one line
        if "=" not in spec:
            raise ConfigError(f"`--space {shown}` must look like name=a,b,c or name=low:high")
        name, _, value = spec.partition("=")
        name = name.strip()
        bounds = self.bounds
        if name not in bounds:  # any other hyperparameter: typed from its library's field

            try:
                bounds = {**bounds, name: bound_for(name)}
            except ConfigError as e:
                close = difflib.get_close_matches(name, list(owners()), n=1)
                hint = f"; did you mean `{close[0]}`?" if close and name not in owners() else ""
                if name in ("rank_pattern", "alpha_pattern"):
                    hint = "; `--space rank_split=0.5,1,2` searches the attention/MLP rank split at a fixed adapter size"
                raise ConfigError(f"`--space {shown}`: {e}{hint}") from None
        kind = bounds[name].kind
        try:
            if ":" in value:
                parts = value.split(":")
                if len(parts) == 3:
                    cls = {"log": LogUniform, "uniform": Uniform}[parts[0]]
                    parts = parts[1:]
                elif len(parts) == 2:
                    old = self.params.get(name)
                    cls = type(old) if isinstance(old, (Uniform, LogUniform)) else Uniform
                else:
                    raise ValueError(value)
                dist: Dist = cls(float(parts[0]), float(parts[1]))
            else:
                dist = Choice(tuple(_parse(kind, v) for v in value.split(",") if v.strip() != ""))
        except (KeyError, ValueError, IndexError):
            if ":" not in value and value.strip():
                raise ConfigError(f"`--space {shown}`: `{name}` takes {kind.__name__} values"
                                  f"{' (true or false)' if kind is bool else ''}") from None
            raise ConfigError(f"`--space {shown}` is not name=a,b,c, name=low:high or name=log:low:high") from None
        _check_dist(name, dist, bounds)
        return replace(self, params={**self.params, name: dist}, bounds=bounds)

    def to_tune(self) -> dict:
        from ray import tune

        out = {}
        for name, dist in self.params.items():
            if isinstance(dist, Choice):
                out[name] = tune.choice(list(dist.values))
            elif isinstance(dist, LogUniform):
                out[name] = tune.loguniform(dist.low, dist.high)
            else:
                out[name] = tune.uniform(dist.low, dist.high)
        return out

    def describe(self) -> list[str]:
        return [f"{name}: {dist.describe()}" for name, dist in self.params.items()]

    def to_json(self) -> dict:
        """The distributions as data (``sweep_config.json``'s ``space``; ``distributions`` reads it
        back): ``{"r": {"choice": [8, 16]}, "learning_rate": {"loguniform": [1e-5, 1e-3]}}``."""
        return {name: ({"choice": list(d.values)} if isinstance(d, Choice)
                       else {"loguniform" if isinstance(d, LogUniform) else "uniform": [d.low, d.high]})
                for name, d in self.params.items()}


def distributions(spec: dict) -> dict:
    """Optuna's distributions for ``SearchSpace.to_json()``: what the sweep report rebuilds a
    study from (parameter importances) without the recipe that made the space."""
    import optuna.distributions as od

    out = {}
    for name, d in spec.items():
        if "choice" in d:
            out[name] = od.CategoricalDistribution(d["choice"])
        else:
            low, high = d.get("loguniform") or d["uniform"]
            out[name] = od.FloatDistribution(low, high, log="loguniform" in d)
    return out


def _parse(kind: type, text: str):
    text = text.strip()
    if kind is str:
        return text
    if kind is bool:
        lowered = text.lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        raise ValueError(text)
    return kind(float(text)) if kind is int and float(text).is_integer() else kind(text)


def _check_value(name: str, value, where: str, bound: Bound) -> None:
    if bound.kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: `{name}` is {value!r}; it must be true or false")
        return
    if bound.kind is str:
        if bound.free and isinstance(value, str) and value:
            return
        if value not in bound.choices:
            raise ConfigError(f"{where}: `{name}` is {value!r}; allowed: {bound.allowed()}")
        return
    # isfinite() only on floats: it overflows on an int past float range (--space r=1111...1)
    not_finite = isinstance(value, float) and not math.isfinite(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not_finite:
        raise ConfigError(f"{where}: `{name}` is {value!r}; it must be a number")
    if bound.kind is int and isinstance(value, float) and not value.is_integer():
        raise ConfigError(f"{where}: `{name}` is {value!r}; it must be a whole number")
    too_low = value < bound.low if bound.low_inclusive else value <= bound.low
    too_high = value > bound.high if bound.high_inclusive else value >= bound.high
    if too_low or too_high:
        raise ConfigError(f"{where}: `{name}` is {value!r}; allowed range is {bound.allowed()}")


def _check_dist(name: str, dist, bounds: dict[str, Bound]) -> None:
    where = f"search space `{name}`"
    if name not in bounds:  # repr: a name with control characters must not break the line
        raise ConfigError(f"search space: unknown knob {name!r}; searchable: {', '.join(bounds)}")
    bound = bounds[name]
    if isinstance(dist, Choice):
        if not dist.values:
            raise ConfigError(f"{where} has no choices; give at least one value")
        for v in dist.values:
            _check_value(name, v, where, bound)
        return
    if not isinstance(dist, (Uniform, LogUniform)):
        raise ConfigError(f"{where} is {dist!r}; use Choice, Uniform or LogUniform")
    if bound.kind is not float:
        raise ConfigError(f"{where}: `{name}` takes a list of values (e.g. {name}=8,16), not a range")
    _check_value(name, dist.low, where, bound)
    _check_value(name, dist.high, where, bound)
    if dist.low > dist.high:
        raise ConfigError(f"{where} has low {dist.low:g} > high {dist.high:g}; swap them")
    if isinstance(dist, LogUniform) and dist.low <= 0:
        raise ConfigError(f"{where} is log-uniform with low {dist.low:g}; it needs low > 0")


def project(space: SearchSpace, point: dict) -> dict:
    """A seed point moved into ``space``: a choice goes to the nearest allowed value, a number is
    clipped into its range. Used when ``--space`` narrows a recipe's space below its seeds."""
    out = dict(point)
    for name, dist in space.params.items():
        if name not in point:  # a knob --space added to the recipe's space: validate() names it
            continue
        v = point[name]
        if isinstance(dist, Choice):
            if v not in dist.values:
                numeric = all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in dist.values)
                out[name] = min(dist.values, key=lambda c: abs(c - v)) if numeric else dist.values[0]
        else:
            out[name] = min(max(v, dist.low), dist.high)
    return out
