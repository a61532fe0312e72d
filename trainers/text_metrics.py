"""Offline text-generation metrics for QA, summarisation and instruction recipes.

Plain functions on the reference libraries (no ``evaluate.load``: it fetches code from the Hub).
Every score is on a 0-1 scale, higher is better:

- ``exact_match`` / ``f1``: the official SQuAD v2 script. Answers are normalised (lower case, no
  punctuation, no articles a/an/the, single spaces); EM is 1 when they are equal, F1 is the
  harmonic mean of token precision and recall. Max over the gold answers; an empty gold list (or
  only golds that normalise to "") means "unanswerable", which only an empty prediction matches.
- ``bleu``: sacreBLEU (13a tokeniser, 4-grams) divided by 100. The corpus value is corpus BLEU
  (n-gram counts pooled over the set, one brevity penalty), not a mean of sentence BLEUs; each
  example's own value is sentence BLEU with sacreBLEU's recommended sentence settings (exp
  smoothing, effective order).
- ``rouge1`` / ``rouge2`` / ``rougeL``: Google's ``rouge_score`` F-measure with the Porter stemmer,
  max over the references (as Hugging Face ``evaluate`` does with several references). Its
  tokeniser keeps only ``[a-z0-9]``: text in other scripts scores 0.
- ``meteor``: NLTK's METEOR (exact, stem and WordNet-synonym matches, fragmentation penalty), max
  over the references. Needs WordNet data, found by :func:`wordnet_status`; without it the metric
  is reported unavailable, never 0.
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

import collections
import functools
import os
import re
import shutil
import string
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from common.errors import first_line

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


# ----------------------------------------------------------------------------- SQuAD v2 (official script)

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


# ----------------------------------------------------------------------------- METEOR and WordNet

_LEXNAMES = (  # WordNet 3.0 `lexnames` (lexnames(5WN)): number, name, syntactic category 1-4 (n, v, adj, adv)
    "adj.all 3", "adj.pert 3", "adv.all 4", "noun.Tops 1", "noun.act 1", "noun.animal 1", "noun.artifact 1",
    "noun.attribute 1", "noun.body 1", "noun.cognition 1", "noun.communication 1", "noun.event 1",
    "noun.feeling 1", "noun.food 1", "noun.group 1", "noun.location 1", "noun.motive 1", "noun.object 1",
    "noun.person 1", "noun.phenomenon 1", "noun.plant 1", "noun.possession 1", "noun.process 1",
    "noun.quantity 1", "noun.relation 1", "noun.shape 1", "noun.state 1", "noun.substance 1", "noun.time 1",
    "verb.body 2", "verb.change 2", "verb.cognition 2", "verb.communication 2", "verb.competition 2",
    "verb.consumption 2", "verb.contact 2", "verb.creation 2", "verb.emotion 2", "verb.motion 2",
    "verb.perception 2", "verb.possession 2", "verb.social 2", "verb.stative 2", "verb.weather 2", "adj.ppl 3",
)
_POS = ("noun", "verb", "adj", "adv")
_WORDNET_FILES = tuple(f"{kind}.{pos}" for kind in ("data", "index") for pos in _POS) + tuple(f"{p}.exc" for p in _POS)
WORDNET_MISSING = ("NLTK's WordNet data is not installed: run `python -m nltk.downloader wordnet` "
                   "or `apt-get install wordnet-base`")


def _cache_dir() -> Path:
    return Path(os.environ.get("LORASWEEP_CACHE") or Path.home() / ".cache" / "lorasweep").expanduser()


def _default_wordnet_dirs() -> list[str]:
    return [os.environ.get("LORASWEEP_WORDNET_DIR") or "/usr/share/wordnet"]


def _reader(root):
    """A WordNet reader on ``root``, proven to work by one look-up (a broken copy fails here, not in METEOR)."""
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    with warnings.catch_warnings():  # "multilingual functions are not available": English is all METEOR uses
        warnings.simplefilter("ignore")
        reader = WordNetCorpusReader(root, None)
    if not reader.synsets("dog"):
        raise LookupError(f"WordNet at {root} has no synsets for 'dog'")
    return reader


def _allow_root(root: str) -> None:
    # NLTK 3.10's path sandbox (nltk/pathsec.py) opens files only under the roots on nltk.data.path
    import nltk

    if root not in nltk.data.path:
        nltk.data.path.append(root)


def _nltk_wordnet(nltk_data: list[str] | None):
    import nltk

    for root in nltk_data or ():  # explicit roots must also be sandbox roots to be read
        _allow_root(str(root))
    for name in ("corpora/wordnet", "corpora/wordnet.zip/wordnet/"):  # a downloaded zip is read in place
        try:
            found = nltk.data.find(name, paths=nltk_data)
        except LookupError:
            continue
        return _reader(found), f"NLTK data: {found}"
    return None


_SS_TYPE = {"n": 1, "v": 2, "a": 3, "r": 4, "s": 5}  # sense-key numbers; "s": adjective satellite


def _data_synsets(path: Path):
    """(offset, lex_filenum, ss_type, [(lemma, lex_id)], head offset if a satellite) per synset line."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith(" "):  # the licence header
            continue
        f = line.split(" | ", 1)[0].split()
        n = int(f[3], 16)
        words = [(re.sub(r"\(.*\)$", "", f[4 + 2 * i]).lower(), int(f[5 + 2 * i], 16)) for i in range(n)]
        p = 4 + 2 * n
        pointers = [f[p + 1 + 4 * k: p + 5 + 4 * k] for k in range(int(f[p]))]
        head = next((ptr[1] for ptr in pointers if ptr[0] == "&"), None) if f[2] == "s" else None
        yield f[0], int(f[1]), f[2], words, head


def _sense_index(source: Path) -> str:
    """WordNet's ``index.sense`` (sense key, synset offset, sense number, tag count; sorted), rebuilt
    from the database. NLTK 3.10's reader reads it at start-up; wordnet-base does not ship it. Its
    keys equal NLTK's own ``Lemma.key()`` for all 206,949 senses of WordNet 3.0 (checked once)."""
    order = {}  # (lemma, pos letter, offset) -> sense number: the synset's place in index.<pos>
    for pos in _POS:
        for line in (source / f"index.{pos}").read_text(encoding="utf-8").splitlines():
            f = line.split()
            if f and not line.startswith(" "):
                for number, offset in enumerate(f[len(f) - int(f[2]):], 1):
                    order[f[0], f[1], offset] = number
    counts = {}
    if (source / "cntlist.rev").exists():  # tag counts from the sense-tagged corpora
        counts = dict(line.split()[::2] for line in (source / "cntlist.rev").read_text().splitlines() if line)
    synsets = [s for pos in _POS for s in _data_synsets(source / f"data.{pos}")]
    first_word = {offset: words[0] for offset, _, ss, words, _ in synsets if ss == "a"}
    lines = set()
    for offset, lexfile, ss, words, head in synsets:
        head_word, head_id = (first_word[head][0], f"{first_word[head][1]:02d}") if head else ("", "")
        for lemma, lex_id in words:
            key = f"{lemma}%{_SS_TYPE[ss]}:{lexfile:02d}:{lex_id:02d}:{head_word}:{head_id}"
            number = order.get((lemma, "a" if ss == "s" else ss, offset), 0)
            lines.add(f"{key} {offset} {number} {counts.get(key, 0)}\n")
    return "".join(sorted(lines))


def _complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in (*_WORDNET_FILES, "lexnames", "index.sense"))


def _build_nltk_copy(source: Path, cache: Path) -> Path:
    """``<cache>/nltk_data/corpora/wordnet``, built once from a WordNet database folder.

    Copied, not symlinked: the sandbox resolves links and refuses targets outside its roots. NLTK's
    reader also opens ``lexnames`` and ``index.sense``, which Debian's wordnet-base does not ship:
    lexnames is the same for every WordNet 3.x, the sense index is rebuilt (~2 s). Written to a temp
    folder and renamed, so a half copy is never used. The folder must be ``corpora/wordnet`` on
    ``nltk.data.path``: NLTK 3.10's reader maps sense keys against that corpus at start-up."""
    target = cache / "nltk_data" / "corpora" / "wordnet"
    if _complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-wordnet-", dir=target.parent))
    try:
        for name in (*_WORDNET_FILES, "cntlist.rev"):  # cntlist.rev (lemma counts) is optional
            if (source / name).exists():
                shutil.copyfile(source / name, tmp / name)
        (tmp / "index.sense").write_text(_sense_index(source), encoding="utf-8")
        (tmp / "lexnames").write_text("".join(f"{i:02d}\t{line.replace(' ', chr(9))}\n"
                                              for i, line in enumerate(_LEXNAMES)))
        if target.exists() and not _complete(target):  # an older or hand-made partial copy
            shutil.rmtree(target)
        try:
            os.replace(tmp, target)
        except OSError:  # another process renamed its complete copy first
            if not _complete(target):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def find_wordnet(nltk_data: list[str] | None = None, wordnet_dirs: list[str] | None = None,
                 cache: str | Path | None = None) -> tuple[object | None, str]:
    """(WordNet reader or None, where it came from or why it is missing), searching in order:

    1. ``corpora/wordnet`` (folder or zip) under ``nltk_data`` (default: ``nltk.data.path``), as
       ``nltk.download("wordnet")`` leaves it;
    2. a WordNet 3.0 database folder (``data.noun``, ``index.noun``, ``*.exc``...) from
       ``wordnet_dirs`` (default: ``$LORASWEEP_WORDNET_DIR``, else Debian's ``/usr/share/wordnet``),
       copied once into NLTK's layout under ``cache`` (default ``$LORASWEEP_CACHE`` or
       ``~/.cache/lorasweep``) at ``nltk_data/corpora/wordnet``.

    Tests force "missing" with ``find_wordnet(nltk_data=[], wordnet_dirs=[<empty dir>], cache=<tmp>)``."""
    problems = []
    try:
        found = _nltk_wordnet(nltk_data)
        if found:
            return found
    except Exception as e:  # a corrupt download: say so, and still try the system copy
        problems.append(f"NLTK's WordNet is unreadable ({first_line(e)})")
    cache = Path(cache) if cache is not None else _cache_dir()
    for folder in (Path(d) for d in (_default_wordnet_dirs() if wordnet_dirs is None else wordnet_dirs)):
        if not all((folder / name).is_file() for name in _WORDNET_FILES):
            continue
        try:
            copy = _build_nltk_copy(folder, cache)
            _allow_root(str(copy.parent.parent))
            return _reader(str(copy)), f"WordNet database {folder}, as NLTK data in {copy}"
        except Exception as e:
            problems.append(f"{folder} could not be used ({first_line(e)})")
    return None, "; ".join([WORDNET_MISSING, *problems])


@functools.cache
def wordnet_status() -> tuple[object | None, str]:
    """:func:`find_wordnet` with its defaults, searched once per process (for METEOR and for logs)."""
    return find_wordnet()


def _meteor(preds, refs) -> list[float]:
    from nltk.tokenize import wordpunct_tokenize  # a regex: needs no punkt data, unlike word_tokenize
    from nltk.translate.meteor_score import meteor_score

    wordnet, why = wordnet_status()
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
        alias = _cache_dir() / "bertscore-models" / hashlib.sha1(target.encode()).hexdigest()[:16]
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
