"""Chat stand-ins: FineTome-100k (ShareGPT ``conversations``), Alpaca (instruction/input/output)
and an invented shop's support desk in the OpenAI/TRL ``messages`` schema."""

from __future__ import annotations

import random

from stand_ins._words import _DAYS, _ITEMS, _NUMBER_WORDS, _WORDS, _cap, _name, _world

_SYSTEM_PROMPTS = [
    "You are a helpful assistant.",
    "You are a concise assistant. Answer in one sentence.",
    "You are a friendly tutor who answers precisely.",
]


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


def conversation_texts(rows: list[dict]) -> list[str]:
    """Plain text of every turn, to train a tiny tokenizer on."""
    return [t["value"] for r in rows for t in r["conversations"]]

# ----------------------------------------------------------------------------- Alpaca


def _alpaca_example(rng: random.Random, world: dict[str, str]) -> tuple[str, str, str]:
    """(instruction, input, output). Two in five give the task's argument in ``input`` under a
    general instruction, as Alpaca's rows with an input do; the others are ``_exchange``'s questions
    with an empty input. Either way the output follows from instruction + input alone."""
    if rng.random() >= 0.4:
        question, answer = _exchange(rng, world)
        return question, "", answer
    kind = rng.randrange(5)
    if kind == 0:
        country = rng.choice(sorted(world))
        return "Name the capital of the country below.", country, f"The capital of {country} is {world[country]}."
    if kind == 1:
        a, b = rng.randrange(10, 60), rng.randrange(10, 40)
        return "Add the two numbers below.", f"{a} and {b}", f"{a} plus {b} is {a + b}."
    if kind == 2:
        words = rng.sample(_WORDS, rng.randrange(3, 6))
        return "Reverse the order of the words below.", " ".join(words), " ".join(reversed(words))
    if kind == 3:
        digits = [rng.randrange(10) for _ in range(rng.randrange(3, 6))]
        spelled = " ".join(_NUMBER_WORDS[d] for d in digits) + "."
        return "Spell out the digits below.", "".join(map(str, digits)), spelled
    word = rng.choice(_WORDS)
    return "Count the letters in the word below.", word, f"The word '{word}' has {len(word)} letters."


def alpaca_rows(n: int, seed: int = 0) -> list[dict]:
    """Rows in Alpaca's schema (``tatsu-lab/alpaca``, ``yahma/alpaca-cleaned``): ``instruction``,
    ``input`` ("" for most rows, the task's argument for two in five, as in Alpaca where ~40% have
    one) and ``output``. The tasks and facts are FineTome's stand-in's (``_world``'s capitals, sums,
    reversed words, spelled digits, letter counts)."""
    rng = random.Random(seed + 909)
    world = _world(seed)
    rows = []
    for _ in range(n):
        instruction, extra, output = _alpaca_example(rng, world)
        rows.append({"instruction": instruction, "input": extra, "output": output})
    return rows


def alpaca_texts(rows: list[dict]) -> list[str]:
    """Instructions, inputs and outputs, to train a tiny tokenizer on."""
    return [t for r in rows for t in (r["instruction"], r["input"], r["output"]) if t]


# ----------------------------------------------------------------------------- a support desk in `messages`

_HOURS = {day: "from 9 am to 6 pm" for day in _DAYS[:5]} | {"Saturday": "from 10 am to 4 pm"}  # closed on Sunday
_FIXES = {  # what support offers for a delivery problem follows from the problem
    "broken": "we will send you a free replacement",
    "scratched": "we will send you a free replacement",
    "too small": "you can exchange it for another size within 30 days",
    "too big": "you can exchange it for another size within 30 days",
    "the wrong color": "you can exchange it for the right color within 30 days",
}
# An order's status follows from its number's first digit, a rule a support model can learn.
_ORDER_STATUS = ["is being packed and ships tomorrow", "has shipped and arrives in two days",
                 "was delivered yesterday"]


def _support_exchanges(rng: random.Random, shop: dict) -> list[tuple[str, str]]:
    """One support chat: (user, assistant) turns about one topic; order status takes two exchanges
    (the assistant asks for the number first)."""
    kind = rng.randrange(6)
    item = rng.choice(_ITEMS)
    if kind == 0:
        q = rng.choice(["How much does the {} cost?", "What is the price of the {}?", "How much is your {}?"])
        return [(q.format(item), f"The {item} costs {shop['price'][item]} dollars.")]
    if kind == 1:
        q = rng.choice(["How long is the warranty on the {}?", "Does the {} come with a warranty?"])
        years = shop["warranty"][item]
        return [(q.format(item), f"The {item} comes with a {_NUMBER_WORDS[years]}-year warranty.")]
    if kind == 2:
        country = rng.choice(sorted(shop["shipping"]))
        cost, days = shop["shipping"][country]
        q = rng.choice(["How much is shipping to {}, and how long does it take?", "Do you ship to {}?"])
        a = f"Shipping to {country} costs {cost} dollars and takes {_NUMBER_WORDS[days]} days."
        return [(q.format(country), "Yes. " + a if q.startswith("Do") else a)]
    if kind == 3:
        day = rng.choice(_DAYS)
        q = rng.choice(["Are you open on {}?", "What are your opening hours on {}?"]).format(day)
        a = f"On {day} we are open {_HOURS[day]}." if day in _HOURS else "We are closed on Sundays."
        return [(q, a)]
    if kind == 4:
        problem = rng.choice(sorted(_FIXES))
        q = rng.choice(["My {} arrived {}. What can I do?", "The {} I ordered is {}."]).format(item, problem)
        return [(q, f"Sorry to hear that your {item} is {problem}. {_cap(_FIXES[problem])}.")]
    number = f"{rng.randrange(10_000, 100_000)}"
    status = _ORDER_STATUS[(int(number[0]) - 1) // 3]
    q = rng.choice(["Where is my order?", "Can you check my order?", "Has my order shipped yet?"])
    return [(q, "Of course. What is your order number?"),
            (rng.choice(["It's {}.", "Order {}.", "{}"]).format(number), f"Order {number} {status}.")]


def support_chat_rows(n: int, seed: int = 0) -> list[dict]:
    """Support-desk chats of an invented shop in the OpenAI/TRL ``messages`` schema
    (``[{"role": "system"|"user"|"assistant", "content": ...}]``), the format most chat data is in.
    Prices, warranties, shipping (to ``_world``'s countries), opening hours, delivery problems and
    order status (two exchanges); three in four open with the shop's system prompt, one in six asks
    a second question. Answers follow from the question and the shop's fixed tables."""
    rng = random.Random(seed + 1111)
    name = f"{_name(rng, 2)} Home"
    shop = {"price": {item: rng.randrange(8, 120) for item in _ITEMS},
            "warranty": {item: rng.randrange(1, 4) for item in _ITEMS},
            "shipping": {c: (rng.randrange(3, 30), rng.randrange(2, 10)) for c in sorted(_world(seed))[:10]}}
    system = f"You are the support assistant of {name}, a home goods shop. Answer briefly and politely."
    rows = []
    for _ in range(n):
        messages = [{"role": "system", "content": system}] if rng.random() < 0.75 else []
        exchanges = _support_exchanges(rng, shop)
        if rng.random() < 1 / 6:
            exchanges += _support_exchanges(rng, shop)
        for user, assistant in exchanges:
            messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        rows.append({"messages": messages})
    return rows
