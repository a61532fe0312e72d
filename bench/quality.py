"""Does a lorasweep sweep beat a plain notebook-style LoRA run, for at most 4x its training compute?

    . .venv/bin/activate
    python bench/quality.py                # 400 sentences, 6 trials: ~33 min on 2 CPU cores (Nov 2026: 651 s plain, 1,270 s sweep)
    python bench/quality.py --quick        # 120 sentences, 2 trials: checks the script works (~15 min)
    python bench/quality.py --resume bench/quality_runs/<stamp>   # after a kill: reuses finished work

Both arms are the instruction-classification recipe (sweeps/mistral_imdb.py) run as subprocesses on
the real SmolLM2-135M-Instruct in 4-bit (QLoRA) and real movie-review sentences (tests/real_material.py),
with the smoke preset's split (test 20%, eval 10%, the rest trains) and --max-seq-length 160:

  plain   one trial, the notebook recipe: r=16, lora_alpha=16, lr 2e-4, no rsLoRA, no packing, no warmup,
          exactly one epoch of the train split (max_tokens = the audit's train_tokens), one report at the
          end, so its exported adapter is the final one;
  sweep   the recipe's own search space (the smoke preset's tiny-model learning-rate range put back to
          the recipe's 1e-5..2e-3), --trials trials, ASHA on the recipe's objective (eval F1), each trial
          at most one epoch, a report every 1/6 epoch (packed or not), ASHA rungs (factor 3) at ~1/6 and
          ~1/2 epoch, so losers stop there.

Each arm writes <runs>/<arm>/baseline.json ('base 0-shot' and 'tuned' on the same held-out test rows) and
leaderboard.csv (tokens_seen per trial). Training compute = training tokens (the sum over trials).

Prints: the commands, a table (arm, test accuracy, test F1, training tokens, ratio to plain, summed
training seconds, wall seconds), the paired difference on the test rows (exact McNemar p), and
    sweep best beats plain: yes/no at X.Xx the plain run's training tokens (goal <= 4x)
Writes bench/quality_results.json (bench/quality_results_quick.json with --quick) with the raw numbers.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from lorasweep.engine import resolve  # noqa: E402
from sweeps.mistral_imdb import RECIPE  # noqa: E402
from tests.real_material import smollm2_dir, write_sentiment_sample  # noqa: E402
from trainers.tasks import get_task  # noqa: E402

PLAIN_KNOBS = ["r=16", "lora_alpha=16", "use_rslora=false", "packing=false", "warmup_ratio=0", "learning_rate=2e-4"]
RECIPE_LR = "learning_rate=log:1e-5:2e-3"  # INSTRUCT_CLASSIFICATION's range (smoke narrows it for a tiny model)


def run_arm(name: str, args: list[str], runs: Path) -> dict:
    """One arm as a subprocess; its summary is kept in <runs>/<name>.json, which --resume reuses."""
    done = runs / f"{name}.json"
    if done.is_file():
        print(f"{name}: reusing {done}", flush=True)
        return json.loads(done.read_text())
    folder = runs / name
    if (folder / "best_adapters" / "rank_1").is_dir():  # --resume: the sweep finished, its driver died after
        wall = (folder / "leaderboard.csv").stat().st_mtime - (folder / "sweep_config.json").stat().st_mtime
        print(f"{name}: reusing its finished sweep in {folder} (wall time from its files' times)", flush=True)
    else:
        cmd = [sys.executable, str(ROOT / "sweeps" / "mistral_imdb.py"), *args, "--storage-path", str(runs), "--name", name]
        wall = 0.0
        if list(folder.glob("experiment_state-*.json")):  # a killed attempt: the sweep's own --resume goes on
            wall = (runs / f"{name}.log").stat().st_mtime - (folder / "sweep_config.json").stat().st_mtime
            cmd.append("--resume")
        else:
            shutil.rmtree(folder, ignore_errors=True)
        print("$ " + " ".join(cmd), flush=True)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        t0 = time.time()
        with open(runs / f"{name}.log", "a") as log:
            rc = subprocess.run(cmd, cwd=runs, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
        wall += time.time() - t0
        if rc != 0:
            raise SystemExit(f"{name} exited {rc} after {wall:.0f}s; see {runs / f'{name}.log'}")
    with open(folder / "leaderboard.csv", newline="") as f:
        trials = list(csv.DictReader(f))
    # Training seconds of each trial, from its last report (evaluation and checkpoints excluded).
    train_s = 0.0
    for result in folder.glob("trial_*/result.json"):
        reports = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        train_s += max((r.get("train_time_s", 0.0) for r in reports), default=0.0)
    baseline = json.loads((folder / "baseline.json").read_text())
    if "tuned" not in baseline:  # the sweep's own scoring of its best adapter, done here instead
        from lorasweep.baseline import score

        t0 = time.time()
        settings = json.loads((folder / "sweep_config.json").read_text())["settings"]
        baseline["tuned"] = score(settings, str(folder / "best_adapters" / "rank_1"), 0)
        wall += time.time() - t0
    out = {"wall_s": wall, "train_s": train_s, "tokens": sum(int(t["tokens_seen"] or 0) for t in trials),
           "trials": trials, "base": baseline["base 0-shot"], "tuned": baseline["tuned"]}
    done.write_text(json.dumps(out, default=str))
    return out


def mcnemar(a: dict, b: dict) -> tuple[int, int, float]:
    """Test rows a gets right and b wrong, the reverse, and the exact two-sided McNemar p."""
    truth = a["references"]
    assert truth == b["references"], "the arms were scored on different test rows"
    wins = sum(pa == t != pb for pa, pb, t in zip(a["predictions"], b["predictions"], truth))
    losses = sum(pb == t != pa for pa, pb, t in zip(a["predictions"], b["predictions"], truth))
    n = wins + losses
    p = min(1.0, 2 * sum(math.comb(n, k) for k in range(min(wins, losses) + 1)) / 2**n) if n else 1.0
    return wins, losses, p


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=400)
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--reduction-factor", type=float, default=3.0, help="ASHA keeps 1/this of the trials per rung")
    ap.add_argument("--quick", action="store_true", help="120 rows, 2 trials: check the script works")
    ap.add_argument("--runs", type=Path, default=ROOT / "bench" / "quality_runs", help="a new folder per run in here")
    ap.add_argument("--resume", type=Path, help="a run folder whose finished arms are reused (same options!)")
    a = ap.parse_args()
    if a.quick:
        a.rows, a.trials = 120, 2
    runs = (a.resume or a.runs / time.strftime("%Y%m%d-%H%M%S")).resolve()  # Checkpoint() wants absolute
    runs.mkdir(parents=True, exist_ok=True)

    data = write_sentiment_sample(runs / "movie_sentences.jsonl", a.rows, seed=0)
    common = ["--preset", "smoke", "--model", str(smollm2_dir()), "--dataset", str(data), "--quantization", "4bit",
              "--max-seq-length", "160", "--shots", "0", "--gen-eval-rows", "8", "--cpus-per-worker", "1"]
    settings = resolve(RECIPE, common).settings
    task = get_task(settings.task)
    audit = task.audit(settings)
    epoch, batch = audit["train_tokens"], settings.per_device_batch_size * settings.gradient_accumulation_steps
    steps = math.ceil(audit["train_examples"] / batch)
    # Reports come every `every` optimizer steps, 1/6 epoch (packed trials report at the same tokens:
    # trainers/loop.py report_interval). ASHA's first rung sits just below the first report, the
    # next at `reduction_factor` x that: with factor 3, rungs at ~1/6 and ~1/2 epoch.
    every = max(1, round(steps / 6))
    grace = int(0.9 * epoch * every / steps)
    print(f"data: {audit['rows']} rows -> {audit['train_examples']} train ({epoch} tokens, {steps} steps an epoch), "
          f"{audit['eval_examples']} eval, {audit['test_rows']} test", flush=True)

    budget = ["--max-tokens", str(epoch)]
    plain = run_arm("plain", [*common, *budget, *sum((["--space", k] for k in PLAIN_KNOBS), []), "--num-samples", "1",
                              "--scheduler", "none", "--max-concurrent", "1", "--top-k", "1",
                              "--eval-every", str(10 * steps)], runs)
    sweep = run_arm("sweep", [*common, *budget, "--space", RECIPE_LR, "--num-samples", str(a.trials),
                              "--scheduler", "asha", "--grace-tokens", str(grace),
                              "--reduction-factor", str(a.reduction_factor), "--max-concurrent", "2",
                              "--eval-every", str(every)], runs)

    ratio = sweep["tokens"] / plain["tokens"]
    rows = [("base model, 0-shot", plain["base"], 0, float("nan"), 0.0, float("nan")),
            ("plain LoRA, 1 epoch", plain["tuned"], plain["tokens"], 1.0, plain["train_s"], plain["wall_s"]),
            (f"lorasweep, {a.trials} trials ASHA", sweep["tuned"], sweep["tokens"], ratio, sweep["train_s"],
             sweep["wall_s"])]
    print(f"\n{'arm':<28}{'test acc':>9}{'test f1':>9}{'train tokens':>14}{'x plain':>9}{'train s':>9}{'wall s':>8}")
    for name, m, tokens, r, train_s, wall in rows:
        cost = f"{tokens:>14,}{r:>9.2f}{train_s:>9.0f}{wall:>8.0f}" if tokens else f"{'-':>14}{'-':>9}{'-':>9}{'-':>8}"
        print(f"{name:<28}{m['accuracy']:>9.3f}{m['f1']:>9.3f}{cost}")
    wins, losses, p = mcnemar(sweep["tuned"], plain["tuned"])
    n = plain["tuned"]["n"]
    print(f"\non {n} test rows: sweep right where plain wrong {wins}, the reverse {losses} (exact McNemar p = {p:.3f})")
    print("sweep trials: " + ", ".join(f"{t['status']} at {int(t['tokens_seen'] or 0):,} tokens" for t in sweep["trials"]))
    beats = sweep["tuned"]["f1"] > plain["tuned"]["f1"]
    print(f"sweep best beats plain: {'yes' if beats else 'no'} at {ratio:.1f}x the plain run's training tokens "
          f"(goal <= 4x)")

    strip = lambda m: {k: v for k, v in m.items() if k not in ("predictions", "references")}  # noqa: E731
    out = ROOT / "bench" / ("quality_results_quick.json" if a.quick else "quality_results.json")
    out.write_text(json.dumps({
        "runs": str(runs), "rows": a.rows, "trials": a.trials, "audit": audit, "report_every_steps": every,
        "grace_tokens": grace, "reduction_factor": a.reduction_factor, "ratio": ratio, "beats": beats,
        "mcnemar": {"sweep_only_right": wins, "plain_only_right": losses, "p": p},
        **{arm: {"tokens": r["tokens"], "train_s": r["train_s"], "wall_s": r["wall_s"], "base": strip(r["base"]),
                 "tuned": strip(r["tuned"]), "trials": r["trials"]} for arm, r in (("plain", plain), ("sweep", sweep))},
    }, indent=2, default=str) + "\n")
    print(f"raw numbers: {out}")


if __name__ == "__main__":
    main()
