"""The generic chat recipe (sweeps/chat_sft.py) and what it reads: Alpaca rows beside ShareGPT and
messages, the example file in examples/data, the smoke preset's Alpaca sample. Fast tier: no Ray,
nothing trained."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.errors import ConfigError
from trainers.chat import SkipRow, require_chat_columns, to_messages, tokenize_rows

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "data" / "support_chats.jsonl"


def _read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


# ----------------------------------------------------------------------------- Alpaca rows


def test_alpaca_row_is_a_user_turn_and_an_assistant_turn():
    assert to_messages({"instruction": "Add the two numbers below.", "input": "12 and 30", "output": "42."}) == [
        {"role": "user", "content": "Add the two numbers below.\n\n12 and 30"},
        {"role": "assistant", "content": "42."}]
    # an empty or missing input, or one of whitespace, adds nothing
    for extra in ({"input": ""}, {"input": None}, {}, {"input": " \n"}):
        assert to_messages({"instruction": "Say hi.", "output": "Hi.", **extra}) == [
            {"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi."}]


def test_alpaca_system_is_kept_as_the_first_turn():
    row = {"system": "Be brief.", "instruction": "Name a fruit.", "input": "", "output": "Apple."}
    assert to_messages(row) == [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "Name a fruit."},
                                {"role": "assistant", "content": "Apple."}]
    assert to_messages({**row, "system": ""})[0]["role"] == "user"


@pytest.mark.parametrize("row", [
    {"instruction": "Say hi.", "input": "", "output": ""},
    {"instruction": "Say hi.", "input": "", "output": None},
    {"instruction": "Say hi.", "input": ""},
    {"instruction": "  ", "input": "x", "output": "Hi."},
    {"input": "x", "output": "Hi."},
])
def test_alpaca_rows_without_instruction_or_output_are_skipped_as_empty_text(row):
    with pytest.raises(SkipRow) as e:
        to_messages(row)
    assert e.value.reason == "empty text"


def test_chat_columns_win_over_alpaca_columns():
    chat = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    assert to_messages({"messages": chat, "instruction": "other", "output": "other"}) == chat


# ----------------------------------------------------------------------------- columns


@pytest.mark.parametrize("columns", [["instruction", "input", "output"], ["instruction", "output"],
                                     ["instruction", "input", "output", "system", "text"],
                                     ["messages"], ["conversations", "source", "score"]])
def test_chat_columns_are_accepted(columns):
    require_chat_columns(columns, "data/x.jsonl")


@pytest.mark.parametrize("columns", [["text"], ["instruction", "context", "response", "category"],
                                     ["instruction", "input"], ["prompt", "completion"]])
def test_other_columns_are_refused_in_one_line_naming_the_three_schemas(columns):
    with pytest.raises(ConfigError) as e:
        require_chat_columns(columns, "data/x.jsonl")
    message = str(e.value)
    assert len(message.splitlines()) == 1 and "data/x.jsonl" in message and str(sorted(columns)) in message
    for name in ("`conversations`", "`messages`", "`instruction`", "`output`", "ShareGPT", "Alpaca"):
        assert name in message, name


# ----------------------------------------------------------------------------- generated samples


def test_alpaca_rows_are_deterministic_alpaca_shaped_and_some_have_an_input():
    from stand_ins import alpaca_rows, alpaca_texts

    rows = alpaca_rows(500, seed=1)
    assert rows == alpaca_rows(500, seed=1) and rows != alpaca_rows(500, seed=2) and alpaca_rows(0) == []
    assert all(set(r) == {"instruction", "input", "output"} and all(isinstance(v, str) for v in r.values())
               for r in rows)
    assert all(r["instruction"].strip() and r["output"].strip() for r in rows)
    assert 0.3 < sum(bool(r["input"]) for r in rows) / len(rows) < 0.5  # Alpaca: ~40% have an input
    assert "" not in alpaca_texts(rows)


def test_example_file_regenerates_from_its_readme_command(tmp_path):
    """examples/data/README.md's one-liner writes this exact file: generated, never copied."""
    from stand_ins import support_chat_rows, write_jsonl

    readme = (EXAMPLE.parent / "README.md").read_text(encoding="utf-8")
    assert "write_jsonl(support_chat_rows(400, seed=0), 'examples/data/support_chats.jsonl')" in readme
    again = write_jsonl(support_chat_rows(400, seed=0), tmp_path / "again.jsonl")
    assert again.read_bytes() == EXAMPLE.read_bytes()
    assert EXAMPLE.stat().st_size < 200_000


def test_example_file_is_messages_rows_that_all_train(tiny_tokenizer):
    rows = _read_jsonl(EXAMPLE)
    assert len(rows) == 400 and all(set(r) == {"messages"} for r in rows)
    require_chat_columns(["messages"], str(EXAMPLE))
    conversations = [to_messages(r) for r in rows]  # raises on a row the recipe would skip
    assert all(m[-1]["role"] == "assistant" for m in conversations)
    assert sum(m[0]["role"] == "system" for m in conversations) > 200  # most open with the shop's prompt
    split = tokenize_rows(tiny_tokenizer, rows, 512)
    assert len(split.examples) == 400 and not split.skipped and split.truncated == 0


# ----------------------------------------------------------------------------- the recipe


@pytest.fixture(scope="module")
def smoke():
    from lorasweep.resolve import resolve
    from sweeps.chat_sft import RECIPE

    return resolve(RECIPE, ["--preset", "smoke"])


def test_recipe_has_no_model_or_dataset_of_its_own():
    from sweeps.chat_sft import RECIPE

    assert RECIPE.name == "chat_sft" and RECIPE.dataset == "" and "model" not in RECIPE.settings
    assert RECIPE.settings["task"] == "chat_sft" and set(RECIPE.presets) == {"real", "smoke"}
    assert "--model" in RECIPE.presets["real"].description and "--dataset" in RECIPE.presets["real"].description
    for command in ("--preset smoke", "--model HuggingFaceTB/SmolLM2-360M-Instruct --dataset data/chats.jsonl",
                    "--address auto"):
        assert command in RECIPE.doc, command


def test_smoke_preset_resolves_to_chat_sft_on_an_alpaca_sample(smoke):
    s = smoke.settings
    assert s.task == "chat_sft" and smoke.space.metric == "eval_loss" and smoke.options.num_samples == 4
    assert (s.max_seq_length, s.per_device_batch_size, s.max_tokens) == (256, 8, 60_000)
    assert Path(s.model, "config.json").exists()
    rows = _read_jsonl(s.dataset)
    assert len(rows) == 1200 and all(set(r) == {"instruction", "input", "output"} for r in rows)
    assert any(r["input"] for r in rows) and any(not r["input"] for r in rows)
    require_chat_columns(sorted(rows[0]), s.dataset)
    assert all(to_messages(r)[-1] == {"role": "assistant", "content": r["output"]} for r in rows)
