"""The sweep's data tokenised once on the driver and read by every trial (trainers/shared_data.py)."""

from __future__ import annotations

import dataclasses
import pickle
from collections import Counter

import pytest

from lorasweep.resolve import resolve
from sweeps.llama_finetome import RECIPE
from trainers.data import count_tokens
from trainers.shared_data import MARGIN, share
from trainers.tasks import get_task


@pytest.fixture(scope="module")
def audited(tiny_assets):
    """(settings, task, audit, prepared) of the flagship's smoke data, audited once for the module."""
    s = resolve(RECIPE, ["--preset", "smoke"]).settings
    task = get_task(s.task)
    return (s, task, *task.audit_prepared(s))


def test_trials_read_exactly_what_they_would_have_tokenised(audited):
    """Every example, eval example, eval row and packed row the trial gets from the shared arrays
    equals what its own ``Task.prepare`` / ``train_examples`` give, after a pickle round trip (what
    Ray's object store does)."""
    s, task, audit, prepared = audited
    shared = pickle.loads(pickle.dumps(share(s, task, prepared, [False, True], None, 8)))
    assert shared.covers_tokens == 0 and shared.serves(s)  # no budget given: every example kept
    got, rows = shared.prepared()
    assert list(got.train.examples) == prepared.train.examples and len(got.train.examples) == audit["train_examples"]
    assert list(got.eval.examples) == prepared.eval.examples and got.split.eval == prepared.split.eval
    assert got.train.num_tokens == audit["train_tokens"] and got.eval.num_tokens == audit["eval_tokens"]
    assert got.train.skipped == prepared.train.skipped
    packed = task.train_examples(dataclasses.replace(s, packing=True), prepared)
    assert list(rows[True]) == packed and rows[False] is got.train.examples
    assert count_tokens(rows[True]) == sum(len(r["input_ids"]) for r in packed)
    assert got.train.examples[-1] == prepared.train.examples[-1] and got.train.examples[1:3] == prepared.train.examples[1:3]


def test_only_the_examples_the_budget_reaches_are_kept_and_other_settings_tokenise_their_own(audited):
    s, task, _, prepared = audited
    full = prepared.train.examples
    shared = share(s, task, prepared, [False], 3_000, 4)
    kept = list(shared.prepared()[0].train.examples)
    assert shared.covers_tokens == 3_000 and len(kept) < len(full) / 3
    assert count_tokens(kept) >= 3_000 * MARGIN
    as_counts = lambda examples: Counter(tuple(e["input_ids"]) for e in examples)  # noqa: E731
    assert not as_counts(kept) - as_counts(full) and kept != full[:len(kept)]  # a sample of the whole split
    assert share(s, task, prepared, [False], 3_000, 4).prepared()[0].train.examples[:] == kept  # the seed decides
    assert "the " in shared.line() and f"of {len(full):,} training examples a 3,000-token trial" in shared.line()
    # training knobs share it; a longer budget or a data setting does not
    assert shared.serves(dataclasses.replace(s, r=64, learning_rate=1e-3, packing=True, max_tokens=2_000))
    assert not shared.serves(dataclasses.replace(s, max_tokens=3_001))
    assert not shared.serves(dataclasses.replace(s, max_seq_length=128))
    assert not shared.serves(dataclasses.replace(s, train_on_eval=True))


def test_a_trial_process_takes_the_shared_data_when_it_serves(audited):
    from trainers import loop

    s, task, _, prepared = audited
    shared = share(s, task, prepared, [False, True], None, 8)
    loop._DATA.clear()
    _, data, rows, whence = loop.prepared_data(dataclasses.replace(s, packing=True), task, shared)
    assert whence.startswith("tokenised once on the driver for every trial: all ") and list(data.eval.examples) == prepared.eval.examples
    assert list(rows) == task.train_examples(dataclasses.replace(s, packing=True), prepared)
    _, own, _, whence = loop.prepared_data(dataclasses.replace(s, max_seq_length=96), task, shared)
    assert whence == "" and max(len(e["input_ids"]) for e in own.train.examples) <= 96  # its own tokenisation


def test_every_trial_of_the_sweep_read_the_drivers_data(shared_sweep):
    logs = sorted(shared_sweep["dir"].glob("trial_*/stdout"))
    assert logs
    for log in logs:
        # the first trial of a process maps the driver's data; the next ones in that process keep it
        assert "tokenised once on the driver for every trial:" in log.read_text(), log


def test_columns_keep_int_lists_and_scalars_and_refuse_what_they_cannot_hold():
    from trainers.shared_data import ArrayExamples, Columns

    examples = [{"input_ids": [5, 6, 7], "label": 1, "n_tokens": 3}, {"input_ids": [], "label": 0, "n_tokens": 1}]
    got = ArrayExamples(Columns(examples))
    assert list(got) == examples and got[-1] == examples[-1] and got.total_tokens() == 4
    with pytest.raises(IndexError):
        got[2]
    # nested lists are not a flat column: preflight.shared_data then leaves the data unshared
    with pytest.raises((TypeError, ValueError)):
        Columns([{"input_ids": [[1, 2], [3]]}])
