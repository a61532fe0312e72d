"""Chat SFT: conversations rendered with the model's own chat template, loss on the assistant turns
only, optional packing; scored by the token-weighted eval loss on held-out conversations."""

from __future__ import annotations

from trainers.chat import collator_for, pack_examples, require_chat_columns, tokenize_rows
from trainers.evaluation import eval_batches, evaluate_loss
from trainers.tasks import Task, register


class ChatSFT(Task):
    name = "chat_sft"
    kinds = ("decoder",)
    metrics = ("eval_loss",)
    objective = "eval_loss"
    can_pack = True
    needs_chat_template = True

    def check_columns(self, columns, settings):
        require_chat_columns(columns, settings.dataset)

    def tokenize(self, settings, tokenizer, rows):
        return tokenize_rows(tokenizer, rows, settings.max_seq_length)

    def train_examples(self, settings, prepared):
        ex = prepared.train.examples
        return pack_examples(ex, settings.max_seq_length) if settings.packing else ex

    def collator(self, settings, tokenizer):
        return collator_for(settings, tokenizer.pad_token_id)

    def evaluate(self, model, tokenizer, settings, prepared, shard=(0, 1)):
        if "batches" not in prepared.cache:  # built once per trial, reused at every report
            prepared.cache["batches"] = eval_batches(prepared.eval.examples, tokenizer.pad_token_id)
        return {"eval_loss": evaluate_loss(model, prepared.cache["batches"], shard)}


CHAT_SFT = register(ChatSFT())
