"""Summarisation with an encoder-decoder (T5 / FLAN-T5): the prompt (e.g. "Summarize the following
conversation.\n\n{dialogue}") is the encoder's input, the reference summary the decoder's target.

ROUGE-L (the objective), ROUGE-1 and ROUGE-2 at every report on a fixed eval subset (greedy,
``max_new_tokens``), with Porter stemming as rouge-score and the DialogSum/CNN-DM papers use it;
BERTScore F1 once on the test split, with ``bertscore_model`` (a local encoder folder, or a Hub id on
a cluster that can reach the Hub).
"""

from __future__ import annotations

from trainers.generation import Seq2SeqGeneration
from trainers.tasks import register


class Summarization(Seq2SeqGeneration):
    name = "summarization"
    objective = "rougeL"
    text_metrics = ("rougeL", "rouge1", "rouge2")
    test_metrics = ("bertscore_f1",)


SUMMARIZATION = register(Summarization())
