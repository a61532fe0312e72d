"""The sweep report (lorasweep/report.py): what it computes, on a sweep folder written here with a
known answer; and, on the shared smoke sweep, that every sweep writes one and that it renders in a
real headless Chromium (Debian's package, driven by Playwright) from disk, offline.
"""

from __future__ import annotations

import json
import math
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lorasweep import report, report_data
from lorasweep.budget import asha_rungs
from tests.conftest import ROOT

SPACE = {"r": {"choice": [8, 16, 32]}, "use_rslora": {"choice": [True, False]},
         "learning_rate": {"loguniform": [1e-5, 1e-2]}}


def write_sweep(folder: Path, n: int = 14, seed: int = 0) -> Path:
    """A sweep folder in the layout Tune and lorasweep leave (sweep_config.json, trial_*/result.json,
    error.txt) where only learning_rate decides eval_loss: best near 1e-3, r and rsLoRA are noise.
    Trial 0 fails at step 3; trials with a bad learning rate stop at ASHA's first rung (250 tokens)."""
    rng = random.Random(seed)
    config = {"recipe": "llama_finetome", "preset": "smoke", "metric": "eval_loss", "mode": "min", "space": SPACE,
              "search_space": ["r: {8, 16, 32}", "use_rslora: {True, False}", "learning_rate: log-uniform[1e-05, 0.01]"],
              "settings": {"model": "tiny-llama", "dataset": "chats.jsonl", "task": "chat_sft", "max_tokens": 1000,
                           "method": "lora", "quantization": "none", "precision": "fp32", "seed": 1},
              "sweep": {"name": "known", "scheduler": "asha", "grace_tokens": 250, "reduction_factor": 2,
                        "searcher": "tpe", "num_samples": n, "max_concurrent": 2, "seed": 0},
              "versions": {"python": "3.11", "ray": "2.60.0"}}
    folder.mkdir(parents=True)
    (folder / "sweep_config.json").write_text(json.dumps(config))
    t0 = 1_800_000_000
    states = []  # Tune's experiment state: what tells a trial ASHA stopped from one still running
    for i in range(n):
        knobs = {"r": rng.choice([8, 16, 32]), "use_rslora": rng.random() < 0.5,
                 "learning_rate": 10 ** rng.uniform(-5, -2)}
        quality = abs(math.log10(knobs["learning_rate"]) + 3)  # 0 at 1e-3
        stops_at = 250 if quality > 1.2 else 1000
        params = {**knobs, "trial": {"resources": {"workers": 1, "cpus": 1, "gpus": 0}}}
        lines = []
        for j, seen in enumerate(range(125, stops_at + 1, 125), 1):
            loss = 1.0 + 0.4 * quality + 0.6 * 125 / seen + rng.gauss(0, 0.005)
            lines.append({"eval_loss": loss, "tokens_seen": seen, "step": j, "training_iteration": j,
                          "finished": seen >= 1000, "timestamp": t0 + 10 * i + j, "time_total_s": float(j),
                          "config": params})
            if i == 0 and j == 3:
                break
        states.append([json.dumps({"trial_id": f"t{i:03d}", "status": "ERROR" if i == 0 else "TERMINATED"}), "{}"])
        trial = folder / f"trial_t{i:03d}"
        trial.mkdir()
        (trial / "params.json").write_text(json.dumps(params))
        (trial / "result.json").write_text("".join(json.dumps(line) + "\n" for line in lines))
        if i == 0:
            (trial / "error.txt").write_text("Traceback (most recent call last):\n  File \"loop.py\"\n"
                                             "ray.exceptions.RayTaskError: TrialError: non-finite loss (nan) at step 3\n")
    (folder / "experiment_state-2026-11-30_01-00-00.json").write_text(json.dumps({"trial_data": states}))
    return folder


def test_asha_rungs_are_where_rays_scheduler_decides():
    from ray.tune.schedulers import ASHAScheduler

    for max_t, grace, rf in [(60_000, 15_000, 2), (2_000_000, 250_000, 3), (1000, 1000, 3), (30_000, 8_000, 3)]:
        sched = ASHAScheduler(time_attr="tokens_seen", max_t=max_t, grace_period=grace, reduction_factor=rf)
        milestones = sorted(m for m, _ in sched._brackets[0]._rungs if m < max_t)
        assert asha_rungs(max_t, grace, rf) == milestones, (max_t, grace, rf)


def test_report_finds_the_knob_that_decides_and_lists_stops_and_failures(tmp_path):
    folder = write_sweep(tmp_path / "known")
    data = report_data.load(str(folder))
    assert data.rungs == [250, 500]
    found, why = report_data.importances(data)
    assert set(found) == {"fANOVA", "PED-ANOVA"}, why
    for evaluator, values in found.items():
        assert max(values, key=values.get) == "learning_rate", (evaluator, values)

    html_path, md_path = report.write(str(folder))
    md = Path(md_path).read_text()
    board = md.split("## Leaderboard")[1].split("##")[0]
    rows = [line for line in board.splitlines() if line.startswith("| ") and "trial" not in line]
    assert len(rows) == 14
    assert "t000" in rows[-1] and "failed" in rows[-1]  # failures rank last
    best = min((t for t in data.trials if t.status != "failed"), key=lambda t: t.best("eval_loss", "min"))
    assert best.trial_id in rows[0]
    assert "stopped by ASHA at rung 1" in board  # the bad learning rates stopped at 250 tokens
    assert "non-finite loss (nan) at step 3" in md.split("## Failed trials (1)")[1]
    assert str(folder / "trial_t000" / "error.txt") in md
    page = Path(html_path).read_text()
    for name in ("best_so_far", "parallel", "importance", "curves"):
        assert f"id=\"plot-{name}\"" in page
    assert page.count("<script") >= 4 and not re.search(r"<script[^>]*\ssrc=", page)  # inlined, not fetched


def test_best_so_far_only_improves_and_counts_every_device_hour(tmp_path):
    data = report_data.load(str(write_sweep(tmp_path / "known")))
    seq = report_data.best_so_far(data)
    bests = [p["best"] for p in seq if p["best"] is not None]
    assert bests == sorted(bests, reverse=True) and len(seq) == 14
    assert seq[-1]["hours"] == pytest.approx(sum(t.device_hours for t in data.trials))


def test_report_command_names_a_folder_that_is_no_sweep(tmp_path):
    r = subprocess.run([sys.executable, "-m", "lorasweep.report", str(tmp_path)], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no sweep_config.json" in r.stderr


# ----------------------------------------------------------------------------- the shared sweep


@pytest.mark.slow
def test_every_sweep_writes_its_report_with_every_trial_and_failure(shared_sweep):
    folder = shared_sweep["dir"]
    board = json.loads((folder / "leaderboard.json").read_text())
    md = (folder / "report.md").read_text()
    for row in board:
        assert row["trial_id"] in md
    failed = [r for r in board if r["status"] == "failed"]
    assert failed and f"## Failed trials ({len(failed)})" in md
    for row in failed:
        assert row["error"] in md
    assert "ASHA" in md and "## Which knobs mattered" in md
    assert f"[lorasweep] report: {folder / 'report.html'}" in shared_sweep["stdout"]


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("no Chromium: `apt-get install chromium` (install.sh --test does it where it can)")
    return path


@pytest.mark.slow
def test_report_renders_in_headless_chromium_from_disk(shared_sweep, tmp_path):
    from PIL import Image
    from playwright.sync_api import sync_playwright

    page_file = shared_sweep["dir"] / "report.html"
    with sync_playwright() as p:
        # the flags Debian's Chromium needs as root in a sandbox with no network
        browser = p.chromium.launch(executable_path=chromium(), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors, remote = [], []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: remote.append(r.url) if not r.url.startswith(("file:", "data:")) else None)
        page.goto(page_file.as_uri())
        page.wait_for_function("() => [...document.querySelectorAll('.js-plotly-plot')].length >= 4 && "
                               "[...document.querySelectorAll('.js-plotly-plot')].every(d => d._fullLayout)",
                               timeout=60_000)
        # SVG plots: their drawn marks. Parallel coordinates draw their lines with WebGL, on a canvas:
        # its axes (one per knob and the objective) are SVG, the lines are checked on the screenshot,
        # in the band between the first and the last axis (coloured by the objective; axes are grey).
        plots = page.evaluate("""() => [...document.querySelectorAll('.js-plotly-plot')].map(d => {
            const axes = [...d.querySelectorAll('.parcoords .y-axis')].map(a => a.getBoundingClientRect());
            return {id: d.id, traces: (d.data || []).length, height: d.getBoundingClientRect().height,
                    drawn: d.querySelectorAll('.scatterlayer .trace path, .barlayer .point, g.box').length
                           + axes.length,
                    axes: axes.length,
                    band: axes.length ? [axes[0].right + 4, axes[0].top + window.scrollY,
                                         axes[axes.length - 1].left - 4, axes[0].bottom + window.scrollY] : null};
        })""")
        shot = tmp_path / "report.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert errors == [] and remote == []
    assert {p["id"] for p in plots} >= {"plot-best_so_far", "plot-parallel", "plot-importance", "plot-curves"}
    for plot in plots:
        assert plot["traces"] > 0 and plot["height"] > 200 and plot["drawn"] > 0, plot
    (parallel,) = [p for p in plots if p["id"] == "plot-parallel"]
    knobs = json.loads((shared_sweep["dir"] / "sweep_config.json").read_text())["space"]
    assert parallel["axes"] == len(knobs) + 1
    band = Image.open(shot).convert("RGB").crop(tuple(int(v) for v in parallel["band"]))
    coloured = sum(1 for r, g, b in band.getdata() if max(r, g, b) - min(r, g, b) > 60)
    assert coloured > 500, f"no trial lines drawn between the axes ({coloured} coloured pixels)"
    image = Image.open(shot).convert("L")
    histogram = image.histogram()
    assert histogram[255] / sum(histogram) < 0.95  # not a blank page
    assert sum(1 for n in histogram if n) > 50  # lines, text and colour scales, not a flat fill
