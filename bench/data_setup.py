"""Data set-up per trial process: the sweep's data tokenised once on the driver and shared through
Ray's object store (trainers/shared_data.py), against every trial tokenising the whole dataset.

The data: 100,000 generated conversations in FineTome-100k's schema (``stand_ins.finetome_rows``
with the assistant's answers lengthened to a long-tailed length, lognormal with a median of 150
words, as chat SFT data is), written to a .jsonl; the flagship recipe (``sweeps/llama_finetome.py``)
with its smoke preset's offline tokenizer, ``max_seq_length`` 2048 and its real 2M-token budget.

  before  what every trial process did: ``loop.prepared_data`` without shared data (read the file,
          split, render the chat template and tokenise every row, pack)
  after   the driver audits and shares once (timed apart: once per sweep, not per trial); the
          trial process ``ray.get``s the reference and runs ``loop.prepared_data`` with it
Each side runs in a fresh Ray worker process (a task with max_calls=1), as a trial does.

Per trial process: wall seconds of the data set-up (packed and unpacked rows both built) and the
growth of its peak RSS over the process after its imports (on the after side, after reading every
training row once as well, which is timed apart). Goal (issue 24): under 2 s and 300 MB.
The figure is the after side's seconds; the detail gives both sides and the RSS.

    python bench/run.py --only data_setup        # ~10 min on 2 cores (ESTIMATE)
    python bench/run.py --only data_setup --quick
"""

from __future__ import annotations

import json
import math
import random
import resource
import tempfile
import time
from pathlib import Path

from bench.figure import Figure

TITLE = "data set-up per trial"
HOW = "seconds and peak RSS growth of a trial process's data set-up, shared once vs tokenised per trial"
TARGET = ("<=", 2.0)
RSS_GOAL_MB = 300

def conversations(n: int, seed: int = 0) -> list[dict]:
    from stand_ins import finetome_rows
    from stand_ins._words import _WORDS

    rng = random.Random(seed)
    rows = finetome_rows(n, seed=seed)
    for row in rows:
        answer = row["conversations"][-1]
        words = min(1500, max(8, int(math.exp(rng.gauss(math.log(150), 0.8)))))
        answer["value"] += " " + " ".join(rng.choices(_WORDS, k=words))
    return rows


def _in_trial_process(data: str):
    """One side's measurement, to run in a fresh Ray worker process (as a trial is): with
    ``[ref]`` to the shared data (after), or None (before: the process tokenises for itself)."""
    import dataclasses

    import psutil

    from lorasweep.resolve import resolve
    from sweeps.llama_finetome import RECIPE
    from trainers import loop
    from trainers.tasks import get_task

    def measure(ref_list):
        import ray

        s = resolve(RECIPE, ["--preset", "smoke", "--dataset", data, "--max-seq-length", "2048",
                             "--max-tokens", "2000000"]).settings
        task = get_task(s.task)
        loop._DATA.clear()
        rss0 = psutil.Process().memory_info().rss
        peak0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        t0 = time.time()
        shared = ray.get(ref_list[0]) if ref_list else None
        _, prepared, rows, whence = loop.prepared_data(s, task, shared)
        _, _, packed, _ = loop.prepared_data(dataclasses.replace(s, packing=True), task, shared)
        took = time.time() - t0
        t1 = time.time()  # not set-up: what reading every training row once (as an epoch does) costs
        touched = sum(len(r["input_ids"]) for r in rows) + sum(len(r["input_ids"]) for r in packed)
        read_all = time.time() - t1
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        # the peak since the process began counts only if the set-up raised it; else the RSS now
        top = max(peak if peak > peak0 else 0, psutil.Process().memory_info().rss)
        return {"setup_s": took, "rss_growth_mb": (top - rss0) / 2**20, "rows": len(rows), "packed_rows": len(packed),
                "train_examples": len(prepared.train.examples), "whence": whence, "read_all_rows_s": read_all,
                "tokens_read": touched}

    return measure


def run(device: str, quick: bool) -> Figure:
    import ray

    from lorasweep.preflight import shared_data
    from lorasweep.resolve import resolve
    from sweeps.llama_finetome import RECIPE
    from trainers.tasks import get_task

    n = 5_000 if quick else 100_000
    raw: dict = {"conversations": n}
    with tempfile.TemporaryDirectory() as tmp:
        data = str(Path(tmp) / "finetome_shaped.jsonl")
        with open(data, "w", encoding="utf-8") as f:
            for row in conversations(n):
                f.write(json.dumps(row) + "\n")
        raw["file_mb"] = round(Path(data).stat().st_size / 2**20, 1)
        # after: the driver's audit + share, once; then a fresh worker process reads it
        sweep = resolve(RECIPE, ["--preset", "smoke", "--dataset", data, "--max-seq-length", "2048",
                                 "--max-tokens", "2000000", "--space", "packing=true,false"])
        task = get_task(sweep.settings.task)
        t0 = time.time()
        audit, prepared = task.audit_prepared(sweep.settings)
        raw["driver_audit_s"] = round(time.time() - t0, 1)
        t0 = time.time()
        shared = shared_data(sweep, task, prepared)
        raw["driver_share_s"] = round(time.time() - t0, 2)
        raw["shared_mb"] = round((shared.train.nbytes + shared.eval.nbytes
                                  + sum(c.nbytes for c in shared.packed.values() if c is not None)) / 2**20, 1)
        raw["audit_train_examples"], raw["audit_train_tokens"] = audit["train_examples"], audit["train_tokens"]
        del prepared
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
        try:
            remote = ray.remote(num_cpus=1, max_calls=1)(_in_trial_process(data))  # a fresh process per call
            raw["before"] = ray.get(remote.remote(None))
            raw["after"] = ray.get(remote.remote([ray.put(shared)]))
        finally:
            ray.shutdown()
    before, after = raw["before"], raw["after"]
    detail = (f"after {after['setup_s']:.2f} s, +{after['rss_growth_mb']:.0f} MB RSS per trial process "
              f"(goals < 2 s, < {RSS_GOAL_MB} MB) vs before {before['setup_s']:.0f} s, +{before['rss_growth_mb']:.0f} MB "
              f"({before['setup_s'] / max(after['setup_s'], 1e-9):.0f}x faster); {n:,} conversations, "
              f"{after['train_examples']:,} of {raw['audit_train_examples']:,} examples kept for a 2M-token trial; "
              f"driver once: audit {raw['driver_audit_s']} s + share {raw['driver_share_s']} s, {raw['shared_mb']} MB")
    raw["rss_goal_met"] = after["rss_growth_mb"] < RSS_GOAL_MB
    return Figure(ratio=round(after["setup_s"], 3), target=TARGET, raw=raw, detail=detail)
