"""Tasks: how rows become model inputs, how a model is scored, and what a sweep optimises.

Every module in this folder is one task and calls ``register(SomeTask())`` at import. A task
subclasses ``Task`` and overrides what differs: the Auto class and PEFT task type, the columns it
reads, the formatting, the metrics (``evaluate`` during the sweep on the eval split, ``score`` on
the test split for the baseline and the best adapter) and the default objective.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from common.errors import ConfigError
from trainers.data import Split, Tokenized, load_dataset_rows, progress, split_rows
from trainers.registry import Registry

# Direction of every metric a task can report; anything not listed is maximised.
MINIMISED = {"eval_loss", "perplexity", "device_hours"}


def metric_mode(metric: str) -> str:
    return "min" if metric in MINIMISED else "max"


@dataclass
class Prepared:
    """What one worker (or the driver's audit) has after reading and formatting the data."""

    split: Split  # raw rows: train / eval / test
    train: Tokenized
    eval: Tokenized
    rows_read: int
    cache: dict = field(default_factory=dict)  # what evaluate() builds once per trial (eval batches, prompts)


class Task:
    name: str = ""
    kinds: tuple[str, ...] = ("decoder",)  # family kinds this task can train
    peft_task_type: str = "CAUSAL_LM"
    needs_pad_token: bool = False
    metrics: tuple[str, ...] = ("eval_loss",)  # what every report carries
    objective: str = "eval_loss"  # the default objective of recipes of this task
    can_pack: bool = False
    has_test_metrics: bool = False  # score() gives a baseline vs tuned table
    takes_shots: bool = False  # score() puts k solved examples in the prompt (--shots); else 0-shot only
    needs_chat_template: bool = False  # rows are rendered with the tokenizer's chat template
    reference_forwards: int = 0  # forward passes per training token beyond the model's own (cost estimates)

    def metric_names(self, settings) -> tuple[str, ...]:
        return self.metrics

    # ------------------------------------------------------------------ model
    def auto_class(self):
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM

    def model_kwargs(self, settings) -> dict:
        return {}

    def head_modules(self, family) -> tuple[str, ...]:
        """Modules trained in full and kept unquantised (a classification head)."""
        return ()

    # ------------------------------------------------------------------ checks (driver, cheap)
    def check(self, settings, family) -> None:
        if family.kind not in self.kinds:
            raise ConfigError(
                f"`model` {settings.model!r} is {'an' if family.kind[0] in 'ae' else 'a'} {family.kind} ({family.name}); task `{self.name}` trains "
                f"{' or '.join(self.kinds)} models; pass --model with a checkpoint of that kind")

    def check_columns(self, columns: list[str], settings) -> None:
        pass

    # ------------------------------------------------------------------ data
    def load_tokenizer(self, settings):
        from transformers import AutoTokenizer

        from trainers.data import hf_token

        tok = AutoTokenizer.from_pretrained(settings.model, token=hf_token())
        if self.needs_chat_template and not tok.chat_template:
            raise ConfigError(f"`model` {settings.model!r} has no chat template; use an instruct/chat checkpoint")
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        return tok

    def stratify(self, settings) -> Callable | None:
        return None

    def read(self, settings) -> tuple[Split, int]:
        ds = load_dataset_rows(settings)
        self.check_columns(ds.column_names, settings)
        rows = ds.to_list()
        return split_rows(rows, settings, self.stratify(settings)), len(rows)

    def tokenize(self, settings, tokenizer, rows: list) -> Tokenized:
        raise NotImplementedError

    def prepare(self, settings, tokenizer) -> Prepared:
        split, n = self.read(settings)
        train = self.tokenize(settings, tokenizer, progress(split.train, "tokenising train rows"))
        held = self.tokenize(settings, tokenizer, progress(split.eval, "tokenising eval rows"))
        if not train.examples:
            raise ConfigError(f"`dataset` {settings.dataset!r} has no usable training rows (skipped: {dict(train.skipped)})")
        if not held.examples:
            raise ConfigError(f"`dataset` {settings.dataset!r} has no usable eval rows; raise `eval_fraction`")
        return Prepared(split, train, held, n)

    def audit(self, settings) -> dict:
        """Driver-side, before Ray starts: the same reading, split and formatting a trial does, to
        count the rows kept and skipped (by reason) and size the budget."""
        return self.audit_prepared(settings)[0]

    def audit_prepared(self, settings) -> tuple[dict, Prepared]:
        """``audit`` and the data it prepared (which the driver shares with the trials:
        trainers/shared_data.py)."""
        p = self.prepare(settings, self.load_tokenizer(settings))
        skipped = p.train.skipped + p.eval.skipped
        return {
            "dataset": settings.dataset,
            "rows": p.rows_read,
            "train_examples": len(p.train.examples),
            "eval_examples": len(p.eval.examples),
            "test_rows": len(p.split.test),
            "validation_rows": len(p.split.validation),
            "skipped": dict(sorted(skipped.items())),
            "truncated": p.train.truncated + p.eval.truncated,
            "tokens_per_example": round(p.train.num_tokens / len(p.train.examples), 1),
            "train_tokens": p.train.num_tokens,
            "eval_tokens": p.eval.num_tokens,
        }, p

    # ------------------------------------------------------------------ training
    def train_examples(self, settings, prepared: Prepared) -> list[dict]:
        return prepared.train.examples

    def collator(self, settings, tokenizer):
        raise NotImplementedError

    def training_loss(self, settings):
        """``loss(model, inner, inputs) -> scalar`` for each micro-batch, where the task's loss is not
        the model's own (preference pairs); ``model`` is what the Trainer holds (DDP, DeepSpeed),
        ``inner`` the PeftModel in it. None: the model's loss on ``labels``."""
        return None

    # ------------------------------------------------------------------ scoring
    def evaluate(self, model, tokenizer, settings, prepared: Prepared, shard=(0, 1)) -> dict:
        """Metrics on the eval split, at every report; must include every name in ``metrics``."""
        raise NotImplementedError

    def score(self, model, tokenizer, settings, rows: list, shots_from: list, shots: int) -> dict:
        """Metrics on held-out raw ``rows`` (the test split), with ``shots`` examples from ``shots_from``
        in the prompt where the task has prompts."""
        raise NotImplementedError


_TASKS: Registry[Task] = Registry(__name__, "task")


def register(task: Task) -> Task:
    return _TASKS.register(task.name, task)


def available() -> list[str]:
    return _TASKS.names()


def get_task(name: str) -> Task:
    return _TASKS.get(name)
