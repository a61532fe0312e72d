"""The benchmark script keeps working: every figure of ``bench/run.py --quick`` is measured (a
ratio, its target, both sides' raw numbers). Timings are not checked here: a benchmark is not a
test (the figures and their targets are in bench/results.json and the README)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.slow, pytest.mark.bench]  # deselected by default: pytest -m bench


def test_every_figure_of_the_quick_benchmark_is_measured(tmp_path):
    sys.path.insert(0, str(ROOT))
    from bench.run import FIGURES

    out = tmp_path / "results.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    r = subprocess.run([sys.executable, "bench/run.py", "--quick", "--out", str(out)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=1800)
    record = json.loads(out.read_text())
    figures = record["figures"]
    assert set(figures) == set(FIGURES), figures.keys()
    for name, fig in figures.items():
        assert "error" not in fig, (name, fig, r.stdout[-3000:], r.stderr[-3000:])
        assert isinstance(fig["ratio"], float) and not math.isnan(fig["ratio"]), (name, fig)
        assert fig["target"].split()[0] in ("<=", ">=") and isinstance(fig["met"], bool) and fig["raw"], (name, fig)
    assert r.returncode == 0, r.stderr[-3000:]
    table = r.stdout[r.stdout.rindex("figure "):]
    assert all(title in table for title in FIGURES.values()), table
    # the side-by-side parts are there: both sides' numbers, not only a ratio
    assert figures["startup"]["raw"]["standalone_s"] and figures["startup"]["raw"]["sweep_startup_s"]
    assert figures["packing"]["raw"]["isolation_max_rel_diff"] < 1e-4  # packed documents stayed apart
    assert record["machine"]["cpus"] == os.cpu_count() and record["quick"] is True
