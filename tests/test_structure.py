"""The layering the README's architecture section draws, read from the source: every import (those
inside functions too) between the project's packages runs one way, common <- trainers <-
search_spaces <- lorasweep (stand_ins, the smoke presets' generated data and tiny models, on trainers
only), with no circle among modules; no source file over 450 lines; and only lorasweep/storage.py
asks whether a path is an object-store URI."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("common", "trainers", "search_spaces", "lorasweep")  # each may import those before it
BESIDE = {"stand_ins": "trainers"}  # a package off the main line: the highest layer it may import
MAX_LINES = 450


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in (*LAYERS, *BESIDE):
        for f in (ROOT / pkg).rglob("*.py"):
            name = ".".join(f.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            out[name] = f
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()

    def owner(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    edges = {m: set() for m in mods}
    for m, f in mods.items():
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            else:
                continue
            edges[m].update(t for t in map(owner, targets) if t and t != m)
    return edges


def test_imports_run_down_the_layers_only():
    def level(module: str) -> int:
        pkg = module.split(".")[0]
        return LAYERS.index(BESIDE.get(pkg, pkg))

    up = sorted((m, t) for m, targets in _graph().items() for t in targets
                if level(t) > level(m) or (t.split(".")[0] in BESIDE and m.split(".")[0] not in BESIDE))
    assert not up, up


def test_no_source_file_is_over_the_line_cap():
    scripts = [f for d in ("sweeps", "bench", "tests") for f in (ROOT / d).glob("*.py")]
    long = {str(f.relative_to(ROOT)): n for f in [*_modules().values(), *scripts]
            if (n := len(f.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, long


def test_no_import_circle_among_the_modules():
    edges = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(edges[m]):
            if state.get(t) == 1:
                raise AssertionError("import circle: " + " -> ".join([*path[path.index(t):], m, t]))
            if t not in state:
                visit(t, [*path, m])
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [])


def test_only_the_storage_module_tells_local_paths_from_uris():
    found = [f"{f.relative_to(ROOT)}:{i}" for f in _modules().values() if f.name != "storage.py"
             for i, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1) if '"://"' in line]
    assert not found, found


def test_recipes_import_only_declarations_at_module_level():
    """A recipe module is data (its Recipe); the driver is imported only when it runs as a script."""
    found = []
    for f in (ROOT / "sweeps").glob("*.py"):
        for node in ast.parse(f.read_text(encoding="utf-8")).body:  # module level only
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            found += [f"{f.name}: {n}" for n in names if n.startswith("lorasweep") and n != "lorasweep.recipe"]
    assert not found, found


def test_no_script_folder_shadows_a_project_package():
    """`python bench/quality.py` puts bench/ first on sys.path, so a bench/common.py was imported
    for the `common` package and every bench script died at its first lorasweep import (Dec 3).
    The folders whose files are run by path hold no module or folder named like a top package."""
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
    assert {"common", "lorasweep", "trainers"} <= packages
    for folder in ("bench", "sweeps"):
        names = {p.stem if p.suffix == ".py" else p.name for p in (ROOT / folder).iterdir()}
        assert not names & packages, f"{folder}/ shadows {sorted(names & packages)} for the scripts run from it"
