"""Property-based fuzzing of the validators and formatters: random search-space specs and random
dataset rows are either accepted or refused with the project's own error (ConfigError / SkipRow),
never an unhandled exception; and text of any script survives formatting, tokenisation and packing."""

import math
from collections import Counter
from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from search_spaces import Choice, LogUniform, SearchSpace, Uniform, project
from search_spaces.lora_sft import LORA_SFT
from trainers.chat import IGNORE_INDEX, ROLE_ALIASES, SkipRow, pack_examples, to_messages, tokenize_chat, tokenize_rows
from common.errors import ConfigError

# No example database: every run is a fresh draw, and a failure prints its falsifying example.
# too_slow is about the machine, not the code: shared 2-core CI boxes trip it.
FUZZ = settings(max_examples=250, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ_TOKENS = settings(FUZZ, max_examples=120)  # a tokenised conversation costs a few ms

KNOBS = tuple(LORA_SFT.params)
BOOL_KNOBS = ("use_rslora", "packing")
ROW_REASONS = {"no conversations", "empty conversation", "malformed turn", "unknown role", "empty text",
               "no assistant turn"}
TOKEN_REASONS = {"no assistant tokens", "no assistant tokens within max_seq_length"}
EOT = "<|eot_id|>"


def _one_line(message: str) -> bool:
    return len(message.splitlines()) == 1


# ----------------------------------------------------------------------------- search spaces

_number_text = st.one_of(
    st.floats().map(repr),  # includes nan, inf, -inf, -0.0, subnormals
    st.floats(min_value=0, max_value=1).map(lambda x: f"{x:g}"),
    st.integers(min_value=-100_000, max_value=100_000).map(str),
    st.integers(min_value=0, max_value=64).map(lambda i: f"{i}.0"),  # ints written as floats
    st.integers(min_value=10**300, max_value=10**400).map(str),  # more digits than a float holds
    st.sampled_from(["nan", "NaN", "-inf", "Infinity", "1e309", "-0", "1e-400", ".5", "5.", "1_000", "0x10",
                     "1e-5", "2e-3", "8", "16", "٣", "８", "1" * 4400]),
)
_bool_text = st.sampled_from(["true", "false", "True", "FALSE", "1", "0", "yes", "no", "on", "off", "maybe"])
_atom = st.one_of(_number_text, _bool_text, st.text(max_size=6),
                  st.tuples(st.sampled_from(" \t\n\u00a0\u2028"), _number_text).map("".join))
_value = st.one_of(
    st.lists(_atom, max_size=4).map(",".join),  # name=a,b,c
    st.tuples(st.sampled_from(["", "log:", "uniform:", "loguniform:", "LOG:", "log:log:"]), _atom, _atom)
    .map(lambda t: f"{t[0]}{t[1]}:{t[2]}"),  # name=[kind:]low:high
    st.lists(_atom, min_size=1, max_size=5).map(":".join),
)
_name = st.one_of(st.sampled_from(KNOBS), st.sampled_from(KNOBS).map(lambda k: f" {k}\t"),
                  st.sampled_from(KNOBS).map(str.upper), st.sampled_from(["rank", "lr", "", "r\n"]),
                  st.text(max_size=8))
_near_valid_spec = st.builds(lambda n, sep, v: n + sep + v, _name, st.sampled_from(["=", "=", "==", ":", " = ", ""]),
                             _value)
# Ranges of mostly in-range numbers, so that a malformed range gets past float() and the bounds.
_range_spec = st.builds(lambda n, parts: f"{n}={':'.join(parts)}", st.sampled_from(["learning_rate", "warmup_ratio"]),
                        st.lists(st.sampled_from(["1e-5", "1e-4", "2e-3", "0", "0.05", "0.1", "log", "uniform"]),
                                 min_size=1, max_size=5))
_spec = st.one_of(_near_valid_spec, _range_spec, st.text(max_size=30))


def _knob_of(spec: str) -> str:
    return spec.partition("=")[0].strip()


def _in_dist(dist, value) -> bool:
    if isinstance(dist, Choice):
        return value in dist.values and type(value) in {type(v) for v in dist.values}
    return dist.low <= value <= dist.high


def _override(space: SearchSpace, spec: str) -> SearchSpace | None:
    """``space.override(spec)``, or None after checking the ConfigError is one line naming the knob
    or the spec (verbatim, or with its control characters escaped as Python's repr does)."""
    try:
        out = space.override(spec)
    except ConfigError as e:
        msg = str(e)
        assert _one_line(msg), msg
        knob = _knob_of(spec)
        assert (knob in KNOBS and f"`{knob}`" in msg) or spec in msg or repr(spec)[1:-1] in msg, msg
        return None
    knob = _knob_of(spec)
    assert knob in KNOBS
    assert {k: v for k, v in out.params.items() if k != knob} == {k: v for k, v in space.params.items() if k != knob}
    value = spec.partition("=")[2]
    if ":" in value:  # a range uses every part of the spec: [kind:]low:high, nothing more
        parts = value.split(":")
        assert len(parts) in (2, 3), f"{spec!r} was accepted as {out.params[knob]}"
        assert (out.params[knob].low, out.params[knob].high) == (float(parts[-2]), float(parts[-1]))
    return out.validate()


def _engine_path(space: SearchSpace) -> SearchSpace:
    """What ``lorasweep.engine.resolve`` does after the overrides: clip the seeds into the space."""
    return replace(space, known_points=tuple(project(space, s) for s in space.known_points)).validate()


@FUZZ
@given(_spec)
def test_override_accepts_or_refuses_in_one_line(spec):
    """Any --space string gives a valid space or a one-line ConfigError naming the knob or spec."""
    out = _override(LORA_SFT, spec)
    if out is not None:
        projected = _engine_path(out)
        for seed in projected.known_points:
            assert all(_in_dist(dist, seed[k]) for k, dist in projected.params.items()), (spec, seed)


@FUZZ
@given(st.lists(st.one_of(_near_valid_spec, _range_spec), min_size=1, max_size=4))
def test_chained_overrides_then_projected_seeds_are_valid(specs):
    """Several --space flags in a row, then the engine's seed projection, never crash."""
    space = LORA_SFT
    for spec in specs:
        space = _override(space, spec) or space
    projected = _engine_path(space)
    for seed in projected.known_points:
        assert all(_in_dist(dist, seed[k]) for k, dist in projected.params.items())


_json_scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=10**300, max_value=10**400),
                         st.floats(), st.floats(min_value=0, max_value=1), st.integers(min_value=1, max_value=64),
                         st.text(max_size=5))
_dist = st.one_of(
    st.builds(Choice, st.lists(_json_scalar, max_size=4).map(tuple)),
    st.builds(Uniform, _json_scalar, _json_scalar),
    st.builds(LogUniform, _json_scalar, _json_scalar),
    _json_scalar,  # not a distribution at all
)
_knob = st.one_of(st.sampled_from(KNOBS), st.text(max_size=6))


def _plausible(space: SearchSpace) -> bool:
    """An independent, coarse account of what validate() must never let through."""
    for name, dist in space.params.items():
        if name not in KNOBS:
            return False
        if isinstance(dist, Choice):
            values = dist.values
            if not values:
                return False
        elif isinstance(dist, (Uniform, LogUniform)):
            values = (dist.low, dist.high)
            if name in BOOL_KNOBS or name in ("r", "lora_alpha") or not dist.low <= dist.high:
                return False
            if isinstance(dist, LogUniform) and not dist.low > 0:
                return False
        else:
            return False
        for v in values:
            if (name in BOOL_KNOBS) != isinstance(v, bool):
                return False
            if name not in BOOL_KNOBS and not (isinstance(v, int) or isinstance(v, float) and math.isfinite(v)):
                return False
    return all(set(space.params) <= set(seed) for seed in space.known_points)


@FUZZ
@given(st.dictionaries(_knob, _dist, max_size=6),
       st.lists(st.dictionaries(_knob, _json_scalar, max_size=7), max_size=3),
       st.one_of(st.sampled_from(["min", "max"]), st.text(max_size=4)))
def test_validate_accepts_only_sane_spaces_and_refuses_in_one_line(params, seeds, mode):
    """SearchSpace(...).validate() with random distributions and seeds: valid or one-line ConfigError."""
    space = SearchSpace(params, LORA_SFT.bounds, mode=mode, known_points=tuple(seeds))
    try:
        assert space.validate() is space
    except ConfigError as e:
        assert _one_line(str(e)), str(e)
        return
    assert mode in ("min", "max") and _plausible(space), space


def _valid_value(name: str):
    return {
        "r": st.integers(min_value=1, max_value=4096),
        "lora_alpha": st.integers(min_value=1, max_value=1 << 16),
        "use_rslora": st.booleans(),
        "packing": st.booleans(),
        "warmup_ratio": st.floats(min_value=0, max_value=1, exclude_max=True),
        "learning_rate": st.floats(min_value=0, max_value=1, exclude_min=True),
    }[name]


_valid_seed = st.fixed_dictionaries({k: _valid_value(k) for k in KNOBS})


@st.composite
def _valid_dist(draw, name):
    if name in ("warmup_ratio", "learning_rate") and draw(st.booleans()):
        low, high = sorted(draw(st.lists(_valid_value(name), min_size=2, max_size=2)))
        return (LogUniform if low > 0 and draw(st.booleans()) else Uniform)(low, high)
    return Choice(tuple(draw(st.lists(_valid_value(name), min_size=1, max_size=4))))


@FUZZ
@given(st.data(), st.lists(_valid_seed, max_size=3))
def test_project_moves_valid_seeds_into_any_valid_space(data, seeds):
    """project() puts every valid seed inside the space, leaves seeds already inside unchanged,
    and the projected space validates."""
    params = {k: data.draw(_valid_dist(k), label=k) for k in KNOBS}
    space = SearchSpace(params, LORA_SFT.bounds, known_points=tuple(seeds))
    projected = _engine_path(space)
    for before, after in zip(seeds, projected.known_points):
        for k, dist in params.items():
            assert _in_dist(dist, after[k]), (k, dist, after[k])
            if _in_dist(dist, before[k]):
                assert after[k] == before[k]
        assert project(space, after) == after  # idempotent


@FUZZ
@given(st.sets(st.sampled_from(KNOBS), min_size=1, max_size=5), st.data())
def test_a_knob_added_by_override_to_seeded_space_is_refused_or_accepted_cleanly(kept, data):
    """A recipe space without some knob, its seeds without it, then --space adds the knob: the engine
    path gives a valid space or a one-line ConfigError, not a KeyError."""
    added = data.draw(st.sampled_from(sorted(set(KNOBS) - kept)), label="added")
    space = SearchSpace({k: LORA_SFT.params[k] for k in kept}, LORA_SFT.bounds,
                        known_points=tuple({k: s[k] for k in kept} for s in LORA_SFT.known_points)).validate()
    spec = f"{added}=true" if added in BOOL_KNOBS else f"{added}=1"
    if added == "warmup_ratio":
        spec = "warmup_ratio=0.05"
    try:
        _engine_path(space.override(spec))
    except ConfigError as e:
        assert _one_line(str(e)) and added in str(e), str(e)


# ----------------------------------------------------------------------------- dataset rows

_json = st.recursive(_json_scalar, max_leaves=6,
                     extend=lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3))
_role = st.one_of(st.sampled_from([*ROLE_ALIASES, "Human", " GPT ", "ASSISTANT\n", "robot", "tool", "", "function"]),
                  _json_scalar)
_text = st.one_of(st.text(max_size=12), st.sampled_from(["", " ", "\n\t", "\u3000", "\u2028"]), _json_scalar)


def _turns(role_key: str, text_key: str):
    turn = st.one_of(st.fixed_dictionaries({}, optional={role_key: _role, text_key: _text, "weight": _json_scalar}),
                     st.fixed_dictionaries({role_key: st.sampled_from(list(ROLE_ALIASES)),
                                            text_key: st.text(min_size=1)}),
                     _json)
    return st.one_of(st.lists(turn, max_size=5), _json)


_row = st.fixed_dictionaries({}, optional={"conversations": _turns("from", "value"),
                                           "messages": _turns("role", "content"),
                                           "text": _json, "source": _json_scalar})


@FUZZ
@given(_row)
def test_to_messages_normalises_or_skips_with_a_known_reason(row):
    """Any dict row gives well-formed messages with an assistant turn, or SkipRow with a known reason."""
    try:
        messages = to_messages(row)
    except SkipRow as skip:
        assert skip.reason in ROW_REASONS, skip.reason
        return
    turns = row["conversations"] if row.get("conversations") is not None else row["messages"]
    text_key = "value" if row.get("conversations") is not None else "content"
    assert [m["content"] for m in messages] == [t[text_key] for t in turns]  # text passes through untouched
    assert all(set(m) == {"role", "content"} and m["role"] in ("system", "user", "assistant") for m in messages)
    assert all(isinstance(m["content"], str) and m["content"].strip() for m in messages)
    assert any(m["role"] == "assistant" for m in messages)


_good_turns = st.lists(st.tuples(st.sampled_from(list(ROLE_ALIASES)), st.text(min_size=1).filter(str.strip)),
                       min_size=1, max_size=5)


@FUZZ
@given(_good_turns, st.booleans(), st.data())
def test_well_formed_rows_normalise_exactly_and_one_bad_turn_names_its_fault(turns, sharegpt, data):
    """Both schemas map roles through the aliases; spoiling one turn skips the row for that turn's fault."""
    role_key, text_key, schema = ("from", "value", "conversations") if sharegpt else ("role", "content", "messages")
    row = {schema: [{role_key: r, text_key: t} for r, t in turns]}
    expected = [{"role": ROLE_ALIASES[r], "content": t} for r, t in turns]
    if any(m["role"] == "assistant" for m in expected):
        assert to_messages(row) == expected
    else:
        assert _skip_reason(row) == "no assistant turn"
    i = data.draw(st.integers(min_value=0, max_value=len(turns) - 1), label="spoiled turn")
    fault, bad = data.draw(st.sampled_from([
        ("malformed turn", None), ("malformed turn", "text"), ("malformed turn", [1]),
        ("unknown role", {role_key: "robot", text_key: "hi"}), ("unknown role", {text_key: "hi"}),
        ("empty text", {role_key: "gpt", text_key: " \n"}), ("empty text", {role_key: "gpt", text_key: 3}),
        ("empty text", {role_key: "gpt"}),
    ]), label="fault")
    row[schema][i] = bad
    assert _skip_reason(row) == fault


def _skip_reason(row):
    try:
        to_messages(row)
    except SkipRow as skip:
        return skip.reason
    return None


_alpaca_row = st.fixed_dictionaries({}, optional={"instruction": _text, "input": _text, "output": _text,
                                                  "system": _text, "text": _json})


@FUZZ
@given(_alpaca_row)
def test_alpaca_rows_normalise_or_skip_with_a_known_reason(row):
    """Alpaca rows (instruction, input, output, system, any of them missing or of any type): a
    [system?, user, assistant] conversation whose texts come from the row, or a known SkipRow."""
    try:
        messages = to_messages(row)
    except SkipRow as skip:
        assert skip.reason in ROW_REASONS, skip.reason
        return
    assert [m["role"] for m in messages][-2:] == ["user", "assistant"] and len(messages) in (2, 3)
    assert messages[-1]["content"] == row["output"] and messages[-2]["content"].startswith(row["instruction"])
    extra = row.get("input")
    assert messages[-2]["content"] == (f"{row['instruction']}\n\n{extra}" if extra and extra.strip() else row["instruction"])
    assert (len(messages) == 3) == bool(row.get("system") and row["system"].strip())
    assert all(isinstance(m["content"], str) and m["content"].strip() for m in messages)


@FUZZ
@given(st.one_of(_row, _alpaca_row), _alpaca_row)
def test_chat_schemas_keep_their_priority(chat, alpaca):
    """conversations > messages > alpaca: alpaca columns beside a chat column never change the result."""
    if chat.get("conversations") is None and chat.get("messages") is None:
        return
    assert _skip_reason({**alpaca, **chat}) == _skip_reason(chat)
    if _skip_reason(chat) is None:
        assert to_messages({**alpaca, **chat}) == to_messages(chat)


@FUZZ_TOKENS
@given(st.lists(_row, max_size=8), st.integers(min_value=1, max_value=96))
def test_tokenize_rows_never_raises_and_accounts_for_every_row(tiny_tokenizer, rows, max_len):
    """A batch of random rows: every row is an example or counted under a known skip reason."""
    split = tokenize_rows(tiny_tokenizer, rows, max_len)
    assert len(split.examples) + sum(split.skipped.values()) == len(rows)
    assert set(split.skipped) <= ROW_REASONS | TOKEN_REASONS
    assert split.truncated <= len(split.examples)
    for ex in split.examples:
        assert set(ex) == {"input_ids", "labels"} and 0 < len(ex["input_ids"]) == len(ex["labels"]) <= max_len
        assert all(lab in (IGNORE_INDEX, tok) for tok, lab in zip(ex["input_ids"], ex["labels"]))
        assert any(lab != IGNORE_INDEX for lab in ex["labels"])


# ----------------------------------------------------------------------------- unicode

_PIECES = [
    "👨‍👩‍👧‍👦", "👍🏽", "🧑🏿‍💻", "🏳️‍🌈", "🇺🇦", "❤️", "1️⃣", "🦙",  # ZWJ, skin tones, flags, VS16, keycaps
    "漢字かなカナ", "한국어", "עברית", "العربية", "हिन्दी", "ไทย", "ᚠᛇᚻ",
    "e\u0301", "Z\u0334\u0321a\u0338l\u0337g\u0336o", "\u200f\u202e\u2066", "\u200b\u2060\ufeff",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "\U00020000\U0002a6d6", "\U0001f9ec", "\U000e0041", "\ufffd", "\x07\x1b[0m\x7f",
]
_chars = st.characters(exclude_categories=("Cs",), exclude_characters="\x00")  # every plane, controls too
_unicode_text = (st.lists(st.one_of(st.sampled_from(_PIECES), st.text(_chars, min_size=1, max_size=4)),
                          min_size=1, max_size=5).map("".join).filter(str.strip))


@st.composite
def _unicode_conversation(draw):
    """ShareGPT turns alternating human/gpt (either may open), optional system turn, random text."""
    n = draw(st.integers(min_value=1, max_value=4))
    first = draw(st.sampled_from(["human", "gpt"]))
    roles = [first if i % 2 == 0 else {"human": "gpt", "gpt": "human"}[first] for i in range(n)]
    if "gpt" not in roles:
        roles.append("gpt")
    turns = [{"from": r, "value": draw(_unicode_text)} for r in roles]
    if draw(st.booleans()):
        turns.insert(0, {"from": "system", "value": draw(_unicode_text)})
    return {"conversations": turns}


def _decode(tok, ids):
    return tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


@FUZZ_TOKENS
@given(_unicode_conversation())
def test_unicode_round_trips_and_only_assistant_text_is_labelled(tiny_tokenizer, row):
    """The whole rendering decodes back to itself, and the labelled tokens decode to exactly the
    assistant replies (as the template trims them), each followed by its end-of-turn token."""
    messages = to_messages(row)
    ex = tokenize_chat(tiny_tokenizer, messages, 100_000)
    assert _decode(tiny_tokenizer, ex["input_ids"]) == tiny_tokenizer.apply_chat_template(messages, tokenize=False)
    labelled = _decode(tiny_tokenizer, [t for t in ex["labels"] if t != IGNORE_INDEX])
    assert labelled == "".join(m["content"].strip() + EOT for m in messages if m["role"] == "assistant")


def _documents(row):
    starts = [i for i, p in enumerate(row["position_ids"]) if p == 0] + [len(row["input_ids"])]
    return [(row["input_ids"][a:b], row["labels"][a:b], row["position_ids"][a:b]) for a, b in zip(starts, starts[1:])]


@FUZZ_TOKENS
@given(st.lists(_unicode_conversation(), min_size=1, max_size=6), st.integers(min_value=8, max_value=200))
def test_unicode_survives_packing_document_by_document(tiny_tokenizer, rows, max_len):
    """Packed rows split at position restarts give back every example's tokens, text and labels."""
    examples = tokenize_rows(tiny_tokenizer, rows, max_len).examples
    packed = pack_examples(examples, max_len)
    assert all(len(r["input_ids"]) == len(r["labels"]) == len(r["position_ids"]) <= max_len for r in packed)
    docs = [d for r in packed for d in _documents(r)]
    assert all(pos == list(range(len(ids))) for ids, _, pos in docs)
    assert Counter(_decode(tiny_tokenizer, ids) for ids, _, _ in docs) == Counter(
        _decode(tiny_tokenizer, e["input_ids"]) for e in examples)
    before = Counter((tuple(e["input_ids"]), tuple([IGNORE_INDEX] + e["labels"][1:])) for e in examples)
    assert Counter((tuple(ids), tuple(labels)) for ids, labels, _ in docs) == before


def _best_fit_by_scan(lengths: list[int], max_len: int) -> list[list[int]]:
    """The packing rule written as a plain scan of every open bin (what pack_examples did before it
    kept its bins sorted by free space): the reference the fast version must match exactly."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    bins, space = [], []
    for i in order:
        best = None
        for b, free in enumerate(space):
            if free >= lengths[i] and (best is None or free < space[best]):
                best = b
        if best is None:
            bins.append([i])
            space.append(max_len - lengths[i])
        else:
            bins[best].append(i)
            space[best] -= lengths[i]
    return [sorted(b) for b in bins]


@given(st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=300), st.integers(min_value=64, max_value=256))
def test_packing_with_sorted_bins_is_exactly_best_fit_decreasing(lengths, max_len):
    examples = [{"input_ids": [i] * n, "labels": [i] * n} for i, n in enumerate(lengths)]
    rows = pack_examples(examples, max_len)
    got = [sorted({t for t in r["input_ids"]}) for r in rows]
    assert got == _best_fit_by_scan(lengths, max_len)
