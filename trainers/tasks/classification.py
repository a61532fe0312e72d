"""Sequence classification with a head (DistilBERT/BERT/RoBERTa, or a decoder's ``score`` head):
text in, one label out; the head is trained in full beside the LoRA adapters (or everything, with
``method="full"``). Scored by accuracy, precision, recall, F1 and accuracy on each class."""

from __future__ import annotations

import torch

from common.errors import ConfigError
from trainers.data import SkipRow, Tokenized
from trainers.evaluation import (EVAL_BATCH_SIZE, all_gather_lists, all_reduce_sum, classification_metrics, eval_mode,
                                 model_device, shard_calls)
from trainers.tasks import Task, register

CLASSIFICATION_METRICS = ("eval_loss", "accuracy", "precision", "recall", "f1")


def label_id(row: dict, settings) -> int:
    """The row's label as an index into ``settings.labels`` (given as that index or as the name)."""
    value = row.get(settings.label_column)
    if isinstance(value, bool) or value is None:
        raise SkipRow("label outside the label set")
    if isinstance(value, int) and 0 <= value < len(settings.labels):
        return value
    if isinstance(value, str):
        names = [n.lower() for n in settings.labels]
        if value.strip().lower() in names:
            return names.index(value.strip().lower())
        if value.strip().isdigit() and int(value) < len(settings.labels):
            return int(value)
    raise SkipRow("label outside the label set")


def row_text(row: dict, settings) -> str:
    text = row.get(settings.text_column)
    if not isinstance(text, str) or not text.strip():
        raise SkipRow("empty text")
    return text


class LabelledTask(Task):
    """What both classification tasks share: the columns, the label set and the metrics."""

    objective = "f1"
    has_test_metrics = True

    def metric_names(self, settings):
        return (*CLASSIFICATION_METRICS, *(f"accuracy_{n}" for n in settings.labels))

    def check(self, settings, family):
        super().check(settings, family)
        if len(settings.labels) < 2:
            raise ConfigError(f"`labels` is {list(settings.labels)!r}; give at least two label names in id order, "
                              "e.g. --labels negative,positive")

    def stratify(self, settings):
        def cls(row):
            try:
                return label_id(row, settings)
            except SkipRow:
                return -1
        return cls

    def check_columns(self, columns, settings):
        missing = [c for c in (settings.text_column, settings.label_column) if c not in columns]
        if missing:
            raise ConfigError(f"dataset {settings.dataset!r} has columns {sorted(columns)} but needs "
                              f"{' and '.join(f'`{c}`' for c in missing)}; pass --text-column/--label-column")


class Classification(LabelledTask):
    name = "classification"
    kinds = ("encoder", "decoder")
    peft_task_type = "SEQ_CLS"
    needs_pad_token = True

    def auto_class(self):
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification

    def model_kwargs(self, settings):
        labels = list(settings.labels)
        return {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
                "label2id": {n: i for i, n in enumerate(labels)}}

    def head_modules(self, family):
        return family.head_modules

    def tokenize(self, settings, tokenizer, rows):
        out = Tokenized(examples=[])
        for row in rows:
            try:
                label, text = label_id(row, settings), row_text(row, settings)
            except SkipRow as skip:
                out.skipped[skip.reason] += 1
                continue
            ids = tokenizer(text)["input_ids"]
            if len(ids) > settings.max_seq_length:  # keep the closing [SEP]/</s> a real truncation keeps
                ids = ids[: settings.max_seq_length - 1] + ids[-1:]
                out.truncated += 1
            out.examples.append({"input_ids": ids, "label": label})
        return out

    def collator(self, settings, tokenizer):
        return ClassificationCollator(tokenizer.pad_token_id)

    def _predict(self, model, examples, pad_id, shard):
        collate = ClassificationCollator(pad_id)
        device = model_device(model)
        loss_sum, preds, truth = 0.0, [], []
        with eval_mode(model):
            for idx, keep in shard_calls(len(examples), EVAL_BATCH_SIZE, shard):  # as many calls on every rank
                batch = collate([examples[i] for i in idx])
                logits = model(input_ids=batch["input_ids"].to(device),
                               attention_mask=batch["attention_mask"].to(device)).logits.float()
                if not keep:
                    continue
                labels = batch["labels"].to(device)
                loss_sum += torch.nn.functional.cross_entropy(logits, labels, reduction="sum").item()
                preds += logits.argmax(-1).tolist()
                truth += labels.tolist()
        (loss_sum,) = all_reduce_sum([loss_sum])
        truth, preds = all_gather_lists(truth), all_gather_lists(preds)
        return loss_sum / max(len(truth), 1), truth, preds

    def evaluate(self, model, tokenizer, settings, prepared, shard=(0, 1)):
        loss, truth, preds = self._predict(model, prepared.eval.examples, tokenizer.pad_token_id, shard)
        return {"eval_loss": loss, **classification_metrics(truth, preds, settings.labels)}

    def score(self, model, tokenizer, settings, rows, shots_from, shots):
        data = self.tokenize(settings, tokenizer, rows)
        loss, truth, preds = self._predict(model, data.examples, tokenizer.pad_token_id, (0, 1))
        return {"n": len(truth), "eval_loss": loss, **classification_metrics(truth, preds, settings.labels),
                "predictions": preds, "references": truth}


class ClassificationCollator:
    """Right-pads ``input_ids``, builds the attention mask and the label vector; ``num_tokens``
    (non-padding tokens) feeds the token budget and is removed before the forward pass."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, batch: list[dict]) -> dict:
        width = max(len(e["input_ids"]) for e in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, e in enumerate(batch):
            ids[r, : len(e["input_ids"])] = torch.tensor(e["input_ids"])
            mask[r, : len(e["input_ids"])] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([e["label"] for e in batch]),
                "num_tokens": mask.sum()}


CLASSIFICATION = register(Classification())
