"""The quality suite's tasks and plans (bench/quality.py): what each task trains and tests on, the
flags every arm shares, the notebook knobs of the plain arms, the arms' flags, and the ASHA plan
(a per-trial cap and rungs whose simulated sweep stays inside the token goal)."""

from __future__ import annotations

import functools
import heapq
import math
import os
import random
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from bench.stats import percentile

ROOT = Path(__file__).resolve().parents[1]

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


def script_env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


@functools.lru_cache(maxsize=None)
def flags_of(script: str) -> frozenset:
    """Every --flag the recipe script's --help lists (checked once: flags being added elsewhere,
    e.g. --final-round, are only passed where the script takes them)."""
    out = subprocess.run([sys.executable, str(ROOT / "sweeps" / f"{script}.py"), "--help"], capture_output=True,
                         text=True, env=script_env(), cwd=ROOT)
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
