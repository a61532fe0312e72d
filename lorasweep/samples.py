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


# ----------------------------------------------------------------------------- extractive QA (SQuAD v2)

_GOODS = ["copper", "cheese", "lanterns", "marble", "pepper", "orchids", "saddles", "wool", "glass", "honey"]
_PLACE_KINDS = ["town", "village", "city"]
# One sentence per fact kind; "river" opens every context (it names the entity), the others follow
# in random order, so a question's answer sits at a different position in different contexts.
_QA_SENTENCES = {
    "river": "{town} is a {kind} on the {river} river.",
    "founded": "It was founded in {founded}.",
    "mayor": "Its mayor is {mayor}.",
    "famous": "It is famous for its {famous}.",
    "people": "About {people} people live there.",
}
_QA_QUESTIONS = {
    "river": ["Which river is {town} on?", "On which river does {town} lie?"],
    "founded": ["When was {town} founded?", "In what year was {town} founded?"],
    "mayor": ["Who is the mayor of {town}?", "Who is {town}'s mayor?"],
    "famous": ["What is {town} famous for?", "What is {town} known for?"],
    "people": ["How many people live in {town}?", "What is the population of {town}?"],
}
# A second, longer gold span, as SQuAD lists several annotators' spans for some questions. The
# short span stays first: a recipe that trains on answers["text"][0] gets one consistent target.
_QA_LONGER = {"river": "the {river} river", "founded": "in {founded}", "famous": "its {famous}"}


# Each fact's value comes from a small fixed set, so a tiny model's tokenizer holds it as a word or
# two: answering is finding the context's value of the asked kind, which a 2-layer model learns in a
# few hundred steps, where copying invented names of several sub-word pieces it did not learn at all
# in 900 full fine-tuning steps (F1 on answerable questions stayed 0).
_RIVERS = ["Tara", "Velmi", "Sula", "Orna", "Kesso", "Brava", "Lumen", "Dorra", "Ysel", "Marro", "Penna", "Quell"]
_MAYORS = ["Ana Lor", "Ben Tas", "Cora Vel", "Dev Mira", "Eli Quin", "Fay Dor", "Gus Ra", "Hana Bo", "Ivo Sul",
           "Jun Ny", "Kit Pex", "Lia Ta"]
_YEARS = ["1142", "1266", "1310", "1398", "1455", "1521", "1587", "1642", "1703", "1776", "1812", "1869"]
_PEOPLE = ["2,300", "4,800", "7,100", "9,500", "12,000", "15,400", "21,700", "28,900", "35,700", "42,300",
           "56,800", "73,200"]


def _town(rng: random.Random) -> dict[str, str]:
    # Populations carry a thousands comma ("42,300") so they never read like a year or contain one.
    return {"town": _name(rng, 3), "kind": rng.choice(_PLACE_KINDS), "river": rng.choice(_RIVERS),
            "founded": rng.choice(_YEARS), "mayor": rng.choice(_MAYORS), "famous": rng.choice(_GOODS),
            "people": rng.choice(_PEOPLE)}


def squad_v2_rows(n: int, seed: int = 0) -> list[dict]:
    """Rows in SQuAD v2's schema (``rajpurkar/squad_v2``): ``id`` (24 hex digits, unique), ``title``,
    ``context``, ``question`` and ``answers`` = {"text": [...], "answer_start": [...]}, both lists
    empty for an unanswerable question.

    A context is 2-4 sentences about one invented town: where it lies, then 1-3 of {founded, mayor,
    famous for, population}. A question asks one fact; its answer is the span of the context that
    states it (a few also list a longer span, "in 1642" beside "1642"). One third of the questions
    (SQuAD v2 train: 33.4%) cannot be answered from their context, in the two ways SQuAD v2's
    annotators wrote them: a fact of a kind the context does not state (the mayor, with no mayor
    sentence), or a stated kind about another town. Both look like answerable questions, so the
    model has to read the context, not the question alone, to tell them apart.
    """
    rng = random.Random(seed + 303)
    ids_rng = random.Random(seed + 304)
    n_unanswerable = round(n / 3)
    flags = [i < n_unanswerable for i in range(n)]
    rng.shuffle(flags)
    rows, seen = [], set()
    for unanswerable in flags:
        town = _town(rng)
        present = ["river", *rng.sample(["founded", "mayor", "famous", "people"], rng.randrange(1, 4))]
        sentences = [_QA_SENTENCES["river"].format(**town)]
        sentences += [_QA_SENTENCES[k].format(**town) for k in rng.sample(present[1:], len(present) - 1)]
        context = " ".join(sentences)
        about = town["town"]
        if unanswerable and rng.random() < 0.6:
            kind = rng.choice([k for k in _QA_SENTENCES if k not in present])
        else:
            kind = rng.choice(present)
            if unanswerable:  # a stated kind of fact, but about a town this context never names
                while about in context:
                    about = _name(rng, 3)
        question = rng.choice(_QA_QUESTIONS[kind]).format(town=about)
        answers = {"text": [], "answer_start": []}
        if not unanswerable:
            sentence = _QA_SENTENCES[kind].format(**town)
            offset = context.index(sentence)  # each sentence occurs once: the true offset
            spans = [town[kind]]
            if kind in _QA_LONGER and rng.random() < 0.3:
                spans.append(_QA_LONGER[kind].format(**town))
            for span in spans:
                start = offset + sentence.index(span)
                assert context[start:start + len(span)] == span
                answers["text"].append(span)
                answers["answer_start"].append(start)
        row_id = f"{ids_rng.getrandbits(96):024x}"
        while row_id in seen:
            row_id = f"{ids_rng.getrandbits(96):024x}"
        seen.add(row_id)
        rows.append({"id": row_id, "title": town["town"], "context": context, "question": question,
                     "answers": answers})
    return rows


def qa_texts(rows: list[dict]) -> list[str]:
    """Contexts, questions and answers, plus the words a QA prompt adds and the no-answer string,
    to train a tiny tokenizer on."""
    texts = [t for r in rows for t in (r["context"], r["question"], *r["answers"]["text"])]
    return texts + ["Context:", "Question:", "Answer:", "unanswerable", "Context", "Question", "Answer"] * 20


# ----------------------------------------------------------------------------- dialogue summarisation (DialogSum)

_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
           "October", "November", "December"]
_CLOCK = ["noon", "1 pm", "6 pm", "6:30 pm", "7 pm", "7:30 pm", "8 pm", "9 pm"]
_JOBS = ["cashier", "cook", "driver", "nurse", "teacher", "designer", "clerk", "waiter"]
_ITEMS = ["lamp", "kettle", "jacket", "toaster", "umbrella", "backpack", "radio", "shirt"]
_PROBLEMS = ["broken", "too small", "too big", "scratched", "the wrong color"]
_GOODS_PLURAL = ["mugs", "notebooks", "candles", "towels", "pens", "plates", "socks", "apples"]
_LANDMARKS = ["bank", "bakery", "church", "post office", "cinema", "pharmacy"]
_TRANSPORT = ["train", "bus", "car", "plane"]


def _cap(word: str) -> str:
    return word[0].upper() + word[1:]


def _dialogue_scene(rng: random.Random) -> tuple[list[str], str, str, dict[str, str]]:
    """One scenario: (turns, alternating from #Person1#; summary; topic; the slots). Every slot's
    text occurs verbatim in the dialogue and in the summary, so the summary is learnable by copying
    slots into a per-scenario template. Paraphrased turns and optional small talk vary the wording
    and the length (4-8 turns) around them."""
    scene = rng.randrange(6)
    if scene == 0:
        s = {"restaurant": "the {} {}".format(*map(_cap, rng.sample(_WORDS, 2))),
             "count": rng.choice(_NUMBER_WORDS[2:9]), "day": rng.choice(_DAYS), "time": rng.choice(_CLOCK)}
        turns = [f"Hello, is this {s['restaurant']}?", rng.choice(["Yes, it is. How can I help you?",
                                                                     "Yes. What can I do for you?"]),
                 f"I'd like to book a table for {s['count']} on {s['day']}.",
                 rng.choice(["What time would you like?", "Sure. For what time?"]),
                 f"At {s['time']}, please."]
        summary = f"#Person1# books a table for {s['count']} at {s['time']} on {s['day']} at {s['restaurant']}."
        if rng.random() < 0.5:
            s["name"] = f"{rng.choice(['Mr.', 'Ms.'])} {_name(rng, 2)}"
            turns += ["May I have your name?", f"It's {s['name']}.", "Thank you. See you then."]
            summary += f" The booking is under the name {s['name']}."
        else:
            turns.append(rng.choice(["All right, your table is booked.", "Done. See you then."]))
        return turns, summary, "restaurant reservation", s
    if scene == 1:
        s = {"place": rng.choice([f"the {_cap(rng.choice(_WORDS))} Museum", f"the {_cap(rng.choice(_WORDS))} Library",
                                  f"{_cap(rng.choice(_WORDS))} Park", "the train station"]),
             "street": f"{_cap(rng.choice(_WORDS))} {rng.choice(['Street', 'Road', 'Avenue'])}",
             "minutes": str(rng.choice([5, 10, 15, 20, 25, 30]))}
        turns = [rng.choice(["Excuse me, how can I get to {}?", "Excuse me, could you tell me the way to {}?"])
                 .format(s["place"])]
        if rng.random() < 0.5:
            s["bus"] = str(rng.randrange(2, 60))
            turns.append(f"Take bus {s['bus']} and get off at {s['street']}.")
            how = f"take bus {s['bus']} and get off at {s['street']}"
        else:
            s["turn"], s["landmark"] = rng.choice(["left", "right"]), rng.choice(_LANDMARKS)
            turns.append(f"Walk along {s['street']} and turn {s['turn']} at the {s['landmark']}.")
            how = f"walk along {s['street']} and turn {s['turn']} at the {s['landmark']}"
        turns += ["How long does it take?", f"About {s['minutes']} minutes."]
        if rng.random() < 0.5:
            turns += ["Thank you very much.", rng.choice(["You're welcome.", "No problem. Have a nice day."])]
        summary = (f"#Person1# asks #Person2# the way to {s['place']}. #Person2# tells #Person1# to {how}, "
                   f"which takes about {s['minutes']} minutes.")
        return turns, summary, "directions", s
    if scene == 2:
        company = f"{_cap(rng.choice(_WORDS))} {rng.choice(['Bank', 'Foods', 'Hotel', 'Motors'])}"
        s = {"job": rng.choice(_JOBS), "company": company,
             "years": rng.choice(_NUMBER_WORDS[2:10]), "day": rng.choice(_DAYS)}
        turns = [rng.choice(["Good morning. Please have a seat.", "Hello, thank you for coming in."])
                 + f" You are applying for the {s['job']} position, right?",
                 "Yes, that's right.",
                 rng.choice(["How much experience do you have?", "Tell me about your experience."]),
                 f"I worked as a {s['job']} at {s['company']} for {s['years']} years.",
                 "When can you start?", f"I can start on {s['day']}."]
        if rng.random() < 0.4:
            turns += ["Good. We will call you soon.", "Thank you."]
        summary = (f"#Person1# interviews #Person2# for the {s['job']} position. #Person2# worked at "
                   f"{s['company']} for {s['years']} years and can start on {s['day']}.")
        return turns, summary, "job interview", s
    if scene == 3:
        s = {"item": rng.choice(_ITEMS), "problem": rng.choice(_PROBLEMS), "day": rng.choice(_DAYS)}
        refund = rng.random() < 0.5
        turns = [f"Hi, I'd like to return this {s['item']}.",
                 rng.choice(["What's wrong with it?", "Is there a problem with it?"]),
                 f"It's {s['problem']}. I bought it on {s['day']}.", "Would you like a refund or an exchange?",
                 "A refund, please." if refund else "An exchange, please.",
                 "OK, here is your money." if refund else "OK, here is a new one."]
        outcome = "gives #Person1# a refund" if refund else "exchanges it for a new one"
        summary = (f"#Person1# returns a {s['item']} bought on {s['day']} because it is {s['problem']}. "
                   f"#Person2# {outcome}.")
        return turns, summary, "return an item", s
    if scene == 4:
        s = {"city": _name(rng, 3), "month": rng.choice(_MONTHS), "days": rng.choice(_NUMBER_WORDS[2:10])}
        s["transport"], other = rng.sample(_TRANSPORT, 2)
        # The rejected option is in the dialogue too: the summary needs the one #Person1# chooses.
        turns = [f"Shall we go to {s['city']} in {s['month']}?", "Good idea. How long should we stay?",
                 f"I think {s['days']} days is enough.", f"Should we go by {s['transport']} or by {other}?"
                 if rng.random() < 0.5 else f"Should we go by {other} or by {s['transport']}?",
                 f"Let's go by {s['transport']}. It's {rng.choice(['cheaper', 'faster', 'easier'])}."]
        if rng.random() < 0.5:
            turns.append("OK, I'll make the plans.")
        summary = (f"#Person1# and #Person2# plan a {s['days']}-day trip to {s['city']} in {s['month']} "
                   f"by {s['transport']}.")
        return turns, summary, "travel plan", s
    s = {"goods": rng.choice(_GOODS_PLURAL), "price": str(rng.randrange(2, 40)),
         "count": rng.choice(_NUMBER_WORDS[2:7])}
    turns = [f"How much are these {s['goods']}?", f"They are {s['price']} dollars each.", f"I'll take {s['count']}."]
    bag = rng.random() < 0.5
    turns += ["Here you are. Would you like a bag?", "Yes, please." if bag else "No, thanks."]
    summary = f"#Person1# buys {s['count']} {s['goods']} at {s['price']} dollars each"
    summary += " and takes a bag." if bag else "."
    return turns, summary, "shopping", s


def _dialogsum_scenes(n: int, seed: int) -> list[tuple[dict, dict[str, str]]]:
    """(row, slots) pairs: dialogsum_rows without the slots, which the tests check against."""
    rng = random.Random(seed + 505)
    out = []
    for i in range(n):
        turns, summary, topic, slots = _dialogue_scene(rng)
        assert 4 <= len(turns) <= 8
        dialogue = "\n".join(f"#Person{1 + j % 2}#: {t}" for j, t in enumerate(turns))
        assert all(v in dialogue and v in summary for v in slots.values()), (slots, dialogue, summary)
        out.append(({"id": f"train_{i}", "dialogue": dialogue, "summary": summary, "topic": topic}, slots))
    return out


def dialogsum_rows(n: int, seed: int = 0) -> list[dict]:
    """Rows in DialogSum's schema (``knkarthick/dialogsum``): ``id`` ("train_0", ...), ``dialogue``
    (4-8 turns "#Person1#: ...\\n#Person2#: ..."), ``summary`` (one or two third-person sentences about
    #Person1# and #Person2#, as DialogSum's are) and ``topic``. Six scenarios (a table booking,
    directions, a job interview, a return, a trip plan, shopping) with slots (names, days, times,
    places, items, numbers); the summary is the scenario's template filled with the dialogue's slots."""
    return [row for row, _ in _dialogsum_scenes(n, seed)]


def dialogue_texts(rows: list[dict]) -> list[str]:
    """Dialogues, summaries and topics, plus the prompt phrases of the summarisation recipes
    (the instruction for decoders, T5's "summarize:" prefix), to train a tiny tokenizer on."""
    texts = [t for r in rows for t in (r["dialogue"], r["summary"], r["topic"])]
    return texts + ["Summarize the following conversation.", "summarize:", "Summary:"] * 20


# ----------------------------------------------------------------------------- instructions (Dolly)

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


# ----------------------------------------------------------------------------- Alpaca; a support desk in `messages`


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
