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
