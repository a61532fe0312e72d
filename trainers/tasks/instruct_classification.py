"""Classification with an instruction model: the text goes into the recipe's prompt as a user turn,
the label name is the assistant's answer (loss on the answer only, like chat SFT).

Scored as the instruction-tuning projects score it, without parsing free text: each label is
scored by its log-likelihood as the answer (teacher-forced, one forward pass per example and
label), the most likely one is the prediction. How often free greedy generation would have given a
valid label is reported beside it (``valid_label_rate``), since that is what a chat user sees.
The baseline scores the base model zero-shot and k-shot (k solved examples from the train split
as earlier turns of the same chat).
"""

from __future__ import annotations

import random

from common.errors import ConfigError
from trainers.data import SkipRow
from trainers.evaluation import (all_gather_lists, classification_metrics, eval_batches, evaluate_loss,
                                 generate_answers, label_logprobs, valid_label)
from trainers.prompted import PromptedAnswer
from trainers.tasks import register
from trainers.tasks.classification import LabelledTask, label_id, row_text


class InstructClassification(PromptedAnswer, LabelledTask):
    name = "instruct_classification"
    kinds = ("decoder",)

    def metric_names(self, settings):
        return (*super().metric_names(settings), "valid_label_rate")

    def check(self, settings, family):
        super().check(settings, family)
        if "{text}" not in settings.prompt:
            raise ConfigError(f"`prompt` is {settings.prompt!r}; it must contain {{text}} where the input goes")

    # ------------------------------------------------------------------ formatting
    def user_turn(self, row, settings):
        return settings.prompt.format(text=row_text(row, settings))

    def assistant_turn(self, row, settings):
        return settings.labels[label_id(row, settings)]

    def prompts_and_options(self, tokenizer, settings, rows, shots_from=(), shots=0):
        """Token ids of every row's prompt (up to the assistant header) and of every label's answer
        (the label and the end-of-turn the template puts after it). Rows that cannot be used are
        dropped, with their labels."""
        chosen = random.Random(settings.seed).sample(list(shots_from), shots) if shots else []
        prompts, truth = [], []
        for row in rows:
            try:
                msgs = self.messages(row, settings, chosen, answer=False)
                truth.append(label_id(row, settings))
            except SkipRow:
                continue
            text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
            prompts.append(tokenizer(text, add_special_tokens=False)["input_ids"][-settings.max_seq_length:])
        # The answer as the template writes it after a fixed prompt: reply + end-of-turn, no separator.
        probe = [{"role": "user", "content": "x"}]
        head = tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
        options = []
        for name in settings.labels:
            full = tokenizer.apply_chat_template([*probe, {"role": "assistant", "content": name}], tokenize=False)
            options.append(tokenizer(full[len(head):].rstrip(), add_special_tokens=False)["input_ids"])
        return prompts, options, truth

    # ------------------------------------------------------------------ scoring
    def _classify(self, model, tokenizer, settings, prompts, options, truth, gen_rows, shard):
        rank, n = shard
        scores = label_logprobs(model, prompts, options, tokenizer.pad_token_id, shard)  # this rank's share
        preds = all_gather_lists([max(range(len(s)), key=s.__getitem__) for s in scores])
        truth = all_gather_lists(truth[rank::n])
        metrics = classification_metrics(truth, preds, settings.labels)
        answers = generate_answers(model, tokenizer, prompts[:gen_rows], max(map(len, options)) + 2, shard)
        valid = all_gather_lists([valid_label(a, settings.labels) is not None for a in answers])
        metrics["valid_label_rate"] = sum(valid) / len(valid) if valid else 0.0
        return metrics, preds, truth

    def evaluate(self, model, tokenizer, settings, prepared, shard=(0, 1)):
        c = prepared.cache
        if "batches" not in c:  # built once per trial, reused at every report
            c["batches"] = eval_batches(prepared.eval.examples, tokenizer.pad_token_id)
            c["prompts"] = self.prompts_and_options(tokenizer, settings, prepared.split.eval)
        metrics, _, _ = self._classify(model, tokenizer, settings, *c["prompts"], settings.gen_eval_rows, shard)
        return {"eval_loss": evaluate_loss(model, c["batches"], shard), **metrics}

    def score(self, model, tokenizer, settings, rows, shots_from, shots):
        prompts, options, truth = self.prompts_and_options(tokenizer, settings, rows, shots_from, shots)
        metrics, preds, truth = self._classify(model, tokenizer, settings, prompts, options, truth,
                                               settings.gen_eval_rows, (0, 1))
        return {"n": len(truth), **metrics, "predictions": preds, "references": truth}


INSTRUCT_CLASSIFICATION = register(InstructClassification())
