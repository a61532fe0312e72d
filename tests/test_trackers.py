"""MLflow and TensorBoard, read back from what the shared smoke sweep left: it logged to a real MLflow
server on loopback (tests/conftest.py: mlflow_server, its database and artifacts under the sweep's
storage folder) with --tensorboard on. Plus the checks before Ray: a store that does not answer, a
folder store, and URL passwords kept out of the files a sweep writes."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from common.errors import ConfigError

TRIAL_TAG = "lorasweep.trial_id"


def _reports(trial_dir: Path) -> list[dict]:
    path = trial_dir / "result.json"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


@pytest.fixture(scope="module")
def mlflow_runs(shared_sweep):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{shared_sweep['mlflow'] / 'mlflow.db'}")
    exp = client.get_experiment_by_name("lorasweep-tests")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    [parent] = [r for r in runs if r.data.tags.get("lorasweep.kind") == "sweep"]
    children = {r.data.tags[TRIAL_TAG]: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    return client, exp, parent, children


def test_mlflow_has_a_parent_run_per_sweep_and_a_child_run_per_trial(shared_sweep, mlflow_runs):
    client, _, parent, children = mlflow_runs
    sweep_dir = shared_sweep["dir"]
    board = json.loads((sweep_dir / "leaderboard.json").read_text())
    knobs = list(json.loads((sweep_dir / "sweep_config.json").read_text())["space"])
    assert parent.info.run_name == "shared" and parent.info.status == "FINISHED"
    assert parent.data.tags["lorasweep.sweep_dir"] == str(sweep_dir)
    assert parent.data.params["recipe"] == "llama_finetome" and parent.data.params["objective"] == "eval_loss"
    assert set(children) == {row["trial_id"] for row in board}
    statuses = set()
    for row in board:
        run, trial_dir = children[row["trial_id"]], sweep_dir / f"trial_{row['trial_id']}"
        given = json.loads((trial_dir / "params.json").read_text())
        assert {k: run.data.params[k] for k in knobs} == {k: str(given[k]) for k in knobs}
        assert run.info.status == ("FAILED" if row["status"] == "failed" else "FINISHED"), row
        statuses.add(run.info.status)
        reports = [r for r in _reports(trial_dir) if "eval_loss" in r]
        history = sorted(client.get_metric_history(run.info.run_id, "eval_loss"), key=lambda m: m.step)
        # every report, at its training tokens
        assert [(m.step, m.value) for m in history] == [(r["tokens_seen"], pytest.approx(r["eval_loss"])) for r in reports]
        if reports and row["status"] != "failed":
            assert run.data.tags["lorasweep.finished"] == str(bool(reports[-1]["finished"])).lower()
    assert statuses == {"FAILED", "FINISHED"}  # the two seed faults fail, the rest end
    best = min((r for r in board if r.get("best_eval_loss") is not None), key=lambda r: r["rank"])
    assert parent.data.tags["lorasweep.best_trial_id"] == best["trial_id"]
    assert parent.data.metrics["best_eval_loss"] == pytest.approx(best["best_eval_loss"])
    assert parent.data.metrics["trials"] == len(board)


def test_mlflow_keeps_the_best_adapter_as_an_artifact_that_loads(shared_sweep, mlflow_runs):
    from peft import PeftConfig

    _, exp, parent, _ = mlflow_runs
    # the server proxies artifacts into --artifacts-destination: <experiment>/<run>/artifacts/...
    stored = shared_sweep["mlflow"] / "artifacts" / exp.experiment_id / parent.info.run_id / "artifacts"
    exported = shared_sweep["dir"] / "best_adapters" / "rank_1"
    names = sorted(p.name for p in exported.iterdir() if p.is_file())
    assert sorted(p.name for p in (stored / "best_adapter").iterdir()) == names
    for name in names:
        assert (stored / "best_adapter" / name).read_bytes() == (exported / name).read_bytes(), name
    assert PeftConfig.from_pretrained(str(stored / "best_adapter")).r == \
        json.loads((exported / "adapter_config.json").read_text())["r"]
    assert (stored / "leaderboard.csv").read_bytes() == (shared_sweep["dir"] / "leaderboard.csv").read_bytes()
    assert (stored / "sweep_config.json").is_file() and (stored / "report.html").is_file()


def test_tensorboard_event_files_hold_each_step_and_each_report(shared_sweep):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    sweep_dir = shared_sweep["dir"]
    board = json.loads((sweep_dir / "leaderboard.json").read_text())
    checked = 0
    for row in board:
        trial_dir = sweep_dir / f"trial_{row['trial_id']}"
        reports = [r for r in _reports(trial_dir) if "eval_loss" in r]
        if row["status"] == "failed" or not reports:
            continue
        steps = EventAccumulator(str(trial_dir / "tensorboard"))
        steps.Reload()
        loss = steps.Scalars("train/loss")
        assert [e.step for e in loss] == list(range(1, len(loss) + 1))  # every optimizer step, none twice
        assert len(loss) >= reports[-1]["step"]
        assert all(0 < e.value < 20 for e in loss)
        tokens = {e.step: e.value for e in steps.Scalars("train/tokens_seen")}
        for r in reports:  # the step curves and the reports count the same tokens
            assert tokens[r["step"]] == r["tokens_seen"]
        assert steps.Scalars("train/learning_rate")[0].value > 0
        tune_events = EventAccumulator(str(trial_dir))  # the file Tune writes from the reports
        tune_events.Reload()
        assert [e.value for e in tune_events.Scalars("ray/tune/eval_loss")] == \
            [pytest.approx(r["eval_loss"]) for r in reports]
        checked += 1
    assert checked >= 2


def test_a_tracking_server_that_does_not_answer_is_refused_in_one_line_without_its_password():
    import socket

    from lorasweep import mlflow_tracking

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    given = f"http://alice:s3cretPW@127.0.0.1:{port}"
    t0 = time.time()
    with pytest.raises(ConfigError) as e:
        mlflow_tracking.check(SimpleNamespace(mlflow_tracking_uri=given, mlflow_experiment="x"))
    line = str(e.value)
    assert time.time() - t0 < 30  # one try, not MLflow's minutes of retries
    assert "--mlflow-tracking-uri" in line and "\n" not in line and "s3cretPW" not in line
    assert f"127.0.0.1:{port}" in line


def test_a_folder_store_is_a_sqlite_database_with_its_artifacts_beside_it(tmp_path):
    from mlflow.tracking import MlflowClient

    from lorasweep import mlflow_tracking

    folder = tmp_path / "mlruns"
    mlflow_tracking.check(SimpleNamespace(mlflow_tracking_uri=str(folder), mlflow_experiment="exp"))
    exp = MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}").get_experiment_by_name("exp")
    assert exp is not None and exp.artifact_location == (folder / "artifacts").as_uri()


def test_url_passwords_stay_out_of_the_sweep_config():
    from lorasweep.resolve import resolve
    from lorasweep.storage import redact
    from sweeps.llama_finetome import RECIPE

    assert redact("postgresql://u:pw@db:5432/optuna") == "postgresql://***@db:5432/optuna"
    assert redact("sqlite:////runs/optuna.db") == "sqlite:////runs/optuna.db"
    sweep = resolve(RECIPE, ["--preset", "smoke", "--mlflow-tracking-uri", "https://bob:hunter2pw@mlflow.example:443",
                             "--optuna-storage", "postgresql://bob:hunter2pw@db/optuna"])
    text = json.dumps(sweep.summary())
    assert "hunter2pw" not in text and "mlflow.example" in text
    from lorasweep.sweepfile import dump

    written = dump(sweep)  # sweep.yaml: the URL as a comment without its password
    assert "hunter2pw" not in written
    assert "# mlflow_tracking_uri: 'https://***@mlflow.example:443'  (its password is not written: pass " \
           "--mlflow-tracking-uri again)" in written
    assert sweep.options.mlflow_tracking_uri.endswith("hunter2pw@mlflow.example:443")  # what MLflow is given
