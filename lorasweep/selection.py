"""Telling trials apart: how noisy the objective is on the eval split, 95% intervals, paired
comparisons, and the final round that scores the top trials again before anything is exported.

A trial's score on a few hundred eval rows is an estimate. Two trials 1 point apart on 80 rows are
not different trials, and exporting "the best" of them as if they were is the sweep fooling its
user. Everything here works on *records*: what a scoring kept for each row, so that two models
scored on the same rows can be compared row by row (paired), which is far more sensitive than
comparing two intervals.

- labels: ``{"kind": "labels", "pred": [...], "truth": [...], "labels": n_classes}``; accuracy,
  precision, recall, F1 (binary on the last label for two classes, macro for more, as
  ``trainers.evaluation.classification_metrics``) and per-class accuracy are recomputed on each
  resample.
- means: ``{"kind": "mean", "values": [...], "weights": [...]}``; the metric is the weighted mean
  (token-weighted eval loss: each row's summed loss over its token count; per-example F1 or ROUGE:
  weights of 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054
BOOTSTRAP = 2000


# ----------------------------------------------------------------------------- before the sweep


def is_rate(metric: str) -> bool:
    """Metrics that are means or rates on [0, 1] (accuracy, F1, ROUGE, exact match...): their
    variance is at most p(1 - p), so a binomial standard error bounds theirs."""
    from trainers.tasks import metric_mode

    return metric_mode(metric) == "max" and metric not in ("tokens_per_s",)


def binomial_se(n: int, p: float = 0.5) -> float:
    return math.sqrt(max(p * (1 - p), 0.0) / n) if n > 0 else float("inf")


def rows_for(se: float, p: float = 0.5) -> int:
    """Rows a rate needs for this standard error."""
    return math.ceil(p * (1 - p) / se**2)


def eval_rows_scored(task, settings, data: dict) -> int:
    """How many eval rows the objective is computed on at each report: the generation tasks' text
    metrics on ``gen_eval_rows`` of them, everything else on the whole eval split."""
    n = int(data.get("eval_examples") or 0)
    metric_from_text = getattr(task, "text_metrics", ()) and settings.gen_eval_rows
    return min(n, settings.gen_eval_rows) if metric_from_text else n


def noise_lines(metric: str, n: int, detectable: float, final_rows: int = 0) -> list[str]:
    """The objective's standard error on the ``n`` eval rows it is computed on, and a warning line
    when two standard errors exceed ``detectable`` (the smallest difference the sweep should see).
    ``final_rows``: rows the final round scores the top trials on (eval + validation)."""
    if n <= 0:
        return []
    if not is_rate(metric):
        return [f"objective {metric} on {n} eval rows: its standard error is measured in the final round "
                "(bootstrap over rows)"]
    se = binomial_se(n)
    lines = [f"objective {metric} on {n} eval rows: standard error <= {se:.3f} (binomial, at 0.5); "
             f"trials closer than ~{2 * se:.3f} cannot be told apart"
             + (f"; the final round scores the top trials on {final_rows} rows (<= {binomial_se(final_rows):.3f})"
                if final_rows > n else "")]
    if 2 * se > detectable:
        need = rows_for(detectable / 2)
        lines.append(f"warning: {n} eval rows cannot see the {detectable:g} differences this sweep looks for "
                     f"(2 standard errors = {2 * se:.3f}); give it ~{need:,} rows (--eval-rows/--eval-fraction, or "
                     f"--validation-fraction for the final round), or pass --detectable {2 * se:.2f} to accept it")
    return lines


# ----------------------------------------------------------------------------- statistics on records


def n_rows(record: dict) -> int:
    return len(record["truth"] if record["kind"] == "labels" else record["values"])


def _label_metric(metric: str, pred: np.ndarray, truth: np.ndarray, n_classes: int, names=()) -> np.ndarray:
    """``metric`` for each row of ``pred``/``truth`` (shape (B, n)), vectorised over resamples."""
    if metric == "accuracy":
        return (pred == truth).mean(-1)
    if metric.startswith("accuracy_"):
        name = metric[len("accuracy_"):]
        c = list(names).index(name) if name in names else int(name) if name.isdigit() else -1
        support = (truth == c).sum(-1)
        return np.where(support > 0, ((truth == c) & (pred == c)).sum(-1) / np.maximum(support, 1), 0.0)

    def prf(c):
        tp = ((pred == c) & (truth == c)).sum(-1)
        fp = ((pred == c) & (truth != c)).sum(-1)
        fn = ((pred != c) & (truth == c)).sum(-1)
        p = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0.0)
        r = np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), 0.0)
        f = np.where(p + r > 0, 2 * p * r / np.where(p + r > 0, p + r, 1), 0.0)
        return {"precision": p, "recall": r, "f1": f}

    if metric not in ("precision", "recall", "f1"):
        raise KeyError(f"{metric!r} cannot be recomputed from labels")
    if n_classes == 2:
        return prf(1)[metric]
    return np.mean([prf(c)[metric] for c in range(n_classes)], axis=0)


def metric_on(record: dict, metric: str, idx: np.ndarray | None = None) -> np.ndarray | float:
    """The metric of ``record`` on the rows ``idx`` (shape (B, n): one resample per row; None: all
    rows once, a float)."""
    single = idx is None
    if single:
        idx = np.arange(n_rows(record))[None, :]
    if record["kind"] == "labels":
        pred, truth = np.asarray(record["pred"])[idx], np.asarray(record["truth"])[idx]
        out = _label_metric(metric, pred, truth, int(record.get("labels", 2)), record.get("names", ()))
    else:
        v = np.asarray(record["values"], dtype=float)[idx]
        w = np.asarray(record.get("weights") or [1.0] * n_rows(record), dtype=float)[idx]
        out = (v * w).sum(-1) / np.maximum(w.sum(-1), 1e-12)
    return float(out[0]) if single else out


def _resamples(n: int, b: int = BOOTSTRAP, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(b, n))


def interval(record: dict, metric: str, b: int = BOOTSTRAP, seed: int = 0) -> tuple[float, float, float]:
    """``(value, low, high)``: the metric and its 95% percentile-bootstrap interval over rows."""
    value = metric_on(record, metric)
    boots = metric_on(record, metric, _resamples(n_rows(record), b, seed))
    lo, hi = np.nanpercentile(boots, [2.5, 97.5])
    return value, float(lo), float(hi)


@dataclass
class Comparison:
    """``a`` minus ``b`` on the same rows: the difference, its 95% paired-bootstrap interval, and a
    two-sided p from a paired randomisation test (each row's two results swapped at random: exact
    McNemar's answer for accuracy, and valid for F1 and losses too, where the percentile bootstrap
    calls 4 discordant rows out of 400 a difference). Distinguishable: p < 0.05."""

    diff: float
    low: float
    high: float
    p: float
    n: int

    @property
    def distinguishable(self) -> bool:
        return self.p < 0.05


def _stacked(a: dict, b: dict) -> dict:
    """One record holding ``a``'s rows then ``b``'s, so index arrays can pick either side per row."""
    if a["kind"] == "labels":
        return {**a, "pred": [*a["pred"], *b["pred"]], "truth": [*a["truth"], *b["truth"]]}
    n = n_rows(a)
    return {"kind": "mean", "values": [*a["values"], *b["values"]],
            "weights": [*(a.get("weights") or [1.0] * n), *(b.get("weights") or [1.0] * n)]}


def compare(a: dict, b: dict, metric: str, b_resamples: int = BOOTSTRAP, seed: int = 0) -> Comparison:
    n = n_rows(a)
    if n != n_rows(b) or (a["kind"] == "labels" and list(a["truth"]) != list(b["truth"])):
        raise ValueError(f"paired comparison needs the same rows; got {n} and {n_rows(b)}")
    idx = _resamples(n, b_resamples, seed)
    d = metric_on(a, metric, idx) - metric_on(b, metric, idx)
    lo, hi = np.nanpercentile(d, [2.5, 97.5])
    diff = metric_on(a, metric) - metric_on(b, metric)
    both, rows = _stacked(a, b), np.arange(n)
    swap = np.random.default_rng(seed + 1).random((b_resamples, n)) < 0.5
    null = metric_on(both, metric, np.where(swap, rows + n, rows)) - metric_on(both, metric, np.where(swap, rows, rows + n))
    p = float((np.sum(np.abs(null) >= abs(diff) - 1e-12) + 1) / (b_resamples + 1))
    return Comparison(diff, float(lo), float(hi), min(1.0, p), n)


def mcnemar(a: dict, b: dict) -> tuple[int, int, float]:
    """Rows ``a`` gets right and ``b`` wrong, the reverse, and the exact two-sided McNemar p
    (label records scored on the same rows)."""
    truth = a["truth"]
    if list(truth) != list(b["truth"]):
        raise ValueError("McNemar needs both models scored on the same rows")
    wins = sum(pa == t != pb for pa, pb, t in zip(a["pred"], b["pred"], truth))
    losses = sum(pb == t != pa for pa, pb, t in zip(a["pred"], b["pred"], truth))
    n = wins + losses
    p = min(1.0, 2 * sum(math.comb(n, k) for k in range(min(wins, losses) + 1)) / 2**n) if n else 1.0
    return wins, losses, p


def verdict(what: str, c: Comparison, metric: str, mode: str) -> str:
    """``best vs known point 1: +2.1 f1 points (95% CI -0.4..4.6), not distinguishable``. Rates are
    shown in points (x100); a loss as it is. ``mode`` max: positive differences are better."""
    scale, unit = (100.0, " points") if is_rate(metric) else (1.0, "")
    better = (c.diff > 0) == (mode == "max")
    if not c.distinguishable:
        tail = f"not distinguishable (p={c.p:.2f})"
    else:
        tail = f"{'better' if better else 'worse'} ({'p<0.001' if c.p < 0.001 else f'p={c.p:.3f}'})"
    return (f"{what}: {c.diff * scale:+.{1 if scale > 1 else 4}f} {metric}{unit} "
            f"(95% CI {c.low * scale:.{1 if scale > 1 else 4}f}..{c.high * scale:.{1 if scale > 1 else 4}f}, "
            f"{c.n} rows), {tail}")


def sweep_noise_lines(sweep, data: dict | None) -> list[str]:
    """``noise_lines`` for a resolved sweep and its data audit (nothing without an audit)."""
    from trainers.tasks import get_task

    if not data:
        return []
    task = get_task(sweep.settings.task)
    n = eval_rows_scored(task, sweep.settings, data)
    final = (int(data.get("eval_examples") or 0) + int(data.get("validation_rows") or 0)
             if sweep.options.final_round > 0 else 0)
    return noise_lines(sweep.space.metric, n, sweep.options.detectable, final)
