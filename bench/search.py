"""Search efficiency: the objective TPE+ASHA (the sweep's default) reaches on a fixed compute budget,
against random search on the same budget and against the full grid, over the six knobs on a grid
of choices, 3 seeds each.

Task: the flagship's smoke preset (tiny Llama in 4-bit, chat SFT on the FineTome-format sample),
every trial at most ``max_tokens`` training tokens, eval loss the objective. Grid: every combination
(96 in full: r 8/32, lora_alpha 16/64, rsLoRA on/off, packing on/off, warmup 0/0.1, learning rate
3e-4/1e-3/3e-3), each trained to the end. Budget of the others: a third of the grid's training
tokens (compute is counted in training tokens, not steps: a packed step holds ~5x the tokens), enforced
by a stopper that ends the search when the trials' summed tokens reach 30% of the grid's (the
trials still running finish their report). TPE+ASHA and random
start without the recipe's known-good points (they might be the grid's best). Random search runs
without early stopping, as it is usually run.

Figure: the gap between TPE+ASHA's best objective (mean over seeds) and the grid's best, relative
(target <= 2%), at <= 1/3 of the grid's compute (``raw`` has each seed and the compute fractions).
"""

from __future__ import annotations

import statistics
import tempfile

from ray.tune.stopper import Stopper

from bench.figure import Figure
from bench.sweep_util import run_sweep

TITLE = "search efficiency"
TARGET = ("<=", 0.02)
FULL = ["r=8,32", "lora_alpha=16,64", "use_rslora=false,true", "packing=false,true", "warmup_ratio=0,0.1",
        "learning_rate=3e-4,1e-3,3e-3"]
QUICK = ["r=8,32", "lora_alpha=32", "use_rslora=true", "packing=false,true", "warmup_ratio=0.05",
         "learning_rate=3e-4,3e-3"]


class Budget(Stopper):
    """A Tune stopper: ends the whole search once the trials' summed training tokens reach ``tokens``
    (the trials running then finish their current report)."""

    def __init__(self, tokens: float):
        self.tokens, self.seen = tokens, {}

    def __call__(self, trial_id, result):
        self.seen[trial_id] = result.get("tokens_seen", 0)
        return False

    def stop_all(self):
        return sum(self.seen.values()) >= self.tokens


def _arm(name, space, searcher, scheduler, trials, tokens, tmp, seed, budget=None):
    from sweeps.llama_finetome import RECIPE

    argv = ["--preset", "smoke", "--num-samples", str(trials), "--max-tokens", str(tokens), "--searcher", searcher,
            "--scheduler", scheduler, "--seed", str(seed), "--no-baseline", "--top-k", "1",
            "--storage-path", tmp, "--name", name, *[a for spec in space for a in ("--space", spec)]]
    out = run_sweep(RECIPE, argv, seeds=False, stop=budget, shutdown=False)
    reports = [r for rs in out["reports"].values() for r in rs]
    return {"curves": {t: [(r["tokens_seen"], r["eval_loss"]) for r in rs] for t, rs in out["reports"].items()},
            "best": min(r["eval_loss"] for r in reports),
            "tokens": sum(rs[-1]["tokens_seen"] for rs in out["reports"].values()),
            "trials": len(out["reports"]), "wall_s": round(out["wall_s"], 1)}


def rank_stability(curves: dict, budget: int) -> dict:
    """{share of the budget: Spearman correlation of the loss there with the final loss}, over every
    trial that reported at that share (the grid's trials all run to the end)."""
    from scipy.stats import spearmanr

    out = {}
    for share in (1 / 8, 1 / 6, 1 / 4, 1 / 3, 1 / 2, 2 / 3):
        pairs = []
        for points in curves.values():
            at = [loss for tokens, loss in points if tokens >= share * budget]
            if at and points[-1][0] >= 0.95 * budget:
                pairs.append((at[0], points[-1][1]))
        if len(pairs) >= 4:
            out[f"{share:.3f}"] = round(float(spearmanr(*zip(*pairs)).statistic), 3)
    return out


def run(device: str, quick: bool) -> Figure:
    import ray

    space, tokens = (QUICK, 8_000) if quick else (FULL, 15_000)
    size = 1
    for spec in space:
        size *= len(spec.split("=", 1)[1].split(","))
    seeds = (0,) if quick else (0, 1, 2)  # --quick checks the script works (CI): one seed per arm
    try:
        with tempfile.TemporaryDirectory() as tmp:
            grid = _arm("grid", space, "grid", "none", size, tokens, tmp, 0)
            # stop at 30%: the trials still running when the stopper fires finish their report, which
            # lands the total near a third
            budget = grid["tokens"] * 0.3
            tpe = [_arm(f"tpe{s}", space, "tpe", "asha", size, tokens, tmp, s, Budget(budget)) for s in seeds]
            rnd = [_arm(f"random{s}", space, "random", "none", size, tokens, tmp, s, Budget(budget)) for s in seeds]
    finally:
        ray.shutdown()
    stability = rank_stability(grid.pop("curves"), tokens)
    for a in tpe + rnd:
        a.pop("curves")
    gap = lambda arm: [(a["best"] - grid["best"]) / grid["best"] for a in arm]  # noqa: E731
    tpe_gap, rnd_gap = statistics.mean(gap(tpe)), statistics.mean(gap(rnd))
    raw = {"grid": grid, "grid_size": size, "budget_tokens": round(budget), "tpe_asha": tpe, "random": rnd,
           "tpe_gap": [round(g, 4) for g in gap(tpe)], "random_gap": [round(g, 4) for g in gap(rnd)],
           "tpe_compute_fraction": [round(a["tokens"] / grid["tokens"], 3) for a in tpe],
           "random_compute_fraction": [round(a["tokens"] / grid["tokens"], 3) for a in rnd], "max_tokens": tokens,
           # Spearman rank correlation, over the grid's trials, of the eval loss at that share of the
           # budget with the final one: where ASHA's first rung can judge (bench/search.py)
           "rank_stability": stability}
    return Figure(ratio=tpe_gap, target=TARGET, raw=raw,
                  detail=f"grid best {grid['best']:.4f} ({size} trials); TPE+ASHA {statistics.mean(a['best'] for a in tpe):.4f} "
                         f"({tpe_gap:+.1%}), random {statistics.mean(a['best'] for a in rnd):.4f} ({rnd_gap:+.1%}) at "
                         f"{max(raw['tpe_compute_fraction']):.0%} of the grid's training tokens at most")
