"""Paired statistics for the quality suite (bench/quality.py): two models scored on the same rows.

- ``mcnemar``: labels; the rows one model gets right and the other wrong, exact two-sided p.
- ``paired_bootstrap``: a per-example value (SQuAD F1, a row's loss); the difference of the two
  (weighted) means, its 95% percentile interval over resampled rows, and a two-sided p.
- ``percentile``: linear-interpolation percentile (numpy's default) without numpy.
"""

from __future__ import annotations

import math
import random


def mcnemar(a_pred: list, b_pred: list, truth: list) -> tuple[int, int, float]:
    """Rows a gets right and b wrong, the reverse, and the exact two-sided McNemar p."""
    if not (len(a_pred) == len(b_pred) == len(truth)):
        raise ValueError("mcnemar: the two models were scored on different rows")
    wins = sum(pa == t != pb for pa, pb, t in zip(a_pred, b_pred, truth))
    losses = sum(pb == t != pa for pa, pb, t in zip(a_pred, b_pred, truth))
    n = wins + losses
    p = min(1.0, 2 * sum(math.comb(n, k) for k in range(min(wins, losses) + 1)) / 2**n) if n else 1.0
    return wins, losses, p


def _mean(values: list[float], weights: list[float] | None, idx) -> float:
    if weights is None:
        return sum(values[i] for i in idx) / len(idx)
    total = sum(weights[i] for i in idx)
    return sum(values[i] * weights[i] for i in idx) / total if total else 0.0


def paired_bootstrap(a: list[float], b: list[float], weights: list[float] | None = None,
                     n_boot: int = 2000, seed: int = 0) -> dict:
    """Mean(a) - mean(b) over the same rows (weighted means with ``weights``, e.g. a row's token
    count for a token-weighted loss), with the 95% percentile interval of that difference over
    ``n_boot`` resamples of the rows and a two-sided p: twice the share of resampled differences
    on the other side of zero, counted as (k + 1) / (n_boot + 1) so it is never 0 (at most 1)."""
    if len(a) != len(b) or (weights is not None and len(weights) != len(a)):
        raise ValueError("paired_bootstrap: the two models were scored on different rows")
    if not a:
        raise ValueError("paired_bootstrap: no rows")
    n = len(a)
    diff = [x - y for x, y in zip(a, b)]
    everything = range(n)
    observed = _mean(diff, weights, everything)
    rng = random.Random(seed)
    draws = sorted(_mean(diff, weights, [rng.randrange(n) for _ in everything]) for _ in range(n_boot))
    below = (sum(d <= 0 for d in draws) + 1) / (n_boot + 1)
    above = (sum(d >= 0 for d in draws) + 1) / (n_boot + 1)
    return {"diff": observed, "lo": percentile(draws, 2.5), "hi": percentile(draws, 97.5),
            "p": min(1.0, 2 * min(below, above)), "n": n, "resamples": n_boot}


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), linear interpolation between closest ranks (numpy's default)."""
    s = sorted(values)
    if not s:
        return float("nan")
    pos = (len(s) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def median(values: list[float]) -> float:
    return percentile(values, 50)
