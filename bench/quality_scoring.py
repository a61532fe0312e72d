"""Scoring the quality suite's arms on the test split (bench/quality.py) and comparing them: every
exported adapter of an arm scored once (kept in <runs>/scores.json), the paired tests, the random
arm's quantiles and whether the eval winner is among the test top-2."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Callable

from bench.quality_tasks import TaskSpec
from bench.stats import mcnemar, median, paired_bootstrap, percentile

def exported(folder: Path) -> list[tuple[int, Path, dict]]:
    """(rank, folder, lorasweep.json) of every adapter the arm exported, best first."""
    out = []
    for d in (folder / "best_adapters").glob("rank_*"):
        meta = json.loads((d / "lorasweep.json").read_text()) if (d / "lorasweep.json").is_file() else {}
        out.append((int(d.name.split("_")[1]), d, meta))
    return sorted(out, key=lambda t: t[0])


# ----------------------------------------------------------------------------- scoring on the test split


def chat_test_loss(settings: dict, adapter: str | None) -> dict:
    """Token-weighted loss on the test rows' assistant turns, and each row's own mean loss with its
    labelled-token count (the weights of a paired bootstrap of the token-weighted mean)."""
    from trainers.config import TrainSettings
    from trainers.evaluation import IGNORE_INDEX, eval_batches, evaluate_loss
    from trainers.loop import load_trained

    s = TrainSettings.from_dict(settings)
    task, tokenizer, model = load_trained(s, adapter)
    split, _ = task.read(s)
    data = task.tokenize(s, tokenizer, split.test)
    batches = eval_batches(data.examples, tokenizer.pad_token_id)
    loss, each = evaluate_loss(model, batches, per_example=True)
    weights = [int(n) for b in batches for n in (b["labels"][:, 1:] != IGNORE_INDEX).sum(-1).clamp(min=1).tolist()]
    return {"split": "test", "n": len(each), "eval_loss": loss, "per_example": {"eval_loss": each}, "weights": weights}


def score_one(spec: TaskSpec, settings: dict, adapter: Path | None) -> dict:
    if spec.kind == "chat":
        return chat_test_loss(settings, None if adapter is None else str(adapter))
    from lorasweep.baseline import score

    return score(settings, None if adapter is None else str(adapter), 0)


class ScoreCache:
    """Test-split scores by key, kept in <runs>/scores.json after each one (so --resume skips them)."""

    def __init__(self, path: Path):
        self.path = path
        self.data = json.loads(path.read_text()) if path.is_file() else {}

    def get(self, key: str, compute: Callable[[], dict]) -> dict:
        if key not in self.data:
            t0 = time.time()
            self.data[key] = {**compute(), "score_s": round(time.time() - t0, 1)}
            self.path.write_text(json.dumps(self.data, default=str))
        return self.data[key]


def settings_of(folder: Path) -> dict:
    return json.loads((folder / "sweep_config.json").read_text())["settings"]


def score_arm(spec: TaskSpec, runs: Path, arm: str, cache: ScoreCache) -> list[dict]:
    """Every exported adapter of the arm scored on the test split: [{rank, trial_id, seed, hyper, eval, test}]."""
    folder = runs / arm
    settings = settings_of(folder)
    baseline = json.loads((folder / "baseline.json").read_text()) if (folder / "baseline.json").is_file() else {}
    board = {}
    if (folder / "leaderboard.csv").is_file():
        with open(folder / "leaderboard.csv", newline="") as f:
            # failed trials export nothing (and a trial lost at actor reuse is listed under the id
            # of the trial before it in that process: see issue 21's Dec 3 note)
            board = {r["trial_id"]: r for r in csv.DictReader(f) if r.get("status") != "failed"}
    out = []
    for rank, path, meta in exported(folder):
        if rank == 1 and "tuned" in baseline:  # the tool's own scoring of rank_1: the same call
            cache.data.setdefault(f"{arm}/rank_1", baseline["tuned"])
        print(f"  scoring {arm}/rank_{rank} on the test split ...", flush=True)
        test = cache.get(f"{arm}/rank_{rank}", lambda p=path: score_one(spec, settings, p))
        row = board.get(meta.get("trial_id"), {})
        out.append({"rank": rank, "trial_id": meta.get("trial_id"), "seed": row.get("known_point", row.get("seed", "")),
                    "status": row.get("status"), "tokens": int(float(row.get("tokens_seen") or 0)),
                    "hyper": meta.get("hyperparameters", {}), "eval": (meta.get("metrics") or {}), "test": test})
    return out


def base_score(spec: TaskSpec, runs: Path, cache: ScoreCache) -> dict:
    baseline = runs / "plain" / "baseline.json"
    if baseline.is_file() and "base 0-shot" in (b := json.loads(baseline.read_text())):
        return b["base 0-shot"]
    print("  scoring the base model on the test split ...", flush=True)
    return cache.get("base", lambda: score_one(spec, settings_of(runs / "plain"), None))


# ----------------------------------------------------------------------------- comparing


def per_example(spec: TaskSpec, m: dict) -> tuple[list[float], list[float] | None]:
    if spec.kind == "chat":
        return m["per_example"]["eval_loss"], m.get("weights")
    return m["per_example"]["f1"], None


def compare(spec: TaskSpec, a: dict, b: dict) -> dict:
    """a vs b on the same test rows: McNemar for labels, a paired bootstrap of the per-example
    metric otherwise. ``better``: a beats b with p < 0.05."""
    diff = a[spec.metric] - b[spec.metric]
    if spec.kind == "labels":
        wins, losses, p = mcnemar(a["predictions"], b["predictions"], a["references"])
        assert a["references"] == b["references"], "scored on different test rows"
        out = {"test": "exact McNemar", "a_only_right": wins, "b_only_right": losses, "p": p, "diff": diff}
    else:
        va, w = per_example(spec, a)
        vb, _ = per_example(spec, b)
        out = {"test": "paired bootstrap", **paired_bootstrap(va, vb, w)}
        diff = out["diff"]
    out["better"] = spec.better(a[spec.metric], b[spec.metric]) and out["p"] < 0.05
    return out


def winner_in_top2(spec: TaskSpec, trials: list[dict]) -> bool:
    """Is rank_1 (the sweep's eval winner) among the two best test scores of the sweep's trials (ties count)?"""
    scores = sorted((t["test"][spec.metric] for t in trials), reverse=spec.mode == "max")
    winner = next(t for t in trials if t["rank"] == 1)["test"][spec.metric]
    second = scores[min(1, len(scores) - 1)]
    return winner >= second if spec.mode == "max" else winner <= second


def random_quantiles(spec: TaskSpec, trials: list[dict]) -> dict:
    """Median and the 75th percentile of goodness (for a loss: its 25th percentile) of the random
    configurations, the recipe's known points left out."""
    values = [t["test"][spec.metric] for t in trials if not t["seed"]]
    if not values:
        return {"n": 0, "median": float("nan"), "p75": float("nan")}
    return {"n": len(values), "median": median(values),
            "p75": percentile(values, 75 if spec.mode == "max" else 25), "values": values}
