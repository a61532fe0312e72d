"""What the generation tasks share (extractive QA, summarisation, instruction tuning): prompts
filled from a row's columns, greedy generation on a fixed eval subset at every report (so ASHA can
stop trials on the task's own metric), and the scoring of the test split that the baseline reads:
every metric, each example's values (box plots of base against tuned) and side-by-side samples.

Two model layouts, one class each:
  * ``DecoderGeneration``: a causal LM. The prompt is the user's turn of the tokenizer's chat
    template (a plain "prompt / Answer:" layout for a base model without one), the reference is the
    assistant's reply; the loss is on the reply only, as in chat SFT. k-shot baselines put solved
    examples from the train split in front as earlier turns.
  * ``Seq2SeqGeneration``: an encoder-decoder (T5 / FLAN-T5). The prompt is the encoder's input, the
    reference is the decoder's target (``max_new_tokens`` at most).
A task subclasses one and says what the reference is (``references``), what the model is trained
to write (``target``) and which metrics it reports (``text_metrics``; ``test_metrics`` are scored
on the test split only, e.g. BERTScore, whose encoder is too slow for every report).
"""

from __future__ import annotations

import math
import random
import sys

import torch

from common.errors import ConfigError
from trainers.config import prompt_fields
from trainers.data import SkipRow, Tokenized
from trainers.evaluation import (EVAL_BATCH_SIZE, all_gather_lists, all_reduce_sum, eval_batches, eval_mode,
                                 evaluate_loss, generate_answers, model_device, shard_calls)
from trainers.prompted import PromptedAnswer
from trainers.tasks import Task


def fill_prompt(prompt: str, row: dict) -> str:
    """``prompt`` with every ``{column}`` replaced by the row's value (a row missing one is skipped)."""
    values = {}
    for name in prompt_fields(prompt):
        value = row.get(name)
        if not isinstance(value, str) or not value.strip():
            raise SkipRow(f"empty {name}")
        values[name] = value
    return prompt.format(**values)


def end_of_turn_ids(tokenizer) -> list[int]:
    """The special token(s) the chat template closes an assistant reply with (``<|im_end|>``,
    ``<end_of_turn>``, ``<|eot_id|>``): generation stops there, as it does at eos."""
    probe = [{"role": "user", "content": "x"}]
    head = tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template([*probe, {"role": "assistant", "content": "y"}], tokenize=False)
    ids = tokenizer(full[len(head):].rstrip(), add_special_tokens=False)["input_ids"]
    special = set(tokenizer.all_special_ids)
    return [i for i in ids[1:] if i in special][:1]


class GenerationTask(Task):
    has_test_metrics = True
    text_metrics: tuple[str, ...] = ()  # every report (on gen_eval_rows eval rows) and the test split
    test_metrics: tuple[str, ...] = ()  # the test split only
    loss_metrics: tuple[str, ...] = ("eval_loss",)

    def metric_names(self, settings):
        return (*self.loss_metrics, *self.text_metrics, *self.test_metrics)

    # ------------------------------------------------------------------ what a row means
    def prompt_text(self, row: dict, settings) -> str:
        for column in settings.skip_rows_with:
            if row.get(column):
                raise SkipRow(f"{column} set")
        return fill_prompt(settings.prompt, row)

    def target(self, row: dict, settings) -> str:
        """What the model is trained to write for ``row``."""
        value = row.get(settings.target_column)
        if not isinstance(value, str) or not value.strip():
            raise SkipRow(f"empty {settings.target_column}")
        return value.strip()

    def references(self, row: dict, settings) -> list[str]:
        """What a generation is scored against (several for SQuAD)."""
        return [self.target(row, settings)]

    def prediction(self, text: str, settings) -> str:
        """A generation as the metrics read it."""
        return text

    def required_columns(self, settings) -> list[str]:
        return [*prompt_fields(settings.prompt), settings.target_column]

    # ------------------------------------------------------------------ checks
    def check(self, settings, family):
        super().check(settings, family)
        if not prompt_fields(settings.prompt):
            raise ConfigError(f"`prompt` is {settings.prompt!r}; task `{self.name}` fills it from the row's columns: "
                              "put {column} where each goes, e.g. --prompt 'Summarize: {dialogue}'")

    def check_columns(self, columns, settings):
        missing = [c for c in dict.fromkeys(self.required_columns(settings)) if c not in columns]
        if missing:
            raise ConfigError(f"dataset {settings.dataset!r} has columns {sorted(columns)} but task `{self.name}` "
                              f"needs {' and '.join(f'`{c}`' for c in missing)}; fix --prompt's {{column}} "
                              "placeholders or --target-column")

    # ------------------------------------------------------------------ layout hooks
    def prompt_ids(self, tokenizer, settings, rows, shots_from=(), shots=0) -> tuple[list[list[int]], list[dict]]:
        """Token ids of every usable row's prompt, and those rows."""
        raise NotImplementedError

    def loss(self, model, tokenizer, examples, shard, per_example=False, cache: dict | None = None):
        """Token-weighted loss on ``examples``; ``cache``: the trial's ``Prepared.cache``, where what
        is built from the fixed eval split once is kept for every report."""
        raise NotImplementedError

    def stop_ids(self, tokenizer) -> list[int]:
        return []

    # ------------------------------------------------------------------ scoring
    def _generate(self, model, tokenizer, settings, prompts, shard) -> list[str]:
        texts = generate_answers(model, tokenizer, prompts, settings.max_new_tokens, shard, self.stop_ids(tokenizer))
        return all_gather_lists(texts)

    def _text_scores(self, settings, rows, generations, metrics):
        from trainers.text_metrics import score_texts

        preds = [self.prediction(g, settings) for g in generations]
        refs = [self.references(r, settings) for r in rows]
        return score_texts(preds, refs, metrics, bertscore_model=settings.bertscore_model or None,
                           bertscore_layers=settings.bertscore_layers or None,
                           device="cuda" if torch.cuda.is_available() else "cpu")

    def _loss_metrics(self, loss: float) -> dict:
        return {"eval_loss": loss}

    def evaluate(self, model, tokenizer, settings, prepared, shard=(0, 1)):
        c = prepared.cache
        metrics = self._loss_metrics(self.loss(model, tokenizer, prepared.eval.examples, shard, cache=c))
        if self.text_metrics:
            if "gen" not in c:  # the same fixed rows at every report
                prompts, rows = self.prompt_ids(tokenizer, settings, prepared.split.eval[: settings.gen_eval_rows * 2])
                c["gen"] = (prompts[: settings.gen_eval_rows], rows[: settings.gen_eval_rows])
            prompts, rows = c["gen"]
            scores = self._text_scores(settings, rows, self._generate(model, tokenizer, settings, prompts, shard),
                                       self.text_metrics)
            metrics.update(scores.corpus)
            for name, why in scores.unavailable.items():
                if name not in c.setdefault("warned", set()):
                    c["warned"].add(name)
                    print(f"[lorasweep] {name} not reported: {why}", file=sys.stderr)
        return metrics

    def score(self, model, tokenizer, settings, rows, shots_from, shots):
        """Every metric on the test ``rows``, each example's values (``per_example``) and the first
        ``settings.samples`` prompts with their reference and generation (``samples``)."""
        data = self.tokenize(settings, tokenizer, rows)
        loss, each = self.loss(model, tokenizer, data.examples, (0, 1), per_example=True)
        out = {**self._loss_metrics(loss)}
        per_example = {"eval_loss": each} if not self.text_metrics else {}
        names = (*self.text_metrics, *self.test_metrics)
        prompts, kept = self.prompt_ids(tokenizer, settings, rows, shots_from, shots)
        if not names:  # generations only for the samples
            prompts, kept = prompts[: settings.samples], kept[: settings.samples]
        generations = self._generate(model, tokenizer, settings, prompts, (0, 1)) if prompts else []
        unavailable = {}
        if names and generations:
            scores = self._text_scores(settings, kept, generations, names)
            out.update(scores.corpus)
            per_example.update(scores.per_example)
            unavailable = scores.unavailable
        samples = [{"prompt": self.prompt_text(r, settings), "reference": self.references(r, settings)[0],
                    "generation": g} for r, g in zip(kept[: settings.samples], generations)]
        return {"n": len(data.examples) if not names else len(kept), **out, "unavailable": unavailable, "per_example": per_example, "samples": samples}


# ----------------------------------------------------------------------------- causal LMs


class DecoderGeneration(PromptedAnswer, GenerationTask):
    kinds = ("decoder",)

    def user_turn(self, row, settings):
        return self.prompt_text(row, settings)

    def assistant_turn(self, row, settings):
        return self.target(row, settings)

    def stop_ids(self, tokenizer):
        return end_of_turn_ids(tokenizer)

    def prompt_ids(self, tokenizer, settings, rows, shots_from=(), shots=0):
        chosen = random.Random(settings.seed).sample(list(shots_from), shots) if shots else []
        prompts, kept = [], []
        for row in rows:
            try:
                msgs = self.messages(row, settings, chosen, answer=False)
                self.references(row, settings)
            except SkipRow:
                continue
            text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
            # the prompt's end (the question, the header the answer follows) is what must survive a cut
            prompts.append(tokenizer(text, add_special_tokens=False)["input_ids"][-settings.max_seq_length:])
            kept.append(row)
        return prompts, kept

    def loss(self, model, tokenizer, examples, shard, per_example=False, cache=None):
        if cache is None:
            batches = eval_batches(examples, tokenizer.pad_token_id)
        else:  # the eval split's batches, built at the first report (as chat SFT keeps them)
            if "batches" not in cache:
                cache["batches"] = eval_batches(examples, tokenizer.pad_token_id)
            batches = cache["batches"]
        return evaluate_loss(model, batches, shard, per_example=per_example)


# ----------------------------------------------------------------------------- encoder-decoders


class Seq2SeqGeneration(GenerationTask):
    kinds = ("encoder-decoder",)
    peft_task_type = "SEQ_2_SEQ_LM"

    def auto_class(self):
        from transformers import AutoModelForSeq2SeqLM

        return AutoModelForSeq2SeqLM

    def _encode(self, tokenizer, text: str, limit: int) -> tuple[list[int], bool]:
        ids = tokenizer(text)["input_ids"]
        if len(ids) <= limit:
            return ids, False
        return ids[: limit - 1] + ids[-1:], True  # keep the closing </s> a real truncation keeps

    def tokenize(self, settings, tokenizer, rows):
        out = Tokenized(examples=[])
        for row in rows:
            try:
                source, target = self.prompt_text(row, settings), self.target(row, settings)
            except SkipRow as skip:
                out.skipped[skip.reason] += 1
                continue
            ids, cut = self._encode(tokenizer, source, settings.max_seq_length)
            labels, cut_target = self._encode(tokenizer, target, settings.max_new_tokens)
            out.truncated += cut or cut_target
            # n_tokens: what the step consumed (encoder input + decoder target), for the token budget
            out.examples.append({"input_ids": ids, "labels": labels, "n_tokens": len(ids) + len(labels)})
        return out

    def collator(self, settings, tokenizer):
        return Seq2SeqCollator(tokenizer.pad_token_id)

    def prompt_ids(self, tokenizer, settings, rows, shots_from=(), shots=0):
        prompts, kept = [], []
        for row in rows:
            try:
                text = self.prompt_text(row, settings)
                self.references(row, settings)
            except SkipRow:
                continue
            prompts.append(self._encode(tokenizer, text, settings.max_seq_length)[0])
            kept.append(row)
        return prompts, kept

    def loss(self, model, tokenizer, examples, shard, per_example=False, cache=None):
        return seq2seq_loss(model, examples, tokenizer.pad_token_id, shard, per_example)  # collates per call: cheap


class Seq2SeqCollator:
    """Right-pads the encoder inputs (with their attention mask) and the decoder targets (with -100,
    which the loss skips); the model builds its decoder inputs from the targets. ``num_tokens``
    (encoder + target tokens, no padding) feeds the token budget."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, batch: list[dict]) -> dict:
        width = max(len(e["input_ids"]) for e in batch)
        target = max(len(e["labels"]) for e in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        labels = torch.full((len(batch), target), -100, dtype=torch.long)
        for r, e in enumerate(batch):
            ids[r, : len(e["input_ids"])] = torch.tensor(e["input_ids"])
            mask[r, : len(e["input_ids"])] = 1
            labels[r, : len(e["labels"])] = torch.tensor(e["labels"])
        return {"input_ids": ids, "attention_mask": mask, "labels": labels,
                "num_tokens": torch.tensor(sum(len(e["input_ids"]) + len(e["labels"]) for e in batch))}


def seq2seq_loss(model, examples: list[dict], pad_id: int, shard=(0, 1), per_example=False):
    """Token-weighted cross-entropy of the targets (summed per token, all-reduced over workers), and
    with ``per_example`` each example's own mean (this process's examples; scoring runs on one)."""
    collate = Seq2SeqCollator(pad_id)
    ex = sorted(examples, key=lambda e: len(e["input_ids"]))
    device = model_device(model)
    loss_sum, count, each = 0.0, 0.0, []
    with eval_mode(model):
        for idx, keep in shard_calls(len(ex), EVAL_BATCH_SIZE, shard):
            batch = {k: v.to(device) for k, v in collate([ex[i] for i in idx]).items() if k != "num_tokens"}
            logits = model(**batch).logits.float()
            token = torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch["labels"], reduction="none",
                                                      ignore_index=-100)
            n = (batch["labels"] != -100).sum(-1)
            if keep:
                loss_sum += token.sum().item()
                count += n.sum().item()
                each += (token.sum(-1) / n.clamp(min=1)).tolist()
    loss_sum, count = all_reduce_sum([loss_sum, count])
    loss = loss_sum / max(count, 1.0)
    return (loss, each) if per_example else loss


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 50.0))  # e^50: past any real model's perplexity, short of overflow
