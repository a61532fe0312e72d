"""What keeps a trial from wasting time around its training: where it runs, what it keeps from the
trial before it in the same process, and the searchers the benchmarks compare."""

from __future__ import annotations

import dataclasses

import pytest

from lorasweep.cluster import trains_in_trial_process
from lorasweep.resolve import resolve
from common.errors import ConfigError
from sweeps.llama_finetome import RECIPE
from trainers.config import Resources
from trainers.tasks import get_task


def _sweep(*flags: str):
    return resolve(RECIPE, ["--preset", "smoke", *flags])


def test_a_one_worker_trial_trains_in_its_own_process_unless_it_needs_ray_train():
    assert trains_in_trial_process(_sweep(), Resources(workers=1))
    assert not trains_in_trial_process(_sweep(), Resources(workers=2))  # DDP / ZeRO across workers
    assert not trains_in_trial_process(_sweep("--ray-train"), Resources(workers=1))
    # DeepSpeed for one worker: offload, or a full fine-tune in half precision (fp32 master weights)
    assert not trains_in_trial_process(_sweep("--zero-stage", "2", "--offload"), Resources(workers=1))
    full = _sweep("--zero-stage", "2", "--method", "full", "--quantization", "none")
    assert not trains_in_trial_process(full, Resources(workers=1, gpus=1))
    assert trains_in_trial_process(full, Resources(workers=1, gpus=0))  # fp32 on CPUs: plain Trainer


def test_trials_in_one_process_tokenise_once_per_data_settings(tiny_assets):
    from trainers.loop import prepared_data

    s = _sweep().settings
    task = get_task(s.task)
    tok, data, rows, cached = prepared_data(dataclasses.replace(s, packing=False, r=8, learning_rate=1e-3), task)
    assert not cached or data.train.examples  # an earlier test in this process may have filled it
    tok2, data2, rows2, cached2 = prepared_data(dataclasses.replace(s, packing=False, r=64, learning_rate=3e-4,
                                                                    lora_alpha=128, warmup_ratio=0.1), task)
    assert cached2 and data2 is data and tok2 is tok and rows2 is rows  # training knobs only: the same data
    _, data3, packed, cached3 = prepared_data(dataclasses.replace(s, packing=True), task)
    assert cached3 and data3 is data and len(packed) < len(rows)  # packed once from the same tokenisation
    _, data4, _, cached4 = prepared_data(dataclasses.replace(s, max_seq_length=128), task)
    assert not cached4 and data4 is not data  # a data setting: tokenised again
    assert max(len(e["input_ids"]) for e in data4.train.examples) <= 128


def test_searchers_and_the_grids_one_line_error():
    assert _sweep("--searcher", "random").options.searcher == "random"
    with pytest.raises(ConfigError, match=r"`--searcher` is 'bayes'; choose tpe, random, grid"):
        _sweep("--searcher", "bayes")
    with pytest.raises(ConfigError) as e:
        _sweep("--searcher", "grid", "--space", "r=8,16")
    assert "warmup_ratio, learning_rate are a range" in str(e.value) and "--space warmup_ratio=a,b,c" in str(e.value)
    grid = _sweep("--searcher", "grid", "--space", "warmup_ratio=0,0.1", "--space", "learning_rate=1e-4,1e-3")
    from lorasweep.tuner import sampler

    sampler = sampler("grid", grid.space, 0)
    assert len(sampler._all_grids) == 4 * 4 * 2 * 2 * 2 * 2


RELEASE = r"""
import gc, json, sys
import psutil, torch
sys.path.insert(0, sys.argv[1])
from trainers.devices import release_host_memory
rss = lambda: psutil.Process().memory_info().rss / 2**20
start = rss()
# a trial's kind of heap: many mid-sized tensors (activations, optimizer state) and a few large ones
held = [torch.ones(16_000) for _ in range(10_000)] + [torch.ones(4_000_000) for _ in range(20)]
del held
gc.collect()
freed = rss()
release_host_memory()
print(json.dumps({"start": start, "freed": freed, "released": rss()}))
"""


def test_a_reused_trial_process_hands_the_freed_heap_back():
    """train_in_trial_process calls release_host_memory after each trial: glibc keeps the freed heap
    of a trial for the process (a 4-bit SmolLM2 trial: ~4 GB after gc.collect) unless it is trimmed."""
    import ctypes
    import json
    import subprocess
    import sys
    from pathlib import Path

    if not hasattr(ctypes.CDLL(None), "malloc_trim"):
        pytest.skip("no malloc_trim in this C library: nothing is kept to hand back")
    root = str(Path(__file__).resolve().parents[1])
    out = subprocess.run([sys.executable, "-c", RELEASE, root], capture_output=True, text=True, timeout=120, check=True)
    mb = json.loads(out.stdout.strip().splitlines()[-1])
    assert mb["freed"] - mb["start"] > 300, mb  # glibc kept it: the case the release is for
    assert mb["released"] - mb["start"] < 0.25 * (mb["freed"] - mb["start"]), mb
