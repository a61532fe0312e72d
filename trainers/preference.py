"""Preference pairs: rows -> (prompt, chosen, rejected) token ids -> batches, the completions'
log-probabilities, and the losses TRL's preference trainers train with.

Row schemas, as preference datasets ship them (TRL's dataset formats):
  * conversational, implicit prompt (UltraFeedback binarised, Anthropic HH in TRL's form):
    ``chosen`` and ``rejected`` are message lists that share every turn but the last assistant one;
  * conversational, explicit prompt: ``prompt`` a message list, ``chosen``/``rejected`` the reply
    (a one-message list, or a string);
  * standard: ``prompt``, ``chosen`` and ``rejected`` strings (the prompt becomes one user turn).
The prompt is rendered with the model's chat template up to the assistant header; a completion is
what the full chat adds to it: the reply and its end-of-turn token, as chat SFT labels it.

Losses (``loss_type``; ``beta`` is TRL's ``beta`` in each trainer's config):
  sigmoid   DPO (DPOTrainer's default): -log sigmoid(beta x (policy - reference log-ratio margin))
  ipo       IPO: (margin - 1/(2 beta))^2 on per-token mean log-probabilities, as TRL averages them
  hinge     SLiC's hinge: relu(1 - beta x margin)
  orpo      ORPO (ORPOTrainer): the chosen reply's NLL - beta x log sigmoid(log odds ratio); no
            reference model (the NLL is each pair's per-token mean, where TRL's is the batch's)
  kto       KTO (KTOTrainer) on the pairs unpaired: chosen desirable, rejected undesirable, the KL
            reference point from each prompt with the next pair's chosen reply (a batch of >= 2)
The reference is the base model itself: the LoRA adapter switched off (``disable_adapter``), as
TRL does for a PEFT model, so no second copy of the weights is held.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from common.errors import ConfigError
from trainers.chat import ROLE_ALIASES
from trainers.config import LOSS_TYPES
from trainers.data import SkipRow, Tokenized

REFERENCE_FREE = frozenset({"orpo"})
MEAN_LOGPS = frozenset({"ipo", "orpo"})  # losses on per-token mean log-probabilities (TRL's choice)


# ----------------------------------------------------------------------------- rows -> token ids


def require_pair_columns(columns: list[str], source: str) -> None:
    missing = [c for c in ("chosen", "rejected") if c not in columns]
    if missing:
        raise ConfigError(
            f"dataset {source!r} has columns {sorted(columns)} but needs {' and '.join(f'`{c}`' for c in missing)}: "
            "`chosen`/`rejected` message lists sharing their prompt turns (UltraFeedback binarised), or `prompt` + "
            "`chosen` + `rejected` (strings or messages, TRL's preference formats)")


def _messages(turns, what: str) -> list[dict]:
    if isinstance(turns, str):
        if not turns.strip():
            raise SkipRow(f"empty {what}")
        return [{"role": "user" if what == "prompt" else "assistant", "content": turns}]
    if not isinstance(turns, list) or not turns:
        raise SkipRow(f"empty {what}")
    out = []
    for t in turns:
        if not isinstance(t, dict):
            raise SkipRow("malformed turn")
        role = ROLE_ALIASES.get(str(t.get("role", t.get("from", ""))).strip().lower())
        text = t.get("content", t.get("value"))
        if role is None:
            raise SkipRow("unknown role")
        if not isinstance(text, str) or not text.strip():
            raise SkipRow("empty text")
        out.append({"role": role, "content": text})
    return out


def pair_messages(row: dict) -> tuple[list[dict], str, str]:
    """``(prompt messages, chosen reply, rejected reply)`` of one row, or SkipRow."""
    chosen, rejected = _messages(row.get("chosen"), "chosen"), _messages(row.get("rejected"), "rejected")
    if chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
        raise SkipRow("no assistant reply")
    if row.get("prompt") is not None and not (len(chosen) > 1 and chosen[:-1] == rejected[:-1]):
        prompt = _messages(row["prompt"], "prompt")
    else:  # implicit prompt: the turns both lists share
        if chosen[:-1] != rejected[:-1] or len(chosen) < 2:
            raise SkipRow("chosen and rejected do not share a prompt")
        prompt = chosen[:-1]
    if prompt[-1]["role"] == "assistant":
        raise SkipRow("prompt ends with an assistant turn")
    if chosen[-1]["content"].strip() == rejected[-1]["content"].strip():
        raise SkipRow("identical replies")
    return prompt, chosen[-1]["content"], rejected[-1]["content"]


def tokenize_pair(tokenizer, prompt: list[dict], chosen: str, rejected: str, max_len: int) -> dict:
    """Token ids of the prompt (up to the assistant header) and of each completion (the reply and
    its end-of-turn token, not the separator some templates add after it). The prompt keeps its last
    ``max_len // 2`` tokens at most; each completion is cut to what then fits in ``max_len``."""
    head = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer(head, add_special_tokens=False)["input_ids"]
    completions = []
    for reply in (chosen, rejected):
        full = tokenizer.apply_chat_template([*prompt, {"role": "assistant", "content": reply}], tokenize=False).rstrip()
        if not full.startswith(head):  # a template that renders the prompt differently once answered
            raise SkipRow("chat template does not extend the prompt")
        completions.append(tokenizer(full[len(head):], add_special_tokens=False)["input_ids"])
    truncated = len(prompt_ids) > max_len // 2 or any(len(prompt_ids) + len(c) > max_len for c in completions)
    prompt_ids = prompt_ids[-(max_len // 2):]
    room = max_len - len(prompt_ids)
    chosen_ids, rejected_ids = (c[:room] for c in completions)
    if not chosen_ids or not rejected_ids:
        raise SkipRow("no reply tokens within max_seq_length")
    return {"prompt_ids": prompt_ids, "chosen_ids": chosen_ids, "rejected_ids": rejected_ids,
            # what a step costs: both sequences through the policy (KTO's KL pass and the reference
            # pass are extra forward work, not training tokens)
            "n_tokens": 2 * len(prompt_ids) + len(chosen_ids) + len(rejected_ids), "truncated": truncated}


def tokenize_pairs(tokenizer, rows, max_len: int) -> Tokenized:
    out = Tokenized(examples=[])
    for row in rows:
        try:
            ex = tokenize_pair(tokenizer, *pair_messages(row), max_len)
        except SkipRow as skip:
            out.skipped[skip.reason] += 1
            continue
        out.truncated += ex.pop("truncated")
        out.examples.append(ex)
    return out


# ----------------------------------------------------------------------------- batches


class PairCollator:
    """A micro-batch of B pairs as one right-padded batch of 2B sequences, the B prompt + chosen
    first, then the B prompt + rejected (3B with ``kl``: prompt i + pair i+1's chosen reply, KTO's
    mismatched pairs). ``completion_mask`` marks the completion tokens; ``num_tokens`` is what the
    budget counts (``n_tokens`` of each pair)."""

    def __init__(self, pad_id: int, kl: bool = False):
        self.pad_id, self.kl = pad_id, kl

    def __call__(self, pairs: list[dict]) -> dict:
        seqs = [(p["prompt_ids"], p["chosen_ids"]) for p in pairs] + [(p["prompt_ids"], p["rejected_ids"]) for p in pairs]
        if self.kl:
            seqs += [(p["prompt_ids"], pairs[(i + 1) % len(pairs)]["chosen_ids"]) for i, p in enumerate(pairs)]
        width = max(len(a) + len(b) for a, b in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros_like(ids)
        completion = torch.zeros_like(ids)
        for r, (a, b) in enumerate(seqs):
            ids[r, : len(a) + len(b)] = torch.tensor(list(a) + list(b))
            attention[r, : len(a) + len(b)] = 1
            completion[r, len(a) : len(a) + len(b)] = 1
        n = torch.tensor(sum(int(p["n_tokens"]) for p in pairs), dtype=torch.long)
        return {"input_ids": ids, "attention_mask": attention, "completion_mask": completion, "num_tokens": n}


# ----------------------------------------------------------------------------- log-probabilities


def completion_logps(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sequence: the summed log-probability of its completion tokens and their count. Logits are
    built only at completion positions (evaluation.apply_head), so a 128k vocabulary costs
    completion tokens x vocabulary, not batch x sequence x vocabulary. Gradients flow where enabled."""
    from trainers.evaluation import apply_head

    mask = batch["completion_mask"][:, 1:].bool()  # token t is predicted at position t - 1
    rows, cols = mask.nonzero(as_tuple=True)
    targets = batch["input_ids"][:, 1:][rows, cols]
    n_rows = batch["input_ids"].shape[0]

    def fn(hidden, logits_of):
        logp = torch.log_softmax(logits_of(hidden[rows, cols]).float(), -1).gather(-1, targets[:, None])[:, 0]
        return torch.zeros(n_rows, dtype=logp.dtype, device=logp.device).index_add(0, rows, logp)

    sums = apply_head(model, {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}, fn)
    return sums, mask.sum(-1).to(sums.device, sums.dtype)


def adapter_off(model):
    """The reference model: the policy with its LoRA adapter switched off (a PeftModel), for a block."""
    off = getattr(model, "disable_adapter", None)
    if off is None:
        raise ConfigError("task `preference` trains LoRA adapters: its reference model is the base with the adapter "
                          "switched off; pass --method lora")
    return off()


def reference_logps(model, batch: dict, loss_type: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    if loss_type in REFERENCE_FREE:
        return None
    with torch.no_grad(), adapter_off(model):
        sums, counts = completion_logps(model, batch)
    return sums.detach(), counts


def preference_loss(loss_type: str, beta: float, policy: tuple, reference: tuple | None,
                    n_pairs: int) -> tuple[torch.Tensor, dict]:
    """Per pair: the loss, and the policy's own per-token log-likelihood margin of chosen over
    rejected (what evaluation reads). ``policy``/``reference``: (summed logps, token counts) of the
    collated sequences (``PairCollator`` order)."""
    sums, counts = policy
    mean = sums / counts.clamp(min=1)
    logps = mean if loss_type in MEAN_LOGPS else sums
    c, r = logps[:n_pairs], logps[n_pairs : 2 * n_pairs]
    if reference is not None:
        ref_sums, ref_counts = reference
        ref = ref_sums / ref_counts.clamp(min=1) if loss_type in MEAN_LOGPS else ref_sums
        ratio_c, ratio_r = c - ref[:n_pairs], r - ref[n_pairs : 2 * n_pairs]
    else:
        ratio_c, ratio_r = c, r  # ORPO: no reference; its "rewards" are the policy's own log-probs (TRL)
    margin = ratio_c - ratio_r
    if loss_type == "sigmoid":
        loss = -F.logsigmoid(beta * margin)
    elif loss_type == "ipo":
        loss = (margin - 1 / (2 * beta)) ** 2
    elif loss_type == "hinge":
        loss = torch.relu(1 - beta * margin)
    elif loss_type == "orpo":
        # log odds(y) = log p - log(1 - p) on per-token means (both < 0); log1p(-exp(x)) stays finite
        log_odds = (c - r) - (torch.log1p(-torch.exp(c).clamp(max=1 - 1e-7)) - torch.log1p(-torch.exp(r).clamp(max=1 - 1e-7)))
        loss = -c - beta * F.logsigmoid(log_odds)
    elif loss_type == "kto":
        kl_policy = sums[2 * n_pairs :]
        kl_ref = reference[0][2 * n_pairs :]
        z = _mean_over_ranks((kl_policy - kl_ref).mean().detach()).clamp(min=0)  # TRL: gathered, then clamped
        # TRL's mean over the desirable and the undesirable examples: per pair, the mean of its two
        loss = ((1 - torch.sigmoid(beta * (ratio_c - z))) + (1 - torch.sigmoid(beta * (z - ratio_r)))) / 2
    else:
        raise ConfigError(f"`loss_type` is {loss_type!r}; choose one of {', '.join(LOSS_TYPES)}")
    own = sums / counts.clamp(min=1)  # per-token mean log-prob
    return loss, (own[:n_pairs] - own[n_pairs : 2 * n_pairs]).detach()


def _mean_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """KTO's KL estimate is a batch statistic: TRL averages it over every process's batch."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        x = x.clone()
        dist.all_reduce(x)
        x = x / dist.get_world_size()
    return x


class PairLoss:
    """The training loss of a preference trial, called by the trainer on each micro-batch:
    ``(model as the Trainer holds it, the PeftModel inside it, inputs) -> mean loss``."""

    def __init__(self, loss_type: str, beta: float):
        self.loss_type, self.beta = loss_type, float(beta)

    def __call__(self, model, inner, inputs: dict) -> torch.Tensor:
        n_pairs = inputs["input_ids"].shape[0] // (3 if self.loss_type == "kto" else 2)
        reference = reference_logps(inner, inputs, self.loss_type)
        # the policy's pass through the wrapper the Trainer holds (DDP / DeepSpeed see the forward)
        policy = completion_logps(_Forward(model, inner), inputs)
        loss, _ = preference_loss(self.loss_type, self.beta, policy, reference, n_pairs)
        return loss.mean()


class _Forward:
    """``model``'s forward with ``inner``'s attributes: apply_head reads the output head and config
    of the PeftModel while the call itself goes through DDP / the DeepSpeed engine."""

    def __init__(self, model, inner):
        self._model, self._inner = model, inner

    def __call__(self, **kwargs):
        return self._model(**kwargs)

    def __getattr__(self, name):
        return getattr(self._inner, name)

