"""Finding recipes: every module in ``sweeps/`` that defines ``RECIPE`` is one, found without a list
(a new dataset is a new file there); a ``.py`` file or an importable module defining ``RECIPE`` works
too, for recipes kept outside this repository."""

from __future__ import annotations

import importlib
import importlib.util
import os
import pkgutil

from common.errors import ConfigError


def names() -> list[str]:
    import sweeps

    return sorted(m.name for m in pkgutil.iter_modules(sweeps.__path__) if not m.name.startswith("_"))


def load(ref: str):
    """``llama_finetome`` (a module of ``sweeps/``), ``path/to/my_recipe.py`` or ``pkg.module``
    (optionally ``:NAME`` for another attribute than ``RECIPE``) -> the Recipe."""
    from lorasweep.recipe import Recipe

    target, _, attr = ref.partition(":")
    attr = attr or "RECIPE"
    if target.endswith(".py"):
        if not os.path.isfile(target):
            raise ConfigError(f"recipe file {target!r} does not exist; give a .py file that defines RECIPE, "
                              "or a recipe name (lorasweep recipes lists them)")
        spec = importlib.util.spec_from_file_location(f"lorasweep_recipe_{abs(hash(os.path.abspath(target)))}", target)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        module_name = target if "." in target else f"sweeps.{target}"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name not in (module_name, *_parents(module_name)):
                raise  # the recipe itself imports something missing: that traceback is the news
            import difflib

            close = difflib.get_close_matches(target, names(), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"recipe {target!r} is not known; {hint}recipes: {', '.join(names())} "
                              "(or a .py file defining RECIPE)") from None
    recipe = getattr(module, attr, None)
    if not isinstance(recipe, Recipe):
        raise ConfigError(f"{target!r} defines no {attr} (a lorasweep.engine.Recipe); see sweeps/llama_finetome.py")
    return recipe


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def listing() -> list[str]:
    """One line per recipe: name, task, the first line of its docstring (model x data, the choice)."""
    rows = []
    for name in names():
        r = load(name)
        first = (r.doc or name).strip().splitlines()[0]
        rows.append((name, r.settings.get("task", "chat_sft"), first))
    width = [max(len(row[i]) for row in rows) for i in range(2)]
    return [f"{n:<{width[0]}}  {t:<{width[1]}}  {doc}" for n, t, doc in rows]
