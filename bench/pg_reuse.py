"""Why reused trial processes leave autoscaled GPU nodes idle (issue 24's GPU-slot figure): Ray Tune
with ``reuse_actors=True`` on a cluster that grows node by node, side by side with it off.

A Ray cluster (``ray.cluster_utils.Cluster``: a 0-GPU head, then one 1-CPU/1-GPU node every
``--add-every`` seconds up to ``--nodes``) runs ``--trials`` short synthetic trials (12 reports, 0.5 s
apart) through Optuna behind a ConcurrencyLimiter of ``--nodes`` and ASHA, as lorasweep's tuner does.
A poller counts the placement groups Tune holds (CREATED) against the trials running (between
on_trial_start and the trial's end). Printed per side: how many processes ran trials, the mean of
(placement groups held - trials running), the wall time.

Seen on 2 cores (Dec 4, 12 nodes, 64 trials): reuse on, all 64 trials ran in 3 processes while up
to 12 placement groups were held (mean excess 6.7). My reading of Ray 2.60's
``TuneController._maybe_reuse_cached_actor`` (not traced): a trial waiting for its new process on a
new node takes a finished trial's cached process instead, Tune removes the new one before it
starts, then asks for another placement group for the next trial, and so on. Reuse off: 64
processes, mean excess 6.5 (each trial's own start-up). Whether it bites depends on a process's
start-up against a trial's length: on these 2 cores start-up is longer than a short trial, so a
new node's process never wins; on a GPU cluster trials last minutes.

    python bench/pg_reuse.py                 # both sides, ~4 min on 2 cores
    python bench/pg_reuse.py --side reuse    # one side
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time


def side(nodes: int, trials: int, reuse: bool, add_every: float) -> dict:
    import ray
    from ray import tune
    from ray.cluster_utils import Cluster
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "num_gpus": 0})
    ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)

    def trainable(config):
        for i in range(1, 13):
            time.sleep(0.5)
            tune.report({"loss": config["x"] + 1.0 / i, "pid": os.getpid()})

    running: set = set()
    pids: set = set()

    class Track(tune.Callback):
        def on_trial_start(self, iteration, trials, trial, **info):
            running.add(trial.trial_id)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            pids.add(result["pid"])

        def on_trial_complete(self, iteration, trials, trial, **info):
            running.discard(trial.trial_id)

        def on_trial_error(self, iteration, trials, trial, **info):
            running.discard(trial.trial_id)

    samples, stop = [], threading.Event()

    def poll():
        while not stop.is_set():
            held = sum(p["state"] == "CREATED" for p in ray.util.placement_group_table().values())
            samples.append((held, len(running)))
            time.sleep(0.5)

    search = ConcurrencyLimiter(OptunaSearch(metric="loss", mode="min", seed=0), max_concurrent=nodes)
    tuner = tune.Tuner(
        tune.with_resources(trainable, tune.PlacementGroupFactory([{"CPU": 1, "GPU": 1}])),
        param_space={"x": tune.uniform(0, 1)},
        tune_config=tune.TuneConfig(search_alg=search, num_samples=trials, reuse_actors=reuse,
                                    scheduler=ASHAScheduler(metric="loss", mode="min", max_t=12, grace_period=2)),
        run_config=tune.RunConfig(verbose=0, callbacks=[Track()]))
    threading.Thread(target=poll, daemon=True).start()
    t0 = time.time()
    fitter = threading.Thread(target=tuner.fit, daemon=True)  # nodes are added from the main thread
    fitter.start()
    time.sleep(1.0)
    for _ in range(nodes):
        cluster.add_node(num_cpus=1, num_gpus=1)
        time.sleep(add_every)
    fitter.join()
    stop.set()
    return {"reuse_actors": reuse, "nodes": nodes, "trials": trials, "wall_s": round(time.time() - t0, 1),
            "processes_that_ran_trials": len(pids),
            "mean_held_minus_running": round(sum(h - r for h, r in samples) / max(len(samples), 1), 2),
            "max_held_minus_running": max((h - r for h, r in samples), default=0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=12)
    ap.add_argument("--trials", type=int, default=64)
    ap.add_argument("--add-every", type=float, default=1.5)
    ap.add_argument("--side", choices=("both", "reuse", "no-reuse"), default="both")
    a = ap.parse_args()
    if a.side != "both":
        print(json.dumps(side(a.nodes, a.trials, a.side == "reuse", a.add_every)), flush=True)
        return
    for name in ("reuse", "no-reuse"):  # each in a process of its own: one Ray cluster per process
        out = subprocess.run([sys.executable, __file__, "--side", name, "--nodes", str(a.nodes), "--trials",
                              str(a.trials), "--add-every", str(a.add_every)], capture_output=True, text=True,
                             env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
        lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
        print(lines[-1] if lines else f"{name}: exit {out.returncode}: {out.stderr[-1500:]}", flush=True)


if __name__ == "__main__":
    main()
