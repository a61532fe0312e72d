import pytest
import torch

from trainers.chat import (IGNORE_INDEX, Collator, SkipRow, pack_examples, to_messages,
                           tokenize_chat, tokenize_rows)


def _labelled(tok, ex):
    return tok.decode([t for t in ex["labels"] if t != IGNORE_INDEX])


def test_sharegpt_and_messages_rows_normalise_alike():
    a = to_messages({"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "Q"},
                                       {"from": "gpt", "value": "A"}]})
    b = to_messages({"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"},
                                  {"role": "assistant", "content": "A"}]})
    assert a == b == [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"},
                      {"role": "assistant", "content": "A"}]


@pytest.mark.parametrize("row,reason", [
    ({"text": "x"}, "no conversations"),
    ({"conversations": []}, "empty conversation"),
    ({"conversations": [{"from": "human", "value": "hi"}]}, "no assistant turn"),
    ({"conversations": [{"from": "robot", "value": "hi"}, {"from": "gpt", "value": "yo"}]}, "unknown role"),
    ({"conversations": [{"from": "human", "value": "  "}, {"from": "gpt", "value": "yo"}]}, "empty text"),
    ({"instruction": "Say hi.", "input": "", "output": " "}, "empty text"),  # Alpaca
    ({"instruction": "", "input": "x", "output": "hi"}, "empty text"),
    ({"instruction": "Say hi.", "input": ["x"], "output": "hi"}, "malformed turn"),
])
def test_unusable_rows_are_skipped_with_a_reason(row, reason):
    with pytest.raises(SkipRow) as e:
        to_messages(row)
    assert e.value.reason == reason


def test_only_assistant_turns_are_labelled(tiny_tokenizer):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 plus 3?"},
            {"role": "assistant", "content": "2 plus 3 is 5."}, {"role": "user", "content": "Reverse: a b"},
            {"role": "assistant", "content": "b a"}]
    ex = tokenize_chat(tiny_tokenizer, msgs, 512)
    assert _labelled(tiny_tokenizer, ex) == "2 plus 3 is 5.<|eot_id|>b a<|eot_id|>"
    # everything labelled is also in the input at the same place (labels are not shifted here)
    assert all(lab in (IGNORE_INDEX, tok) for tok, lab in zip(ex["input_ids"], ex["labels"]))
    full = tiny_tokenizer.decode(ex["input_ids"])
    assert full.startswith("<|begin_of_text|><|start_header_id|>system") and "Be brief." in full


def test_truncation_keeps_the_prefix_and_skips_rows_left_without_answer(tiny_tokenizer):
    msgs = [{"role": "user", "content": "What is the capital of Kalorven? " * 5}, {"role": "assistant", "content": "Dorel."}]
    full = tokenize_chat(tiny_tokenizer, msgs, 4096)
    cut = tokenize_chat(tiny_tokenizer, msgs, len(full["input_ids"]) - 1)
    assert cut["truncated"] and cut["input_ids"] == full["input_ids"][:-1]
    with pytest.raises(SkipRow, match="within max_seq_length"):
        tokenize_chat(tiny_tokenizer, msgs, 10)


def test_unicode_survives_formatting_and_tokenisation(tiny_tokenizer):
    text = "Ünïcödé ✓ — 漢字, emoji 🦙🔥 and a ZWJ family 👨‍👩‍👧"
    ex = tokenize_chat(tiny_tokenizer, [{"role": "user", "content": "echo"}, {"role": "assistant", "content": text}], 512)
    assert _labelled(tiny_tokenizer, ex) == text + "<|eot_id|>"


def _examples(tok, rows):
    return tokenize_rows(tok, rows, 256).examples


def test_packing_restarts_positions_and_never_trains_across_documents(tiny_assets, tiny_tokenizer):
    from stand_ins import finetome_rows

    ex = _examples(tiny_tokenizer, finetome_rows(60, seed=3))
    packed = pack_examples(ex, 128)
    assert sum(len(r["input_ids"]) for r in packed) == sum(len(e["input_ids"]) for e in ex)  # nothing lost
    assert len(packed) < len(ex) / 2 and all(len(r["input_ids"]) <= 128 for r in packed)
    for row in packed:
        starts = [i for i, p in enumerate(row["position_ids"]) if p == 0]
        assert starts[0] == 0
        assert all(row["labels"][s] == IGNORE_INDEX for s in starts)  # no label predicted from the previous doc


def test_packed_documents_do_not_see_each_other(tiny_assets, tiny_tokenizer):
    """Through the model exactly as a trial builds it (PEFT-wrapped, train mode): a token's logits
    do not change when its neighbour in the packed row changes, and equal the logits of the
    document run alone."""
    from trainers.config import TrainSettings
    from trainers.families import get_family
    from trainers.model import build_model
    from trainers.tasks import get_task

    settings = TrainSettings(model=str(tiny_assets["model"]), dataset="unused", quantization="none", r=8, lora_alpha=16)
    model = build_model(settings, get_family("llama"), get_task("chat_sft"), "fp32")
    model.train()  # train mode is where a KV cache used to slip in and merge packed documents
    convs = lambda q: [{"role": "user", "content": q}, {"role": "assistant", "content": "ok"}]  # noqa: E731
    a = tokenize_chat(tiny_tokenizer, convs("What is 12 plus 30?"), 256)
    b1 = tokenize_chat(tiny_tokenizer, convs("Reverse the order of these words: apple river"), 256)
    b2 = tokenize_chat(tiny_tokenizer, convs("Spell out the digits 9081."), 256)
    collate = Collator(tiny_tokenizer.pad_token_id, packed=True, pad_to=96)

    def logits_of_a(neighbour):
        rows = pack_examples([neighbour, a], 96)  # neighbour first: `a` could attend to it
        assert len(rows) == 1
        batch = collate(rows)
        with torch.no_grad():
            out = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
        start = len(neighbour["input_ids"])
        assert rows[0]["input_ids"][start:start + len(a["input_ids"])] == a["input_ids"]
        return out[start : start + len(a["input_ids"])]

    with torch.no_grad():
        alone = model(input_ids=torch.tensor([a["input_ids"]])).logits[0]
    with_b1, with_b2 = logits_of_a(b1), logits_of_a(b2)
    assert torch.allclose(with_b1, with_b2, atol=1e-5)
    assert torch.allclose(with_b1, alone, atol=1e-4)


def test_packed_rows_under_flash_attention_are_laid_flat_as_one_row(tiny_assets, tiny_tokenizer):
    """FlashAttention-2 keeps packed documents apart (its variable-length path) only for a batch of
    ONE row whose position_ids restart; with several rows Transformers runs plain causal attention
    across each row's documents. So under flash_attention_2 the trial's collator lays the packed rows
    end to end, and that flat row computes what the padded batch computes (checked here with SDPA,
    which reads the restarts of either layout)."""
    from stand_ins import finetome_rows
    from transformers.modeling_flash_attention_utils import _is_packed_sequence

    from trainers.config import TrainSettings
    from trainers.families import get_family
    from trainers.model import build_model
    from trainers.tasks import get_task

    settings = TrainSettings(model=str(tiny_assets["model"]), dataset="unused", quantization="none", r=8, lora_alpha=16,
                             packing=True)
    rows = pack_examples(_examples(tiny_tokenizer, finetome_rows(12, seed=5)), 128)[:3]
    assert len(rows) == 3 and all(r["position_ids"].count(0) >= 2 for r in rows)  # documents share rows
    padded = get_task("chat_sft").collator(settings, tiny_tokenizer)(rows)
    flash = TrainSettings.from_dict({**settings.to_dict(), "attn_implementation": "flash_attention_2", "precision": "bf16"})
    flat = get_task("chat_sft").collator(flash, tiny_tokenizer)(rows)
    n = sum(len(r["input_ids"]) for r in rows)
    assert padded["input_ids"].shape[0] == 3 and flat["input_ids"].shape == (1, n)
    assert int(flat["num_tokens"]) == int(padded["num_tokens"]) == n
    assert not _is_packed_sequence(padded["position_ids"], 3)  # what FlashAttention-2 would have missed
    assert _is_packed_sequence(flat["position_ids"], 1)

    model = build_model(settings, get_family("llama"), get_task("chat_sft"), "fp32")
    model.train()
    with torch.no_grad():
        out_padded = model(**{k: v for k, v in padded.items() if k != "num_tokens"})
        out_flat = model(**{k: v for k, v in flat.items() if k != "num_tokens"})
    real = torch.cat([out_padded.logits[i, : len(r["input_ids"])] for i, r in enumerate(rows)])
    assert torch.allclose(out_flat.logits[0], real, atol=1e-4)
    assert abs(out_flat.loss.item() - out_padded.loss.item()) < 1e-4


def test_collator_counts_only_real_tokens(tiny_tokenizer):
    ex = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}]
    b = Collator(tiny_tokenizer.pad_token_id, packed=False)(ex)
    assert b["input_ids"].shape == (2, 3) and int(b["num_tokens"]) == 4
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert b["labels"][1].tolist() == [8, -100, -100]


def test_split_is_deterministic_and_disjoint():
    from trainers.config import TrainSettings
    from trainers.data import split_rows

    rows = list(range(1000))
    s = TrainSettings(eval_fraction=0.1, eval_rows=50, seed=7)
    a, b = split_rows(rows, s), split_rows(rows, s)
    assert a == b and len(a.eval) == 50 and not set(a.eval) & set(a.train) and len(a.train) + len(a.eval) == 1000
    assert split_rows(rows, TrainSettings(eval_fraction=0.1, eval_rows=50, seed=8)).eval != a.eval
    # a test split comes first and stays apart from both; max_train_rows caps what is left to train on
    t = split_rows(rows, TrainSettings(eval_fraction=0.1, eval_rows=50, test_fraction=0.2, test_rows=150,
                                       max_train_rows=300, seed=7))
    assert (len(t.test), len(t.eval), len(t.train)) == (150, 50, 300)
    assert not (set(t.test) & set(t.eval)) and not (set(t.test) | set(t.eval)) & set(t.train)


def test_balance_takes_as_many_rows_of_every_class():
    from trainers.config import TrainSettings
    from trainers.data import split_rows

    rows = [{"label": int(i % 4 == 0)} for i in range(400)]  # 100 positive, 300 negative
    t = split_rows(rows, TrainSettings(eval_fraction=0.1, balance=True), stratify=lambda r: r["label"])
    kept = t.train + t.eval
    assert len(kept) == 200 and sum(r["label"] for r in kept) == 100


def test_a_row_the_chat_template_refuses_is_skipped_and_counted(tiny_tokenizer):
    """Real templates raise on some conversations (Gemma's on a system turn); that row is skipped."""
    import copy

    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = ("{% for m in messages %}{% if m['role'] == 'system' %}"
                         "{{ raise_exception('System role not supported') }}{% endif %}"
                         "{{ m['role'] + ': ' + m['content'] + eos_token }}{% endfor %}")
    rows = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                          {"role": "assistant", "content": "Hello."}]},
            {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}]
    split = tokenize_rows(tok, rows, 64)
    assert len(split.examples) == 1 and dict(split.skipped) == {"refused by the chat template": 1}


def test_chatml_labels_end_at_im_end_not_the_newline_after_it():
    """ChatML (Qwen2, SmolLM2) and Gemma put a newline after the end-of-turn token: the model never
    generates it, so it is not a target. Fast twin of the real-template test in test_real.py."""
    from stand_ins.tiny import train_tokenizer
    from trainers.families.gemma import GEMMA_CHAT
    from trainers.families.qwen2 import CHATML

    texts = ["What is the capital of Kalorven?", "The capital is Mita.", "Are you sure?", "Yes."] * 20
    msgs = [{"role": "user", "content": "What is the capital of Kalorven?"},
            {"role": "assistant", "content": "The capital is Mita."},
            {"role": "user", "content": "Are you sure?"}, {"role": "assistant", "content": "Yes."}]
    for spec, end in ((CHATML, "<|im_end|>"), (GEMMA_CHAT, "<end_of_turn>")):
        tok = train_tokenizer(texts, 300, spec)
        ex = tokenize_chat(tok, msgs, 512)
        assert tok.decode(ex["input_ids"]).count("\n") > 2  # the template does put newlines around turns
        labelled = tok.decode([t for t in ex["labels"] if t != IGNORE_INDEX])
        assert labelled == f"The capital is Mita.{end}Yes.{end}", labelled
