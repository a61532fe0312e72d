"""The chat formatting shared by the decoder tasks that put a prompt in a user turn and train on
the answer in the assistant turn (instruction classification, decoder generation): the model's
own chat template (a plain "prompt, then Answer:" layout for a base model without one), the loss
on the answer only, few-shot examples as earlier turns, and packing."""

from __future__ import annotations

from trainers.chat import collator_for, pack_examples, tokenize_rows
from trainers.tasks import Task

PLAIN_TEMPLATE = (  # a base model's layout (Llama-3.2-1B, gemma-2b ship without a chat template)
    "{{ bos_token or '' }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}{{ 'Answer: ' + message['content'] + eos_token + '\n\n' }}"
    "{% else %}{{ message['content'] + '\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Answer:' }}{% endif %}"
)


class PromptedAnswer:
    """A mixin before the task's base class: it supplies ``user_turn`` and ``assistant_turn``."""

    can_pack = True
    takes_shots = True

    def user_turn(self, row: dict, settings) -> str:
        raise NotImplementedError

    def assistant_turn(self, row: dict, settings) -> str:
        raise NotImplementedError

    def load_tokenizer(self, settings):
        tok = Task.load_tokenizer(self, settings)  # not a labelled task's: no classification head here
        if not tok.chat_template:  # the answer closed by eos, so the model learns to stop after it
            tok.chat_template = PLAIN_TEMPLATE
        return tok

    def messages(self, row, settings, shots=(), answer=True) -> list[dict]:
        turns = []
        for shot in shots:
            turns += [{"role": "user", "content": self.user_turn(shot, settings)},
                      {"role": "assistant", "content": self.assistant_turn(shot, settings)}]
        turns.append({"role": "user", "content": self.user_turn(row, settings)})
        if answer:
            turns.append({"role": "assistant", "content": self.assistant_turn(row, settings)})
        return turns

    def tokenize(self, settings, tokenizer, rows):
        return tokenize_rows(tokenizer, rows, settings.max_seq_length,
                             to_messages=lambda row: self.messages(row, settings))

    def train_examples(self, settings, prepared):
        ex = prepared.train.examples
        return pack_examples(ex, settings.max_seq_length) if settings.packing else ex

    def collator(self, settings, tokenizer):
        return collator_for(settings, tokenizer.pad_token_id)
