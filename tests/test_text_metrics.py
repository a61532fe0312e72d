"""trainers/text_metrics.py against values worked out by hand (the arithmetic is in the comments).

Offline and fast: WordNet comes from Debian's wordnet-base (copied into NLTK's layout in a temp
cache), BERTScore runs on a tiny random-weight BERT built from a few sentences."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trainers import text_metrics as tm
from trainers import wordnet_data as wn
from trainers.squad import normalize_answer, squad_exact, squad_f1
from trainers.text_metrics import score_texts

ROOT = Path(__file__).resolve().parents[1]


def one(metric, pred, refs, **kw):
    """The per-example value of ``metric`` for one example (and it equals the corpus value)."""
    scores = score_texts([pred], [refs], (metric,), **kw)
    assert scores.unavailable == {}
    assert scores.corpus[metric] == pytest.approx(scores.per_example[metric][0])
    return scores.per_example[metric][0]


# ----------------------------------------------------------------------------- SQuAD


@pytest.mark.parametrize("text, expected", [
    ("The  Cat's hat!", "cats hat"),  # lower, "'" and "!" removed, "the" dropped, spaces collapsed
    ("An apple, a day.", "apple day"),
    ("  THE end  ", "end"),
    ("theatre anthem", "theatre anthem"),  # articles only as whole words
    ("the", ""),
])
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_partial_overlap():
    # pred tokens [cat, sat], gold [cat, sat, down]: 2 in common -> P = 2/2 = 1, R = 2/3,
    # F1 = 2 * 1 * 2/3 / (1 + 2/3) = (4/3) / (5/3) = 0.8
    assert squad_f1(["a cat sat down"], "the cat sat") == pytest.approx(0.8)
    assert squad_exact(["a cat sat down"], "the cat sat") == 0.0
    assert squad_exact(["The cat sat!"], "cat  sat") == 1.0


def test_max_over_golds():
    # vs "Denver Broncos": pred [denver, broncos, team], gold [denver, broncos] -> P=2/3 R=1 F1=0.8
    # vs "the Denver Broncos football team": gold [denver, broncos, football, team], 3 common ->
    # P=1 R=3/4 F1 = 1.5/1.75 = 6/7; the max is 6/7
    golds = ["Denver Broncos", "the Denver Broncos football team"]
    assert squad_f1(golds, "Denver Broncos team") == pytest.approx(6 / 7)
    assert squad_f1(golds[:1], "Denver Broncos team") == pytest.approx(0.8)
    assert squad_exact(golds, "denver broncos") == 1.0  # equals the first gold once normalised


@pytest.mark.parametrize("golds, pred, expected", [
    ([], "", 1.0),                # unanswerable, and the model abstains
    ([""], "", 1.0),
    ([], "Paris", 0.0),           # unanswerable, but the model answers
    (["Paris"], "", 0.0),         # answerable, but the model abstains
    (["the", "Paris"], "", 0.0),  # "the" normalises to "" and is dropped: the gold is ["Paris"]
    (["the", "!"], "", 1.0),      # every gold dropped: no answer
    (["a"], "an", 1.0),           # both normalise to "" (the official script agrees: EM 1, F1 1)
])
def test_squad_v2_no_answer(golds, pred, expected):
    assert squad_exact(golds, pred) == expected
    assert squad_f1(golds, pred) == expected


def test_em_f1_through_score_texts():
    scores = score_texts(["the cat sat", ""], [["a cat sat down"], []], ("exact_match", "f1"))
    assert scores.per_example == {"exact_match": [0.0, 1.0], "f1": [pytest.approx(0.8), 1.0]}
    assert scores.corpus == {"exact_match": 0.5, "f1": pytest.approx(0.9)}  # (0.8 + 1) / 2


# ----------------------------------------------------------------------------- BLEU


def test_bleu_identical_is_one():
    scores = score_texts(["the cat sat on the mat", "hello there"], [["the cat sat on the mat"], ["hello there"]],
                         ("bleu",))
    assert scores.corpus["bleu"] == pytest.approx(1.0)
    assert scores.per_example["bleu"] == [pytest.approx(1.0), pytest.approx(1.0)]


def test_bleu_corpus_by_hand():
    # ex1 "the cat sat on the mat" vs "the cat sat on a mat" (6 vs 6 tokens):
    #   1-grams 5/6 ("the" clipped to 1), 2-grams 3/5, 3-grams 2/4, 4-grams 1/3
    # ex2 "one two three four" vs "one two three four five six" (4 vs 6): 4/4, 3/3, 2/2, 1/1
    # corpus: counts pooled -> 9/10, 6/8, 4/6, 2/4; BP = exp(1 - 12/10) = exp(-0.2)
    preds = ["the cat sat on the mat", "one two three four"]
    refs = [["the cat sat on a mat"], ["one two three four five six"]]
    scores = score_texts(preds, refs, ("bleu",))
    assert scores.corpus["bleu"] == pytest.approx(math.exp(-0.2) * (0.9 * 0.75 * 4 / 6 * 0.5) ** 0.25)
    # sentence BLEU: ex1 (5/6 * 3/5 * 2/4 * 1/3) ** (1/4) = (1/12) ** (1/4), BP 1;
    # ex2 all precisions 1, BP = exp(1 - 6/4) = exp(-0.5)
    assert scores.per_example["bleu"] == [pytest.approx((1 / 12) ** 0.25), pytest.approx(math.exp(-0.5))]


def test_sentence_bleu_smoothing():
    # "the cat sat on the mat" vs "the dog sat on a mat": 1-grams 4/6 (the, sat, on, mat),
    # 2-grams 1/5 ("sat on"), 3-grams 0/4, 4-grams 0/3. sacreBLEU's exp smoothing replaces the
    # k-th zero precision by 1 / (2^k * total): 1/(2*4) = 1/8, then 1/(4*3) = 1/12.
    # BLEU = (4/6 * 1/5 * 1/8 * 1/12) ** (1/4) = (1/720) ** (1/4), BP 1 (same length)
    assert one("bleu", "the cat sat on the mat", ["the dog sat on a mat"]) == pytest.approx((1 / 720) ** 0.25)
    # Effective order: "the cat sat" has no 4-gram, so only 1-3-grams count (all 1); BP exp(1 - 4/3)
    assert score_texts(["the cat sat"], [["the cat sat down"]], ("bleu",)).per_example["bleu"] == [
        pytest.approx(math.exp(-1 / 3))]


def test_bleu_several_references():
    # clipped against the best reference per n-gram: ref 2 is the prediction itself
    scores = score_texts(["a b c d", "one two three four"], [["x y", "a b c d"], ["one two three four"]], ("bleu",))
    assert scores.corpus["bleu"] == pytest.approx(1.0)
    assert scores.per_example["bleu"] == [pytest.approx(1.0), pytest.approx(1.0)]


# ----------------------------------------------------------------------------- ROUGE


def test_rouge_by_hand():
    # Words of <= 3 letters, which rouge_score's Porter stemmer leaves alone.
    # "the cat sat" vs "the cat sat on the mat": unigrams 3 common -> P = 3/3, R = 3/6,
    # F = 2 * 0.5 / 1.5 = 2/3; bigrams (the cat, cat sat) both in ref -> P = 2/2, R = 2/5,
    # F = 0.8 / 1.4 = 4/7; LCS = 3 -> as unigrams, 2/3
    pred, ref = "the cat sat", ["the cat sat on the mat"]
    assert one("rouge1", pred, ref) == pytest.approx(2 / 3)
    assert one("rouge2", pred, ref) == pytest.approx(4 / 7)
    assert one("rougeL", pred, ref) == pytest.approx(2 / 3)
    # "the cat sat on the mat" vs "the cat lay on the mat": unigrams the x2, cat, on, mat = 5 of 6
    # each side -> 5/6; bigrams (the cat, on the, the mat) 3 of 5 -> 3/5; LCS the cat on the mat = 5 -> 5/6
    pred, ref = "the cat sat on the mat", ["the cat lay on the mat"]
    assert one("rouge1", pred, ref) == pytest.approx(5 / 6)
    assert one("rouge2", pred, ref) == pytest.approx(3 / 5)
    assert one("rougeL", pred, ref) == pytest.approx(5 / 6)


def test_rouge_max_over_references():
    refs = ["a dog ran", "the cat sat on the mat"]
    assert one("rouge1", "the cat sat", refs) == pytest.approx(2 / 3)  # the second ref, not 0 from the first
    assert one("rougeL", "the cat sat on the mat", refs) == pytest.approx(1.0)


@pytest.mark.parametrize("pred, refs, expected", [
    ("", [], 1.0),            # nothing expected, nothing said
    ("", ["", "  "], 1.0),    # blank references are dropped
    ("the cat", [], 0.0),
    ("the cat", [""], 0.0),
    ("", ["the cat"], 0.0),
    ("the cat", ["", "the cat"], 1.0),
])
def test_empty_text(pred, refs, expected):
    scores = score_texts([pred], [refs], ("bleu", "rouge1", "rouge2", "rougeL"))
    assert scores.per_example == {m: [expected] for m in ("bleu", "rouge1", "rouge2", "rougeL")}


def test_bleu_corpus_with_an_unanswerable_example():
    # ex2 (no reference) is scored against "": its 2 words and 1 bigram count in the hypothesis
    # totals only. Pooled: 1-grams 4/6, 2-grams 3/4, 3-grams 2/2, 4-grams 1/1; sys 6 > ref 4: BP 1
    scores = score_texts(["a b c d", "x y"], [["a b c d"], []], ("bleu",))
    assert scores.corpus["bleu"] == pytest.approx((4 / 6 * 3 / 4) ** 0.25)
    assert scores.per_example["bleu"] == [pytest.approx(1.0), 0.0]
    assert score_texts(["", ""], [[], [""]], ("bleu",)).corpus["bleu"] == 1.0  # all correct abstentions


# ----------------------------------------------------------------------------- METEOR


@pytest.fixture(scope="module")
def wordnet(tmp_path_factory):
    """WordNet built from the system database into a temp cache (so the copy-and-lexnames path runs
    here, not a copy a previous run left in ~/.cache), else whatever ``wordnet_status`` finds."""
    reader, why = wn.find_wordnet(nltk_data=[], cache=tmp_path_factory.mktemp("wncache"))
    if reader is None:
        reader, why = wn.wordnet_status()
    if reader is None:
        pytest.skip(f"no WordNet data here ({why}); CI installs Debian's wordnet-base")
    return reader, why


def test_wordnet_copy(wordnet):
    reader, why = wordnet
    root = Path(str(reader.root))
    if "WordNet database" in why:  # built by us from Debian's layout
        lexnames = (root / "lexnames").read_text().splitlines()
        assert len(lexnames) == 45 and lexnames[3] == "03\tnoun.Tops\t1" and lexnames[44] == "44\tadj.ppl\t3"
    assert reader.synset("dog.n.01").lexname() == "noun.animal"  # lex file 05: the lexnames line up
    assert reader.synset("run.v.01").lexname() == "verb.motion"
    # the rebuilt sense index: a satellite's key names its head adjective
    assert reader.lemma_from_key("galore%5:00:00:abundant:00").synset().name() == "abounding.s.01"


def test_meteor_by_hand(wordnet, monkeypatch):
    monkeypatch.setattr(wn, "wordnet_status", lambda: wordnet)
    # identical, 6 words: P = R = 1, Fmean = 1, one chunk -> penalty 0.5 * (1/6)^3 = 1/432
    assert one("meteor", "the cat sat on the mat", ["the cat sat on the mat"]) == pytest.approx(1 - 1 / 432)
    # "a fast car" vs "a quick car": fast~quick via WordNet -> 3 matches in 1 chunk: 1 - 0.5 * (1/3)^3
    synonym = one("meteor", "a fast car", ["a quick car"])
    assert synonym == pytest.approx(1 - 1 / 54)
    # "a slow car": 2 matches (a, car) in 2 chunks; P = R = 2/3 -> Fmean = 2/3;
    # penalty 0.5 * (2/2)^3 = 0.5 -> 1/3
    no_synonym = one("meteor", "a slow car", ["a quick car"])
    assert no_synonym == pytest.approx(1 / 3)
    assert synonym > no_synonym
    # punctuation is split off ("mat." matches "mat"), and the max over references is taken
    assert one("meteor", "The cat sat on the mat.", ["a dog", "the cat sat on the mat ."]) == pytest.approx(
        1 - 0.5 * (1 / 7) ** 3)


def test_meteor_without_wordnet(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    missing = wn.find_wordnet(nltk_data=[], wordnet_dirs=[str(empty)], cache=tmp_path / "cache")
    assert missing == (None, wn.WORDNET_MISSING)
    assert "nltk.downloader wordnet" in missing[1] and "wordnet-base" in missing[1]
    monkeypatch.setattr(wn, "wordnet_status", lambda: missing)
    scores = score_texts(["the cat"], [["the cat"]], ("meteor", "rouge1"))
    assert scores.unavailable == {"meteor": wn.WORDNET_MISSING}
    assert "meteor" not in scores.corpus and "meteor" not in scores.per_example
    assert scores.corpus["rouge1"] == 1.0


def test_wordnet_folder_that_cannot_be_read(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in wn._WORDNET_FILES:
        (bad / name).write_text("not wordnet\n")
    reader, why = wn.find_wordnet(nltk_data=[], wordnet_dirs=[str(bad)], cache=tmp_path / "cache")
    assert reader is None and why.startswith(wn.WORDNET_MISSING) and str(bad) in why and "\n" not in why


# ----------------------------------------------------------------------------- BERTScore


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    from stand_ins.tiny import write_tiny_model
    from trainers.families import get_family

    texts = ["the cat sat on the mat", "a dog ran in the park", "paris is the capital of france",
             "the quick brown fox jumps over the lazy dog", "stocks fell sharply on monday"] * 20
    # Random weights (no pretraining, ~2 s): identical text still scores exactly 1, other text less.
    return str(write_tiny_model(tmp_path_factory.mktemp("bertscore") / "bert", get_family("bert"), texts,
                                pretrain_steps=0))


def test_bertscore(tiny_bert):
    preds = ["the cat sat on the mat", "the cat sat on the mat", "paris", ""]
    refs = [["the cat sat on the mat"], ["stocks fell sharply on monday"], ["a dog ran", "paris"], []]
    scores = score_texts(preds, refs, ("bertscore_f1",), bertscore_model=tiny_bert)
    identical, different, best_of_two, abstained = scores.per_example["bertscore_f1"]
    assert identical == pytest.approx(1.0, abs=1e-4)
    assert different < identical - 0.01
    assert best_of_two == pytest.approx(1.0, abs=1e-4)  # max over references
    assert abstained == 1.0  # empty on both sides: the rule of every metric
    assert scores.corpus["bertscore_f1"] == pytest.approx(sum(scores.per_example["bertscore_f1"]) / 4)
    # loaded once per (model, layers, device); an explicit layer works too
    assert tm.bert_scorer(tiny_bert) is tm.bert_scorer(tiny_bert)
    assert one("bertscore_f1", "a dog ran", ["a dog ran"], bertscore_model=tiny_bert,
               bertscore_layers=1) == pytest.approx(1.0, abs=1e-4)


def test_bertscore_unavailable(tmp_path):
    missing = str(tmp_path / "no-such-model")
    scores = score_texts(["a"], [["a"]], ("bertscore_f1", "exact_match"), bertscore_model=missing)
    reason = scores.unavailable["bertscore_f1"]
    assert missing in reason and "--bertscore-model" in reason and "\n" not in reason
    assert "bertscore_f1" not in scores.corpus and scores.corpus["exact_match"] == 1.0
    reason = score_texts(["a"], [["a"]], ("bertscore_f1",)).unavailable["bertscore_f1"]
    assert "--bertscore-model" in reason


# ----------------------------------------------------------------------------- score_texts


def test_metric_names():
    assert set(tm.METRICS) == {"exact_match", "f1", "bleu", "rouge1", "rouge2", "rougeL", "meteor", "bertscore_f1"}


def test_refuses_bad_arguments():
    with pytest.raises(ValueError, match=r"'rouge3'.*known: exact_match, f1, bleu"):
        score_texts(["a"], [["a"]], ("rouge1", "rouge3"))
    with pytest.raises(ValueError, match="2 predictions but 1 reference"):
        score_texts(["a", "b"], [["a"]], ("f1",))
    with pytest.raises(ValueError, match="is a string"):
        score_texts(["a"], ["a"], ("f1",))


def test_no_examples():
    assert score_texts([], [], ("f1",)).unavailable == {"f1": "no examples to score"}


def test_import_is_cheap():
    code = ("import sys, trainers.text_metrics; "
            "print(sorted(m for m in ('torch', 'transformers', 'nltk', 'bert_score', 'rouge_score', 'sacrebleu') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.stdout.strip() == "[]"
