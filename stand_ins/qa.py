"""Extractive QA stand-in: SQuAD v2, a third of its questions unanswerable from their context."""

from __future__ import annotations

import random

from stand_ins._words import _name

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
