"""The preference recipe on a real chat model and real text: SmolLM2-135M-Instruct (its real ChatML
template) and pairs built from real movie-review sentences (tests/real_material.write_preference_sample:
the user asks for a sentence of a positive or a negative review; the chosen reply is a real sentence
of that tone, the rejected one a real sentence of the other). One DPO trial through the recipe's
command line; on the held-out test pairs, the tuned adapter must prefer the chosen replies where the
base model cannot: its implicit reward (log pi/ref, the base as the reference) higher for the chosen
reply than the base's, which ties at 0.5, in an exact one-sided binomial test."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from tests.conftest import ROOT, sweep_env
from tests.real_material import smollm2_dir, write_preference_sample

pytestmark = [pytest.mark.slow, pytest.mark.real]

PAIRS = 400  # 20% test (80 pairs), 10% eval (40), 280 to train on
ARGS = [
    "--preset", "smoke", "--quantization", "none", "--num-samples", "1", "--no-known-points", "--scheduler", "none",
    "--searcher", "grid", "--space", "loss_type=sigmoid", "--space", "beta=0.1", "--space", "r=16",
    "--space", "lora_alpha=32", "--space", "learning_rate=0.0005", "--space", "warmup_ratio=0",
    # ~110 tokens a pair (2 x 28 prompt + 2 x ~26 reply), 4 pairs a step: 14k tokens = ~32 steps, ~130
    # pairs (half of that, 2 pairs a step, reached 0.575 only); one report, at the end
    "--max-seq-length", "96", "--per-device-batch-size", "4", "--max-tokens", "14000", "--eval-every", "100",
    "--test-fraction", "0.2", "--eval-fraction", "0.1", "--final-round", "0", "--max-concurrent", "1",
    "--cpus-per-worker", "1",
]


def _binomial_tail(k: int, n: int) -> float:
    """P(X >= k) for X ~ Binomial(n, 1/2)."""
    return sum(math.comb(n, i) for i in range(k, n + 1)) / 2 ** n


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("real_preference")
    data = write_preference_sample(tmp / "pairs.jsonl", PAIRS)
    cmd = [sys.executable, "sweeps/llama_ultrafeedback.py", *ARGS, "--model", str(smollm2_dir()),
           "--dataset", str(data), "--storage-path", str(tmp), "--name", "pref"]
    r = subprocess.run(cmd, cwd=ROOT, env=sweep_env(), capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, (r.stdout[-4000:], r.stderr[-4000:])
    baseline = json.loads((tmp / "pref" / "baseline.json").read_text())
    print("\n[real preference] " + json.dumps({k: {m: round(v, 4) for m, v in run.items() if isinstance(v, float)}
                                              for k, run in baseline.items()}))
    return {"dir": tmp / "pref", "baseline": baseline, "stdout": r.stdout}


def test_the_tuned_adapter_prefers_the_chosen_replies_where_the_base_model_does_not(sweep):
    base, tuned = sweep["baseline"]["base 0-shot"], sweep["baseline"]["tuned"]
    n = tuned["n"]
    assert n == base["n"] >= 70
    # the implicit reward: ties at 0.5 for the base by definition; the tuned adapter's is one-sided tested
    wins = sum(1 for v in tuned["per_example"]["reward_accuracy"] if v == 1.0)
    assert wins / n >= 0.65 and _binomial_tail(wins, n) < 0.01, (wins, n)
    assert tuned["reward_margin"] > 0
    # the model's own per-token likelihood preference is scored for every pair, base and tuned; a
    # 3-nat reward margin over ~26 reply tokens moves it little at this budget (0.575 -> 0.5875 in
    # the run this test was sized on), so it is reported, not asserted
    assert len(base["per_example"]["preference_accuracy"]) == len(tuned["per_example"]["preference_accuracy"]) == n


def test_the_real_chat_template_prompt_and_replies_are_what_the_pairs_say():
    """SmolLM2's ChatML: the prompt ends with the assistant header, each completion is the reply and
    ``<|im_end|>``, nothing of the next turn's separator."""
    import tempfile

    from transformers import AutoTokenizer

    from trainers.preference import pair_messages, tokenize_pair

    tok = AutoTokenizer.from_pretrained(smollm2_dir())
    with tempfile.TemporaryDirectory() as tmp:
        row = json.loads((write_preference_sample(f"{tmp}/p.jsonl", 4)).read_text().splitlines()[0])
    pair = tokenize_pair(tok, *pair_messages(row), 256)
    assert tok.decode(pair["prompt_ids"]).endswith("<|im_start|>assistant\n")
    assert tok.decode(pair["chosen_ids"]) == row["chosen"][-1]["content"] + "<|im_end|>"
    assert tok.decode(pair["rejected_ids"]) == row["rejected"][-1]["content"] + "<|im_end|>"
