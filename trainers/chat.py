"""Chat data: rows -> messages -> token ids with assistant-only labels -> (packed) batches.

Runs inside Ray Train workers, so it depends only on the tokenizer and plain Python/torch.

Three row schemas are understood, as real datasets ship them; a row holding several is read by the
first of this order:
  * ShareGPT (FineTome-100k, many others): ``conversations: [{"from": "human"|"gpt"|"system", "value": str}]``
  * OpenAI/TRL messages: ``messages: [{"role": "user"|"assistant"|"system", "content": str}]``
  * Alpaca (tatsu-lab/alpaca, yahma/alpaca-cleaned, many others): ``instruction``, optional ``input``,
    ``output``, optional ``system``: one user turn (the instruction, then the input after a blank line
    when there is one, as the Alpaca template places it) and one assistant turn (the output).
"""

from __future__ import annotations

import bisect
import os

import torch
from jinja2.exceptions import TemplateError

from common.errors import ConfigError
from trainers.data import SkipRow, Tokenized

IGNORE_INDEX = -100  # the label value torch's cross-entropy skips

# ShareGPT role names (and the few aliases found in the wild) -> chat-template roles.
ROLE_ALIASES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "system": "system",
}


def to_messages(row: dict) -> list[dict]:
    """Normalise one dataset row to ``[{"role", "content"}]`` or raise SkipRow."""
    if "conversations" in row and row["conversations"] is not None:
        turns, role_key, text_key = row["conversations"], "from", "value"
    elif "messages" in row and row["messages"] is not None:
        turns, role_key, text_key = row["messages"], "role", "content"
    elif row.get("instruction") is not None or row.get("output") is not None:
        return alpaca_messages(row)
    else:
        raise SkipRow("no conversations")
    if not isinstance(turns, list) or not turns:
        raise SkipRow("empty conversation")
    messages = []
    for turn in turns:
        if not isinstance(turn, dict):
            raise SkipRow("malformed turn")
        role = ROLE_ALIASES.get(str(turn.get(role_key, "")).strip().lower())
        if role is None:
            raise SkipRow("unknown role")
        text = turn.get(text_key)
        if not isinstance(text, str) or not text.strip():
            raise SkipRow("empty text")
        messages.append({"role": role, "content": text})
    if not any(m["role"] == "assistant" for m in messages):
        raise SkipRow("no assistant turn")
    return messages


def alpaca_messages(row: dict) -> list[dict]:
    """An Alpaca row as ``[system?, user, assistant]``. Empty ``input`` and ``system`` (``""`` or
    missing, as most Alpaca files have them) add nothing; an empty instruction or output skips the row."""
    instruction, output = row.get("instruction"), row.get("output")
    if not all(isinstance(text, str) and text.strip() for text in (instruction, output)):
        raise SkipRow("empty text")
    extra, system = row.get("input"), row.get("system")
    if not all(v is None or isinstance(v, str) for v in (extra, system)):
        raise SkipRow("malformed turn")
    prompt = f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction
    messages = [{"role": "system", "content": system}] if system and system.strip() else []
    return messages + [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]


def require_chat_columns(column_names: list[str], source: str) -> None:
    alpaca = "instruction" in column_names and "output" in column_names
    if "conversations" not in column_names and "messages" not in column_names and not alpaca:
        raise ConfigError(
            f"dataset {source!r} has columns {sorted(column_names)} but needs `conversations` "
            '(ShareGPT: [{"from": "human"|"gpt"|"system", "value": ...}]), `messages` '
            '([{"role": ..., "content": ...}]) or `instruction` + `output` '
            "(Alpaca; `input` and `system` optional)"
        )


def tokenize_chat(tokenizer, messages: list[dict], max_len: int) -> dict:
    """Render with the tokenizer's chat template; label only the assistant turns.

    The spans come from rendering growing prefixes of the conversation: the assistant's span is what
    ``messages[:i+1]`` adds to ``messages[:i]`` + the generation prompt, so it covers the reply and
    its end-of-turn token (which the model must learn to emit) and nothing of the template's headers
    or of the whitespace that separates turns.
    Working on characters and mapping to tokens through offsets avoids re-tokenising fragments,
    which changes merges at the boundaries.
    """
    render = lambda msgs, gen=False: tokenizer.apply_chat_template(  # noqa: E731
        msgs, tokenize=False, add_generation_prompt=gen
    )
    full = render(messages)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        if i:
            start = len(render(messages[:i], gen=True))
        else:  # transformers refuses to render no messages: the opening is what two 1-turn renders share
            start = len(os.path.commonprefix([render([{**m, "content": c}]) for c in ("a", "b")]))
        # Up to the end-of-turn token, not the separator some templates put after it (ChatML's
        # and Gemma's newline): the model never generates that, so it must not be trained on it.
        end = len(render(messages[: i + 1]).rstrip())
        spans.append((start, end))
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    labels = []
    for tok, (s, e) in zip(ids, offsets):
        inside = any(a <= s < b for a, b in spans) and e > s
        labels.append(tok if inside else IGNORE_INDEX)
    truncated = len(ids) > max_len
    ids, labels = ids[:max_len], labels[:max_len]
    if all(lab == IGNORE_INDEX for lab in labels):
        raise SkipRow("no assistant tokens within max_seq_length" if truncated else "no assistant tokens")
    return {"input_ids": ids, "labels": labels, "truncated": truncated}


def tokenize_rows(tokenizer, rows, max_len: int, to_messages=to_messages) -> Tokenized:
    out = Tokenized(examples=[])
    for row in rows:
        try:
            ex = tokenize_chat(tokenizer, to_messages(row), max_len)
        except SkipRow as skip:
            out.skipped[skip.reason] += 1
            continue
        except TemplateError:
            # Some real templates refuse a conversation (Gemma: no system role; Mistral: roles
            # must alternate). That row is unusable for this model, not a reason to stop.
            out.skipped["refused by the chat template"] += 1
            continue
        out.truncated += ex.pop("truncated")
        out.examples.append(ex)
    return out


# ----------------------------------------------------------------------------- packing


def pack_examples(examples: list[dict], max_len: int) -> list[dict]:
    """Best-fit-decreasing bin packing of whole examples into rows of at most ``max_len`` tokens.

    Each packed row keeps its documents apart: ``position_ids`` restart at 0 for every document,
    and with no attention mask Transformers derives a block-diagonal causal mask from those
    restarts (``masking_utils.find_packed_sequence_indices``), so a token never attends to, nor
    is scored against, a neighbouring document. Unlike TRL's padding-free packing (one flat row
    per batch, fast only with FlashAttention) the rows stay ``max_len`` long, so SDPA on CPU or
    GPU pays for ``rows x max_len^2`` attention, never ``(batch x max_len)^2``.
    """
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i]["input_ids"]))
    bins: list[list[int]] = []
    # (free tokens, bin) for every open bin, sorted: the best fit (least room that still holds the
    # example, the first such bin on a tie) is one bisection away, not a scan of every bin, which
    # made packing quadratic (0.8 s for 10k examples, ~80 s for FineTome's ~98k, in every worker).
    free_bins: list[tuple[int, int]] = []
    for i in order:
        n = len(examples[i]["input_ids"])
        k = bisect.bisect_left(free_bins, (n, -1))
        if k == len(free_bins):
            bins.append([i])
            bisect.insort(free_bins, (max_len - n, len(bins) - 1))
        else:
            free, b = free_bins.pop(k)
            bins[b].append(i)
            bisect.insort(free_bins, (free - n, b))
    rows = []
    for b in bins:
        ids, labels, pos = [], [], []
        for i in sorted(b):  # stable order inside a row
            e = examples[i]
            ids += e["input_ids"]
            # The first label of a document is never trained on: it would be predicted from the
            # previous document's last token.
            labels += [IGNORE_INDEX] + e["labels"][1:]
            pos += list(range(len(e["input_ids"])))
        rows.append({"input_ids": ids, "labels": labels, "position_ids": pos})
    return rows


class Collator:
    """Right-pads a list of examples. Packed rows carry ``position_ids`` and no attention mask;
    unpacked rows carry an attention mask. ``num_tokens`` (non-padding tokens) feeds the token
    budget and is removed before the forward pass.

    ``flat`` (packed rows under FlashAttention-2): the batch's rows are laid end to end as ONE row,
    unpadded. Transformers gives FlashAttention-2 its variable-length path only for a batch of one
    row whose ``position_ids`` restart (``modeling_flash_attention_utils._is_packed_sequence``); a
    batch of several packed rows runs plain causal attention, so each document would attend to the
    documents before it in its row."""

    def __init__(self, pad_id: int, packed: bool, pad_to: int | None = None, flat: bool = False):
        if flat and not packed:
            raise ValueError("Collator: flat=True lays packed rows end to end; it needs packed=True")
        self.pad_id, self.packed, self.pad_to, self.flat = pad_id, packed, pad_to, flat

    def __call__(self, batch: list[dict]) -> dict:
        if self.flat:
            cat = lambda key: torch.tensor([[t for e in batch for t in e[key]]], dtype=torch.long)  # noqa: E731
            return {"input_ids": cat("input_ids"), "labels": cat("labels"), "position_ids": cat("position_ids"),
                    "num_tokens": torch.tensor(sum(len(e["input_ids"]) for e in batch))}
        width = self.pad_to or max(len(e["input_ids"]) for e in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        lengths = [len(e["input_ids"]) for e in batch]
        out = {"input_ids": ids, "labels": labels}
        if self.packed:
            # Padding gets positions 0..k of its own, i.e. it is one more (masked-out) document.
            pos = torch.zeros((len(batch), width), dtype=torch.long)
        else:
            mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, e in enumerate(batch):
            n = lengths[r]
            ids[r, :n] = torch.tensor(e["input_ids"])
            labels[r, :n] = torch.tensor(e["labels"])
            if self.packed:
                pos[r, :n] = torch.tensor(e["position_ids"])
                pos[r, n:] = torch.arange(width - n)
            else:
                mask[r, :n] = 1
        if self.packed:
            out["position_ids"] = pos
        else:
            out["attention_mask"] = mask
        out["num_tokens"] = torch.tensor(sum(lengths))
        return out


def collator_for(settings, pad_id: int) -> Collator:
    """The training collator of the causal-LM tasks: packed rows laid flat under FlashAttention-2."""
    return Collator(pad_id, packed=settings.packing,
                    flat=settings.packing and settings.attn_implementation == "flash_attention_2")
