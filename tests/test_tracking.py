"""W&B tracking, checked on the offline files that a real (tiny) Ray Tune sweep leaves on disk.

The `.wandb` transaction logs are decoded by wandb's own reader (`wandb leet inspect --json`,
which runs wandb-core; wandb 0.31 has no Python reader any more).
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lorasweep.tracking import _wandb_root, log_summary, save_report, sweep_report, tune_callbacks

FAKE_KEY = "wandb-fake-key-0123456789abcdef0123456789abcdef01234567"
KNOBS = ["r", "lora_alpha", "use_rslora", "packing", "warmup_ratio", "learning_rate"]
ACTOR_RESTART_WARNING = "has constructor arguments in the object store"  # core_worker.cc, ray#53727
SETTINGS_SENTINEL = "settings-only-value-0123456789"  # in lorasweep.json's settings: never in artifact metadata
UNREACHABLE = "http://127.0.0.1:9"  # the discard port: any W&B API call fails at once


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


def export_folders(sweep_dir: Path, rows: list[dict], knobs: list[str]) -> list[str]:
    """``best_adapters/rank_<i>/`` as results.export_best leaves them, with made-up weights."""
    exported = []
    for row in rows:
        out = sweep_dir / "best_adapters" / f"rank_{row['rank']}"
        out.mkdir(parents=True)
        (out / "adapter_config.json").write_text(json.dumps({"r": row["r"], "peft_type": "LORA"}))
        (out / "adapter_model.safetensors").write_bytes(os.urandom(64))
        (out / "tokenizer.json").write_text("{}")
        (out / "README.md").write_text(f"# demo: rank {row['rank']} adapter\n")
        meta = {"rank": row["rank"], "sweep": "demo", "recipe": "llama_finetome", "base_model": "tiny",
                "dataset": "finetome", "hyperparameters": {k: row[k] for k in knobs}, "objective": "eval_loss",
                "metrics": {"best_eval_loss": row["best_eval_loss"], "best_step": 30, "final_eval_loss": math.nan},
                "settings": {"model": "tiny", "note": SETTINGS_SENTINEL}, "trial_id": row["trial_id"]}
        (out / "lorasweep.json").write_text(json.dumps(meta, indent=2))
        exported.append(str(out))
    return exported


def summary_of(recs: list[dict]) -> dict:
    return {k: v for s in of_type(recs, "summary") for k, v in s["update"].items()}


def test_no_project_means_no_tracking(tmp_path):
    assert tune_callbacks(None, "demo", str(tmp_path / "demo")) == []
    assert log_summary(None, "demo", str(tmp_path / "demo"), [{"rank": 1}], KNOBS, [], {}) is None
    assert list(tmp_path.iterdir()) == []


def test_uri_sweeps_keep_wandb_files_in_the_local_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("LORASWEEP_CACHE", str(tmp_path))
    assert _wandb_root("s3://bucket/sweeps/demo", "demo") == str(tmp_path / "wandb" / "demo")
    assert _wandb_root(str(tmp_path / "demo"), "demo") == str(tmp_path / "demo")


@pytest.mark.slow  # a real Ray: 15-40 s to start and 30-55 s for 2 trials on a shared 2-core machine
def test_every_trial_is_a_wandb_run_and_the_key_stays_out(ray_session, wandb_home, tmp_path, monkeypatch, capfd):
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
    # Ray logs it once per driver process, at the first restartable actor with a reference in its
    # constructor's arguments: here the first logging actor of the module's Ray session.
    assert ACTOR_RESTART_WARNING not in capfd.readouterr().err


@pytest.mark.slow
def test_online_key_reaches_only_the_logging_actor(ray_session, wandb_home, tmp_path, monkeypatch, capfd):
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
    assert ACTOR_RESTART_WARNING not in capfd.readouterr().err  # the key's reference is a constructor argument


def test_summary_run_holds_the_leaderboard(wandb_home, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    sweep_dir = tmp_path / "demo"
    rows = [
        {"rank": 1, "trial_id": "aaa_00001", "r": 16, "lora_alpha": 32, "best_eval_loss": 1.25, "status": "completed"},
        {"rank": 2, "trial_id": "aaa_00000", "r": 8, "lora_alpha": 16, "best_eval_loss": None, "status": "failed",
         "error": "FloatingPointError: nan loss"},
    ]
    exported = export_folders(sweep_dir, rows[:1], ["r", "lora_alpha"])
    config = {"recipe": "llama_finetome", "preset": "smoke", "settings": {"model": "tiny", "max_tokens": 3000}}

    run_dir = Path(log_summary("lorasweep-test", "demo", str(sweep_dir), rows, ["r", "lora_alpha"], exported, config))
    assert run_dir.parent == sweep_dir / "wandb" and run_dir.name.startswith("offline-run-")

    recs = records(run_dir)
    (run,) = of_type(recs, "run")
    assert run["job_type"] == "sweep-summary" and run["run_group"] == "demo"
    assert {k: run["config"]["update"][k] for k in config} == config
    summary = summary_of(recs)
    assert summary["best_eval_loss"] == 1.25 and summary["best_trial_id"] == "aaa_00001"
    assert summary["exported_adapters"] == exported
    (table_file,) = (run_dir / "files" / "media" / "table").glob("leaderboard_*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"][:4] == ["rank", "trial_id", "r", "lora_alpha"]
    assert [row[:4] for row in table["data"]] == [[1, "aaa_00001", 16, 32], [2, "aaa_00000", 8, 16]]
    assert "FloatingPointError: nan loss" in table["data"][1]
    assert_no_key(tmp_path, wandb_home)


ROWS = [
    {"rank": 1, "trial_id": "aaa_00001", "r": 16, "lora_alpha": 32, "best_eval_loss": 1.25, "status": "completed"},
    {"rank": 2, "trial_id": "aaa_00000", "r": 8, "lora_alpha": 16, "best_eval_loss": 1.5, "status": "completed"},
]
CONFIG = {"recipe": "llama_finetome", "metric": "eval_loss", "mode": "min", "settings": {"model": "tiny"}}


def test_summary_run_holds_the_adapters_as_model_artifacts(wandb_home, tmp_path, capfd):
    sweep_dir = tmp_path / "demo"
    exported = export_folders(sweep_dir, ROWS, ["r", "lora_alpha"])

    run_dir = Path(log_summary("lorasweep-test", "demo", str(sweep_dir), ROWS, ["r", "lora_alpha"], exported, CONFIG))

    artifacts = [a for a in of_type(records(run_dir), "artifact") if a["type"] == "model"]  # not the table's
    assert [a["name"] for a in artifacts] == ["demo-adapter"] * 2  # one collection, a version per rank
    by_rank = {json.loads(a["metadata"])["rank"]: a for a in artifacts}
    # Logged worst first: `latest`, which the client puts on every version and the server keeps on
    # the newest, ends on the best adapter too.
    assert list(by_rank) == [2, 1]
    assert set(by_rank[1]["aliases"]) == {"best", "rank-1", "latest"}
    assert set(by_rank[2]["aliases"]) == {"rank-2", "latest"}
    for row, folder in zip(ROWS, exported):
        art = by_rank[row["rank"]]
        meta = json.loads(art["metadata"])
        assert meta == {"rank": row["rank"], "trial_id": row["trial_id"], "base_model": "tiny", "objective": "eval_loss",
                        "hyperparameters": {"r": row["r"], "lora_alpha": row["lora_alpha"]},
                        "metrics": {"best_eval_loss": row["best_eval_loss"], "best_step": 30,
                                    "final_eval_loss": None}}  # NaN is no JSON
        files = {e["path"] for e in art["manifest"]["contents"]}
        assert files == {p.name for p in Path(folder).iterdir()}
        assert SETTINGS_SENTINEL not in art["metadata"]
    # The console: no run header or 20-line summary block, one line of ours instead.
    out, err = capfd.readouterr()
    assert "Run summary" not in out + err and "Tracking run with wandb" not in out + err
    assert "WARNING" not in err
    assert f"[lorasweep] W&B runs saved offline in {run_dir.parent}; upload with: wandb sync" in out


def test_summary_run_holds_the_report_plots_and_page(wandb_home, tmp_path):
    import plotly.graph_objects as go

    sweep_dir = tmp_path / "demo"
    sweep_dir.mkdir()
    figures = {"best_so_far": go.Figure(go.Scatter(x=[1, 2], y=[1.5, 1.25])),
               "parallel": go.Figure(go.Parcoords(dimensions=[{"label": "r", "values": [8, 16]}]))}
    page = "<!doctype html><html><head><title>demo</title></head><body><h1>demo ✓</h1></body></html>"
    (sweep_dir / "report.html").write_text(page, encoding="utf-8")

    run_dir = Path(log_summary("lorasweep-test", "demo", str(sweep_dir), ROWS, ["r", "lora_alpha"], [], CONFIG,
                               figures=figures, report_html=str(sweep_dir / "report.html")))

    summary = summary_of(records(run_dir))
    for name, fig in figures.items():
        assert summary[f"report/{name}._type"] == "plotly-file"
        logged = json.loads((run_dir / "files" / summary[f"report/{name}.path"]).read_text())
        assert logged["data"][0]["type"] == fig.data[0].type
    assert summary["report/html._type"] == "html-file"
    assert (run_dir / "files" / summary["report/html.path"]).read_text(encoding="utf-8") == page  # inject=False


def test_summary_run_holds_the_baseline_and_the_sample_answers_side_by_side(wandb_home, tmp_path):
    sweep_dir = tmp_path / "demo"
    sweep_dir.mkdir()
    sample = lambda answer: {"prompt": "Q?", "reference": "A", "generation": answer}  # noqa: E731
    baseline = {"base 0-shot": {"n": 2, "f1": 0.25, "per_example": {"f1": [0.0, 0.5]}, "samples": [sample("no idea")]},
                "tuned": {"n": 2, "f1": 0.75, "per_example": {"f1": [1.0, 0.5]}, "samples": [sample("A")]}}
    run_dir = Path(log_summary("lorasweep-test", "demo", str(sweep_dir), ROWS, ["r", "lora_alpha"], [], CONFIG,
                               baseline=baseline))
    summary = summary_of(records(run_dir))
    assert summary["baseline/base 0-shot/f1"] == 0.25 and summary["baseline/tuned/f1"] == 0.75
    assert summary["samples._type"] == "table-file"
    table = json.loads((run_dir / "files" / summary["samples.path"]).read_text())
    assert table["columns"] == ["prompt", "reference", "base 0-shot", "tuned"]
    assert table["data"] == [["Q?", "A", "no idea", "A"]]


@pytest.mark.parametrize("mode", ["min", "max"])
def test_sweep_report_draws_the_trials_of_the_sweep(mode):
    import wandb_workspaces.reports.v2 as wr
    from wandb_workspaces import expr

    knobs = ["r", "lora_alpha", "learning_rate"]
    exported = ["/runs/demo/best_adapters/rank_1", "/runs/demo/best_adapters/rank_2"]
    best = {"trial_id": "aaa_00001", "best_accuracy": 0.8125, "r": 16, "lora_alpha": 32, "learning_rate": 1e-3}

    report = sweep_report("lorasweep-test", "team", "demo", knobs, "accuracy", mode, best=best, exported=exported)

    assert (report.project, report.entity) == ("lorasweep-test", "team")
    text, grid = report.blocks
    assert isinstance(text, wr.MarkdownBlock) and isinstance(grid, wr.PanelGrid)
    assert "aaa_00001" in text.text and "0.8125" in text.text and "`r=16`" in text.text
    assert "team/lorasweep-test/demo-adapter" in text.text and all(path in text.text for path in exported)
    (runset,) = grid.runsets
    assert (runset.entity, runset.project) == ("team", "lorasweep-test")
    filters = expr.expr_to_filters(runset.filters)
    assert filters.op == "AND"
    assert {(f.key.section, f.key.name, f.op, f.value) for f in filters.filters} == {
        ("run", "group", "=", "demo"), ("run", "jobType", "=", "trial")}
    assert [(o.name, o.ascending) for o in runset.order] == [(wr.SummaryMetric("accuracy"), mode == "min")]

    parallel, importance, scatter, curves = grid.panels
    assert isinstance(parallel, wr.ParallelCoordinatesPlot)
    assert [c.metric for c in parallel.columns] == [*map(wr.Config, knobs), wr.SummaryMetric("accuracy")]
    assert isinstance(importance, wr.ParameterImportancePlot) and importance.with_respect_to == "accuracy"
    assert isinstance(scatter, wr.ScatterPlot) and scatter.y == wr.SummaryMetric("accuracy")
    assert (scatter.running_ymin, scatter.running_ymax) == (mode == "min", mode == "max")  # the best so far
    assert isinstance(curves, wr.LinePlot) and (curves.x, curves.y) == ("tokens_seen", ["accuracy"])


def test_sweep_report_spec_builds_without_the_network(wandb_home, monkeypatch):
    # The spec that save() sends, built as save() builds it. With no entity the runset needs no
    # project lookup, so this is the whole of it that needs no server.
    monkeypatch.setenv("WANDB_BASE_URL", UNREACHABLE)
    report = sweep_report("lorasweep-test", None, "demo", ["r"], "eval_loss", "min")
    spec = json.loads(report._to_model().spec.model_dump_json(by_alias=True, exclude_none=True))
    (grid,) = [b for b in spec["blocks"] if b["type"] == "panel-grid"]
    panels = grid["metadata"]["panelBankSectionConfig"]["panels"]
    assert [p["viewType"] for p in panels] == ["Parallel Coordinates Plot", "Parameter Importance",
                                               "Scatter Plot", "Run History Line Plot"]
    assert [c["accessor"] for c in panels[0]["config"]["columns"]] == ["config:r.value", "summary:eval_loss"]
    assert panels[1]["config"]["targetKey"] == "eval_loss"
    assert (panels[2]["config"]["xAxis"], panels[2]["config"]["yAxis"]) == ("run:createdAt", "summary:eval_loss")
    assert (panels[3]["config"]["xAxis"], panels[3]["config"]["metrics"]) == ("tokens_seen", ["eval_loss"])
    (runset,) = grid["metadata"]["runSets"]
    assert {(f["key"]["name"], f["value"]) for f in runset["filters"]["filters"]} == {("group", "demo"),
                                                                                    ("jobType", "trial")}


def test_offline_report_is_never_saved(wandb_home, monkeypatch, capfd):
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)  # offline wins over a key
    monkeypatch.setenv("WANDB_BASE_URL", UNREACHABLE)  # a save attempt would fail and print a warning
    report = sweep_report("lorasweep-test", "team", "demo", ["r"], "eval_loss", "min")
    assert save_report(report) is None
    assert report.id == ""  # never given one by a server
    out, err = capfd.readouterr()
    assert out == "" and "Saved report" not in err  # no warning line of ours, no save by wandb_workspaces


@pytest.mark.slow  # wandb gives up on the unreachable server after about 20 s
def test_a_report_that_cannot_be_saved_costs_one_warning_line(wandb_home, monkeypatch, capfd):
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setenv("WANDB_BASE_URL", UNREACHABLE)
    assert save_report(sweep_report("lorasweep-test", "team", "demo", ["r"], "eval_loss", "min")) is None
    out, _ = capfd.readouterr()
    (line,) = out.splitlines()
    assert line.startswith("[lorasweep] warning: W&B report not saved (") and FAKE_KEY not in line


def test_no_ray_error_at_interpreter_exit(tmp_path):
    # Ray's WandbLoggerCallback.__del__ raises when it runs after module teardown has set Ray's
    # globals to None: here the callback dies with the `ray` module's dict, cleared after Ray's
    # integration module (modules are cleared in reverse import order), as a sweep's does.
    code = ("import ray\n"
            "from lorasweep.tracking import tune_callbacks\n"
            f"ray._lorasweep_callback = tune_callbacks('lorasweep-test', 'demo', {str(tmp_path)!r})[0]\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0 and "Exception ignored" not in out.stderr, out.stderr
