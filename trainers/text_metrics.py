"""Offline text-generation metrics for QA, summarisation and instruction recipes.

Plain functions on the reference libraries (no ``evaluate.load``: it fetches code from the Hub).
Every score is on a 0-1 scale, higher is better:

- ``exact_match`` / ``f1``: the official SQuAD v2 script (:mod:`trainers.squad`). Answers are
  normalised (lower case, no punctuation, no articles a/an/the, single spaces); EM is 1 when they
  are equal, F1 is the harmonic mean of token precision and recall. Max over the gold answers; an
  empty gold list (or only golds that normalise to "") means "unanswerable", which only an empty
  prediction matches.
- ``bleu``: sacreBLEU (13a tokeniser, 4-grams) divided by 100. The corpus value is corpus BLEU
  (n-gram counts pooled over the set, one brevity penalty), not a mean of sentence BLEUs; each
  example's own value is sentence BLEU with sacreBLEU's recommended sentence settings (exp
  smoothing, effective order).
- ``rouge1`` / ``rouge2`` / ``rougeL``: Google's ``rouge_score`` F-measure with the Porter stemmer,
  max over the references (as Hugging Face ``evaluate`` does with several references). Its
  tokeniser keeps only ``[a-z0-9]``: text in other scripts scores 0.
- ``meteor``: NLTK's METEOR (exact, stem and WordNet-synonym matches, fragmentation penalty), max
  over the references. Needs WordNet data, found by :func:`trainers.wordnet_data.wordnet_status`;
  without it the metric is reported unavailable, never 0.
- ``bertscore_f1``: BERTScore F1 (greedy cosine matching of contextual token embeddings) from a
  local encoder folder, no idf weighting, no baseline rescaling, max over the references. Raw
  BERTScore is rarely below ~0.3 even for unrelated text: compare runs, not absolute values.

Empty text, for every metric but EM/F1 (which follow SQuAD v2): references that are blank are
dropped; an example whose prediction and references are all blank scores 1.0 (a correct "no
answer"), one where only one side is blank scores 0.0, so an unanswerable SQuAD question is not
silently skipped and the corpus mean stays over every example.

Heavy libraries are imported inside the functions: importing this module costs nothing.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field

from common.errors import first_line
from common.paths import cache_root
from trainers import wordnet_data
from trainers.squad import squad_exact, squad_f1

METRICS: dict[str, str] = {
    "exact_match": "SQuAD v2 exact match of normalised answers, max over golds (0-1)",
    "f1": "SQuAD v2 token F1 of normalised answers, max over golds (0-1)",
    "bleu": "sacreBLEU: corpus BLEU / 100; per example: smoothed sentence BLEU / 100",
    "rouge1": "ROUGE-1 F-measure (unigrams, Porter stemmer), max over references",
    "rouge2": "ROUGE-2 F-measure (bigrams, Porter stemmer), max over references",
    "rougeL": "ROUGE-L F-measure (longest common subsequence, Porter stemmer), max over references",
    "meteor": "NLTK METEOR (exact, stem and WordNet synonym matches), max over references",
    "bertscore_f1": "BERTScore F1 from a local encoder (no idf, no rescaling), max over references",
}


class MetricUnavailable(Exception):
    """A metric that cannot be computed here; its message is the one-line reason."""


@dataclass
class TextScores:
    corpus: dict[str, float] = field(default_factory=dict)
    per_example: dict[str, list[float]] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)


# ----------------------------------------------------------------------------- empty text


def _usable(refs: list[str]) -> list[str]:
    return [r for r in refs if r.strip()]


def _empty_case(pred: str, refs: list[str]) -> float | None:
    """1.0 if prediction and references are all blank, 0.0 if one side is, None if both have text."""
    pred_empty, refs_empty = not pred.strip(), not _usable(refs)
    if pred_empty or refs_empty:
        return float(pred_empty and refs_empty)
    return None


def _per_example(preds, refs, score_one) -> list[float]:
    out = []
    for pred, rs in zip(preds, refs):
        fixed = _empty_case(pred, rs)
        out.append(fixed if fixed is not None else score_one(pred, _usable(rs)))
    return out


# ----------------------------------------------------------------------------- BLEU and ROUGE


def _bleu(preds, refs) -> tuple[list[float], float]:
    from sacrebleu.metrics import BLEU

    sentence = BLEU(effective_order=True)  # sacreBLEU's advice for sentence BLEU; exp smoothing is the default
    per = _per_example(preds, refs, lambda p, rs: min(sentence.sentence_score(p, rs).score / 100, 1.0))
    if all(_empty_case(p, rs) == 1.0 for p, rs in zip(preds, refs)):
        return per, 1.0  # nothing to count: sacreBLEU would say 0 for a set of correct "no answer"s
    # sacreBLEU takes reference *streams*; None pads examples with fewer references, and an
    # example with none is scored against "" (its words count against precision, as they should).
    usable = [_usable(rs) or [""] for rs in refs]
    streams = [[rs[k] if k < len(rs) else None for rs in usable] for k in range(max(map(len, usable)))]
    return per, min(BLEU().corpus_score(list(preds), streams).score / 100, 1.0)  # 100.0000000004 happens


@functools.lru_cache(maxsize=None)
def _rouge_scorer(kind: str):
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer([kind], use_stemmer=True)


def _rouge(kind: str, preds, refs) -> list[float]:
    scorer = _rouge_scorer(kind)
    return _per_example(preds, refs, lambda p, rs: max(scorer.score(r, p)[kind].fmeasure for r in rs))


# ----------------------------------------------------------------------------- METEOR


def _meteor(preds, refs) -> list[float]:
    from nltk.tokenize import wordpunct_tokenize  # a regex: needs no punkt data, unlike word_tokenize
    from nltk.translate.meteor_score import meteor_score

    wordnet, why = wordnet_data.wordnet_status()
    if wordnet is None:
        raise MetricUnavailable(why)

    # str.split would leave "mat." unmatched against "mat"; METEOR lowercases by itself
    def one(pred, rs):
        return meteor_score([wordpunct_tokenize(r) for r in rs], wordpunct_tokenize(pred), wordnet=wordnet)

    return _per_example(preds, refs, one)


# ----------------------------------------------------------------------------- BERTScore

_BERT_SCORERS: dict[tuple, object] = {}  # (model, layers, device) -> BERTScorer, or the reason it failed
_BERTSCORE_FIX = "pass --bertscore-model with a local encoder folder"


def _load_bert_scorer(model: str, layers: int | None, device: str):
    from bert_score import BERTScorer
    from transformers import AutoConfig, GPT2Tokenizer, RobertaTokenizer
    from transformers.utils import logging as hf_logging

    config = AutoConfig.from_pretrained(model)
    if "t5" in model and config.model_type not in ("t5", "mt5", "umt5") and os.path.isdir(model):
        # bert_score loads any name containing "t5" as a T5 encoder: a BERT folder under
        # .../flan_t5_dialogsum/ failed on BertConfig's fields. Reached through a link named otherwise.
        import hashlib

        target = os.path.abspath(model)
        alias = cache_root() / "bertscore-models" / hashlib.sha1(target.encode()).hexdigest()[:16]
        alias.parent.mkdir(parents=True, exist_ok=True)
        if not alias.is_symlink():
            alias.symlink_to(target, target_is_directory=True)
        model = str(alias)
    before, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    # AutoModel on a *ForMaskedLM checkpoint prints a report of unused head weights and an
    # untrained pooler; BERTScore reads hidden states only, so neither matters. Nor do the bars
    # of a load that repeats at every eval.
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        scorer = BERTScorer(model_type=model, num_layers=config.num_hidden_layers if layers is None else layers, device=device,
                            idf=False, rescale_with_baseline=False)
        tokenizer = scorer._tokenizer
        if isinstance(tokenizer, (GPT2Tokenizer, RobertaTokenizer)):
            # bert_score asks encode() for add_prefix_space=True; transformers 5 ignores that there,
            # so it is set where 5.x honours it, at load (the leading word is then " the", as in 4.x).
            tokenizer = type(tokenizer).from_pretrained(model, add_prefix_space=True)
    finally:
        hf_logging.set_verbosity(before)
        if bars:
            hf_logging.enable_progress_bar()
    if tokenizer.model_max_length > 1_000_000:
        # unset in tokenizer_config (the "infinite" default): bert_score truncates at this length and
        # the Rust tokenizer overflows on it. 512 also fits RoBERTa, whose 514 positions start at 2.
        tokenizer.model_max_length = min(getattr(config, "max_position_embeddings", 512), 512)
    scorer._tokenizer = tokenizer
    return scorer


def bert_scorer(model: str | None, layers: int | None = None, device: str = "cpu"):
    """The cached BERTScorer for (model, layers, device); raises MetricUnavailable with the reason.
    A failure is cached too: an eval runs every few hundred steps and must not retry a Hub id."""
    if model is None:
        raise MetricUnavailable(f"no BERTScore model given: {_BERTSCORE_FIX}")
    key = (str(model), layers, device)
    if key not in _BERT_SCORERS:
        try:
            _BERT_SCORERS[key] = _load_bert_scorer(str(model), layers, device)
        except Exception as e:
            _BERT_SCORERS[key] = f"BERTScore model {model!r} could not be loaded ({first_line(e)}); {_BERTSCORE_FIX}"
    found = _BERT_SCORERS[key]
    if isinstance(found, str):
        raise MetricUnavailable(found)
    return found


def _bertscore(preds, refs, *, model, layers, device) -> list[float]:
    scorer = bert_scorer(model, layers, device)
    todo = [i for i, (p, rs) in enumerate(zip(preds, refs)) if _empty_case(p, rs) is None]
    per = [_empty_case(p, rs) for p, rs in zip(preds, refs)]
    if todo:  # one batched call; bert_score takes the max over each example's references
        _, _, f1 = scorer.score([preds[i] for i in todo], [_usable(refs[i]) for i in todo])
        for i, value in zip(todo, f1.tolist()):
            per[i] = value
    return per


# ----------------------------------------------------------------------------- score_texts


def _check(preds, refs, metrics) -> None:
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(map(repr, unknown))}; known: {', '.join(METRICS)}")
    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} predictions but {len(refs)} reference lists: they must pair up")
    bad = [i for i, rs in enumerate(refs) if isinstance(rs, str)]
    if bad:  # a bare string would be iterated as one reference per character
        raise ValueError(f"refs[{bad[0]}] is a string: each example's references must be a list of strings")


def _compute(name, preds, refs, opts) -> tuple[list[float], float | None]:
    """(per-example values, corpus value or None for their mean)."""
    if name == "bleu":
        return _bleu(preds, refs)
    if name == "exact_match":
        return [squad_exact(rs, p) for p, rs in zip(preds, refs)], None
    if name == "f1":
        return [squad_f1(rs, p) for p, rs in zip(preds, refs)], None
    if name == "meteor":
        return _meteor(preds, refs), None
    if name == "bertscore_f1":
        return _bertscore(preds, refs, **opts), None
    return _rouge(name, preds, refs), None


def score_texts(preds: list[str], refs: list[list[str]], metrics: tuple[str, ...], *,
                bertscore_model: str | None = None, bertscore_layers: int | None = None,
                device: str = "cpu") -> TextScores:
    """Score ``preds[i]`` against the acceptable references ``refs[i]`` with each of ``metrics``.

    ``bertscore_layers`` defaults to the encoder's ``num_hidden_layers`` (its last layer); bert_score's
    tuned layer table covers only Hub names. A metric that cannot be computed (no WordNet, no
    BERTScore model) goes to ``unavailable`` with its reason and appears nowhere else."""
    _check(preds, refs, metrics)
    preds, refs = list(preds), [list(rs) for rs in refs]
    scores = TextScores()
    opts = {"model": bertscore_model, "layers": bertscore_layers, "device": device}
    for name in dict.fromkeys(metrics):
        if not preds:
            scores.unavailable[name] = "no examples to score"
            continue
        try:
            per, corpus = _compute(name, preds, refs, opts)
        except MetricUnavailable as e:
            scores.unavailable[name] = str(e)
            continue
        scores.per_example[name] = [float(v) for v in per]
        scores.corpus[name] = float(corpus if corpus is not None else sum(per) / len(per))
    return scores
