"""Scoring: token-weighted eval loss, classification metrics, and label scoring by log-likelihood.

Every function here works offline (scikit-learn for the metrics; nothing is fetched from the Hub
as ``evaluate.load`` would) and shards its work across the workers of a trial, all-reducing sums.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from trainers.chat import IGNORE_INDEX, Collator

EVAL_BATCH_SIZE = 8


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


# ----------------------------------------------------------------------------- language modelling loss


def eval_batches(examples: list[dict], pad_id: int) -> list[dict]:
    """Unpacked, length-sorted, fixed batches: every trial (packed or not) and the reload check
    score exactly the same tokens the same way."""
    collate = Collator(pad_id, packed=False)
    ex = sorted(examples, key=lambda e: len(e["input_ids"]))
    return [collate(ex[i : i + EVAL_BATCH_SIZE]) for i in range(0, len(ex), EVAL_BATCH_SIZE)]


def evaluate_loss(model, batches: list[dict], shard: tuple[int, int] = (0, 1)) -> float:
    """Token-weighted mean cross-entropy over every labelled token of the eval split.

    Summed per token (not averaged per batch), so it does not depend on batch size or the number
    of workers; each worker scores every ``world``-th batch and the sums are all-reduced.
    """
    rank, n = shard
    device = model_device(model)
    loss_sum, count = 0.0, 0.0
    with eval_mode(model):
        for batch in batches[rank::n]:
            inputs = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
            logits = model(**inputs).logits.float()
            labels = batch["labels"].to(device)[:, 1:]
            loss_sum += torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=IGNORE_INDEX,
                reduction="sum").item()
            count += (labels != IGNORE_INDEX).sum().item()
    loss_sum, count = all_reduce_sum([loss_sum, count])
    return loss_sum / max(count, 1.0)


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
                   batch_size: int = EVAL_BATCH_SIZE) -> list[list[float]]:
    """Summed log-probability of every label option after every prompt, teacher-forced: one forward
    pass per (prompt, option) pair in batches, no sampling and no parsing of generated text."""
    device = model_device(model)
    pairs = [(i, j) for i in range(len(prompts)) for j in range(len(options))]
    scores = [[0.0] * len(options) for _ in prompts]
    with eval_mode(model):
        for start in range(0, len(pairs), batch_size * len(options)):
            chunk = pairs[start : start + batch_size * len(options)]
            seqs = [prompts[i] + options[j] for i, j in chunk]
            width = max(map(len, seqs))
            ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for r, s in enumerate(seqs):
                ids[r, : len(s)] = torch.tensor(s)
                mask[r, : len(s)] = 1
            logp = torch.log_softmax(model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float(), -1)
            for r, (i, j) in enumerate(chunk):
                p, o = len(prompts[i]), options[j]
                # token t of the option is predicted at position p + t - 1
                pos = torch.arange(p - 1, p - 1 + len(o), device=logp.device)
                scores[i][j] = float(logp[r, pos, torch.tensor(o, device=logp.device)].sum())
    return scores


def generate_answers(model, tokenizer, prompts: list[list[int]], max_new_tokens: int) -> list[str]:
    """Greedy answers (left-padded batches), for counting how often free generation gives a valid label."""
    device = model_device(model)
    out = []
    pad = tokenizer.pad_token_id
    with eval_mode(model):
        for start in range(0, len(prompts), EVAL_BATCH_SIZE):
            chunk = prompts[start : start + EVAL_BATCH_SIZE]
            width = max(map(len, chunk))
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for r, p in enumerate(chunk):
                ids[r, width - len(p):] = torch.tensor(p)
                mask[r, width - len(p):] = 1
            gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                                 max_new_tokens=max_new_tokens, pad_token_id=pad, use_cache=True)
            out += tokenizer.batch_decode(gen[:, width:], skip_special_tokens=True)
    return out


def valid_label(answer: str, labels: tuple[str, ...]) -> int | None:
    """The label a free answer names (case and surrounding punctuation ignored), or None."""
    lines = answer.strip().splitlines()
    text = (lines[0] if lines else "").strip().strip(".!\"'").strip().lower()
    for i, name in enumerate(labels):
        if text == name.lower():
            return i
    return None
