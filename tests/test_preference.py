"""Preference tuning (task `preference`, sweeps/llama_ultrafeedback.py) on its smoke preset's tiny
Llama and generated UltraFeedback-schema pairs: TRL's row formats read alike, every loss starts at
its neutral value with the adapter as the reference, the reference is the base model itself, every
loss type moves the adapter towards the chosen replies, one-line refusals, and a sweep that
searches loss_type and beta end to end, its exported adapter scoring what its trial reported."""

from __future__ import annotations

import csv
import dataclasses
import json
import math

import pytest
import torch

from common.errors import ConfigError
from lorasweep.resolve import resolve
from sweeps.llama_ultrafeedback import RECIPE
from trainers.config import TrialConfig

KNOBS = {"r": 16, "lora_alpha": 32, "warmup_ratio": 0.0, "learning_rate": 3e-3, "beta": 0.2, "loss_type": "sigmoid"}


def _settings(*args):
    return resolve(RECIPE, ["--preset", "smoke", *args]).settings


@pytest.fixture(scope="module")
def settings():
    return _settings()


@pytest.fixture(scope="module")
def tokenizer(settings):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(settings.model)


def test_trls_preference_formats_give_the_same_pair_and_unusable_rows_are_counted(tokenizer):
    from trainers.preference import pair_messages, tokenize_pair, tokenize_pairs

    user, good, bad = "What is 12 plus 30?", "12 plus 30 is 42.", "12 plus 30 is 41."
    u = {"role": "user", "content": user}
    implicit = {"chosen": [u, {"role": "assistant", "content": good}], "rejected": [u, {"role": "assistant", "content": bad}]}
    explicit = {"prompt": [u], "chosen": [{"role": "assistant", "content": good}],
                "rejected": [{"role": "assistant", "content": bad}]}
    standard = {"prompt": user, "chosen": good, "rejected": bad}
    ultrafeedback = {**implicit, "prompt": user, "messages": implicit["chosen"], "score_chosen": 9.0}
    pairs = [tokenize_pair(tokenizer, *pair_messages(r), 256) for r in (implicit, explicit, standard, ultrafeedback)]
    assert all(p == pairs[0] for p in pairs), pairs
    p = pairs[0]
    # the prompt is the template up to the assistant header; a completion is the reply and its end of turn
    head = tokenizer.apply_chat_template([u], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template([u, {"role": "assistant", "content": good}], tokenize=False).rstrip()
    assert tokenizer.decode(p["prompt_ids"]) == head
    assert tokenizer.decode(p["prompt_ids"] + p["chosen_ids"]) == full
    assert p["n_tokens"] == 2 * len(p["prompt_ids"]) + len(p["chosen_ids"]) + len(p["rejected_ids"])
    other = {"role": "user", "content": "Something else?"}
    bad_rows = [
        {**standard, "rejected": good},  # identical replies
        {"chosen": implicit["chosen"], "rejected": [other, {"role": "assistant", "content": bad}]},
        {"chosen": [u], "rejected": [u]},
        {"prompt": user, "chosen": "", "rejected": bad},
    ]
    out = tokenize_pairs(tokenizer, [*bad_rows, standard], 256)
    assert len(out.examples) == 1
    assert dict(out.skipped) == {"identical replies": 1, "chosen and rejected do not share a prompt": 1,
                                 "no assistant reply": 1, "empty chosen": 1}, out.skipped
    # a long prompt keeps its last half of max_seq_length; the replies are cut to what fits
    long = tokenize_pair(tokenizer, [{"role": "user", "content": " ".join(["river stone"] * 200)}], good, bad, 64)
    assert len(long["prompt_ids"]) == 32 and max(len(long["chosen_ids"]), len(long["rejected_ids"])) <= 32


@pytest.mark.parametrize("loss_type, neutral", [("sigmoid", math.log(2)), ("hinge", 1.0), ("ipo", (1 / (2 * 0.2)) ** 2),
                                                ("kto", 0.5), ("orpo", None)])
def test_at_init_the_adapter_is_its_own_reference_and_each_loss_sits_at_its_neutral_value(
        settings, tmp_path, loss_type, neutral):
    """LoRA's B starts at zero, so policy and reference agree: margin 0, reward accuracy 0.5 (ties
    count half), and the loss at the value TRL's formula gives for a zero margin."""
    from trainers.loop import setup

    st = setup(TrialConfig(settings, knobs={**KNOBS, "loss_type": loss_type}), torch.device("cpu"), str(tmp_path))
    m = st.task.evaluate(st.model, st.tokenizer, st.settings, st.data)
    assert m["reward_margin"] == 0.0 and m["reward_accuracy"] == 0.5, m
    assert 0.0 < m["preference_accuracy"] < 1.0
    if neutral is None:  # ORPO: the chosen replies' NLL plus beta x softplus(-log odds), no reference
        assert math.isfinite(m["eval_loss"]) and m["eval_loss"] > 0
    else:
        assert m["eval_loss"] == pytest.approx(neutral, rel=1e-5), m


def test_the_reference_is_the_base_model_and_the_adapter_moves_the_policy_away_from_it(settings, tmp_path):
    from trainers.loop import load_trained, setup
    from trainers.preference import PairCollator, completion_logps, reference_logps

    st = setup(TrialConfig(settings, knobs=KNOBS), torch.device("cpu"), str(tmp_path))
    with torch.no_grad():
        for name, p in st.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    batch = PairCollator(st.tokenizer.pad_token_id)(st.data.eval.examples[:6])
    st.model.eval()
    ref, _ = reference_logps(st.model, batch, "sigmoid")
    with torch.no_grad():
        policy, counts = completion_logps(st.model, batch)
    _, _, base = load_trained(st.settings)
    with torch.no_grad():
        fresh, _ = completion_logps(base, batch)
    assert torch.allclose(ref, fresh, atol=1e-4), (ref, fresh)
    assert (policy - ref).abs().max() > 1e-2
    assert counts.tolist() == [len(e["chosen_ids"]) for e in st.data.eval.examples[:6]] + \
        [len(e["rejected_ids"]) for e in st.data.eval.examples[:6]]
    assert reference_logps(st.model, batch, "orpo") is None  # reference-free


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge", "orpo", "kto"])
def test_every_loss_type_trains_the_adapter_towards_the_chosen_replies(settings, loss_type):
    """One trial of each loss (train_func outside Ray): the LoRA weights change, the implicit
    reward of the chosen replies rises above the rejected ones' on the eval pairs, and the token
    budget counts both sequences of every pair."""
    from trainers.loop import train_func

    s = dataclasses.replace(settings, max_tokens=12_000, eval_every=8)
    history = train_func(TrialConfig(s).to_tune({**KNOBS, "loss_type": loss_type}))
    last = history[-1]
    assert last["finished"] and last["tokens_seen"] >= 12_000
    assert last["reward_margin"] > 0 and last["reward_accuracy"] > 0.55, [
        (h["tokens_seen"], round(h["reward_accuracy"], 3), round(h["reward_margin"], 3)) for h in history]
    assert all(math.isfinite(h["eval_loss"]) for h in history)


def test_bad_preference_settings_and_searched_values_are_refused_in_one_line_before_ray():
    for args, field in ((["--loss-type", "dpo"], "`loss_type`"), (["--beta", "0"], "`beta`"),
                        (["--method", "full", "--quantization", "none"], "`method`"),
                        (["--per-device-batch-size", "1", "--space", "loss_type=sigmoid,kto"], "`loss_type` kto"),
                        (["--space", "packing=true,false"], "`packing`"),
                        (["--space", "beta=0:0.5"], "`beta`")):
        with pytest.raises(ConfigError) as e:
            _settings(*args)
        assert field in str(e.value) and "\n" not in str(e.value), (args, str(e.value))


@pytest.mark.slow
def test_a_sweep_searches_loss_type_and_beta_and_its_best_adapter_scores_what_its_trial_reported(tmp_path):
    from tests.test_knobs import _run
    from trainers.loop import evaluate_folder

    # every loss type trains in test_every_loss_type_trains_...; here two of them (one with a
    # reference, KTO with its KL pass) x two betas go through the whole sweep
    args = ["--max-tokens", "6000", "--eval-every", "5", "--scheduler", "none"]
    r = _run("llama_ultrafeedback.py", tmp_path, "pref", *args, "--num-samples", "4", "--no-known-points",
             "--top-k", "2", "--searcher", "grid", "--space", "loss_type=sigmoid,kto",
             "--space", "beta=0.05,0.3", "--space", "r=16", "--space", "lora_alpha=32",
             "--space", "learning_rate=0.003", "--space", "warmup_ratio=0")
    sweep = tmp_path / "pref"
    with open(sweep / "leaderboard.csv", newline="") as f:
        rows = {row["trial_id"]: row for row in csv.DictReader(f)}
    assert {(row["loss_type"], float(row["beta"])) for row in rows.values()} == \
        {(t, b) for t in ("sigmoid", "kto") for b in (0.05, 0.3)}, rows
    assert all(row["status"] == "completed" for row in rows.values()), rows
    values = [float(row["best_reward_accuracy"]) for row in rows.values()]
    assert max(values) > 0.6, values
    # the baseline: the base model's own preference and the tuned adapter on the same test pairs
    baseline = json.loads((sweep / "baseline.json").read_text())
    base, tuned = baseline["base 0-shot"], baseline["tuned"]
    assert base["n"] == tuned["n"] > 50 and base["reward_accuracy"] == 0.5 and base["reward_margin"] == 0.0
    assert tuned["reward_accuracy"] > 0.5 and len(tuned["per_example"]["preference_accuracy"]) == tuned["n"]
    assert "preference_accuracy" in r.stdout and "baseline vs tuned" in r.stdout
    settings = _settings(*args)
    for d in sorted(p for p in (sweep / "best_adapters").iterdir() if p.is_dir()):
        meta = json.loads((d / "lorasweep.json").read_text())
        row = rows[meta["trial_id"]]
        got = evaluate_folder(dataclasses.replace(settings, loss_type=row["loss_type"], beta=float(row["beta"])), str(d))
        assert got["reward_accuracy"] == pytest.approx(float(row["best_reward_accuracy"]), abs=1e-9), (row, got)
