"""The ``lorasweep`` command (installed by pip, see pyproject's [project.scripts]).

    lorasweep recipes                                   # every recipe, one line each
    lorasweep run llama_finetome --preset smoke         # = python sweeps/llama_finetome.py --preset smoke
    lorasweep run --config examples/own_chats.yaml      # a sweep file (flags after it override it)
    lorasweep dry-run chat_sft --model M --dataset D    # checks, data audit, cost and wall-time estimate
    lorasweep report runs/llama_finetome-smoke          # report.html / report.md of any sweep folder
    lorasweep export runs/llama_finetome-smoke --rank 1 # merge an adapter into its base (+ GGUF, Hub)

``lorasweep run RECIPE --help`` shows every flag of that recipe with its default and choices.
"""

from __future__ import annotations

import os
import sys

from common.errors import ConfigError

COMMANDS = {
    "recipes": "list the recipes, one line each",
    "run": "run a sweep: lorasweep run RECIPE [flags] | lorasweep run --config SWEEP.yaml [flags]",
    "dry-run": "check everything, audit the data, estimate cost and wall time; train nothing, start no local Ray",
    "report": "write report.html / report.md for a sweep folder (finished, interrupted or running)",
    "export": "merge a sweep's adapter into its base model (--gguf, --push-to-hub)",
}


def usage() -> str:
    from lorasweep import __version__

    width = max(map(len, COMMANDS))
    lines = [f"usage: lorasweep COMMAND [...]   (lorasweep {__version__})", "",
             "Find the best LoRA / QLoRA adapters for a model and a dataset with Ray Tune + Ray Train.", "",
             "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, text in COMMANDS.items()]
    lines += ["", "lorasweep run RECIPE --help    every flag of a recipe, with its defaults and choices",
              "lorasweep COMMAND --help       that command's own help"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        from lorasweep import __version__

        print(f"lorasweep {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    try:
        if command == "recipes":
            from lorasweep.recipes import listing

            print("\n".join(listing()))
            print("\nlorasweep run NAME --preset smoke  tries one offline; lorasweep run NAME --help lists its flags")
            return 0
        if command in ("run", "dry-run"):
            return run(rest, dry=command == "dry-run")
        if command == "report":
            from lorasweep.report import main as report

            return report(rest, prog="lorasweep report")
        if command == "export":
            from lorasweep.export import main as export

            return export(rest, prog="lorasweep export")
    except ConfigError as e:
        for line in e.problems:
            print(f"error: {line}", file=sys.stderr)
        return 2
    import difflib

    close = difflib.get_close_matches(command, COMMANDS, n=1)
    print(f"error: `{command}` is not a lorasweep command; {f'did you mean {close[0]!r}? ' if close else ''}"
          f"choose {', '.join(COMMANDS)} (lorasweep --help)", file=sys.stderr)
    return 2


def _config_path(args: list[str]) -> str | None:
    for i, a in enumerate(args):
        if a == "--config" and i + 1 < len(args):
            return args[i + 1]
        if a.startswith("--config="):
            return a.split("=", 1)[1]
    return None


def run(args: list[str], dry: bool = False) -> int:
    """``lorasweep run [RECIPE] [--config FILE] [flags]``: the recipe from the first word, else from
    the sweep file's ``recipe:``; then the same driver as ``python sweeps/<recipe>.py``."""
    from lorasweep import engine, recipes, sweepfile

    verb = "dry-run" if dry else "run"
    ref = args[0] if args and not args[0].startswith("-") else None
    rest = args[1:] if ref else args
    if ref is None:
        path = _config_path(rest)
        if path is None:
            if any(a in ("-h", "--help") for a in rest):
                print(f"usage: lorasweep {verb} RECIPE [flags] | lorasweep {verb} --config SWEEP.yaml [flags]\n\n"
                      "recipes:\n  " + "\n  ".join(recipes.listing()) +
                      f"\n\nlorasweep {verb} RECIPE --help lists every flag of that recipe, with defaults and choices")
                return 0
            raise ConfigError(f"`lorasweep {verb}` needs a recipe: lorasweep {verb} RECIPE [flags], or a sweep file "
                              f"with `recipe:` (--config SWEEP.yaml); recipes: {', '.join(recipes.names())}")
        file = sweepfile.load(path)
        if not file.recipe:
            raise ConfigError(f"{path}: the sweep file names no `recipe:`; add one (recipes: {', '.join(recipes.names())}) "
                              f"or give it first: lorasweep {verb} RECIPE --config {path}")
        ref = _relative_to(file.recipe, path)
        command = f"lorasweep {verb}"
    else:
        command = f"lorasweep {verb} {ref}"
    recipe = recipes.load(ref)
    # How sweep.yaml names it: by name, or a file's absolute path (the rerun then finds it anywhere).
    target, _, attr = ref.partition(":")
    recipe_ref = "" if ref == recipe.name else (os.path.abspath(target) + (f":{attr}" if attr else "")
                                                if target.endswith(".py") else ref)
    return engine.main(recipe, [*rest, *(["--dry-run"] if dry else [])], command=command, recipe_ref=recipe_ref)


def _relative_to(ref: str, config_path: str) -> str:
    """A sweep file's ``recipe: my_recipe.py`` is found from the current folder, else beside the file."""
    target = ref.partition(":")[0]
    if target.endswith(".py") and not os.path.isabs(target) and not os.path.exists(target):
        beside = os.path.join(os.path.dirname(os.path.abspath(config_path)), target)
        if os.path.exists(beside):
            return beside + ref[len(target):]
    return ref


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
