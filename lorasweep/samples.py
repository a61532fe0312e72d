"""Generated stand-ins for the datasets the recipes use, in each dataset's real schema.

No row of a real dataset is copied here: the rows are generated from small rules, so they are
learnable (answers follow from the question) and a sweep shows a real signal between good and bad
hyperparameters. Everything is deterministic in ``seed``.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path

_SYLLABLES = ["ka", "lor", "ven", "mi", "tas", "dor", "el", "quin", "ra", "bo", "sul", "ny", "pex", "ta", "gri"]
_WORDS = ["apple", "river", "stone", "cloud", "maple", "copper", "lantern", "violet", "harbor", "ember",
          "meadow", "falcon", "canyon", "willow", "marble", "thunder", "pepper", "orchid", "glacier", "saddle"]
_SYSTEM_PROMPTS = [
    "You are a helpful assistant.",
    "You are a concise assistant. Answer in one sentence.",
    "You are a friendly tutor who answers precisely.",
]
_NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def _name(rng: random.Random, parts: int) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(parts)).capitalize()


def _world(seed: int) -> dict[str, str]:
    """A fixed table of invented countries and capitals: facts to memorise."""
    rng = random.Random(seed * 7919 + 1)
    world = {}
    while len(world) < 24:
        world[_name(rng, 3)] = _name(rng, 2)
    return world


def _exchange(rng: random.Random, world: dict[str, str]) -> tuple[str, str]:
    kind = rng.randrange(5)
    if kind == 0:
        country = rng.choice(sorted(world))
        return f"What is the capital of {country}?", f"The capital of {country} is {world[country]}."
    if kind == 1:
        a, b = rng.randrange(10, 60), rng.randrange(10, 40)
        return f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."
    if kind == 2:
        words = rng.sample(_WORDS, rng.randrange(3, 6))
        return f"Reverse the order of these words: {' '.join(words)}", " ".join(reversed(words))
    if kind == 3:
        digits = [rng.randrange(10) for _ in range(rng.randrange(3, 6))]
        return (f"Spell out the digits {''.join(map(str, digits))}.",
                " ".join(_NUMBER_WORDS[d] for d in digits) + ".")
    word = rng.choice(_WORDS)
    return f"How many letters are in the word '{word}'?", f"The word '{word}' has {len(word)} letters."


def finetome_rows(n: int, seed: int = 0) -> list[dict]:
    """Rows in FineTome-100k's schema: ``conversations`` (ShareGPT from/value with roles
    system/human/gpt), ``source`` and ``score``. A quarter have a system prompt, a fifth are
    two exchanges long."""
    rng = random.Random(seed)
    world = _world(seed)
    rows = []
    for _ in range(n):
        conv = []
        if rng.random() < 0.25:
            conv.append({"from": "system", "value": rng.choice(_SYSTEM_PROMPTS)})
        for _ in range(2 if rng.random() < 0.2 else 1):
            q, a = _exchange(rng, world)
            conv += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
        rows.append({"conversations": conv, "source": "lorasweep-generated", "score": round(rng.uniform(4, 5.2), 2)})
    return rows


def write_jsonl(rows: list[dict], path: str | Path) -> Path:
    """Write atomically: a temp file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


def conversation_texts(rows: list[dict]) -> list[str]:
    """Plain text of every turn, to train a tiny tokenizer on."""
    return [t["value"] for r in rows for t in r["conversations"]]


# ----------------------------------------------------------------------------- sentiment

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


def offline_assets(cache: Path, family: str, rows: list[dict], texts: list[str], data_name: str) -> dict:
    """What a smoke preset trains on: ``rows`` written to ``cache/data_name`` and a tiny model of
    ``family``'s architecture (tokenizer trained on ``texts``, briefly pretrained on them); built
    once, then cached."""
    from trainers.families import get_family
    from trainers.tiny import write_tiny_model

    data = cache / data_name
    if not data.exists():
        write_jsonl(rows, data)
    model = write_tiny_model(cache / f"tiny-{family}", get_family(family), texts)
    return {"model": model, "dataset": data}
