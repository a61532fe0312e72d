"""The runs around the sweep itself: the base model scored before it and the best adapter after it
(``baseline.json``), ``--repeats`` of the top configurations, and ``--finalize``'s retrained winner."""

from __future__ import annotations

import json

from lorasweep import log
from lorasweep import storage
from lorasweep.recipe import ResolvedSweep
from lorasweep.tuner import build_tuner, fit
from trainers.config import Resources


def run_repeats(sweep: ResolvedSweep, res: Resources, n: int, rows: list[dict], argv: list[str]) -> int:
    """``--repeats``: the top 3 healthy configurations again, ``repeats`` times each with other
    training seeds, then their mean and spread in the leaderboard (``runs``, ``mean_<metric>``,
    ``std_<metric>``). Returns 0, or 130 when a Ctrl-C ended it (resume continues it)."""
    from lorasweep.leaderboard import add_repeats

    knobs = list(sweep.space.params)
    top = [r for r in rows if r["status"] != "failed" and r.get(f"best_{sweep.space.metric}") is not None][:3]
    points = [{**{k: r[k] for k in knobs}, "repeat": i} for r in top for i in range(1, sweep.options.repeats + 1)]
    if not points:
        return 0
    log.say(f"repeats: the top {len(top)} configuration(s) {sweep.options.repeats} more time(s) each, "
          "other training seeds, same data")
    grid, interrupted = fit(build_tuner(sweep, res, n, repeat_points=points))
    if interrupted:
        from lorasweep.results import resume_command

        log.say(f"interrupted during the repeats; resume with: {resume_command(argv, sweep.command)}")
        return 130
    add_repeats(sweep, rows, grid)
    return 0


def run_final(sweep: ResolvedSweep, res: Resources, rows: list[dict], argv: list[str]) -> str | None:
    """``--finalize``: the winner's knobs once more on train + eval rows for the whole token budget,
    exported to ``final_adapter/rank_1``; its path (the baseline scores it once on the test split),
    "interrupted", or None when there is no winner."""
    from lorasweep.best_adapters import export_best
    from lorasweep.leaderboard import leaderboard_rows
    from lorasweep.results import resume_command

    knobs = list(sweep.space.params)
    winner = next((r for r in rows if r["status"] != "failed" and r.get(f"best_{sweep.space.metric}") is not None), None)
    if winner is None:
        return None
    log.say(f"final run: {winner['trial_id']}'s knobs on train + eval rows, "
          f"{sweep.settings.max_tokens:,} tokens")
    grid, interrupted = fit(build_tuner(sweep, res, 1, repeat_points=[{**{k: winner[k] for k in knobs}, "train_on_eval": True}],
                                        suffix="final"))
    if interrupted:
        log.say(f"interrupted during the final run; resume with: {resume_command(argv, sweep.command)}")
        return "interrupted"
    # Its eval rows trained too, so its eval metric only improves along the run: its best report is
    # its last one, at the whole budget (no early stopping here).
    final_rows = leaderboard_rows(grid, knobs, sweep.space.metric, sweep.space.mode, (), sweep.options.storage_path)
    exported = export_best(final_rows, knobs, sweep, 1, folder="final_adapter")
    if not exported:
        log.say("the final run left no checkpoint; nothing exported")
        return None
    log.say(f"final adapter: {exported[0]}")
    return exported[0]


def wants_baseline(sweep: ResolvedSweep) -> bool:
    from trainers.tasks import get_task

    return sweep.options.baseline and get_task(sweep.settings.task).has_test_metrics


def run_baseline(sweep: ResolvedSweep, res: Resources, base: dict | None = None, final: str | None = None) -> dict:
    """Before the sweep (``base`` None): the base model at every ``--shots``. After it: the best
    adapter (zero-shot) beside those. Both write ``baseline.json`` and print the table."""
    from lorasweep import baseline
    from trainers.tasks import get_task

    path = storage.join(sweep.sweep_dir, "baseline.json")
    settings = sweep.settings.to_dict()
    if base is None:
        earlier = storage.read_json(path) if sweep.options.resume else None  # None: not there
        if earlier is not None:
            return earlier
        # k-shot prompts are for instruction models; a classification head reads no examples
        shots = list(sweep.options.shots) if get_task(sweep.settings.task).takes_shots else [0]
        log.say(f"scoring the base model ({', '.join(f'{k}-shot' for k in shots)}) on the test split ...")
        results = {f"base {k}": v for k, v in baseline.run_remote(settings, res, None, shots).items()}
    else:
        best = storage.join(sweep.sweep_dir, "best_adapters", "rank_1")
        results = {**base, "tuned": baseline.run_remote(settings, res, best, [0])["0-shot"]}
        if final:  # --finalize: the winner retrained on train + eval, scored once on the same test rows
            results["final"] = baseline.run_remote(settings, res, final, [0])["0-shot"]
    with storage.writes(f"check that --storage-path {sweep.options.storage_path!r} has free space and write permission"):
        storage.write_text(path, json.dumps(results, indent=2, default=str))
        samples = baseline.samples_rows(results)
        if samples:  # generation tasks: base and tuned answers to the same prompts, side by side
            storage.write_text(storage.join(sweep.sweep_dir, "samples.jsonl"), "".join(json.dumps(r) + "\n" for r in samples))
    shown = {k: {m: v for m, v in r.items() if m not in baseline.PER_EXAMPLE} for k, r in results.items()}
    print(baseline.table(shown, get_task(sweep.settings.task).metric_names(sweep.settings)))
    return results
