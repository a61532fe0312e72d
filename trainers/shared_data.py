"""The sweep's data, tokenised once and shared with every trial through Ray's object store.

Every trial process used to read, split and tokenise the whole dataset (and pack it), although a
2M-token trial reaches ~3k of FineTome's ~98k conversations: minutes of idle GPUs and GBs of Python
int lists in every worker of every trial. The driver's audit tokenises the data anyway, so from it
the driver keeps what trials read: the training examples the token budget can reach (a random sample
drawn with the split's seed, as the trainer's shuffled order would reach them), the eval split, and
the packed rows for each packing value the sweep searches, all as flat NumPy arrays (``Columns``).
``ray.put`` stores them once per sweep; a trial's ``ray.get`` maps them from its node's shared memory
without a copy, and its examples are read a batch at a time (``ArrayExamples``).

A trial whose data settings differ from the driver's (a searched ``max_seq_length``, ``--finalize``'s
training on the eval rows) or whose ``max_tokens`` reaches past the examples kept prepares its own
data as before: ``SharedData.serves`` decides, and a miss costs time, never a wrong dataset.
"""

from __future__ import annotations

import itertools
import json
import os
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from common.credentials import take_shared
from trainers.data import Split, Tokenized, example_tokens

# Key of ``train_loop_config`` (never of Tune's param space) holding ``[ObjectRef]`` to the data.
CONFIG_KEY = "lorasweep_data"

# TrainSettings fields that change how a trial trains but not what its data is: trials differing
# only in these share one tokenisation. Listed as exclusions, so a new field counts as a data
# setting (a cache miss, never a wrong hit) until it is added here. (``packing`` is here: the
# packed rows of each value are kept side by side.)
NOT_DATA = frozenset({"method", "quantization", "precision", "per_device_batch_size", "gradient_accumulation_steps",
                      "gradient_checkpointing", "zero_stage", "offload", "lora_dropout", "target_modules",
                      "lr_scheduler_type", "weight_decay", "max_grad_norm", "r", "lora_alpha", "use_rslora",
                      "packing", "warmup_ratio", "learning_rate", "max_tokens", "eval_every", "callbacks",
                      "lora_config", "training_args", "alpha_ratio", "lr_scaling", "lr_reference_tokens", "repeat",
                      "attn_implementation", "loss_type", "beta"})

# Training examples kept beyond the budget's tokens: the trainer's batches overshoot a little (the
# step that crosses max_tokens is trained whole), and packing loses a few tokens per row.
MARGIN = 1.15


def data_key(s) -> str:
    d = {k: v for k, v in s.to_dict().items() if k not in NOT_DATA}
    if os.path.isfile(s.dataset):  # a local file edited between two sweeps in one process is re-read
        st = os.stat(s.dataset)
        d["dataset_file"] = (st.st_size, st.st_mtime_ns)
    return json.dumps(d, sort_keys=True, default=str)


class Columns:
    """Examples (dicts of int lists and scalars, every example with the same keys) as flat arrays:
    per list-valued key one int32 array of all values and the offsets of each example in it."""

    def __init__(self, examples: Sequence[dict]):
        self.n = len(examples)
        self.ragged: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.scalars: dict[str, np.ndarray] = {}
        for key, first in (examples[0].items() if examples else ()):
            if isinstance(first, (list, tuple)):
                offsets = np.zeros(self.n + 1, dtype=np.int64)
                np.cumsum(np.fromiter((len(e[key]) for e in examples), np.int64, self.n), out=offsets[1:])
                values = np.fromiter(itertools.chain.from_iterable(e[key] for e in examples), np.int32, int(offsets[-1]))
                self.ragged[key] = (values, offsets)
            else:
                self.scalars[key] = np.asarray([e[key] for e in examples])

    def example(self, i: int) -> dict:
        out = {k: values[offsets[i]:offsets[i + 1]].tolist() for k, (values, offsets) in self.ragged.items()}
        out.update((k, v[i].item()) for k, v in self.scalars.items())
        return out

    @property
    def nbytes(self) -> int:
        return sum(v.nbytes + o.nbytes for v, o in self.ragged.values()) + sum(v.nbytes for v in self.scalars.values())


class ArrayExamples(Sequence):
    """A list of examples read from ``Columns``: each ``[i]`` builds that one example's dict."""

    def __init__(self, columns: Columns):
        self.columns = columns

    def __len__(self) -> int:
        return self.columns.n

    def total_tokens(self) -> int:
        """What ``sum(example_tokens(e) for e in self)`` gives, from the arrays."""
        c = self.columns
        return int(c.scalars["n_tokens"].sum()) if "n_tokens" in c.scalars else int(c.ragged["input_ids"][1][-1])

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self.columns.example(j) for j in range(*i.indices(self.columns.n))]
        if i < 0:
            i += self.columns.n
        if not 0 <= i < self.columns.n:
            raise IndexError(i)
        return self.columns.example(i)


@dataclass
class SharedData:
    key: str  # data_key of the settings it was made from
    covers_tokens: int  # the largest max_tokens its training examples serve; 0: every example is kept
    train: Columns
    eval: Columns
    eval_rows: list  # the eval split's raw rows (generation tasks make their prompts from them)
    packed: dict  # packing value -> Columns of the training rows (absent: the examples themselves)
    skipped: dict
    truncated: int
    rows_read: int
    train_examples: int  # of the whole training split, before the budget's sample

    def serves(self, s, key: str | None = None) -> bool:
        """Whether these are the data of settings ``s`` (``key``: their ``data_key``, when known)."""
        return (key or data_key(s)) == self.key and (not self.covers_tokens or s.max_tokens <= self.covers_tokens)

    def prepared(self):
        """(``Prepared``, {packing: training rows}) as ``Task.prepare`` / ``train_examples`` give them."""
        from trainers.tasks import Prepared

        train = Tokenized(ArrayExamples(self.train), Counter(self.skipped), self.truncated)
        prepared = Prepared(Split([], self.eval_rows), train, Tokenized(ArrayExamples(self.eval)), self.rows_read)
        rows = {p: ArrayExamples(c) if c is not None else train.examples for p, c in self.packed.items()}
        return prepared, rows

    def line(self) -> str:
        kept = self.train.n
        mb = (self.train.nbytes + self.eval.nbytes + sum(c.nbytes for c in self.packed.values() if c is not None)) / 2**20
        reach = (f"the {kept:,} of {self.train_examples:,} training examples a {self.covers_tokens:,}-token trial can "
                 f"reach" if self.covers_tokens else f"all {kept:,} training examples")
        return f"tokenised once on the driver for every trial: {reach}, {self.eval.n:,} eval, {mb:.1f} MB in Ray's object store"


def share(settings, task, prepared, packings, max_tokens: int | None, rows_per_step: int) -> SharedData:
    """Driver side, from the audit's ``Prepared``: the data every trial of the sweep reads.
    ``max_tokens``: the budget of the longest trial (None: unknown, keep every example)."""
    examples = prepared.train.examples
    kept, covers = examples, 0
    if max_tokens:
        order = list(range(len(examples)))
        random.Random(settings.seed).shuffle(order)
        need, total, n = max_tokens * MARGIN, 0, 0
        while n < len(order) and total < need:
            total += example_tokens(examples[order[n]])
            n += 1
        n = min(len(order), n + 2 * rows_per_step)
        if n < len(order):
            kept, covers = [examples[i] for i in sorted(order[:n])], max_tokens
    sub = replace(prepared, train=Tokenized(kept, prepared.train.skipped, prepared.train.truncated))
    packed = {}
    for p in sorted(set(packings)):
        rows = task.train_examples(replace(settings, packing=p), sub)
        packed[p] = None if rows is kept else Columns(rows)
    return SharedData(key=data_key(settings), covers_tokens=covers, train=Columns(kept), eval=Columns(prepared.eval.examples),
                      eval_rows=list(prepared.split.eval), packed=packed, skipped=dict(prepared.train.skipped),
                      truncated=prepared.train.truncated, rows_read=prepared.rows_read, train_examples=len(examples))


def receive(config: dict) -> tuple[dict, SharedData | None]:
    """Worker side: the shared data a ``train_loop_config`` carries (``ray.get``: a view of the node's
    object store, no copy), and the config without it."""
    return take_shared(config, CONFIG_KEY)
