"""The final round: before export, the top ``--final-round`` trials by eval (plus the best trial at a
known point, and the untrained model) are scored again, row by row, on the eval rows and the
validation rows (``--validation-fraction``; never the test split). The top of the leaderboard is
ranked by that larger scoring, ties broken by the eval loss (a smooth signal), and each comparison
that matters gets a paired 95% interval: the winner against the runner-up, against the best known
point and against the untrained model. ``selection.json`` keeps it all; the report shows it.

Scoring runs as Ray tasks sized like one trial worker (as the baseline does), several at once.
"""

from __future__ import annotations

import json

from lorasweep import log
from lorasweep import selection, storage

BASE = "base"  # the untrained model's entry in selection.json


# ----------------------------------------------------------------------------- on a worker


def score_rows(settings_dict: dict, adapter: str | None, metric: str, secrets: list | None = None) -> dict:
    """One model's record on the eval + validation rows (``lorasweep.selection``'s record form), the
    metric on them, and how many rows of each split."""
    from lorasweep.baseline import loaded

    with loaded(settings_dict, adapter, secrets) as (s, task, tokenizer, model):
        split, _ = task.read(s)
        rows = split.eval + split.validation
        record = task_record(task, model, tokenizer, s, rows, metric)
    return {"record": record, "value": selection.metric_on(record, metric), "eval_rows": len(split.eval),
            "validation_rows": len(split.validation)}


def task_record(task, model, tokenizer, s, rows: list, metric: str) -> dict:
    """What the final round compares: labels (predictions and truth) for label metrics, each row's
    loss and token count for the eval loss, each row's value for a text metric."""
    if metric == "eval_loss":
        return loss_record(task, model, tokenizer, s, rows)
    out = task.score(model, tokenizer, s, rows, [], 0)
    if "predictions" in out and metric in out:
        return {"kind": "labels", "pred": list(out["predictions"]), "truth": list(out["references"]),
                "labels": len(s.labels), "names": list(s.labels)}
    per = (out.get("per_example") or {}).get(metric)
    if per is None:
        raise ValueError(f"task {task.name} gives no per-row {metric}; the final round cannot rank on it")
    return {"kind": "mean", "values": [float(v) for v in per]}


def loss_record(task, model, tokenizer, s, rows: list) -> dict:
    """Token-weighted eval loss, row by row: each row's mean loss weighted by its labelled tokens
    (their weighted mean is exactly the eval_loss a trial reports). Causal LMs score through the
    trial's own eval batches; other tasks give each row's mean loss, weighted equally."""
    from trainers.evaluation import IGNORE_INDEX, eval_batches, evaluate_loss

    examples = task.tokenize(s, tokenizer, rows).examples
    if examples and "labels" in examples[0] and task.peft_task_type == "CAUSAL_LM":
        batches = eval_batches(examples, tokenizer.pad_token_id)
        _, each = evaluate_loss(model, batches, per_example=True)
        counts = [int(n) for b in batches for n in (b["labels"][:, 1:] != IGNORE_INDEX).sum(-1).clamp(min=1)]
        return {"kind": "mean", "values": each, "weights": counts}
    if hasattr(task, "loss"):
        _, each = task.loss(model, tokenizer, examples, (0, 1), per_example=True)
        return {"kind": "mean", "values": list(each)}
    raise ValueError(f"task {task.name} gives no per-row eval_loss; the final round cannot rank on it")


# ----------------------------------------------------------------------------- on the driver


def candidates(rows: list[dict], metric: str, k: int) -> list[dict]:
    """The top ``k`` healthy trials with a checkpoint, and the best trial at a known point when it
    is not among them (so the winner is always compared with what the recipe already knew)."""
    from lorasweep.leaderboard import best_key

    healthy = [r for r in rows if r["status"] != "failed" and r.get(best_key(metric)) is not None
               and r.get("checkpoint")]
    top = healthy[:k]
    known = [r for r in healthy[k:] if r.get("known_point")][:1]
    return top + known


def rerank(rows: list[dict], scored: dict[str, dict], metric: str, mode: str) -> list[dict]:
    """The leaderboard with the trials the final round scored on top, ordered by its value, ties by
    the eval loss at the trial's best report; the rest keep their eval order. Ranks renumbered."""
    from lorasweep.leaderboard import tie_loss

    sign = 1 if mode == "min" else -1
    top = [r for r in rows if r["trial_id"] in scored]
    rest = [r for r in rows if r not in top]
    top.sort(key=lambda r: (sign * scored[r["trial_id"]]["value"], tie_loss(r)))
    out = top + rest
    for i, r in enumerate(out, 1):
        r["rank"] = i
    return out


def _short(label: str) -> str:
    """``known point 1`` of ``known point 1 (moved: learning_rate 0.0002 -> 0.001)``."""
    return label.split(" (", 1)[0]


def _uneven_lengths(ranked: list[dict]) -> str:
    """A note when the scored trials trained to very different lengths (the longest at least twice the
    shortest: ASHA stopped some early): the round then weighs a full-length adapter against ones judged
    at their stop. Empty otherwise."""
    tokens = {r["trial_id"]: int(r.get("tokens_seen") or 0) for r in ranked}
    if len(tokens) < 2 or max(tokens.values()) < 2 * max(min(tokens.values()), 1):
        return ""
    each = ", ".join(f"{r['trial_id']} {tokens[r['trial_id']] / 1000:.1f}k"
                     + (" stopped early" if r.get("status") == "stopped early" else "") for r in ranked)
    return (f"note: the final round compares trials trained to different lengths (tokens: {each}); "
            "a stopped trial is scored as it was when stopped")


def summarise(rows: list[dict], scored: dict[str, dict], metric: str, mode: str) -> tuple[dict, list[str]]:
    """``selection.json``'s content and the console's lines: each scored model's value with its 95%
    interval (also put on its leaderboard row as ``final_round_<metric>``, ``_low``, ``_high``), the
    paired verdicts of the winner, and a warning when the winner is no better than the untrained model."""
    first = next(iter(scored.values()))
    n, n_eval = selection.n_rows(first["record"]), first["eval_rows"]
    lines = [f"final round: {metric} of the top trials on {n} rows ({n_eval} eval + "
             f"{first['validation_rows']} validation), 95% intervals by bootstrap over rows"]
    models = {}
    for name, s in scored.items():
        value, lo, hi = selection.interval(s["record"], metric)
        models[name] = {"value": value, "low": lo, "high": hi}
        row = next((r for r in rows if r["trial_id"] == name), None)
        if row is not None:
            row.update({f"final_round_{metric}": value, f"final_round_{metric}_low": lo,
                        f"final_round_{metric}_high": hi})
    ranked = [r for r in rows if r["trial_id"] in scored]
    for r in ranked:
        m = models[r["trial_id"]]
        tag = f" ({_short(r['known_point'])})" if r.get("known_point") else ""
        lines.append(f"  {r['trial_id']}{tag}: {m['value']:.4f} (95% CI {m['low']:.4f}..{m['high']:.4f})")
    if BASE in models:
        m = models[BASE]
        lines.append(f"  untrained model: {m['value']:.4f} (95% CI {m['low']:.4f}..{m['high']:.4f})")
    comparisons = []
    if ranked:
        best = ranked[0]
        others = []
        if len(ranked) > 1:
            tag = f", {_short(ranked[1]['known_point'])}" if ranked[1].get("known_point") else ""
            others.append((f"best ({best['trial_id']}) vs runner-up ({ranked[1]['trial_id']}{tag})", ranked[1]["trial_id"]))
        known = next((r for r in ranked[1:] if r.get("known_point")), None)
        if known is not None and known is not ranked[1]:  # the runner-up's line already says it
            others.append((f"best vs {_short(known['known_point'])} ({known['trial_id']})", known["trial_id"]))
        if BASE in scored:
            others.append(("best vs the untrained model", BASE))
        for what, other in others:
            c = selection.compare(scored[best["trial_id"]]["record"], scored[other]["record"], metric)
            comparisons.append({"what": what, "a": best["trial_id"], "b": other, "diff": c.diff, "low": c.low,
                                "high": c.high, "p": c.p, "n": c.n, "distinguishable": c.distinguishable})
            lines.append(selection.verdict(what, c, metric, mode))
        if best.get("known_point"):
            lines.append(f"the winner is {_short(best['known_point'])}: the search found nothing better")
        uneven = _uneven_lengths(ranked)
        if uneven:
            lines.append(uneven)
        if BASE in models:
            b, w = models[BASE]["value"], models[best["trial_id"]]["value"]
            worse = w > b if mode == "min" else w < b
            if worse:
                lines.append(f"warning: even the best trial ({best['trial_id']}, {metric} {w:.4f}) is worse than the "
                             f"untrained model ({b:.4f}): the sweep learnt nothing useful; check the learning-rate "
                             "range (--space learning_rate=...) and the data")
    data = {"metric": metric, "mode": mode, "rows": n, "eval_rows": n_eval,
            "validation_rows": first["validation_rows"], "models": models, "comparisons": comparisons,
            "order": [r["trial_id"] for r in ranked],
            "winner_worse_than_base": any("worse than the untrained" in ln for ln in lines),
            "verdicts": [ln for ln in lines[1:] if not ln.startswith("  ")]}
    return data, lines


def run(sweep, res, rows: list[dict]) -> list[dict]:
    """Score the candidates, rerank the top of ``rows``, write ``selection.json`` and print the
    verdicts. Any failure here costs only the final round: the eval ranking stands, with a warning."""
    import ray

    from lorasweep.credentials import share

    k = sweep.options.final_round
    metric, mode = sweep.space.metric, sweep.space.mode
    chosen = candidates(rows, metric, k) if k > 0 else []
    if not chosen:
        return rows
    settings = sweep.settings.to_dict()
    log.say(f"final round: scoring the top {len(chosen)} trial(s) and the untrained model again ...")
    try:
        remote = ray.remote(num_cpus=res.cpus, num_gpus=res.gpus or 0, **res.host_options())(score_rows)
        secrets = share()
        refs = {BASE: remote.remote(settings, None, metric, secrets),
                **{r["trial_id"]: remote.remote(settings, r["checkpoint"], metric, secrets) for r in chosen}}
        scored = {name: ray.get(ref) for name, ref in refs.items()}
    except Exception as e:  # noqa: BLE001 - the sweep's result is on disk; only the re-ranking is lost
        from common.errors import first_line

        log.warn(f"final round skipped ({type(e).__name__}: {first_line(e)[:200]}); "
              "the eval ranking stands")
        return rows
    rows = rerank(rows, {n: s for n, s in scored.items() if n != BASE}, metric, mode)
    data, lines = summarise(rows, scored, metric, mode)
    with storage.writes(f"check that --storage-path {sweep.options.storage_path!r} has free space and write permission"):
        storage.write_text(storage.join(sweep.sweep_dir, "selection.json"), json.dumps(data, indent=2))
    for line in lines:
        log.say(f"{line}")
    return rows
