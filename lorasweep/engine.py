"""The driver every sweep script shares, phase by phase: resolve the command line (resolve.py), check
the inputs and the cluster (preflight.py, cluster.py), run the Tuner (tuner.py), then the leaderboard,
the final round, the export and the report (results.py, final_round.py, report.py).

A sweep script declares a ``Recipe`` (lorasweep/recipe.py) and calls ``main``. Nothing here knows a
model family or a dataset: those come from ``trainers/`` and the recipe.
"""

from __future__ import annotations

import sys
import time

from lorasweep import log, storage
from lorasweep.cluster import cluster_resources, concurrency, init_ray, trial_resources
from lorasweep.dry_run import data_line, dry_run_report
from common.errors import ConfigError, StorageError
from lorasweep.extra_runs import run_baseline, run_final, run_repeats, wants_baseline
from lorasweep.recipe import Preset, Recipe
from lorasweep.resolve import resolve
from lorasweep.tuner import build_tuner, fit, optuna_storage, optuna_url

__all__ = ["Preset", "Recipe", "main"]


def main(recipe: Recipe, argv: list[str] | None = None, command: str = "", recipe_ref: str = "") -> int:
    """Run (or dry-run) a sweep of ``recipe`` from command-line flags. ``command`` is how the user
    called it (``lorasweep run llama_finetome``; default: ``python <this script>``): --help and the
    resume line say it."""
    from lorasweep import (autoscaler, benchmarks, dashboard, final_round, gpu_memory, gpus, preflight, selection,
                           sweepfile)
    from lorasweep.results import finish, publish, resume_command, write_start

    argv = sys.argv[1:] if argv is None else argv
    sweep = None
    try:
        sweep = resolve(recipe, argv, prog=command or None, recipe_ref=recipe_ref)
        sweep.command = command
        inputs = preflight.check_inputs(sweep)  # paths, the model's limits, the data: still no Ray
    except ConfigError as e:
        e = sweepfile.locate(e, sweep.file, sweep.given) if sweep is not None else e
        for line in e.problems:
            print(f"error: {line}", file=sys.stderr)
        return 2
    options = sweep.options
    if inputs.data and not options.dry_run:
        log.say(f"{data_line(inputs.data)}")
        for line in selection.sweep_noise_lines(sweep, inputs.data):
            log.say(f"{line}")
    started = False
    try:
        if options.dry_run and not options.address:
            # Nothing to ask a cluster: this machine's CPUs and GPUs are what a local Ray would offer.
            cluster = preflight.local_cluster()
        else:
            init_ray(options)
            if not options.dry_run:
                log.say(dashboard.line(options.address))
            cluster = cluster_resources()
        if options.autoscale:
            cluster = autoscaler.with_addable_node_types(cluster)
        res = trial_resources(options, cluster, sweep)
        preflight.check_cluster(options, res, cluster)
        preflight.check_paths_on_nodes(sweep, res)
        gpus.check_attention(sweep.settings, res)
        gpu_memory.check_load(sweep, inputs, res, cluster)
        if not (options.dry_run and not options.address):  # a local dry run starts no Ray to ask
            gpus.check_gpu_nodes(sweep.settings, res)
        n = concurrency(options, res, cluster)
        if options.dry_run:
            print(dry_run_report(sweep, inputs, res, cluster, n))
            return 0
        if options.optuna_storage:  # a URL the user gave: refused here, before any trial
            optuna_storage(sweep)
        write_start(sweep, inputs)
        started = True
    except ConfigError as e:
        for line in sweepfile.locate(e, sweep.file, sweep.given).problems:
            print(f"error: {line}", file=sys.stderr)
        return 2
    finally:
        if not started:  # a dry run or a refusal: the sweep folder the checks made goes again
            preflight.remove_created(inputs.created)

    try:
        for seed in sweep.space.known_points:
            label = sweep.space.known_point_label(seed)
            if "moved" in label:  # a narrowed --space changed what the recipe knew worked: say so
                log.say(f"{label}")
        baseline = run_baseline(sweep, res) if wants_baseline(sweep) else None
        trials = options.num_samples
        if sweep.data is not None:
            log.say(f"data: {sweep.data.line()}")
        log.say(f"{options.name}: {trials} trial{'s' * (trials != 1)}, {n} at once, "
              f"{res.workers} worker(s)/trial ({res.cpus:g} CPU, {res.gpus:g} GPU each); results in {sweep.sweep_dir}")
        if sweep.warm is not None:
            for line in sweep.warm.lines():
                log.say(line)
        if optuna_url(sweep):
            log.say(f"Optuna study {sweep.options.name!r}: {storage.redact(optuna_url(sweep))} (optuna-dashboard shows it)")
        t0 = time.time()
        tuner = build_tuner(sweep, res, n)
        try:
            grid, interrupted = fit(tuner)  # a first Ctrl-C makes Tune save its state and return early
        except KeyboardInterrupt:  # a second one lands here
            print()
            log.say(f"interrupted: everything written so far is kept in {sweep.sweep_dir}")
            log.say(f"resume with: {resume_command(argv, sweep.command)}")
            return 130
        rc, rows, exported = finish(sweep, grid, time.time() - t0, argv, interrupted,
                                    select=lambda rows: final_round.run(sweep, res, rows))
        if rc == 0 and sweep.options.repeats:
            rc = run_repeats(sweep, res, n, rows, argv)
        final = run_final(sweep, res, rows, argv) if rc == 0 and sweep.options.finalize else None
        rc = 130 if final == "interrupted" else rc
        if rc == 0 and baseline is not None:
            run_baseline(sweep, res, baseline, final=final)
        if rc == 0 and options.lm_eval and exported:  # before publish: the report and trackers read them
            benchmarks.run(sweep, res, exported)
        publish(sweep, rows, exported, summary_run=rc != 130)  # the report (finished or interrupted), W&B
    except StorageError as e:  # a write under --storage-path failed: what was written before stays
        print(f"error: {e}", file=sys.stderr)
        return 2
    return rc


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit("run a sweep script, e.g. python sweeps/llama_finetome.py --preset smoke")
