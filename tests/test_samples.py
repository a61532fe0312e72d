"""The generated stand-ins for SQuAD v2, DialogSum and Dolly (stand_ins/) and the real-text
QA sample (tests/real_material.py): each in its dataset's schema, deterministic in its seed, and
learnable by rule (answers are spans at their offsets, summaries copy the dialogue's slots, Dolly's
responses follow from the instruction alone). No model is trained here."""

from __future__ import annotations

import json
import re
from collections import defaultdict

import pytest

from stand_ins import dialogsum_rows, dialogue_texts, dolly_rows, dolly_texts, qa_texts, squad_v2_rows
from stand_ins.dialogue import _dialogsum_scenes

N = 600
DOLLY_CATEGORIES = {"open_qa", "general_qa", "classification", "closed_qa", "brainstorming",
                    "information_extraction", "summarization", "creative_writing"}
WITH_CONTEXT = {"closed_qa", "information_extraction", "summarization"}


def _check_squad_schema(rows: list[dict]) -> None:
    for r in rows:
        assert set(r) == {"id", "title", "context", "question", "answers"}
        assert all(isinstance(r[k], str) and r[k] for k in ("id", "title", "context", "question"))
        assert set(r["answers"]) == {"text", "answer_start"}
        texts, starts = r["answers"]["text"], r["answers"]["answer_start"]
        assert isinstance(texts, list) and isinstance(starts, list) and len(texts) == len(starts)
        for text, start in zip(texts, starts):
            assert isinstance(text, str) and isinstance(start, int) and text
            assert r["context"][start:start + len(text)] == text
    assert len({r["id"] for r in rows}) == len(rows)


def _unanswerable_share(rows: list[dict]) -> float:
    return sum(not r["answers"]["text"] for r in rows) / len(rows)


# ----------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("make", [squad_v2_rows, dialogsum_rows, dolly_rows])
def test_same_seed_same_rows_other_seed_other_rows(make):
    assert make(50, seed=3) == make(50, seed=3)
    assert make(50, seed=3) != make(50, seed=4)
    assert make(50) == make(50, seed=0)
    assert make(0) == []


# ----------------------------------------------------------------------------- SQuAD v2

# the context's sentence that states each kind of fact a question can ask for
_FACT_MARKERS = {"river": " river.", "founded": "founded in", "mayor": "mayor is", "famous": "famous for",
                 "known": "famous for", "people": "people live", "population": "people live"}


def _question_kind(question: str) -> str:
    q = question.lower()
    return next(k for k in ("river", "founded", "mayor", "famous", "known", "people", "population") if k in q)


def test_squad_schema_spans_and_offsets():
    rows = squad_v2_rows(N)
    _check_squad_schema(rows)
    assert all(re.fullmatch(r"[0-9a-f]{24}", r["id"]) for r in rows)
    assert all(2 <= r["context"].count(".") <= 4 for r in rows)  # 2-4 sentences (no other dots)
    # some questions list a second, longer gold span that contains the first, as SQuAD's do
    two = [r for r in rows if len(r["answers"]["text"]) == 2]
    assert two and all(a in b for a, b in (r["answers"]["text"] for r in two))


def test_squad_one_third_unanswerable():
    for seed, n in [(0, N), (1, 90), (2, 7)]:
        assert abs(_unanswerable_share(squad_v2_rows(n, seed)) - 1 / 3) <= 1 / n + 1e-9


def test_squad_questions_need_the_context():
    """Answerable: about the context's town, whose context states that kind of fact. Unanswerable:
    about another town, or a kind of fact the context does not state; both kinds occur."""
    rows = squad_v2_rows(N)
    other_town = missing_fact = 0
    for r in rows:
        named = r["title"] in r["question"]
        stated = _FACT_MARKERS[_question_kind(r["question"])] in r["context"]
        if r["answers"]["text"]:
            assert named and stated, r
        else:
            assert not (named and stated), r
            other_town += not named
            missing_fact += not stated
    assert other_town > 20 and missing_fact > 20


def test_qa_texts_carry_the_prompt_words():
    rows = squad_v2_rows(20)
    texts = qa_texts(rows)
    assert {"unanswerable", "Context", "Question", "Answer"} <= set(texts)
    assert rows[0]["context"] in texts and rows[0]["question"] in texts


# ----------------------------------------------------------------------------- DialogSum


def test_dialogsum_schema():
    rows = dialogsum_rows(N)
    assert [r["id"] for r in rows] == [f"train_{i}" for i in range(N)]
    topics = set()
    for r in rows:
        assert set(r) == {"id", "dialogue", "summary", "topic"}
        assert all(isinstance(r[k], str) and r[k] for k in r)
        turns = r["dialogue"].split("\n")
        assert 4 <= len(turns) <= 8
        assert all(t.startswith(f"#Person{1 + i % 2}#: ") for i, t in enumerate(turns))
        assert "#Person1#" in r["summary"] and 1 <= r["summary"].count(".") - r["summary"].count("Mr.") \
            - r["summary"].count("Ms.") <= 2
        topics.add(r["topic"])
    assert len(topics) >= 5


def test_dialogsum_summaries_copy_the_dialogue_slots():
    scenes = _dialogsum_scenes(N, seed=0)
    assert [row for row, _ in scenes] == dialogsum_rows(N)
    for row, slots in scenes:
        assert slots
        for value in slots.values():
            assert value in row["dialogue"] and value in row["summary"], (value, row)
        # independently of the slots: every number and name in the summary is in the dialogue
        for token in re.findall(r"\d+|[A-Z][a-z]+", row["summary"]):
            assert token in row["dialogue"] or token in {"Person", "The"}, (token, row)


def test_dialogue_texts_carry_the_prompts():
    rows = dialogsum_rows(10)
    texts = dialogue_texts(rows)
    assert {"Summarize the following conversation.", "summarize:"} <= set(texts)
    assert rows[0]["dialogue"] in texts and rows[0]["summary"] in texts


# ----------------------------------------------------------------------------- Dolly


def test_dolly_schema_and_categories():
    rows = dolly_rows(N)
    assert {r["category"] for r in rows} == DOLLY_CATEGORIES
    for r in rows:
        assert list(r) == ["instruction", "context", "response", "category"]
        assert all(isinstance(v, str) for v in r.values())
        assert r["instruction"] and r["response"]
        assert bool(r["context"]) == (r["category"] in WITH_CONTEXT)
        assert len(r["response"].split()) <= 40
    # open_qa is Dolly's largest category (25%), creative_writing its smallest (5%)
    counts = defaultdict(int)
    for r in rows:
        counts[r["category"]] += 1
    assert max(counts, key=counts.get) == "open_qa" and min(counts, key=counts.get) == "creative_writing"


def test_dolly_responses_follow_from_the_instruction():
    """The recipe drops the context: one instruction must always get the same response."""
    responses = defaultdict(set)
    for r in dolly_rows(3000):
        responses[r["instruction"]].add(r["response"])
    assert all(len(v) == 1 for v in responses.values())
    assert len(responses) > 500  # and not a handful of prompts to memorise


def test_dolly_classification_is_right():
    for r in dolly_rows(N):
        if r["category"] == "classification":
            kinds = re.search(r"as an? (\w+) or an? (\w+):", r["instruction"]).groups()
            words = r["instruction"].split(": ")[1].rstrip(".").split(", ")
            said = re.findall(r"(\w+) is an? (\w+)\.", r["response"])
            assert [w.lower() for w, _ in said] == words and {k for _, k in said} == set(kinds)


def test_dolly_texts_carry_the_headers():
    rows = dolly_rows(20)
    texts = dolly_texts(rows)
    assert {"Instruction", "Response"} <= set(texts) and "" not in texts


# ----------------------------------------------------------------------------- real text


@pytest.mark.slow
@pytest.mark.real
def test_movie_qa_sample(tmp_path):
    from tests.real_material import movie_snippets, write_movie_qa_sample

    path = write_movie_qa_sample(tmp_path / "d" / "movie_qa.jsonl", 90, seed=1)
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 90 and not list(path.parent.glob(".*tmp-*"))
    _check_squad_schema(rows)
    assert _unanswerable_share(rows) == pytest.approx(1 / 3)
    real = {t for t, _ in movie_snippets()}
    used = []
    for r in rows:
        critics = re.findall(r'Critic (\w+ \w+) wrote: "', r["context"])
        asked = re.fullmatch(r"What did (\w+ \w+) write\?", r["question"]).group(1)
        assert len(critics) == 3 == len(set(critics))
        assert (asked in critics) == bool(r["answers"]["text"])
        for text, start in zip(r["answers"]["text"], r["answers"]["answer_start"]):
            assert text in real  # the real sentence, exactly
            assert r["context"][:start].endswith(f'Critic {asked} wrote: "')
        used += re.findall(r'wrote: "(.*?)"(?: Critic|$)', r["context"])
    assert len(used) == 270 and set(used) <= real and len(set(used)) == 270
    again = write_movie_qa_sample(tmp_path / "again.jsonl", 90, seed=1).read_text(encoding="utf-8")
    assert again == path.read_text(encoding="utf-8")
    assert write_movie_qa_sample(tmp_path / "other.jsonl", 90, seed=2).read_text(encoding="utf-8") != again
