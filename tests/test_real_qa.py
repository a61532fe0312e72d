"""The real tier's extractive QA: ``sweeps/llama_squad.py --model`` on SmolLM2-135M-Instruct over
real movie-review sentences (tests/real_material.py). A file of its own so that the two pytest-xdist
workers can take the real tier's sweeps side by side (a file's tests stay on one worker)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.real_material import smollm2_dir, write_movie_qa_sample
from tests.test_real import _run_recipe

pytestmark = [pytest.mark.slow, pytest.mark.real]

# Extractive QA over real review sentences (``sweeps/llama_squad.py --model``): full precision (the
# 4-bit path on this model is the instruction recipe's), the recipe's known point (lr 2e-4), one trial.
QA_ROWS = 200  # smoke splits: 10% test (20 questions), 5% eval (10), 170 to train on (16k tokens: ~half seen)
QA_ARGS = [
    "--preset", "smoke", "--quantization", "none", "--num-samples", "1", "--scheduler", "none", "--shots", "0",
    "--space", "learning_rate=1e-4:1e-3", "--max-seq-length", "256", "--max-new-tokens", "48",
    "--max-tokens", "8000", "--eval-every", "25", "--per-device-batch-size", "4", "--gradient-accumulation-steps", "1",
    "--gen-eval-rows", "5", "--cpus-per-worker", "1", "--max-concurrent", "1", "--samples", "4", "--final-round", "0",
]


@pytest.fixture(scope="module")
def smollm2() -> Path:
    return smollm2_dir()


@pytest.fixture(scope="module")
def qa_sweep(tmp_path_factory, smollm2) -> dict:
    data = write_movie_qa_sample(tmp_path_factory.mktemp("data") / "movie_qa.jsonl", QA_ROWS, seed=0)
    return _run_recipe("llama_squad.py", QA_ARGS, smollm2, data, tmp_path_factory.mktemp("qa"), "smollm2-qa")


def test_qa_recipe_on_smollm2_beats_the_base_models_f1_on_held_out_questions(qa_sweep):
    """Real sentences, real model: the adapter learns to quote the asked critic's sentence, or to say
    "unanswerable", better than the instruct model does zero-shot (SQuAD v2 F1 on the test split)."""
    rows, meta = qa_sweep["rows"], qa_sweep["meta"]
    assert len(rows) == 1 and rows[0]["status"] == "completed", rows
    assert meta["settings"]["task"] == "extractive_qa" and meta["settings"]["family"] == "llama" and meta["objective"] == "f1"
    base, tuned = qa_sweep["baseline"]["base 0-shot"], qa_sweep["baseline"]["tuned"]
    assert base["n"] == tuned["n"] == 20
    for name in ("f1", "exact_match", "f1_has_answer", "f1_no_answer", "bleu", "rougeL", "meteor"):
        assert name in base and name in tuned, (name, base.get("unavailable"))
    print(f"\n[test_real] QA f1 base {base['f1']:.3f} -> tuned {tuned['f1']:.3f}; "
          f"EM {base['exact_match']:.3f} -> {tuned['exact_match']:.3f}")
    assert tuned["f1"] >= base["f1"] + 0.1, (base["f1"], tuned["f1"])
    assert len(base["per_example"]["f1"]) == len(tuned["per_example"]["f1"]) == 20
    samples = [json.loads(line) for line in (qa_sweep["dir"] / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 4 and all({"prompt", "reference", "base 0-shot", "tuned"} <= s.keys() for s in samples)
