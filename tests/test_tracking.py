"""W&B tracking, checked on the offline files that a real (tiny) Ray Tune sweep leaves on disk.

The `.wandb` transaction logs are decoded by wandb's own reader (`wandb leet inspect --json`,
which runs wandb-core; wandb 0.31 has no Python reader any more).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lorasweep.tracking import _wandb_root, log_summary, tune_callbacks

FAKE_KEY = "wandb-fake-key-0123456789abcdef0123456789abcdef01234567"
KNOBS = ["r", "lora_alpha", "use_rslora", "packing", "warmup_ratio", "learning_rate"]


@pytest.fixture(scope="module")
def wandb_home(tmp_path_factory):
    """wandb's own folders (core logs, artifact staging, settings) in a temp dir, so the key scan
    sees them and nothing lands in ~."""
    home = tmp_path_factory.mktemp("wandb_home")
    with pytest.MonkeyPatch.context() as mp:
        for var in ("WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR"):
            mp.setenv(var, str(home / var.lower()))
        mp.setenv("WANDB_MODE", "offline")
        mp.delenv("WANDB_API_KEY", raising=False)
        yield home


@pytest.fixture(scope="module")
def ray_session(wandb_home):
    """A real local Ray, started before any test puts the key in the environment: Ray's workers
    inherit the driver's env at ray.init, so the key can reach an actor only through our code."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield Path(ray._private.worker._global_node.get_session_dir_path())
    finally:
        ray.shutdown()


def records(run_dir: Path) -> list[dict]:
    (log,) = run_dir.glob("run-*.wandb")
    out = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(log)],
                         capture_output=True, text=True, check=True, timeout=120)
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def of_type(recs: list[dict], kind: str) -> list[dict]:
    return [r[kind] for r in recs if r["type"] == kind]


def assert_no_key(*roots: Path) -> None:
    scanned = 0
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                assert FAKE_KEY.encode() not in path.read_bytes(), f"the API key leaked into {path}"
                scanned += 1
    assert scanned > 0


def fake_trial(config):
    from ray import tune

    for i in range(3):
        tune.report({"eval_loss": (3.0 - i) * config["r"] / 8, "tokens_seen": 1000 * (i + 1)})


def test_no_project_means_no_tracking(tmp_path):
    assert tune_callbacks(None, "demo", str(tmp_path / "demo")) == []
    assert log_summary(None, "demo", str(tmp_path / "demo"), [{"rank": 1}], KNOBS, [], {}) is None
    assert list(tmp_path.iterdir()) == []


def test_uri_sweeps_keep_wandb_files_in_the_local_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("LORASWEEP_CACHE", str(tmp_path))
    assert _wandb_root("s3://bucket/sweeps/demo", "demo") == str(tmp_path / "wandb" / "demo")
    assert _wandb_root(str(tmp_path / "demo"), "demo") == str(tmp_path / "demo")


@pytest.mark.slow  # a real Ray: 15-40 s to start and 30-55 s for 2 trials on a shared 2-core machine
def test_every_trial_is_a_wandb_run_and_the_key_stays_out(ray_session, wandb_home, tmp_path, monkeypatch):
    from ray import tune

    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)  # offline needs no key: it must not travel at all
    sweep_dir = tmp_path / "runs" / "demo"
    seeds = {"lora_alpha": 16, "use_rslora": True, "packing": False, "warmup_ratio": 0.05, "learning_rate": 1e-3}
    from trainers.config import TrainSettings, TrialConfig

    trial = TrialConfig(TrainSettings(model="tiny", max_tokens=3000), train_storage=str(sweep_dir / "train_runs"))
    param_space = trial.to_tune({"r": tune.grid_search([8, 16]), **seeds})
    grid = tune.Tuner(
        tune.with_resources(fake_trial, {"cpu": 1}),  # 2 trials x 1 CPU: all of the cluster
        param_space=param_space,
        tune_config=tune.TuneConfig(metric="eval_loss", mode="min"),
        run_config=tune.RunConfig(name="demo", storage_path=str(tmp_path / "runs"), verbose=0,
                                  callbacks=tune_callbacks("lorasweep-test", "demo", str(sweep_dir))),
    ).fit()
    trials = {res.metrics["trial_id"]: res.config["r"] for res in grid}
    assert len(trials) == 2 and not grid.errors

    run_dirs = sorted((sweep_dir / "wandb").glob("offline-run-*"))
    assert len(run_dirs) == 2
    for run_dir in run_dirs:
        recs = records(run_dir)
        (run,) = of_type(recs, "run")
        assert run["run_group"] == "demo" and run["project"] == "lorasweep-test" and run["job_type"] == "trial"
        assert run["run_id"] in trials and run["display_name"] == run["run_id"]
        r = trials[run["run_id"]]
        config = {k: v for c in [run["config"], *of_type(recs, "config")] for k, v in c["update"].items()}
        assert {k: config[k] for k in KNOBS} == {"r": r, **seeds}
        assert not {k for k in config if k == "trial" or k.startswith("trial/")}, config  # the fixed part stays out
        history = [h["item"] for h in of_type(recs, "history")]
        assert [h["eval_loss"] for h in history] == [(3.0 - i) * r / 8 for i in range(3)]
        assert [h["tokens_seen"] for h in history] == [1000, 2000, 3000]
        assert of_type(recs, "exit")[0]["exit_code"] == 0

    assert_no_key(tmp_path, wandb_home, ray_session)


@pytest.mark.slow
def test_online_key_reaches_only_the_logging_actor(ray_session, wandb_home, tmp_path, monkeypatch):
    import ray

    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.delenv("WANDB_MODE")  # key and no mode: online
    (callback,) = tune_callbacks("lorasweep-test", "demo", str(tmp_path / "demo"))
    callback.setup()
    assert callback.kwargs["mode"] == "online"
    # The actor as _start_logging_actor makes it, minus the queue; wandb.init is never called.
    actor = callback._remote_logger_class.remote(logdir=str(tmp_path), queue=None, exclude=[], to_config=[],
                                                 key_ref=callback._key_ref, id="abc_00000")
    key, resources, name = ray.get(actor.__ray_call__.remote(lambda self: (
        os.environ.get("WANDB_API_KEY"), ray.get_runtime_context().get_assigned_resources(), self.kwargs["name"])))
    ray.kill(actor)
    assert key == FAKE_KEY
    assert resources == {}  # num_cpus=0: never holds a CPU a trial needs
    assert name == "abc_00000"
    assert_no_key(wandb_home, ray_session)


def test_summary_run_holds_the_leaderboard(wandb_home, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    sweep_dir = tmp_path / "demo"
    rows = [
        {"rank": 1, "trial_id": "aaa_00001", "r": 16, "lora_alpha": 32, "best_eval_loss": 1.25, "status": "completed"},
        {"rank": 2, "trial_id": "aaa_00000", "r": 8, "lora_alpha": 16, "best_eval_loss": None, "status": "failed",
         "error": "FloatingPointError: nan loss"},
    ]
    exported = [str(sweep_dir / "best_adapters" / "rank_1")]
    config = {"recipe": "llama_finetome", "preset": "smoke", "settings": {"model": "tiny", "max_tokens": 3000}}

    run_dir = Path(log_summary("lorasweep-test", "demo", str(sweep_dir), rows, ["r", "lora_alpha"], exported, config))
    assert run_dir.parent == sweep_dir / "wandb" and run_dir.name.startswith("offline-run-")

    recs = records(run_dir)
    (run,) = of_type(recs, "run")
    assert run["job_type"] == "sweep-summary" and run["run_group"] == "demo"
    assert {k: run["config"]["update"][k] for k in config} == config
    summary = {k: v for s in of_type(recs, "summary") for k, v in s["update"].items()}
    assert summary["best_eval_loss"] == 1.25 and summary["best_trial_id"] == "aaa_00001"
    assert summary["exported_adapters"] == exported
    (table_file,) = (run_dir / "files" / "media" / "table").glob("leaderboard_*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"][:4] == ["rank", "trial_id", "r", "lora_alpha"]
    assert [row[:4] for row in table["data"]] == [[1, "aaa_00001", 16, 32], [2, "aaa_00000", 8, 16]]
    assert "FloatingPointError: nan loss" in table["data"][1]
    assert_no_key(tmp_path, wandb_home)
