"""Scoring: token-weighted eval loss, classification metrics, and label scoring by log-likelihood.

Every function here works offline (scikit-learn for the metrics; nothing is fetched from the Hub
as ``evaluate.load`` would) and shards its work across the workers of a trial, all-reducing sums.
"""

from __future__ import annotations

import math
import sys

import torch
import torch.distributed as dist

from trainers.chat import IGNORE_INDEX, Collator

EVAL_BATCH_SIZE = 8
# Logits are built for at most this many (token x vocab) entries at a time: 512 tokens of Llama-3's
# 128,256-word vocabulary = 256 MB in fp32, where a whole batch (8 rows x 2,047 tokens) is 8.4 GB,
# and log_softmax and the shift each copy it again.
LOGITS_PER_CHUNK = 2**26


def world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_sum(values: list[float]) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        if dist.get_backend() == "nccl":
            t = t.cuda()
        dist.all_reduce(t)
    return t.cpu().tolist()


def all_gather_lists(items: list) -> list:
    """Every rank's list, concatenated in rank order."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        out = [None] * dist.get_world_size()
        dist.all_gather_object(out, items)
        return [x for part in out for x in part]
    return list(items)


def model_device(model) -> torch.device:
    return next(p for p in model.parameters()).device


class eval_mode:  # noqa: N801  (used as a context manager, like torch.no_grad)
    """model.eval() + no_grad for the block, the previous mode restored after."""

    def __init__(self, model):
        self.model, self.was_training = model, model.training

    def __enter__(self):
        self.model.eval()
        self.grad = torch.no_grad()
        self.grad.__enter__()

    def __exit__(self, *exc):
        self.grad.__exit__(*exc)
        if self.was_training:
            self.model.train()


def shard_calls(n: int, per_call: int, shard: tuple[int, int]) -> list[tuple[list[int], bool]]:
    """This rank's forward calls over ``n`` items: the item indices of each call (at most
    ``per_call``) and whether its results count.

    Items are dealt round-robin (rank r scores r, r + world, ...), and every rank makes the same
    number of calls, ceil(ceil(n / world) / per_call): under ZeRO-3 each forward gathers every
    layer's weights from all ranks, so a rank that made one call fewer would leave the others
    waiting in that collective forever. A rank short of calls repeats one item and drops the result.
    """
    rank, world_size = shard
    mine = list(range(rank, n, world_size))
    calls = [(mine[i : i + per_call], True) for i in range(0, len(mine), per_call)]
    total = math.ceil(math.ceil(n / world_size) / per_call)
    spare = [mine[0] if mine else 0]
    return calls + [(spare, False)] * (total - len(calls))


# ----------------------------------------------------------------------------- logits where they are needed

_FULL_LOGITS: set[str] = set()  # model classes whose logits lm_head(hidden) does not reproduce


def _logit_postprocessing(model):
    """What a model's forward does to ``lm_head(hidden)``, for the known cases: Gemma-2/3's final
    soft-capping, Granite's ``logits_scaling``, Cohere's ``logit_scale`` (``apply_head`` checks the
    result against the model's own logits every batch)."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    cap = getattr(config, "final_logit_softcapping", None)
    divide = getattr(config, "logits_scaling", None)
    scale = getattr(config, "logit_scale", None)

    def post(logits):
        if divide is not None:
            logits = logits / divide
        if scale is not None:
            logits = logits * scale
        if cap is not None:  # the order of Gemma2ForCausalLM.forward
            logits = torch.tanh(logits / cap) * cap
        return logits

    return post


def apply_head(model, inputs: dict, fn):
    """``fn(hidden, logits_of)`` for one forward pass without logits for the whole batch.

    ``hidden`` is what the model's output head receives (batch x seq x hidden) and ``logits_of(h)``
    the model's logits for any rows ``h`` of it (the head and the model's post-processing), so ``fn``
    builds logits only where it needs them, a chunk at a time. ``fn`` runs inside the forward, in a
    pre-hook of the head, so under ZeRO-3 the head's weight is gathered once for all its chunks; the
    head itself then gets only each row's last position, and the model's logits there are checked
    against ``logits_of``. A model whose logits that does not reproduce (an unknown post-processing)
    is scored from its full logits instead (``fn(logits, identity)``), with one warning.
    """
    kind = type(getattr(model, "get_base_model", lambda: model)()).__name__
    head = model.get_output_embeddings() if kind not in _FULL_LOGITS else None
    if head is not None:
        post, state = _logit_postprocessing(model), {}

        def logits_of(h):
            # .forward: no module hooks; under ZeRO-3 the weight was gathered for the call we are in
            return post(head.forward(h))

        def tap(module, args):
            if state or not args or args[0].dim() != 3:  # a second call, keywords, not batch x seq x hidden
                return None
            hidden = args[0]
            state["result"], state["last"] = fn(hidden, logits_of), logits_of(hidden[:, -1:])
            return (hidden[:, -1:], *args[1:])

        handle = head.register_forward_pre_hook(tap)
        try:
            theirs = model(**inputs).logits
        finally:
            handle.remove()
        ours = state.get("last")
        if ours is not None and ours.shape == theirs.shape and \
                (theirs.float() - ours.float()).abs().max() <= 1e-3 * (1 + theirs.float().abs().max()):
            return state["result"]
        _FULL_LOGITS.add(kind)
        print(f"warning: {kind}'s logits are not its lm_head's output as trainers/evaluation.py computes it; "
              "eval builds its full logits instead (batch x sequence x vocabulary memory)", file=sys.stderr)
    return fn(model(**inputs).logits, lambda x: x)


# ----------------------------------------------------------------------------- language modelling loss


def eval_batches(examples: list[dict], pad_id: int) -> list[dict]:
    """Unpacked, length-sorted, fixed batches: every trial (packed or not) and the reload check
    score exactly the same tokens the same way."""
    collate = Collator(pad_id, packed=False)
    ex = sorted(examples, key=lambda e: len(e["input_ids"]))
    return [collate(ex[i : i + EVAL_BATCH_SIZE]) for i in range(0, len(ex), EVAL_BATCH_SIZE)]


def evaluate_loss(model, batches: list[dict], shard: tuple[int, int] = (0, 1), per_example: bool = False):
    """Token-weighted mean cross-entropy over every labelled token of the eval split.

    Summed per token (not averaged per batch), so it does not depend on batch size or the number
    of workers; each worker scores every ``world``-th batch and the sums are all-reduced. Logits are
    built only for labelled tokens, ``LOGITS_PER_CHUNK`` entries at a time (``apply_head``). Every
    batch is cut into the same number of chunks (as many as the batch with the most labelled tokens
    needs), so a head whose calls are collectives (LoRA on lm_head under ZeRO-3) runs equally often
    on every rank. ``per_example``: also each row's own mean loss, in batch order (this process's
    rows; the baseline scores in one process), as ``(loss, [row losses])``.
    """
    device = model_device(model)
    vocab = getattr(model.config.get_text_config(), "vocab_size", None) or 2**17
    per_chunk = max(1, LOGITS_PER_CHUNK // vocab)
    labelled = [int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches]
    n_chunks = max(1, math.ceil(max(labelled, default=0) / per_chunk))

    def batch_loss(labels):
        def fn(hidden, logits_of):
            targets = labels[:, 1:]
            keep = targets != IGNORE_INDEX
            h, t, row = hidden[:, :-1][keep], targets[keep], keep.nonzero()[:, 0]
            rows = torch.zeros(len(labels), dtype=torch.float64, device=hidden.device)
            for hc, tc, rc in zip(h.tensor_split(n_chunks), t.tensor_split(n_chunks), row.tensor_split(n_chunks)):
                ce = torch.nn.functional.cross_entropy(logits_of(hc).float(), tc, reduction="none").double()
                rows.index_add_(0, rc, ce)
            return rows

        return fn

    loss_sum, count, each = 0.0, 0.0, []
    with eval_mode(model):
        for (i,), keep in shard_calls(len(batches), 1, shard):
            batch = batches[i]
            inputs = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
            rows = apply_head(model, inputs, batch_loss(batch["labels"].to(device)))
            if keep:
                loss_sum += rows.sum().item()
                count += labelled[i]
                if per_example:
                    n = (batch["labels"][:, 1:] != IGNORE_INDEX).sum(-1).clamp(min=1)
                    each += (rows.cpu() / n).tolist()
    loss_sum, count = all_reduce_sum([loss_sum, count])
    loss = loss_sum / max(count, 1.0)
    return (loss, each) if per_example else loss


# ----------------------------------------------------------------------------- classification metrics


def classification_metrics(y_true: list[int], y_pred: list[int], labels: tuple[str, ...]) -> dict:
    """accuracy, precision, recall, F1 (binary on the last label for two classes, as sklearn's
    default and the IMDB/SST-2 projects report it; macro-averaged for more), and accuracy on
    each class separately (``accuracy_<label>``: that class's recall)."""
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    ids = list(range(len(labels)))
    avg = "binary" if len(labels) == 2 else "macro"
    p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=ids, average=avg, zero_division=0,
                                                 **({"pos_label": 1} if avg == "binary" else {}))
    out = {"accuracy": float(accuracy_score(y_true, y_pred)) if y_true else 0.0,
           "precision": float(p), "recall": float(r), "f1": float(f)}
    for i, name in enumerate(labels):
        n = sum(1 for t in y_true if t == i)
        out[f"accuracy_{name}"] = sum(1 for t, q in zip(y_true, y_pred) if t == i and q == i) / n if n else 0.0
    return out


def per_class_names(labels: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(f"accuracy_{name}" for name in labels)


# ----------------------------------------------------------------------------- label scoring (causal LMs)


def label_logprobs(model, prompts: list[list[int]], options: list[list[int]], pad_id: int,
                   shard: tuple[int, int] = (0, 1), batch_size: int = EVAL_BATCH_SIZE) -> list[list[float]]:
    """Summed log-probability of every label option after each of this rank's prompts (every
    ``world``-th, from its rank), teacher-forced: one forward pass per (prompt, option) pair in
    batches, no sampling and no parsing of generated text. Logits are built only at the options'
    positions (``apply_head``)."""
    device = model_device(model)
    scores: list[list[float]] = []
    with eval_mode(model):
        for idx, keep in shard_calls(len(prompts), batch_size, shard):
            pairs = [(i, j) for i in idx for j in range(len(options))]
            seqs = [prompts[i] + options[j] for i, j in pairs]
            width = max(map(len, seqs))
            ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            rows, cols, targets = [], [], []
            for r, ((i, j), s) in enumerate(zip(pairs, seqs)):
                ids[r, : len(s)] = torch.tensor(s)
                mask[r, : len(s)] = 1
                # token t of the option is predicted at position p + t - 1
                p, o = len(prompts[i]), options[j]
                rows += [r] * len(o)
                cols += range(p - 1, p - 1 + len(o))
                targets += o
            fn = _summed_logprobs(*(torch.tensor(x, device=device) for x in (rows, cols, targets)), len(seqs))
            sums = apply_head(model, {"input_ids": ids.to(device), "attention_mask": mask.to(device)}, fn).tolist()
            if keep:
                scores += [sums[k * len(options) : (k + 1) * len(options)] for k in range(len(idx))]
    return scores


def _summed_logprobs(rows: torch.Tensor, cols: torch.Tensor, targets: torch.Tensor, n_rows: int):
    """For ``apply_head``: per row, the summed log-probability of ``targets`` at ``(rows, cols)``."""

    def fn(hidden, logits_of):
        logp = torch.log_softmax(logits_of(hidden[rows, cols]).float(), -1)
        picked = logp.gather(-1, targets[:, None])[:, 0].double()
        return torch.zeros(n_rows, dtype=torch.float64, device=picked.device).index_add_(0, rows, picked)

    return fn


def generate_answers(model, tokenizer, prompts: list[list[int]], max_new_tokens: int,
                     shard: tuple[int, int] = (0, 1), stop_ids: list[int] | None = None) -> list[str]:
    """Greedy answers to this rank's prompts (every ``world``-th, in batches), decoded without special
    tokens. A decoder's prompts are left-padded and its answer is what follows them; an
    encoder-decoder's (T5) are right-padded and its decoder writes only the answer. ``stop_ids``:
    tokens that end an answer besides eos (a chat template's end-of-turn). Under ZeRO-3
    Transformers keeps the ranks' decoding steps in step (``synced_gpus``); ``shard_calls`` keeps
    their ``generate`` calls so."""
    device = model_device(model)
    seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))
    out = []
    pad = tokenizer.pad_token_id
    eos = [t for t in dict.fromkeys([tokenizer.eos_token_id, *(stop_ids or [])]) if t is not None]
    with eval_mode(model):
        for idx, keep in shard_calls(len(prompts), EVAL_BATCH_SIZE, shard):
            chunk = [prompts[i] for i in idx]
            width = max(map(len, chunk))
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for r, p in enumerate(chunk):
                at = slice(0, len(p)) if seq2seq else slice(width - len(p), width)
                ids[r, at] = torch.tensor(p)
                mask[r, at] = 1
            # use_cache: a trial's model has it off for training (packing needs that); generation
            # without it recomputes the whole prefix at every new token.
            gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                                 num_beams=1, max_new_tokens=max_new_tokens, pad_token_id=pad,
                                 eos_token_id=eos or None, use_cache=True)
            if keep:
                out += tokenizer.batch_decode(gen if seq2seq else gen[:, width:], skip_special_tokens=True)
    return [text.strip() for text in out]


def valid_label(answer: str, labels: tuple[str, ...]) -> int | None:
    """The label a free answer names (case and surrounding punctuation ignored), or None."""
    lines = answer.strip().splitlines()
    text = (lines[0] if lines else "").strip().strip(".!\"'").strip().lower()
    for i, name in enumerate(labels):
        if text == name.lower():
            return i
    return None
