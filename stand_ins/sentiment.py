"""Sentiment stand-ins: IMDB (multi-sentence reviews) and SST-2 (one lower-case phrase)."""

from __future__ import annotations

import random

_POSITIVE = ["wonderful", "moving", "brilliant", "delightful", "gripping", "charming", "superb", "memorable",
             "heartfelt", "stunning", "clever", "beautiful"]
_NEGATIVE = ["dull", "tedious", "clumsy", "forgettable", "boring", "awful", "lifeless", "messy", "shallow",
             "painful", "predictable", "bland"]
_ASPECTS = ["the acting", "the script", "the soundtrack", "the direction", "the ending", "the dialogue",
            "the cinematography", "the pacing", "the lead performance", "the story"]
_FILLER = ["I watched it on a rainy Sunday.", "The film runs a little over two hours.",
           "It is based on a novel I have not read.", "My friend recommended it last week.",
           "The cast includes several newcomers.", "It was shown at a small festival first."]
_TITLES = ["The Copper Harbor", "Violet Meadow", "Falcon Canyon", "Under the Willow", "Marble Thunder",
           "Glacier Saddle", "Ember River", "The Lantern Keeper"]


def _sentiment_sentence(rng: random.Random, positive: bool) -> str:
    """One opinion: an aspect with a word of the sentence's polarity, sometimes said through a
    negated word of the other polarity ("not dull"), so word counting alone is not enough."""
    aspect = rng.choice(_ASPECTS)
    if rng.random() < 0.25:
        word = rng.choice(_NEGATIVE if positive else _POSITIVE)
        return f"{aspect.capitalize()} was not {word} at all."
    word = rng.choice(_POSITIVE if positive else _NEGATIVE)
    return rng.choice([f"{aspect.capitalize()} was {word}.", f"I found {aspect} {word}.",
                       f"Honestly, {aspect} felt {word}."])


def imdb_rows(n: int, seed: int = 0) -> list[dict]:
    """Rows in IMDB's schema (``stanfordnlp/imdb``): ``text`` (a multi-sentence review) and ``label``
    (0 = negative, 1 = positive), balanced. Most opinions agree with the label; one in five reviews
    has a dissenting aside, as real mixed reviews do."""
    rng = random.Random(seed + 101)
    rows = []
    for i in range(n):
        label = i % 2
        parts = [f"{rng.choice(_TITLES)}.", rng.choice(_FILLER)]
        parts += [_sentiment_sentence(rng, bool(label)) for _ in range(rng.randrange(2, 4))]
        if rng.random() < 0.2:
            parts.insert(rng.randrange(2, len(parts)), "Still, " + _sentiment_sentence(rng, not label).lower())
        parts.append(rng.choice(["Would watch again." if label else "Would not watch again.",
                                 "Recommended." if label else "Skip it.", rng.choice(_FILLER)]))
        rows.append({"text": " ".join(parts), "label": label})
    rng.shuffle(rows)
    return rows


def sst2_rows(n: int, seed: int = 0) -> list[dict]:
    """Rows in SST-2's schema (``stanfordnlp/sst2``): ``idx``, ``sentence`` (one lower-case phrase,
    as SST-2's are) and ``label`` (0 = negative, 1 = positive)."""
    rng = random.Random(seed + 202)
    rows = []
    for i in range(n):
        label = int(rng.random() < 0.55)  # SST-2's train split is ~56% positive
        clauses = [_sentiment_sentence(rng, bool(label)).lower().rstrip(".") for _ in range(rng.randrange(1, 3))]
        rows.append({"idx": i, "sentence": " , and ".join(clauses), "label": label})
    return rows


def sentiment_texts(rows: list[dict], column: str) -> list[str]:
    """The text of every row, plus the label words, to train a tiny tokenizer on."""
    return [r[column] for r in rows] + ["positive", "negative", "Positive", "Negative"] * 20
