"""Reading rows and splitting them, the same way on the driver (audit, baseline) and in every worker.

A dataset is a Hub id or a local .jsonl/.json/.parquet file, read with ``datasets``; the task checks
its columns. The split is fixed by the seed: the same eval and test rows on every worker, every
trial, the baseline and the reload check.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from common.errors import ConfigError, first_line

SUFFIXES = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def hf_token() -> str | None:
    # Secrets come from the environment only; they are never put in a config that gets written.
    return os.environ.get("HF_TOKEN") or None


def load_dataset_rows(settings):
    """The rows as a ``datasets.Dataset`` (columns checked by the caller)."""
    import datasets

    datasets.disable_progress_bars()  # one bar per file read: noise in every worker's log
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # a bad file is our one-line ConfigError
    src = settings.dataset
    if os.path.exists(src):
        kind = SUFFIXES.get(Path(src).suffix.lower())
        if kind is None:
            raise ConfigError(f"`dataset` {src!r} is not .jsonl, .json or .parquet")
        try:
            return datasets.load_dataset(kind, data_files=src, split="train")
        except Exception as e:  # datasets wraps a bad line in its own error types, several deep
            raise ConfigError(f"`dataset` {src!r} could not be read as {Path(src).suffix} ({first_line(e)}); "
                              "expected one JSON object per line (.jsonl), a JSON array (.json) or parquet") from None
    return datasets.load_dataset(src, split=settings.dataset_split, token=hf_token())


@dataclass
class Split:
    """Raw rows, split. ``test`` is empty unless the settings ask for a test split."""

    train: list
    eval: list
    test: list = field(default_factory=list)
    # held out for the sweep's final round only (the top trials scored again on eval + validation)
    validation: list = field(default_factory=list)


def split_rows(rows: list, settings, stratify=None) -> Split:
    """Deterministic split by ``settings.seed``: test first, then eval, then validation (the final
    round's extra rows), the rest trains (capped at ``max_train_rows``). With ``stratify`` (row -> class), ``balance`` takes the same
    number of rows from every class first."""
    rng = random.Random(settings.seed)
    idx = list(range(len(rows)))
    rng.shuffle(idx)
    if stratify is not None and settings.balance:
        by_class: dict = {}
        for i in idx:
            by_class.setdefault(stratify(rows[i]), []).append(i)
        n = min(len(v) for v in by_class.values())
        keep = {i for v in by_class.values() for i in v[:n]}
        idx = [i for i in idx if i in keep]
    n_test = min(settings.test_rows, int(len(idx) * settings.test_fraction)) if settings.test_fraction else 0
    n_eval = min(settings.eval_rows, max(1, int(len(idx) * settings.eval_fraction)))
    frac = getattr(settings, "validation_fraction", 0.0)
    n_val = min(getattr(settings, "validation_rows", 0), int(len(idx) * frac)) if frac else 0
    test, held = idx[:n_test], idx[n_test:n_test + n_eval]
    val, train = idx[n_test + n_eval:n_test + n_eval + n_val], idx[n_test + n_eval + n_val:]
    if settings.max_train_rows:
        train = train[: settings.max_train_rows]
    if getattr(settings, "train_on_eval", False):  # --finalize: eval rows train too (and are still reported on)
        train = train + held
    pick = lambda ids: [rows[i] for i in sorted(ids)]  # noqa: E731  file order inside each split
    return Split(pick(train), pick(held), pick(test), pick(val))


@dataclass
class Tokenized:
    """One split after the task's formatting: model-ready examples, and what was skipped (by reason)."""

    examples: list[dict]
    skipped: Counter = field(default_factory=Counter)
    truncated: int = 0

    @property
    def num_tokens(self) -> int:
        return count_tokens(self.examples)


def count_tokens(examples) -> int:
    """Tokens of all ``examples``: summed from the arrays where they are shared ones
    (trainers/shared_data.py ``ArrayExamples``), without building each example."""
    fast = getattr(examples, "total_tokens", None)
    return fast() if fast is not None else sum(example_tokens(e) for e in examples)


def example_tokens(example: dict) -> int:
    """Tokens an example costs a step: its ``input_ids``, or ``n_tokens`` where the example says
    (an encoder-decoder's input + target)."""
    return example.get("n_tokens") or len(example["input_ids"])


class SkipRow(Exception):
    """A row that cannot be used; ``reason`` is the key under which it is counted."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def progress(items, desc: str):
    """``items`` with a progress bar on an interactive terminal (the driver's data audit, the
    export); as they are anywhere else: a trial's log or CI's output gets no bar redrawn 1,000 times."""
    import sys

    if not sys.stderr.isatty():
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=f"[lorasweep] {desc}", leave=False)
