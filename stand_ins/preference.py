"""A preference stand-in in UltraFeedback binarised's schema (HuggingFaceH4/ultrafeedback_binarized):
``prompt``, ``prompt_id``, ``chosen`` and ``rejected`` (the user turn and one assistant reply, as
message lists), ``messages`` (= chosen), ``score_chosen`` and ``score_rejected``.

The questions are the chat stand-in's (capitals of invented countries, sums, reversed words, spelled
digits, letter counts). The chosen reply answers correctly in a full sentence; the rejected one is
wrong (a neighbouring fact, an off-by-some sum, the words unreversed) or evasive, so a preference
signal is there to learn: partly style, partly fact."""

from __future__ import annotations

import hashlib
import random

from stand_ins._words import _NUMBER_WORDS, _WORDS, _world

_EVASIVE = ["I am not sure about that.", "That is hard to say.", "I cannot answer that.", "Maybe, maybe not."]


def _pair(rng: random.Random, world: dict[str, str]) -> tuple[str, str, str]:
    kind = rng.randrange(5)
    if kind == 0:
        country = rng.choice(sorted(world))
        wrong = rng.choice([c for k, c in sorted(world.items()) if k != country])
        return (f"What is the capital of {country}?", f"The capital of {country} is {world[country]}.",
                f"The capital of {country} is {wrong}.")
    if kind == 1:
        a, b = rng.randrange(10, 60), rng.randrange(10, 40)
        off = rng.choice([-11, -10, -2, -1, 1, 2, 10])
        return f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}.", f"{a} plus {b} is {a + b + off}."
    if kind == 2:
        words = rng.sample(_WORDS, rng.randrange(3, 6))
        return (f"Reverse the order of these words: {' '.join(words)}", " ".join(reversed(words)),
                " ".join(words))
    if kind == 3:
        digits = [rng.randrange(10) for _ in range(rng.randrange(3, 6))]
        wrong = list(digits)
        wrong[rng.randrange(len(wrong))] = (wrong[0] + rng.randrange(1, 10)) % 10
        spell = lambda ds: " ".join(_NUMBER_WORDS[d] for d in ds) + "."  # noqa: E731
        if wrong == digits:
            wrong = digits[::-1] if digits[::-1] != digits else [*digits, (digits[-1] + 1) % 10]
        return f"Spell out the digits {''.join(map(str, digits))}.", spell(digits), spell(wrong)
    word = rng.choice(_WORDS)
    return (f"How many letters are in the word '{word}'?", f"The word '{word}' has {len(word)} letters.",
            f"The word '{word}' has {len(word) + rng.choice([-2, -1, 1, 2])} letters.")


def ultrafeedback_rows(n: int, seed: int = 0) -> list[dict]:
    """Rows in ultrafeedback_binarized's schema; a fifth of the rejected replies are evasive
    instead of wrong. Scores on UltraFeedback's 1-10 scale, the chosen one higher."""
    rng = random.Random(seed)
    world = _world(seed)
    rows = []
    for _ in range(n):
        prompt, good, bad = _pair(rng, world)
        if rng.random() < 0.2:
            bad = rng.choice(_EVASIVE)
        user = {"role": "user", "content": prompt}
        chosen = [user, {"role": "assistant", "content": good}]
        rows.append({"prompt": prompt, "prompt_id": hashlib.sha256(prompt.encode()).hexdigest(),
                     "chosen": chosen, "rejected": [user, {"role": "assistant", "content": bad}],
                     "messages": chosen, "score_chosen": float(rng.choice([8, 9, 10])),
                     "score_rejected": float(rng.choice([2, 3, 4, 5]))})
    return rows


def preference_texts(rows: list[dict]) -> list[str]:
    """Every prompt and reply, to train a tiny tokenizer and pretrain a tiny model on."""
    return [m["content"] for r in rows for m in (*r["chosen"], r["rejected"][-1])]
