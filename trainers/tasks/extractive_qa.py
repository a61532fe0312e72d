"""Extractive QA with unanswerable questions (SQuAD v2) on a causal LM: the context and question go
into the prompt, the model answers with the span, or with ``no_answer`` ("unanswerable") when the
context does not hold it.

Scored as SQuAD v2's official script scores it: exact match and token F1 after normalisation, the
best over the gold answers, an unanswerable question right only when the model says so (its answer
maps to ""), plus F1 on the answerable and unanswerable questions apart. BLEU, ROUGE-L and METEOR
read the raw answer against the gold spans (or the no-answer string).
"""

from __future__ import annotations

from common.errors import ConfigError
from trainers.data import SkipRow
from trainers.generation import DecoderGeneration
from trainers.tasks import register

SQUAD_COLUMNS = ("context", "question", "answers")


class ExtractiveQA(DecoderGeneration):
    name = "extractive_qa"
    objective = "f1"
    text_metrics = ("f1", "exact_match", "f1_has_answer", "f1_no_answer", "bleu", "rougeL", "meteor")

    def required_columns(self, settings):
        return [*super().required_columns(settings)[:-1], "answers"]  # the target is SQuAD's answers dict

    def check(self, settings, family):
        super().check(settings, family)
        if not settings.no_answer.strip():
            raise ConfigError("`no_answer` is empty; give the string the model answers an unanswerable question with, "
                              "e.g. --no-answer unanswerable")

    def golds(self, row) -> list[str]:
        answers = row.get("answers")
        if not isinstance(answers, dict) or not isinstance(answers.get("text"), list):
            raise SkipRow("malformed answers")
        return [a for a in answers["text"] if isinstance(a, str) and a.strip()]

    def target(self, row, settings):
        golds = self.golds(row)
        return golds[0].strip() if golds else settings.no_answer

    def references(self, row, settings):
        return self.golds(row) or [settings.no_answer]

    def prediction(self, text, settings):
        from trainers.squad import normalize_answer

        # the answer's first line: a model that goes on after its answer is judged on the answer
        lines = text.strip().splitlines()
        first = lines[0].strip() if lines else ""
        return "" if normalize_answer(first) == normalize_answer(settings.no_answer) else first

    def _text_scores(self, settings, rows, generations, metrics):
        from trainers.squad import squad_f1
        from trainers.text_metrics import score_texts

        preds = [self.prediction(g, settings) for g in generations]
        golds = [self.golds(r) for r in rows]
        squad = tuple(m for m in metrics if m in ("f1", "exact_match"))
        scores = score_texts(preds, golds, squad)
        text = tuple(m for m in metrics if m in ("bleu", "rougeL", "meteor", "bertscore_f1"))
        if text:
            raw = [(p or settings.no_answer) for p in preds]
            other = score_texts(raw, [g or [settings.no_answer] for g in golds], text)
            scores.corpus.update(other.corpus)
            scores.per_example.update(other.per_example)
            scores.unavailable.update(other.unavailable)
        f1 = scores.per_example.get("f1") or [squad_f1(g, p) for g, p in zip(golds, preds)]
        for name, answerable in (("f1_has_answer", True), ("f1_no_answer", False)):
            if name in metrics:
                part = [v for v, g in zip(f1, golds) if bool(g) == answerable]
                if part:  # a subset with no question of that kind reports nothing, not 0
                    scores.corpus[name] = sum(part) / len(part)
        return scores


EXTRACTIVE_QA = register(ExtractiveQA())
