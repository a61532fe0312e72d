"""SQuAD v2's answer scoring, as its official evaluation script has it: answer normalisation,
exact match and token F1, max over the gold answers (none usable: the question is unanswerable).
``text_metrics.score_texts`` reports these as ``exact_match`` and ``f1``."""

from __future__ import annotations

import collections
import re
import string

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(s: str) -> str:
    """Lower case, punctuation removed, articles removed, whitespace collapsed (SQuAD's own)."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", s).split())


def _squad_golds(golds: list[str]) -> list[str]:
    # v2: golds that normalise to nothing are dropped; none left means the question has no answer
    return [g for g in golds if normalize_answer(g)] or [""]


def _f1_one(gold: str, pred: str) -> float:
    gold_toks, pred_toks = normalize_answer(gold).split(), normalize_answer(pred).split()
    if not gold_toks or not pred_toks:
        return float(gold_toks == pred_toks)
    same = sum((collections.Counter(gold_toks) & collections.Counter(pred_toks)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_toks), same / len(gold_toks)
    return 2 * precision * recall / (precision + recall)


def squad_exact(golds: list[str], pred: str) -> float:
    return float(max(normalize_answer(g) == normalize_answer(pred) for g in _squad_golds(golds)))


def squad_f1(golds: list[str], pred: str) -> float:
    return max(_f1_one(g, pred) for g in _squad_golds(golds))
