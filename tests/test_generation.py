"""The generation tasks (extractive QA, summarisation, instruction tuning) as a trial and the
baseline run them, on tiny checkpoints of the recipes' real architectures (Llama, T5, Gemma).

What a trial does: a training step, an eval (greedy generation on the fixed eval subset, text
metrics), another step; every trainable parameter moves. What the baseline reads: every metric on
the test split, each example's values and the sample generations, lined up base against tuned.
"""

from __future__ import annotations

import math

import pytest
import torch

from common.errors import ConfigError
from stand_ins import dialogsum_rows, dialogue_texts, dolly_rows, dolly_texts, qa_texts, squad_v2_rows, write_jsonl
from trainers.config import TrainSettings
from trainers.families import get_family
from trainers.model import build_model
from trainers.tasks import get_task
from tests.test_families import _step, one_thread  # noqa: F401  (one torch thread: an autouse fixture)

QA_PROMPT = "Context: {context}\nQuestion: {question}"
RECIPES = {  # task -> (family, data, settings)
    "extractive_qa": ("llama", "squad", {"prompt": QA_PROMPT, "max_new_tokens": 8}),
    "summarization": ("t5", "dialogsum", {"prompt": "summarize: {dialogue}", "target_column": "summary",
                                          "max_new_tokens": 24}),
    "instruction_sft": ("gemma", "dolly", {"prompt": "{instruction}", "target_column": "response",
                                           "skip_rows_with": ("context",), "max_new_tokens": 16}),
}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from stand_ins.tiny import write_tiny_model

    root = tmp_path_factory.mktemp("generation")
    rows = {"squad": squad_v2_rows(60), "dialogsum": dialogsum_rows(60), "dolly": dolly_rows(90)}
    texts = qa_texts(rows["squad"]) + dialogue_texts(rows["dialogsum"]) + dolly_texts(rows["dolly"])
    data = {name: str(write_jsonl(r, root / f"{name}.jsonl")) for name, r in rows.items()}
    models = {f: str(write_tiny_model(root / f"tiny-{f}", get_family(f), texts, pretrain_steps=0))
              for f in ("llama", "t5", "gemma")}
    return {"data": data, "models": models, "rows": rows}


def _settings(assets, task: str, quantization: str = "none", **extra) -> TrainSettings:
    family, data, fields = RECIPES[task]
    return TrainSettings(model=assets["models"][family], dataset=assets["data"][data], task=task,
                         quantization=quantization, gradient_checkpointing=False, zero_stage=0, max_seq_length=160,
                         eval_fraction=0.2, test_fraction=0.2, gen_eval_rows=4, samples=3, precision="fp32",
                         r=8, lora_alpha=16, seed=0, **{**fields, **extra}).validate()


@pytest.mark.parametrize("quantization", ("4bit", "none"))
@pytest.mark.parametrize("task_name", list(RECIPES))
def test_train_eval_train_like_a_trial(assets, task_name, quantization):
    settings = _settings(assets, task_name, quantization)
    task, family = get_task(task_name), get_family(RECIPES[task_name][0])
    task.check(settings, family)
    tok = task.load_tokenizer(settings)
    prepared = task.prepare(settings, tok)
    model = build_model(settings, family, task, "fp32", torch.device("cpu"))
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.0)
    examples, collate = task.train_examples(settings, prepared), task.collator(settings, tok)

    model.train()
    first = _step(model, collate, examples[:4], opt)
    metrics = task.evaluate(model, tok, settings, prepared)
    model.train()
    second = _step(model, collate, examples[4:8], opt)

    assert math.isfinite(first) and math.isfinite(second)
    assert math.isfinite(metrics["eval_loss"]) and metrics["eval_loss"] > 0
    reported = set(task.metric_names(settings)) - set(task.test_metrics)
    if task_name == "extractive_qa":  # a 4-row subset may hold no unanswerable question: no f1_no_answer then
        reported -= {"f1_has_answer", "f1_no_answer"}
    assert reported <= metrics.keys(), reported - metrics.keys()
    for name in task.text_metrics:
        if name in metrics:
            assert 0.0 <= metrics[name] <= 1.0, (name, metrics[name])
    if task_name == "instruction_sft":
        assert metrics["perplexity"] == pytest.approx(math.exp(metrics["eval_loss"]))
    unchanged = [n for n, p in model.named_parameters() if n in trainable and torch.equal(p.detach(), trainable[n])]
    assert not unchanged, f"{len(unchanged)}/{len(trainable)} trainable parameters did not train, e.g. {unchanged[:3]}"


# ----------------------------------------------------------------------------- what a row means


def test_qa_trains_on_the_first_gold_or_the_no_answer_string_and_scores_by_squad_v2_rules(assets):
    settings = _settings(assets, "extractive_qa")
    task = get_task("extractive_qa")
    answerable = {"context": "Kalorven was founded in 1642.", "question": "When was Kalorven founded?",
                  "answers": {"text": ["1642", "in 1642"], "answer_start": [24, 21]}}
    unanswerable = {**answerable, "question": "Who is the mayor of Kalorven?", "answers": {"text": [], "answer_start": []}}
    assert task.target(answerable, settings) == "1642" and task.references(answerable, settings) == ["1642", "in 1642"]
    assert task.target(unanswerable, settings) == "unanswerable"
    # the model's "Unanswerable." is SQuAD's empty answer; only the first line of an answer counts
    assert task.prediction("Unanswerable.", settings) == "" and task.prediction("1642\nand more", settings) == "1642"
    scores = task._text_scores(settings, [answerable, unanswerable, unanswerable],
                               ["in 1642", "Unanswerable", "1642"], task.text_metrics)
    # EM: 1 (a gold matches), 1 (no answer said), 0 (an answer to an unanswerable question)
    assert scores.per_example["exact_match"] == [1.0, 1.0, 0.0]
    assert scores.corpus["exact_match"] == pytest.approx(2 / 3)
    assert scores.corpus["f1_has_answer"] == 1.0 and scores.corpus["f1_no_answer"] == 0.5


def test_a_decoder_is_trained_on_the_answer_and_its_end_of_turn_only(assets):
    settings = _settings(assets, "instruction_sft")
    task = get_task("instruction_sft")
    tok = task.load_tokenizer(settings)
    row = next(r for r in assets["rows"]["dolly"] if not r["context"])
    ex = task.tokenize(settings, tok, [row]).examples[0]
    trained = tok.decode([t for t in ex["labels"] if t != -100])
    assert trained == row["response"].strip() + "<end_of_turn>"  # Gemma's template: the reply, then its end
    from trainers.generation import end_of_turn_ids

    assert end_of_turn_ids(tok) == [tok.convert_tokens_to_ids("<end_of_turn>")]  # where generation stops


def test_rows_with_a_skipped_column_set_are_counted_not_trained(assets):
    settings = _settings(assets, "instruction_sft")
    task = get_task("instruction_sft")
    rows = assets["rows"]["dolly"]
    out = task.tokenize(settings, task.load_tokenizer(settings), rows)
    with_context = sum(1 for r in rows if r["context"])
    assert with_context and out.skipped["context set"] == with_context and len(out.examples) == len(rows) - with_context


def test_seq2seq_targets_end_in_eos_and_the_loss_is_token_weighted(assets):
    from trainers.generation import seq2seq_loss

    settings = _settings(assets, "summarization")
    task, family = get_task("summarization"), get_family("t5")
    tok = task.load_tokenizer(settings)
    prepared = task.prepare(settings, tok)
    ex = prepared.eval.examples
    assert all(e["input_ids"][-1] == tok.eos_token_id and e["labels"][-1] == tok.eos_token_id for e in ex)
    assert all(e["n_tokens"] == len(e["input_ids"]) + len(e["labels"]) for e in ex)
    model = build_model(settings, family, task, "fp32", torch.device("cpu"))
    loss, each = seq2seq_loss(model, ex, tok.pad_token_id, per_example=True)
    # the same as the model's own mean loss over one example at a time, weighted by target tokens
    collate = task.collator(settings, tok)
    sums, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for e in ex:
            batch = collate([e])
            batch.pop("num_tokens")
            sums += model(**batch).loss.item() * len(e["labels"])
            count += len(e["labels"])
    assert loss == pytest.approx(sums / count, rel=1e-5) and len(each) == len(ex)


def test_the_per_example_losses_average_to_the_eval_loss(assets):
    from trainers.evaluation import eval_batches, evaluate_loss

    settings = _settings(assets, "instruction_sft")
    task, family = get_task("instruction_sft"), get_family("gemma")
    tok = task.load_tokenizer(settings)
    prepared = task.prepare(settings, tok)
    model = build_model(settings, family, task, "fp32", torch.device("cpu"))
    batches = eval_batches(prepared.eval.examples, tok.pad_token_id)
    loss, each = evaluate_loss(model, batches, per_example=True)
    counts = [int((row[1:] != -100).sum()) for b in batches for row in b["labels"]]
    assert loss == pytest.approx(evaluate_loss(model, batches))
    assert sum(x * n for x, n in zip(each, counts)) / sum(counts) == pytest.approx(loss, rel=1e-6)


# ----------------------------------------------------------------------------- what the baseline keeps


@pytest.mark.parametrize("task_name", list(RECIPES))
def test_scoring_keeps_every_metric_each_examples_values_and_samples(assets, task_name):
    from lorasweep.baseline import samples_rows, table

    settings = _settings(assets, task_name, bertscore_model=assets["models"]["t5"] + "-missing")
    task, family = get_task(task_name), get_family(RECIPES[task_name][0])
    tok = task.load_tokenizer(settings)
    split, _ = task.read(settings)
    model = build_model(settings, family, task, "fp32", torch.device("cpu"))
    out = task.score(model, tok, settings, split.test, split.train, 1 if task.takes_shots else 0)
    assert out["n"] > 0 and len(out["samples"]) == min(settings.samples, out["n"])
    assert all({"prompt", "reference", "generation"} <= s.keys() for s in out["samples"])
    for name, values in out["per_example"].items():
        assert len(values) == out["n"] and all(math.isfinite(v) for v in values), name
    if task_name == "summarization":  # BERTScore's encoder cannot be loaded: said why, never a 0
        assert "bertscore_f1" not in out and "bertscore_f1" in out["unavailable"]
        assert "bertscore_f1" in table({"base 0": out}, task.metric_names(settings))
    if task_name == "instruction_sft":
        assert set(out["per_example"]) == {"eval_loss"} and out["perplexity"] == pytest.approx(math.exp(out["eval_loss"]))
    # samples.jsonl: the same prompts, side by side
    rows = samples_rows({"base 0": out, "tuned": out})
    assert len(rows) == len(out["samples"]) and rows[0]["base 0"] == rows[0]["tuned"] == out["samples"][0]["generation"]


# ----------------------------------------------------------------------------- checks before any work


@pytest.mark.parametrize("task_name,prompt,needle", [
    ("extractive_qa", "Context: {context}\nQuestion: {query}", "needs `query`"),
    ("summarization", "Summarize this.", "fills it from the row's columns"),
    ("instruction_sft", "{instruction", "`prompt` is '{instruction'"),
])
def test_a_prompt_that_does_not_fit_the_data_is_one_line(assets, task_name, prompt, needle):
    family = get_family(RECIPES[task_name][0])
    task = get_task(task_name)
    with pytest.raises(ConfigError) as e:
        settings = _settings(assets, task_name, prompt=prompt)
        task.check(settings, family)
        task.audit(settings)
    assert needle in str(e.value) and "\n" not in str(e.value), e.value


def test_instruct_classification_still_needs_its_text_placeholder():
    settings = TrainSettings(model="m", dataset="d.jsonl", task="instruct_classification", labels=("a", "b"),
                             prompt="Is it positive?").validate()
    with pytest.raises(ConfigError, match=r"must contain \{text\}"):
        get_task("instruct_classification").check(settings, get_family("llama"))
