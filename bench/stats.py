"""Paired statistics for the quality suite (bench/quality.py): two models scored on the same rows.

- ``mcnemar``: labels; the rows one model gets right and the other wrong, exact two-sided p.
- ``paired_bootstrap``: a per-example value (SQuAD F1, a row's loss); the difference of the two
  (weighted) means, its 95% interval over resampled rows, and a paired randomisation p.
Both are the sweep's own statistics (lorasweep/selection.py), so the suite judges as the sweep does.
- ``percentile``: linear-interpolation percentile (numpy's default) without numpy.
"""

from __future__ import annotations

import math


def mcnemar(a_pred: list, b_pred: list, truth: list) -> tuple[int, int, float]:
    """Rows a gets right and b wrong, the reverse, and the exact two-sided McNemar p
    (``lorasweep.selection.mcnemar``, the sweep's own)."""
    from lorasweep.selection import mcnemar as exact

    if not (len(a_pred) == len(b_pred) == len(truth)):
        raise ValueError("mcnemar: the two models were scored on different rows")
    return exact({"pred": a_pred, "truth": truth}, {"pred": b_pred, "truth": truth})


def paired_bootstrap(a: list[float], b: list[float], weights: list[float] | None = None,
                     n_boot: int = 2000, seed: int = 0) -> dict:
    """Mean(a) - mean(b) over the same rows (weighted means with ``weights``, e.g. a row's token
    count for a token-weighted loss), its 95% bootstrap interval over resampled rows, and the paired
    randomisation test's two-sided p: ``lorasweep.selection.compare``, what the final round uses."""
    from lorasweep.selection import compare

    if len(a) != len(b) or (weights is not None and len(weights) != len(a)):
        raise ValueError("paired_bootstrap: the two models were scored on different rows")
    if not a:
        raise ValueError("paired_bootstrap: no rows")
    rec = lambda v: {"kind": "mean", "values": list(v), "weights": list(weights) if weights else None}  # noqa: E731
    c = compare(rec(a), rec(b), "mean", n_boot, seed)
    return {"diff": c.diff, "lo": c.low, "hi": c.high, "p": c.p, "n": c.n, "resamples": n_boot}


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
