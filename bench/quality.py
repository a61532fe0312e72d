"""Search-quality suite: does a lorasweep sweep's best adapter beat the notebook default, per task?

    . .venv/bin/activate
    python bench/quality.py --quick --only encoder    # wiring check: 220/60/120 rows, 4 trials, 2 random (12 min)
    python bench/quality.py --only encoder            # MiniLM, 1,100/300/1,000 rows, 8 trials, 5 random (~50 min)
    python bench/quality.py --only instruct_movies    # SmolLM2 4-bit, 300/60/200 rows, 6 trials (~3.9 h measured)
    python bench/quality.py --only chat               # SmolLM2 4-bit chat SFT, 300/60/200 rows (~2.1 h measured)
    python bench/quality.py --only instruct_nyt --only qa   # the other SmolLM2 tasks (ESTIMATE ~3.5-4 h each)
    python bench/quality.py                           # all five tasks (ESTIMATE ~14 hours)
    python bench/quality.py --quick --only chat       # SmolLM2 wiring check (ESTIMATE ~20-25 min)
    python bench/quality.py --resume bench/quality_runs/<stamp> --only qa   # after a kill: reuses finished work

Times on the shared 2-core CPU machine (Dec 2026). Measured: encoder --quick 12 min 10 s wall; encoder
full (1-epoch cap, Dec 2): plain 164 s, long_plain 313 s, random (7 trials) ~1,500 s, sweep ~600 s, test
scoring ~5 min; (1.5-epoch cap, Dec 3, beside other work): long_plain 580 s, random 2,719 s, sweep 531 s.
instruct_movies full: plain 809 s, long_plain 2,174 s, random (6 trials) 7,208 s, sweep 2,993 s, test
scoring ~25 min: about 3.9 hours, the random arm half of it (exact seconds per arm:
bench/quality_results.json, `wall_s` / `score_s`). chat full (Dec 3, random arm without the known
points, beside other work): plain 460 s, sweep 2,015 s, long_plain 1,051 s, random (5 trials) 2,844 s,
test scoring included: 2.1 hours. instruct_nyt and qa are sized like instruct_movies (~3.5-4 h each).
--trials N / --random-n N change the per-task defaults (encoder 8 trials, SmolLM2 tasks 6; random 5).

Tasks (each arm is a subprocess of the recipe script on the SAME data file and the same split flags,
so all arms train, select and are tested on the same rows; --data-seed stays the recipe's):
  encoder          sweeps/distilbert_imdb.py, real all-MiniLM-L6-v2, no quantization, movie sentences;
                   test F1 (the recipe's objective) + accuracy, exact McNemar
  instruct_movies  sweeps/mistral_imdb.py, SmolLM2-135M-Instruct 4-bit, movie sentences; F1 + accuracy
  instruct_nyt     the same on NYT editorial sentences (|rating| >= 1, class-balanced file and --balance,
                   a newspaper prompt; tests/real_material.py write_nyt_sentiment_sample)
  qa               sweeps/llama_squad.py, SmolLM2 4-bit, write_movie_qa_sample; SQuAD v2 F1, paired bootstrap
  chat             sweeps/llama_finetome.py, SmolLM2 4-bit, write_sentiment_chat_sample; token-weighted
                   loss on the test rows' assistant turns (lower is better; scored here, the recipe
                   has no test metric), paired bootstrap with each row's labelled tokens as weights
Where the script has the final round (--validation-fraction), as many validation rows as eval rows
are held out for every arm (only the sweep's final round reads them).

Arms of each task (<runs>/<task>/<arm>/, logs in <runs>/<task>/<arm>.log):
  base        the untrained model on the test split (the plain arm's baseline.json 'base 0-shot';
              chat: scored here)
  plain       the notebook recipe: r=16, alpha=16, no rsLoRA, no packing, no warmup, lr 2e-4, LoRA,
              exactly one epoch (max_tokens = the audit's train tokens), one trial, one report at the
              end, no ASHA, --final-round 0
  long_plain  the same config trained as long as a sweep trial may (the sweep's max_tokens), reporting
              as often as a sweep trial; its exported adapter is its best report by eval
  random      --random-n configs drawn at random from the recipe's own space (--searcher random
              --scheduler none --seed 1 --no-known-points), each as long as a sweep trial, best report
              by eval; median and 75th percentile (for a loss its 25th percentile). (Runs before
              Dec 3 also trained the known points there, left out of these statistics.)
  sweep       the recipe's own space (the smoke preset's narrowed learning-rate range put back), TPE
              from the recipe's known points, ASHA on training tokens, the final round as the
              script defaults; --top-k = trials, so every trial's adapter is exported and scored.
              Budget: plan_asha simulates lorasweep's JudgedASHA (a rung judged once 2 trials reached
              it, a provisional pass judged again at the next report) and takes the longest cap
              (3 epochs down to 1) whose expected total is <= 2.7 epochs: 1.5 epochs for both the
              6-trial SmolLM2 tasks (factor 3) and the 8-trial encoder task (factor 6).

Prints per task: base, random median/p75, plain, long plain, sweep (test metric, training tokens, the
ratio to plain, wall seconds incl. test scoring), the sweep's trials in eval order with their test
scores, the paired test of sweep vs the better plain arm, whether the eval winner (rank_1) is in the
test top-2 of its trials; then the targets over every task in the results file:
  (a) sweep >= both plain arms on every task   (b) better than the better plain arm with p < 0.05 on
  >= half the tasks   (c) sweep tokens <= 3x plain   (d) sweep better than the random arm's 75th
  percentile on every task   (e) eval winner in the test top-2 on >= 75% of tasks (3 of 4)
Writes bench/quality_results.json (bench/quality_results_quick.json with --quick) after each task;
--only merges its tasks into the file's earlier results (by task name). Statistics: bench/stats.py.
"""

from __future__ import annotations

import argparse
import csv
import functools
import heapq
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # the scorings' load reports

from bench.stats import mcnemar, median, paired_bootstrap, percentile  # noqa: E402

PLAIN_KNOBS = {"r": "16", "lora_alpha": "16", "use_rslora": "false", "packing": "false", "warmup_ratio": "0",
               "learning_rate": "2e-4", "method": "lora"}
TOKEN_GOAL = 3.0  # sweep tokens <= this x plain's
PLAN_TARGET = 2.7  # what plan_asha aims the simulated expectation at (margin below TOKEN_GOAL)
CAP_EPOCHS = (3.0, 2.5, 2.0, 1.75, 1.5, 1.25, 1.0)  # per-trial caps tried, longest first
NYT_PROMPT = ("Classify the sentiment of this newspaper editorial sentence. Answer with one word, positive or "
              "negative.\n\nSentence: {text}")


# ----------------------------------------------------------------------------- tasks


def _write_movies(path: Path, n: int) -> Path:
    from tests.real_material import write_sentiment_sample
    return write_sentiment_sample(path, n, seed=0)


def _write_nyt(path: Path, n: int) -> Path:
    from tests.real_material import write_nyt_sentiment_sample
    return write_nyt_sentiment_sample(path, n, seed=0)


def _write_qa(path: Path, n: int) -> Path:
    from tests.real_material import write_movie_qa_sample
    return write_movie_qa_sample(path, n, seed=0)


def _write_chat(path: Path, n: int) -> Path:
    from tests.real_material import write_sentiment_chat_sample
    return write_sentiment_chat_sample(path, n, seed=0)


def _minilm() -> str:
    from tests.real_material import minilm_dir
    return str(minilm_dir())


def _smollm2() -> str:
    from tests.real_material import smollm2_dir
    return str(smollm2_dir())


@dataclass(frozen=True)
class TaskSpec:
    name: str
    script: str  # sweeps/<recipe>.py
    kind: str  # labels | qa | chat: how the test split is scored and compared
    metric: str  # the test metric the targets read
    mode: str  # max or min
    rows: tuple[int, int, int]  # train, eval, test rows
    quick_rows: tuple[int, int, int]
    trials: int
    quick_trials: int
    model: Callable[[], str]
    write: Callable[[Path, int], Path]
    args: tuple[str, ...] = ()
    quick_args: tuple[str, ...] = ()
    max_reports: int = 20  # eval reports a full-length trial makes at most (each scores the eval rows)

    def better(self, a: float, b: float) -> bool:
        return a > b if self.mode == "max" else a < b


SMOL = ("--quantization", "4bit", "--shots", "0", "--per-device-batch-size", "8", "--gradient-accumulation-steps", "1")
TASKS = {t.name: t for t in (
    TaskSpec("encoder", "distilbert_imdb", "labels", "f1", "max", (1100, 300, 1000), (220, 60, 120), 8, 4,
             _minilm, _write_movies, ("--quantization", "none", "--max-seq-length", "128",
                                      "--per-device-batch-size", "16", "--gradient-accumulation-steps", "1"),
             max_reports=60),
    TaskSpec("instruct_movies", "mistral_imdb", "labels", "f1", "max", (300, 60, 200), (70, 20, 30), 6, 3,
             _smollm2, _write_movies, (*SMOL, "--max-seq-length", "160", "--gen-eval-rows", "8"),
             ("--gen-eval-rows", "4")),
    TaskSpec("instruct_nyt", "mistral_imdb", "labels", "f1", "max", (300, 60, 200), (70, 20, 30), 6, 3,
             _smollm2, _write_nyt, (*SMOL, "--max-seq-length", "192", "--gen-eval-rows", "8", "--balance",
                                    "--prompt", NYT_PROMPT), ("--gen-eval-rows", "4")),
    TaskSpec("qa", "llama_squad", "qa", "f1", "max", (200, 40, 100), (50, 12, 20), 6, 3,
             # 4 rows x 2 accumulated = the others' 8 a step: the smoke preset trains without gradient
             # checkpointing, and 8 x 256 tokens held a trial at 6.3 GB (measured), two of them plus the
             # driver past Ray's kill threshold on a 23.5 GB node; 4 x 256 halves the activations
             _smollm2, _write_qa, (*SMOL, "--max-seq-length", "256", "--max-new-tokens", "48",
                                   "--per-device-batch-size", "4", "--gradient-accumulation-steps", "2",
                                   "--gen-eval-rows", "24", "--samples", "4"), ("--gen-eval-rows", "8")),
    TaskSpec("chat", "llama_finetome", "chat", "eval_loss", "min", (300, 60, 200), (70, 20, 30), 6, 3,
             _smollm2, _write_chat, (*SMOL, "--max-seq-length", "160")),
)}


def recipe_of(spec: TaskSpec):
    import importlib
    return importlib.import_module(f"sweeps.{spec.script}").RECIPE


# ----------------------------------------------------------------------------- the recipe scripts


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


@functools.lru_cache(maxsize=None)
def flags_of(script: str) -> frozenset:
    """Every --flag the recipe script's --help lists (checked once: flags being added elsewhere,
    e.g. --final-round, are only passed where the script takes them)."""
    out = subprocess.run([sys.executable, str(ROOT / "sweeps" / f"{script}.py"), "--help"], capture_output=True,
                         text=True, env=_env(), cwd=ROOT)
    return frozenset(re.findall(r"(--[a-z][a-z0-9-]*)", out.stdout))


def if_supported(script: str, flag: str, *values: str) -> list[str]:
    return [flag, *values] if flag in flags_of(script) else []


def split_args(script: str, n_train: int, n_eval: int, n_test: int) -> tuple[int, list[str]]:
    """Rows to write and the flags that cut them into exactly these splits (fractions of all rows,
    each capped by its row count; the rest trains). Where the script has a final round
    (--validation-fraction), as many validation rows as eval rows are held out too, for every arm
    alike (only the sweep's final round reads them), so the arms' splits stay the same."""
    n_val = n_eval if "--validation-fraction" in flags_of(script) else 0
    total = n_train + n_eval + n_test + n_val
    frac = lambda n: f"{(n + 0.5) / total:.6f}"  # noqa: E731  int(total * frac) == n
    val = ["--validation-fraction", frac(n_val), "--validation-rows", str(n_val)] if n_val else []
    return total, ["--test-fraction", frac(n_test), "--test-rows", str(n_test), "--eval-fraction", frac(n_eval),
                   "--eval-rows", str(n_eval), *val, "--max-train-rows", str(n_train)]


def recipe_lr(spec: TaskSpec) -> list[str]:
    """The recipe's own learning-rate range (the smoke preset narrows it for its tiny models)."""
    from search_spaces import LogUniform

    lr = recipe_of(spec).search_space.params.get("learning_rate")
    if lr is None:
        return []
    kind = "log" if isinstance(lr, LogUniform) else "uniform"
    return ["--space", f"learning_rate={kind}:{lr.low:g}:{lr.high:g}"]


def plain_space(spec: TaskSpec) -> list[str]:
    """The notebook knobs, for those the recipe searches (the rest keep the recipe's settings)."""
    searched = recipe_of(spec).search_space.params
    return sum((["--space", f"{k}={v}"] for k, v in PLAIN_KNOBS.items() if k in searched), [])


# ----------------------------------------------------------------------------- ASHA plan


def simulate_asha(n: int, conc: int, max_t: float, grace: float, rf: float, report: float,
                  reps: int = 200, seed: int = 0, noise: float = 0.5, min_results: int = 2) -> float:
    """Mean total training tokens of lorasweep's JudgedASHA (one bracket; a trial stops at a rung when
    below the (1 - 1/rf) percentile of the values recorded there; with fewer than ``min_results``
    values it passes provisionally and is judged again at its next report) over ``reps`` runs of
    ``n`` trials, ``conc`` at a time, each reporting every ``report`` tokens up to ``max_t``.
    A trial's value at a rung is its quality plus noise (learning curves rank trials imperfectly)."""
    n_rungs = int(math.log(max_t / grace) / math.log(rf) + 1 + 1e-9)
    milestones = [grace * rf ** k for k in reversed(range(n_rungs))]  # checked highest first
    cut = (1 - 1 / rf) * 100
    rng = random.Random(seed)
    totals = []
    for _ in range(reps):
        quality = [rng.gauss(0, 1) for _ in range(n)]
        recorded: list[dict] = [{} for _ in milestones]
        provisional: list[set] = [set() for _ in range(n)]
        heap, started, used = [], 0, 0.0
        for _ in range(min(conc, n)):
            heapq.heappush(heap, (report, started, report))
            started += 1
        while heap:
            now, i, tokens = heapq.heappop(heap)
            done = tokens >= max_t
            for r in sorted(provisional[i]):  # rungs passed without peers, judged once they have them
                if len(recorded[r]) >= min_results:
                    provisional[i].discard(r)
                    done = done or recorded[r][i] < percentile(list(recorded[r].values()), cut)
            for r, (m, rec) in enumerate(zip(milestones, recorded)):
                if not done and tokens >= m and i not in rec:
                    rec[i] = quality[i] + rng.gauss(0, noise)
                    if len(rec) < min_results:
                        provisional[i].add(r)
                    else:
                        done = rec[i] < percentile(list(rec.values()), cut)
                    break
            if done:
                used += min(tokens, max_t)
                if started < n:
                    heapq.heappush(heap, (now + report, started, report))
                    started += 1
            else:
                heapq.heappush(heap, (now + report, i, tokens + report))
        totals.append(used)
    return sum(totals) / len(totals)


def plan_asha(epoch_tokens: int, steps: int, trials: int, conc: int = 2, max_reports: int = 60) -> dict:
    """The longest per-trial cap (CAP_EPOCHS) whose simulated sweep spends <= PLAN_TARGET epochs of
    tokens, with ASHA's factor (3, 4 or 6) and first rung (cap / factor^2 or ^3, the latest that
    fits) and the report interval in steps (a report at about the first rung, <= max_reports a trial).
    Nothing fits: the 1-epoch plan that spends least, marked with a note."""
    per_step = epoch_tokens / steps
    candidates = []
    for cap in CAP_EPOCHS:
        max_t = int(cap * epoch_tokens)
        for rf in (3, 4, 6):
            for k in (2, 3):
                grace = max_t / rf ** k
                every = max(1, round(grace / per_step), math.ceil(cap * steps / max_reports))
                if every * per_step > 1.5 * grace and k == 3:
                    continue  # reports too coarse for a rung that early
                est = simulate_asha(trials, conc, max_t, grace, rf, every * per_step) / epoch_tokens
                candidates.append({"cap_epochs": cap, "max_tokens": max_t, "reduction_factor": rf,
                                   "grace_tokens": int(grace), "eval_every": every, "expected_epochs": round(est, 2)})
        fits = [c for c in candidates if c["cap_epochs"] == cap and c["expected_epochs"] <= PLAN_TARGET]
        if fits:
            return max(fits, key=lambda c: (c["grace_tokens"], -c["expected_epochs"]))
    cheapest = min((c for c in candidates if c["cap_epochs"] == min(CAP_EPOCHS)), key=lambda c: c["expected_epochs"])
    return {**cheapest, "note": f"no plan met {PLAN_TARGET}x; cheapest 1-epoch plan"}


# ----------------------------------------------------------------------------- running arms


def _train_seconds(folder: Path) -> float:
    """Training seconds summed over trials, from each trial's last report (eval and checkpoints excluded)."""
    total = 0.0
    for result in folder.glob("trial_*/result.json"):
        reports = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        total += max((r.get("train_time_s", 0.0) for r in reports), default=0.0)
    return total


def run_arm(script: str, name: str, args: list[str], runs: Path) -> dict:
    """One arm as a subprocess of the recipe script; its summary is kept in <runs>/<name>.json, which
    --resume reuses (a killed sweep goes on with the script's own --resume)."""
    done = runs / f"{name}.json"
    if done.is_file():
        print(f"  {name}: reusing {done}", flush=True)
        return json.loads(done.read_text())
    folder = runs / name
    log = runs / f"{name}.log"
    if (folder / "best_adapters" / "rank_1").is_dir() and (folder / "leaderboard.csv").is_file():
        wall = (folder / "leaderboard.csv").stat().st_mtime - (folder / "sweep_config.json").stat().st_mtime
        print(f"  {name}: reusing its finished sweep in {folder}", flush=True)
    else:
        cmd = [sys.executable, str(ROOT / "sweeps" / f"{script}.py"), *args, "--storage-path", str(runs), "--name", name]
        wall = 0.0
        if list(folder.glob("experiment_state-*.json")):
            wall = log.stat().st_mtime - (folder / "sweep_config.json").stat().st_mtime if log.is_file() else 0.0
            cmd.append("--resume")
        else:
            shutil.rmtree(folder, ignore_errors=True)
        print("  $ " + " ".join(_quote(c) for c in cmd), flush=True)
        t0 = time.time()
        with open(log, "a") as fh:
            rc = subprocess.run(cmd, cwd=runs, env=_env(), stdout=fh, stderr=subprocess.STDOUT).returncode
        wall += time.time() - t0
        if rc != 0:
            raise SystemExit(f"{name} exited {rc} after {wall:.0f}s; see {log}")
        print(f"  {name}: {wall:.0f} s", flush=True)
    with open(folder / "leaderboard.csv", newline="") as f:
        trials = list(csv.DictReader(f))
    out = {"wall_s": wall, "train_s": _train_seconds(folder), "trials": trials,
           "tokens": sum(int(float(t.get("tokens_seen") or 0)) for t in trials)}
    done.write_text(json.dumps(out, default=str))
    return out


def _quote(arg: str) -> str:
    return arg if re.fullmatch(r"[\w@%+=:,./-]+", arg) else "'" + arg.replace("'", "'\\''") + "'"


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


# ----------------------------------------------------------------------------- one task


def prepare(spec: TaskSpec, runs: Path, quick: bool) -> tuple[list[str], dict]:
    """Writes the data file, returns the flags every arm shares and the audit of its splits."""
    from lorasweep.resolve import resolve
    from trainers.tasks import get_task

    n_train, n_eval, n_test = spec.quick_rows if quick else spec.rows
    total, split = split_args(spec.script, n_train, n_eval, n_test)
    data = runs / f"{spec.name}.jsonl"
    if not data.is_file():
        spec.write(data, total)
    common = ["--preset", "smoke", "--model", spec.model(), "--dataset", str(data), *split, *spec.args,
              *(spec.quick_args if quick else ()), "--cpus-per-worker", "1"]
    settings = resolve(recipe_of(spec), common).settings
    audit = get_task(settings.task).audit(settings)
    batch = settings.per_device_batch_size * settings.gradient_accumulation_steps
    audit["steps_per_epoch"] = math.ceil(audit["train_examples"] / batch)
    return common, audit


def arm_args(spec: TaskSpec, common: list[str], audit: dict, plan: dict, trials: int, random_n: int) -> dict:
    script = spec.script
    no_final = if_supported(script, "--final-round", "0")
    no_base = ["--no-baseline"]
    epoch, steps = audit["train_tokens"], audit["steps_per_epoch"]
    # The random arm: the searcher's draws alone where the script can leave the known points out.
    no_known = if_supported(script, "--no-known-points")
    n_seeds = 0 if no_known else len(recipe_of(spec).search_space.known_points)
    long_ = ["--max-tokens", str(plan["max_tokens"]), "--eval-every", str(plan["eval_every"])]
    return {
        "plain": [*common, "--max-tokens", str(epoch), *plain_space(spec), "--num-samples", "1", "--scheduler", "none",
                  "--max-concurrent", "1", "--top-k", "1", "--eval-every", str(10 * steps), *no_final],
        "sweep": [*common, *long_, *recipe_lr(spec), "--searcher", "tpe", "--scheduler", "asha",
                  "--grace-tokens", str(plan["grace_tokens"]), "--reduction-factor", str(plan["reduction_factor"]),
                  "--num-samples", str(trials), "--max-concurrent", "2", "--top-k", str(trials), *no_base],
        "long_plain": [*common, *long_, *plain_space(spec), "--num-samples", "1", "--scheduler", "none",
                       "--max-concurrent", "1", "--top-k", "1", *no_final, *no_base],
        "random": [*common, *long_, *recipe_lr(spec), *no_known, "--searcher", "random", "--scheduler", "none",
                   "--seed", "1",
                   "--num-samples", str(random_n + n_seeds), "--max-concurrent", "2",
                   "--top-k", str(random_n + n_seeds), *no_final, *no_base],
    }


def run_task(spec: TaskSpec, root: Path, quick: bool, trials: int | None, random_n: int) -> dict:
    runs = root / spec.name
    runs.mkdir(parents=True, exist_ok=True)
    trials = trials or (spec.quick_trials if quick else spec.trials)
    common, audit = prepare(spec, runs, quick)
    plan = plan_asha(audit["train_tokens"], audit["steps_per_epoch"], trials, max_reports=spec.max_reports)
    print(f"\n== {spec.name}: {audit['train_examples']} train ({audit['train_tokens']:,} tokens, "
          f"{audit['steps_per_epoch']} steps an epoch), {audit['eval_examples']} eval, {audit['test_rows']} test rows; "
          f"sweep: {trials} trials, cap {plan['cap_epochs']} epochs, ASHA factor {plan['reduction_factor']}, "
          f"first rung {plan['grace_tokens']:,} tokens, report every {plan['eval_every']} steps "
          f"(simulated: {plan['expected_epochs']} epochs of tokens)", flush=True)
    cache = ScoreCache(runs / "scores.json")
    arms, scored = {}, {}
    for name, args in arm_args(spec, common, audit, plan, trials, random_n).items():  # each scored as it ends,
        arms[name] = run_arm(spec.script, name, args, runs)                          # so a cut run still says
        scored[name] = score_arm(spec, runs, name, cache)                            # plain vs sweep
        best = next(t for t in scored[name] if t["rank"] == 1)["test"][spec.metric]
        print(f"   {name}: test {spec.metric} {best:.4f} (rank 1 of {len(scored[name])})", flush=True)
    base = base_score(spec, runs, cache)
    return summarize(spec, audit, plan, trials, arms, scored, base)


def summarize(spec: TaskSpec, audit: dict, plan: dict, trials: int, arms: dict, scored: dict, base: dict) -> dict:
    plain, long_ = scored["plain"][0]["test"], scored["long_plain"][0]["test"]
    sweep_trials = scored["sweep"]
    sweep = next(t for t in sweep_trials if t["rank"] == 1)["test"]
    better_plain, better_name = (plain, "plain") if not spec.better(long_[spec.metric], plain[spec.metric]) \
        else (long_, "long_plain")
    rnd = random_quantiles(spec, scored["random"])
    random_tokens = sum(t["tokens"] for t in scored["random"] if not t["seed"])
    tokens = {"plain": arms["plain"]["tokens"], "long_plain": arms["long_plain"]["tokens"],
              "random": random_tokens, "sweep": arms["sweep"]["tokens"]}
    ratio = {k: v / max(tokens["plain"], 1) for k, v in tokens.items()}
    sig = compare(spec, sweep, better_plain)
    top2 = winner_in_top2(spec, sweep_trials)
    strip = lambda m: {k: v for k, v in m.items() if k not in ("predictions", "references", "per_example", "samples",  # noqa: E731
                                                              "weights")}
    result = {
        "task": spec.name, "script": spec.script, "kind": spec.kind, "metric": spec.metric, "mode": spec.mode,
        "audit": audit, "plan": plan, "trials": trials,
        "test": {"base": strip(base), "plain": strip(plain), "long_plain": strip(long_), "sweep": strip(sweep),
                 "random": rnd},
        "tokens": tokens, "ratio_to_plain": ratio,
        "wall_s": {k: round(v["wall_s"]) for k, v in arms.items()},
        "train_s": {k: round(v["train_s"]) for k, v in arms.items()},
        "score_s": {k: round(sum(t["test"].get("score_s", 0) for t in v)) for k, v in scored.items()},
        "better_plain_arm": better_name, "significance": sig, "winner_in_test_top2": top2,
        "sweep_trials": [{**{k: v for k, v in t.items() if k != "test"}, "test": strip(t["test"])} for t in sweep_trials],
        "random_trials": [{**{k: v for k, v in t.items() if k != "test"}, "test": strip(t["test"])}
                          for t in scored["random"]],
        "checks": {
            "a_sweep_ge_both_plain": not spec.better(plain[spec.metric], sweep[spec.metric])
            and not spec.better(long_[spec.metric], sweep[spec.metric]),
            "b_significantly_better": sig["better"],
            "c_tokens_le_3x": ratio["sweep"] <= TOKEN_GOAL,
            "d_above_random_p75": rnd["n"] > 0 and spec.better(sweep[spec.metric], rnd["p75"]),
            "e_winner_in_top2": top2,
        },
    }
    print_task(spec, result)
    return result


# ----------------------------------------------------------------------------- printing


def _fmt(m: dict, key: str) -> str:
    v = m.get(key)
    return f"{v:.4f}" if isinstance(v, (int, float)) and v == v else "-"


def print_task(spec: TaskSpec, r: dict) -> None:
    t, tok, ratio = r["test"], r["tokens"], r["ratio_to_plain"]
    extra = "accuracy" if spec.kind == "labels" else None
    head = f"{'arm':<24}{'test ' + spec.metric:>15}" + (f"{'test acc':>10}" if extra else "")
    print(f"\n{spec.name}: test split, {r['audit']['test_rows']} rows ({spec.metric}: "
          f"{'higher' if spec.mode == 'max' else 'lower'} is better)")
    print(f"{head}{'train tokens':>14}{'x plain':>9}{'wall s':>8}")
    rnd = t["random"]
    rows = [("base (untrained)", t["base"], None, None),
            (f"random x{rnd['n']} median", {spec.metric: rnd["median"]}, tok["random"], "random"),
            ("random p75", {spec.metric: rnd["p75"]}, None, None),
            ("plain (1 epoch)", t["plain"], tok["plain"], "plain"),
            (f"long plain ({r['plan']['cap_epochs']} ep cap)", t["long_plain"], tok["long_plain"], "long_plain"),
            (f"sweep ({r['trials']} trials, rank_1)", t["sweep"], tok["sweep"], "sweep")]
    for name, m, tokens, arm in rows:
        cost = (f"{tokens:>14,}{ratio[arm]:>9.2f}{r['wall_s'][arm] + r['score_s'].get(arm, 0):>8}" if arm
                else f"{'-':>14}{'-':>9}{'-':>8}")
        print(f"{name:<24}{_fmt(m, spec.metric):>15}" + (f"{_fmt(m, extra):>10}" if extra else "") + cost)
    print("sweep trials (rank by eval -> test):  " + "; ".join(
        f"#{x['rank']} {x['status']} {x['tokens']:,} tok {spec.metric}={x['test'][spec.metric]:.4f}"
        for x in r["sweep_trials"]))
    s = r["significance"]
    if s["test"] == "exact McNemar":
        detail = f"sweep-only right {s['a_only_right']}, {r['better_plain_arm']}-only right {s['b_only_right']}"
    else:
        detail = f"diff {s['diff']:+.4f}, 95% CI [{s['lo']:+.4f}, {s['hi']:+.4f}]"
    print(f"sweep vs {r['better_plain_arm']} ({s['test']}): {detail}, p = {s['p']:.4f}"
          f"{' (significantly better)' if s['better'] else ''}")
    print(f"eval winner in the test top-2 of its trials: {'yes' if r['winner_in_test_top2'] else 'no'}; "
          f"sweep tokens {ratio['sweep']:.2f}x plain (goal <= {TOKEN_GOAL:g}x)")


def print_targets(results: dict) -> dict:
    tasks = list(results.values())
    n = len(tasks)
    c = lambda key: [t["task"] for t in tasks if t["checks"][key]]  # noqa: E731
    top2 = c("e_winner_in_top2")
    targets = {
        "a": (len(c("a_sweep_ge_both_plain")) == n, f"sweep >= both plain arms on every task: {c('a_sweep_ge_both_plain')}"),
        "b": (2 * len(c("b_significantly_better")) >= n,
              f"better than the better plain arm with p < 0.05 on >= half: {c('b_significantly_better')}"),
        "c": (len(c("c_tokens_le_3x")) == n, "sweep tokens <= 3x plain: " + ", ".join(
            f"{t['task']} {t['ratio_to_plain']['sweep']:.2f}x" for t in tasks)),
        "d": (len(c("d_above_random_p75")) == n, f"sweep above the random arm's p75 on every task: {c('d_above_random_p75')}"),
        "e": (len(top2) >= math.ceil(0.75 * n), f"eval winner in test top-2 on >= 75% ({len(top2)} of {n}): {top2}"),
    }
    print(f"\ntargets over {n} task(s): {', '.join(t['task'] for t in tasks)}")
    for key, (met, text) in targets.items():
        print(f"  ({key}) {'MET    ' if met else 'NOT MET'} {text}")
    return {k: {"met": met, "detail": text} for k, (met, text) in targets.items()}


# ----------------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", action="append", default=[], help=f"task(s), repeatable or comma list: {', '.join(TASKS)}")
    ap.add_argument("--quick", action="store_true", help="tiny rows and trials: checks the wiring")
    ap.add_argument("--resume", type=Path, help="a run folder whose finished arms and scores are reused (same options!)")
    ap.add_argument("--runs", type=Path, default=ROOT / "bench" / "quality_runs", help="a new folder per run in here")
    ap.add_argument("--random-n", type=int, default=None, help="random configurations (default 5; --quick 2)")
    ap.add_argument("--trials", type=int, default=None, help="sweep trials (default per task; --quick 3-4)")
    a = ap.parse_args(argv)
    a.only = [t.strip() for o in a.only for t in o.split(",") if t.strip()] or list(TASKS)
    unknown = [t for t in a.only if t not in TASKS]
    if unknown:
        ap.error(f"unknown task(s) {unknown}; choose from {', '.join(TASKS)}")
    a.random_n = a.random_n or (2 if a.quick else 5)
    return a


def main(argv=None) -> None:
    a = parse_args(argv)
    root = (a.resume or a.runs / time.strftime("%Y%m%d-%H%M%S")).resolve()  # Checkpoint() wants absolute
    root.mkdir(parents=True, exist_ok=True)
    out = ROOT / "bench" / ("quality_results_quick.json" if a.quick else "quality_results.json")
    previous = json.loads(out.read_text()) if out.is_file() else {}
    results = dict(previous.get("tasks", {}))
    print(f"runs in {root}", flush=True)
    for name in a.only:
        t0 = time.time()
        results[name] = {**run_task(TASKS[name], root, a.quick, a.trials, a.random_n), "runs": str(root / name),
                         "task_wall_s": round(time.time() - t0), "random_n": a.random_n}
        out.write_text(json.dumps({"tasks": results}, indent=2, default=str) + "\n")  # after each task
    targets = print_targets(results)
    out.write_text(json.dumps({"tasks": results, "targets": targets}, indent=2, default=str) + "\n")
    print(f"raw numbers: {out}")


if __name__ == "__main__":
    main()
