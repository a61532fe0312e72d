"""The three generation recipes' smoke presets, run as a new user runs them from the README
(``lorasweep run <recipe> --preset smoke``), each once (module-scoped), and what they leave:
the leaderboard, baseline.json with each example's values, samples.jsonl side by side, and the
report's box plots of base against tuned.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, sweep_env

pytestmark = pytest.mark.slow

RECIPES = {  # script -> (objective, metrics baseline.json must hold, per-example metrics)
    "llama_squad": ("f1", ("f1", "exact_match", "f1_has_answer", "f1_no_answer", "bleu", "rougeL", "meteor"),
                    ("f1", "exact_match", "bleu", "rougeL", "meteor")),
    "flan_t5_dialogsum": ("rougeL", ("rougeL", "rouge1", "rouge2", "bertscore_f1"),
                          ("rougeL", "rouge1", "rouge2", "bertscore_f1")),
    "gemma_dolly": ("eval_loss", ("eval_loss", "perplexity"), ("eval_loss",)),
}


@pytest.fixture(scope="module", params=list(RECIPES))
def smoke(request, tmp_path_factory) -> dict:
    name = request.param
    storage = tmp_path_factory.mktemp(name)
    t0 = time.time()
    # through the installed command, as the README runs recipes (= python sweeps/<name>.py --preset smoke)
    lorasweep = shutil.which("lorasweep") or str(Path(sys.executable).parent / "lorasweep")
    # two of the preset's trials (its known point and one TPE draw): ranking, export, baseline and
    # the final round all run, at half the preset's cost
    r = subprocess.run([lorasweep, "run", name, "--preset", "smoke", "--num-samples", "2", "--storage-path", str(storage)],
                       cwd=ROOT, env=sweep_env(), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, (r.stdout[-4000:], r.stderr[-4000:])
    wall = time.time() - t0
    sweep_dir = storage / f"{name}-smoke"
    baseline = json.loads((sweep_dir / "baseline.json").read_text())
    print(f"\n[{name} smoke] {wall:.0f}s; " + json.dumps(
        {k: {m: round(v, 4) for m, v in run.items() if isinstance(v, float)} for k, run in baseline.items()}))
    with open(sweep_dir / "leaderboard.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return {"name": name, "dir": sweep_dir, "stdout": r.stdout, "baseline": baseline, "rows": rows, "wall_s": wall}


def test_the_smoke_sweep_ranks_its_trials_by_the_recipes_objective(smoke):
    objective, _, _ = RECIPES[smoke["name"]]
    rows = smoke["rows"]
    assert len(rows) == 2 and not [r for r in rows if r["status"] == "failed"], rows
    values = [float(r[f"best_{objective}"]) for r in rows]
    assert values == sorted(values, reverse=objective != "eval_loss")
    assert (smoke["dir"] / "best_adapters" / "rank_1" / "adapter_model.safetensors").is_file()
    assert "baseline vs tuned on the test split" in smoke["stdout"]


def test_baseline_holds_every_metric_and_each_examples_values_for_base_and_tuned(smoke):
    objective, metrics, per_example = RECIPES[smoke["name"]]
    base = smoke["baseline"]["base 0-shot"]
    tuned = smoke["baseline"]["tuned"]
    for run in (base, tuned):
        missing = [m for m in metrics if m not in run]
        assert not missing, (missing, run.get("unavailable"))
        assert set(per_example) <= set(run["per_example"])
        assert all(len(v) == run["n"] for v in run["per_example"].values())
    if smoke["name"] == "llama_squad":
        assert "base 1-shot" in smoke["baseline"]  # the recipe's --shots 0,1
    # the tuned adapter is better than the base on the test split, by the recipe's objective
    better = tuned[objective] < base[objective] if objective == "eval_loss" else tuned[objective] > base[objective]
    assert better, (objective, base[objective], tuned[objective])


def test_samples_jsonl_puts_base_and_tuned_generations_side_by_side(smoke):
    lines = (smoke["dir"] / "samples.jsonl").read_text().splitlines()
    samples = [json.loads(line) for line in lines]
    assert len(samples) == 6
    for s in samples:
        assert {"prompt", "reference", "base 0-shot", "tuned"} <= s.keys(), s.keys()
        assert all(isinstance(s[k], str) for k in ("prompt", "reference", "base 0-shot", "tuned"))
    assert any(s["tuned"] != s["base 0-shot"] for s in samples)  # training changed what the model writes


def test_the_report_draws_base_against_tuned_as_box_plots(smoke):
    html = (smoke["dir"] / "report.html").read_text()
    assert "Per-example metrics, base against tuned" in html
    _, _, per_example = RECIPES[smoke["name"]]
    assert f"tuned: {per_example[0]}" in html
    assert "<h2>Sample generations</h2>" in html and "## Sample generations" in (smoke["dir"] / "report.md").read_text()
