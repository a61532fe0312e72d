"""Instruction-following stand-in: databricks-dolly-15k (eight categories, in Dolly's proportions)."""

from __future__ import annotations

import random

from stand_ins._words import _ITEMS, _NUMBER_WORDS, _WORDS, _cap, _world

_KIND_WORDS = {
    "fruit": ["apple", "pear", "plum", "mango", "cherry", "lemon", "peach", "fig"],
    "metal": ["copper", "iron", "silver", "tin", "zinc", "gold", "nickel", "lead"],
    "animal": ["falcon", "otter", "badger", "heron", "lynx", "moose", "beaver", "sparrow"],
}
_KIND_OF = {w: k for k, ws in _KIND_WORDS.items() for w in ws}
_USES = {  # general_qa: what a thing is for follows from its kind
    "fruit": "You can eat {the} raw, bake it into a pie or blend it into a drink.",
    "metal": "You can melt {the} and shape it into wire, coins or tools.",
    "animal": "You can watch {the} in the wild, but it should not be kept as a pet.",
}
_COLORS = ["red", "blue", "green", "gold", "white", "black"]
# databricks-dolly-15k's category counts, so the mix matches the real set's.
_DOLLY_CATEGORIES = {"open_qa": 3742, "general_qa": 2191, "classification": 2136, "closed_qa": 1773,
                     "brainstorming": 1766, "information_extraction": 1506, "summarization": 1188,
                     "creative_writing": 709}


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _the(word: str) -> str:
    """"copper" (metals are mass nouns), "an apple", "a falcon"."""
    return word if _KIND_OF.get(word) == "metal" else _a(word)


def _country_passage(rng: random.Random, country: str, capital: str) -> str:
    # Facts beside the capital are random: they are in the context but no response needs them,
    # since the recipe drops the context and the response must follow from the instruction.
    extra = [f"It is known for its {rng.choice(_WORDS)} and its {rng.choice(_WORDS)}.",
             f"Its flag is {rng.choice(_COLORS)} and {rng.choice(_COLORS)}.",
             f"About {rng.randrange(2, 60)} million people live there."]
    return " ".join([f"{country} is a country in the {rng.choice(['north', 'south', 'east', 'west'])}.",
                     f"Its capital is {capital}.", *rng.sample(extra, rng.randrange(1, 3))])


def _dolly_example(rng: random.Random, category: str, world: dict[str, str]) -> tuple[str, str, str]:
    countries = sorted(world)
    # _world's two-syllable capitals can repeat: ask "which country has X as its capital?" only
    # where X names one country, or the answer would not follow from the question.
    unique = [c for c in countries if list(world.values()).count(world[c]) == 1]
    kinds = sorted(_KIND_WORDS)
    if category == "open_qa":
        country = rng.choice(countries)
        if rng.random() < 0.5:
            return (rng.choice(["What is the capital of {}?", "Which city is the capital of {}?"]).format(country), "",
                    f"The capital of {country} is {world[country]}.")
        country = rng.choice(unique)
        return (f"Which country has {world[country]} as its capital?", "",
                f"{world[country]} is the capital of {country}.")
    if category == "general_qa":
        word = rng.choice(sorted(_KIND_OF))
        return (rng.choice(["What can I do with {}?", "What is {} good for?"]).format(_the(word)), "",
                _USES[_KIND_OF[word]].format(the=_the(word)))
    if category == "classification":
        a, b = rng.sample(kinds, 2)
        # at least two of each kind, so "all one kind" is never right; 4-6 words in random order
        words = rng.sample(_KIND_WORDS[a], 2) + rng.sample(_KIND_WORDS[b], 2)
        words += rng.sample([w for w in _KIND_WORDS[a] + _KIND_WORDS[b] if w not in words], rng.randrange(0, 3))
        rng.shuffle(words)
        return (f"Classify each of the following as {_a(a)} or {_a(b)}: {', '.join(words)}.", "",
                " ".join(f"{_cap(w)} is {_a(_KIND_OF[w])}." for w in words))
    if category == "closed_qa":
        forward = rng.random() < 0.5
        country = rng.choice(countries if forward else unique)
        context = _country_passage(rng, country, world[country])
        if forward:
            return (f"According to this passage, what is the capital of {country}?", context,
                    f"The capital of {country} is {world[country]}.")
        return (f"Based on the text, which country has {world[country]} as its capital?", context,
                f"{world[country]} is the capital of {country}.")
    if category == "brainstorming":
        kind, k = rng.choice(kinds), rng.randrange(2, 6)
        pool = _KIND_WORDS[kind]
        if rng.random() < 0.5:
            # "besides X": the k words after X in the kind's fixed order, so the answer is one rule
            # (the order, learnt once) applied to the instruction, not a list to memorise per prompt.
            x = rng.choice(pool)
            i = pool.index(x)
            picked = [pool[(i + 1 + j) % len(pool)] for j in range(k)]
            instruction = f"Name {_NUMBER_WORDS[k]} {kind}s besides {x}."
        else:
            picked = pool[:k]
            instruction = rng.choice(["Give me {} {}s.", "Brainstorm {} {}s."]).format(_NUMBER_WORDS[k], kind)
        return instruction, "", f"Here are {_NUMBER_WORDS[k]} {kind}s: {', '.join(picked)}."
    if category == "information_extraction":
        picked = rng.sample(countries, rng.randrange(2, 4))
        context = " ".join(_country_passage(rng, c, world[c]) for c in picked)
        names = ", ".join(picked[:-1]) + f" and {picked[-1]}"
        caps = ", ".join(world[c] for c in picked[:-1]) + f" and {world[picked[-1]]}"
        return f"Extract the capitals of {names} from this text.", context, f"The capitals are {caps}."
    if category == "summarization":
        country = rng.choice(countries)
        return (f"Summarize this passage about {country} in one sentence.",
                _country_passage(rng, country, world[country]),
                f"{country} is a country whose capital is {world[country]}.")
    # creative_writing
    if rng.random() < 0.5:
        animal, thing = rng.choice(_KIND_WORDS["animal"]), rng.choice(_ITEMS)
        place = f"the {rng.choice(['forest', 'river', 'meadow', 'canyon', 'garden'])}"
        return (f"Write a one-sentence story about {_a(animal)} who finds {_a(thing)} in {place}.", "",
                f"One morning, {_a(animal)} found {_a(thing)} in {place} and carried it home with great care.")
    word = rng.choice(_WORDS)
    return (f"Write a two-line poem about {_a(word)}.", "",
            f"Oh {word}, so bright and so true,\nevery day I think of you.")


def dolly_rows(n: int, seed: int = 0) -> list[dict]:
    """Rows in databricks-dolly-15k's schema: ``instruction``, ``context`` ("" except for closed_qa,
    information_extraction and summarization, as in Dolly), ``response`` (at most 40 words) and
    ``category`` (Dolly's eight, in Dolly's proportions).

    Every response follows from the instruction alone: the instruction-tuning recipe drops the
    context, so context-dependent responses would be noise. Facts come from the ``_world`` table
    (the capitals FineTome's stand-in also asks about), kinds from fixed word sets (classification,
    brainstorming, general_qa), and writing tasks are templates filled with the instruction's words.
    """
    rng = random.Random(seed + 707)
    world = _world(seed)
    names, weights = zip(*_DOLLY_CATEGORIES.items())
    rows = []
    for _ in range(n):
        category = rng.choices(names, weights)[0]
        instruction, context, response = _dolly_example(rng, category, world)
        assert len(response.split()) <= 40, response
        rows.append({"instruction": instruction, "context": context, "response": response, "category": category})
    return rows


def dolly_texts(rows: list[dict]) -> list[str]:
    """Instructions, contexts and responses, plus the prompt headers of the instruction recipe,
    to train a tiny tokenizer on."""
    texts = [t for r in rows for t in (r["instruction"], r["context"], r["response"]) if t]
    return texts + ["### Instruction:", "### Response:", "### Context:", "Instruction", "Response", "Context"] * 20
