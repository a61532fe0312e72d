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
--only merges its tasks into the file's earlier results (by task name). Tasks, arms and the ASHA plan:
bench/quality_tasks.py; test-split scoring and the paired tests: bench/quality_scoring.py, bench/stats.py.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # the scorings' load reports

from bench.quality_scoring import (ScoreCache, base_score, compare, random_quantiles, score_arm,  # noqa: E402
                                   winner_in_top2)
from bench.quality_tasks import (TASKS, TOKEN_GOAL, TaskSpec, arm_args, plan_asha, recipe_of,  # noqa: E402
                                 script_env, split_args)

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
            rc = subprocess.run(cmd, cwd=runs, env=script_env(), stdout=fh, stderr=subprocess.STDOUT).returncode
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
