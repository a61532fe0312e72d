"""Model families register themselves here; the driver looks them up by name.

Adding a family is adding one module ``trainers/<name>.py`` that calls ``register(...)`` at import:
``get_family("<name>")`` imports it on first use, so nothing in the driver changes.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Callable

from lorasweep.errors import ConfigError


@dataclass(frozen=True)
class ModelFamily:
    name: str
    train_func: Callable[[dict], None]  # the Ray Train per-worker loop; reads only its config
    tiny_config: Callable  # tokenizer -> transformers config of a tiny model of this architecture
    default_model: str  # what the real preset loads
    description: str = ""
    # Driver-side, before Ray starts: settings this family refuses (raise ConfigError), and a pass
    # over the data that counts usable and skipped rows (a dict for data_report.json).
    check_settings: Callable | None = None
    audit_data: Callable | None = None


_FAMILIES: dict[str, ModelFamily] = {}
_NOT_FAMILIES = {"chat", "causal_lm", "config", "errors", "registry", "tiny"}


def register(family: ModelFamily) -> ModelFamily:
    _FAMILIES[family.name] = family
    return family


def available() -> list[str]:
    import trainers

    return sorted(m.name for m in pkgutil.iter_modules(trainers.__path__) if m.name not in _NOT_FAMILIES)


def get_family(name: str) -> ModelFamily:
    if name not in _FAMILIES and name in available():
        importlib.import_module(f"trainers.{name}")
    if name not in _FAMILIES:
        raise ConfigError(f"`family` is {name!r}; known families: {', '.join(available())}")
    return _FAMILIES[name]
