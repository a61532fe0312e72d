"""Where can ASHA judge? How well each report's ranking of trials predicts their final ranking.

    . .venv/bin/activate
    python bench/rank_stability.py bench/quality_runs/<stamp>/<task>/random      # a folder of trials run to the end
    python bench/rank_stability.py runs/llama_finetome-smoke --objective eval_loss

Reads every ``trial_*/result.json`` of a sweep folder (best: one without early stopping, such as the
quality suite's ``random`` arm, where every trial reports to the end) and, at each report (as a
fraction of the trial budget), the Spearman correlation between the trials' ranking by then and
their ranking by the best objective they reach: once by the eval loss (what ASHA prunes on,
``--prune-metric``) and once by the objective itself. A rung placed where rho is high loses few good
trials; where it is low, ASHA is guessing. Prints one row per report index; writes nothing.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def spearman(x: list[float], y: list[float]) -> float:
    from scipy.stats import spearmanr

    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return math.nan
    return float(spearmanr(x, y).statistic)


def trials(folder: Path) -> dict[str, list[dict]]:
    out = {}
    for result in sorted(folder.glob("trial_*/result.json")):
        reports = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        if reports:
            out[result.parent.name] = reports
    return out


def table(folder: Path, objective: str, mode: str) -> list[tuple]:
    runs = trials(folder)
    sign = -1.0 if mode == "min" else 1.0  # larger is better after the sign
    final = {t: max(sign * r[objective] for r in rs if r.get(objective) is not None) for t, rs in runs.items()}
    budget = max(r.get("tokens_seen", 0) for rs in runs.values() for r in rs) or 1
    rows = []
    for k in range(max(map(len, runs.values()))):
        at = {t: rs[k] for t, rs in runs.items() if len(rs) > k}
        ids = list(at)
        frac = sum(at[t].get("tokens_seen", 0) for t in ids) / len(ids) / budget
        rho_loss = spearman([-at[t]["eval_loss"] for t in ids], [final[t] for t in ids])
        rho_obj = spearman([sign * at[t][objective] for t in ids], [final[t] for t in ids])
        rows.append((k + 1, frac, len(ids), rho_loss, rho_obj))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="+", type=Path)
    ap.add_argument("--objective", default="", help="default: the sweep's (sweep_config.json)")
    a = ap.parse_args()
    for folder in a.folders:
        config = json.loads((folder / "sweep_config.json").read_text()) if (folder / "sweep_config.json").exists() else {}
        objective = a.objective or (config.get("sweep", {}).get("objective") or "eval_loss").split(",")[0]
        mode = "min" if objective in ("eval_loss", "perplexity") else "max"
        print(f"{folder}: objective {objective} ({mode})")
        print(f"{'report':>6} {'budget':>7} {'trials':>6} {'rho eval_loss':>14} {'rho ' + objective:>14}")
        for k, frac, n, rl, ro in table(folder, objective, mode):
            print(f"{k:>6} {frac:>7.2f} {n:>6} {rl:>14.2f} {ro:>14.2f}")


if __name__ == "__main__":
    main()
