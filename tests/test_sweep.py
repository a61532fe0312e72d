"""The flagship's smoke sweep end to end, read from ONE shared run (tests/conftest.py `shared_sweep`):
Optuna + ASHA on a local Ray, two trials failing for real, bad rows, W&B offline, fake secrets.

  * every trial is on the leaderboard, ranked; failed ones below, with their reason;
  * the top adapters are plain PEFT folders, only healthy trials exported;
  * the best adapter reloads with plain PEFT to the eval loss the sweep reported, and beats the base;
  * bad rows are skipped and counted by reason; emoji rows train;
  * no secret in any file the sweep (or Ray, or W&B) wrote; W&B offline runs exist.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from tests.conftest import BAD_ROWS, EMOJI_ROWS, FAKE_HF, FAKE_MLFLOW, FAKE_WANDB, GOOD_ROWS

pytestmark = pytest.mark.slow


def _leaderboard(sweep_dir: Path) -> list[dict]:
    with open(sweep_dir / "leaderboard.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_leaderboard_ranks_every_trial_and_puts_failures_last(shared_sweep):
    rows = _leaderboard(shared_sweep["dir"])
    assert len(rows) == 5
    assert json.loads((shared_sweep["dir"] / "leaderboard.json").read_text())[0]["trial_id"] == rows[0]["trial_id"]
    for col in ("trial_id", "r", "lora_alpha", "use_rslora", "packing", "warmup_ratio", "learning_rate",
                "best_eval_loss", "final_eval_loss", "steps", "wall_time_s", "tokens_per_s", "status", "error"):
        assert col in rows[0]
    healthy = [r for r in rows if r["status"] != "failed"]
    # The best ran to the end; the next two finished or were stopped by ASHA; the failures come last.
    assert rows[0]["status"] == "completed"
    assert {r["status"] for r in rows[1:3]} <= {"completed", "stopped early"}, [r["status"] for r in rows]
    assert [r["status"] for r in rows[3:]] == ["failed", "failed"]
    losses = [float(r["best_eval_loss"]) for r in healthy]
    assert len(healthy) == 3 and losses == sorted(losses)
    by_lr = {r["learning_rate"]: r for r in rows}
    # the two known-good seed points ran as given, and failed where tests/faults.py made them fail
    oom = by_lr["0.0001"]
    nan = by_lr["0.001"]
    assert (oom["r"], oom["lora_alpha"], oom["packing"]) == ("16", "16", "False")
    assert (nan["r"], nan["use_rslora"], nan["packing"]) == ("8", "True", "True")
    assert (oom["known_point"], nan["known_point"]) == ("known point 1", "known point 2")  # marked as the recipe's points
    assert not [r for r in rows if r["known_point"] and r not in (oom, nan)]
    assert oom["status"] == "failed" and oom["error"].startswith("out of memory at step 2 on cpu"), oom
    assert "per_device_batch_size" in oom["error"]
    assert nan["status"] == "failed" and nan["error"].startswith("non-finite loss at step 3"), nan
    out = shared_sweep["stdout"]
    assert "(2 failed)" in out and "best adapter:" in out and "rank  trial_id" in out


def _reports(sweep_dir: Path) -> dict[str, list[dict]]:
    return {p.parent.name: [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
            for p in sweep_dir.glob("trial_*/result.json")}


def test_one_worker_trials_train_in_the_trial_process_and_reuse_it(shared_sweep):
    # No Ray Train run: the checkpoints are the Tune trials' own, and the exported one is among them.
    sweep_dir = shared_sweep["dir"]
    assert not (sweep_dir / "train_runs").exists()
    assert list(sweep_dir.glob("trial_*/checkpoint_*"))
    best = _leaderboard(sweep_dir)[0]["checkpoint"]  # what best_adapters/rank_1 was copied from
    assert Path(best).parent.name.startswith("trial_") and Path(best).name.startswith("checkpoint_"), best
    # Tune handed a finished trial's process to the next trial (reuse_actors): torch already imported,
    # so that trial's start-up is its data and model only.
    reports = _reports(sweep_dir)
    healthy = [r for r in reports.values() if r and r[-1].get("step", 0) > 3]
    pids = [r[0]["pid"] for r in healthy]
    assert len(healthy) == 3 and len(set(pids)) < len(pids), pids
    assert all(0 < r[0]["setup_s"] < 60 and r[0]["first_step_at"] < r[0]["timestamp"] + 1 for r in healthy)  # Tune: whole seconds
    # Before reusing a process Tune waits TUNE_FUNCTION_THREAD_TIMEOUT_S for the stopped trial's thread
    # (Ray's default 2 s), then fails the NEXT trial ("Trainable runner reuse requires reset_config()";
    # bench/quality.py's chat sweep lost one so, Dec 3). The sweep's runtime env raises it, and each
    # trial finds it in its own process, where Tune reads it (tests.faults:thread_timeout).
    seen = [line.split() for line in shared_sweep["probe"].read_text().splitlines()]
    assert len(seen) == len(list(sweep_dir.glob("trial_*"))) and all(wait != "None" and float(wait) >= 60 for _, wait in seen), seen


def test_checkpoints_only_where_they_are_used_and_the_trials_time_in_them_is_measured(shared_sweep):
    """--checkpoint-minutes (10 by default, longer than these trials): a report carries a checkpoint
    when it is its trial's best so far by the objective or the last of a finished trial; the others
    carry metrics only
    (these trials' eval losses mostly fall at every report: tests/test_reporting.py has the skips).
    Every report says the seconds spent writing and uploading checkpoints so far."""
    reports = _reports(shared_sweep["dir"])
    healthy = {t: r for t, r in reports.items() if r and r[-1].get("step", 0) > 3}  # not the two faulted seeds
    assert len(healthy) == 3 and sum(r[-1]["finished"] for r in healthy.values()) >= 1, {t: len(r) for t, r in reports.items()}
    for trial, reps in healthy.items():
        best = float("inf")
        for i, rep in enumerate(reps):
            improved = rep["eval_loss"] < best
            best = min(best, rep["eval_loss"])
            # a trial ASHA stopped has no last checkpoint of its own: its best one is what is read
            last = i == len(reps) - 1 and rep["finished"]
            assert bool(rep.get("checkpoint_dir_name")) == (improved or last), (trial, i, rep["eval_loss"])
        spent = [rep["checkpoint_s"] for rep in reps]
        assert spent == sorted(spent) and spent[-1] > 0 and spent[-1] < reps[-1]["time_total_s"], (trial, spent)


def test_only_healthy_trials_are_exported_as_plain_peft_folders(shared_sweep):
    sweep_dir = shared_sweep["dir"]
    rows = _leaderboard(sweep_dir)
    adapters = sorted(p.name for p in (sweep_dir / "best_adapters").iterdir() if p.is_dir())
    assert adapters == ["rank_1", "rank_2", "rank_3"]
    assert (sweep_dir / "best_adapters" / "EXPORT_COMPLETE").is_file()  # the whole export is there
    exported = []
    for name in adapters:
        d = sweep_dir / "best_adapters" / name
        for f in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "README.md", "lorasweep.json"):
            assert (d / f).is_file(), (d, f)
        assert not (d / "optimizer.pt").exists()
        exported.append(json.loads((d / "lorasweep.json").read_text())["trial_id"])
    assert exported == [r["trial_id"] for r in rows if r["status"] != "failed"]
    card = (sweep_dir / "best_adapters" / "rank_1" / "README.md").read_text()
    assert "base_model:" in card and "shared" in card and "learning_rate" in card and "chat_sft" in card


def test_exported_adapter_reloads_to_its_reported_eval_loss_and_beats_the_base(shared_sweep):
    from trainers.config import TrainSettings
    from trainers.loop import evaluate_folder

    best = shared_sweep["dir"] / "best_adapters" / "rank_1"
    meta = json.loads((best / "lorasweep.json").read_text())
    settings = TrainSettings.from_dict(meta["settings"])
    assert settings.family == "llama"  # found from the checkpoint's model_type, not set by the recipe
    base = evaluate_folder(settings)["eval_loss"]  # 4-bit NF4, as the trial trained on it
    tuned = evaluate_folder(settings, str(best))["eval_loss"]
    assert tuned == pytest.approx(meta["metrics"]["best_eval_loss"], rel=1e-5)
    # The adapter is what makes the difference. The tiny base has read the sample's text and its chat
    # format in pretraining (like a real instruct model), so it starts near 1.2, not ~3 as a base that
    # never saw the template would; 30k tokens of the best trial take >10% off that.
    assert tuned < 0.9 * base, (tuned, base)


def test_the_final_round_rescores_the_top_row_by_row_with_intervals_and_verdicts(shared_sweep):
    """Before export the healthy trials and the untrained model are scored again on the eval rows
    (the smoke preset holds out no validation rows): each row's loss and token count reproduce the
    eval loss the trial reported, the top is ranked by it, and the console says what can be told apart."""
    d = shared_sweep["dir"]
    sel = json.loads((d / "selection.json").read_text())
    healthy = [r for r in _leaderboard(d) if r["status"] != "failed"]
    assert sel["metric"] == "eval_loss" and sel["validation_rows"] == 0 and sel["rows"] == sel["eval_rows"] > 0
    assert sel["order"] == [r["trial_id"] for r in healthy]  # 3 healthy trials, all within --final-round 3
    for r in healthy:
        m = sel["models"][r["trial_id"]]
        assert m["low"] < m["value"] < m["high"]
        assert m["value"] == pytest.approx(float(r["best_eval_loss"]), rel=1e-4)  # same rows, same loss
        assert float(r["final_round_eval_loss"]) == pytest.approx(m["value"])
    base = sel["models"]["base"]["value"]
    assert base > sel["models"][healthy[0]["trial_id"]]["value"] and not sel["winner_worse_than_base"]
    out = shared_sweep["stdout"]
    assert f"[lorasweep] best ({healthy[0]['trial_id']}) vs runner-up ({healthy[1]['trial_id']}): " in out
    untrained = next(line for line in out.splitlines() if "best vs the untrained model:" in line)
    assert " eval_loss (95% CI " in untrained and "better (p" in untrained, untrained
    report = (d / "report.md").read_text()
    assert "## Final round: can the winner be told apart?" in report and "untrained model" in report


def test_bad_rows_are_skipped_and_counted_by_reason(shared_sweep):
    report = json.loads((shared_sweep["dir"] / "data_report.json").read_text())
    assert report["skipped"] == {reason: len(rows) for reason, rows in BAD_ROWS.items()}
    assert report["rows"] == GOOD_ROWS + len(EMOJI_ROWS) + sum(len(r) for r in BAD_ROWS.values())
    assert report["train_examples"] + report["eval_examples"] == GOOD_ROWS + len(EMOJI_ROWS)
    assert "skipped empty text: 2, no assistant turn: 3, unknown role: 1" in shared_sweep["stdout"]


def _files_under(*roots: Path):
    for root in roots:
        for dirpath, _, names in os.walk(root):
            for name in names:
                path = Path(dirpath) / name
                if path.is_file() and not path.is_symlink():
                    yield path


def test_no_secret_in_any_file_the_sweep_wrote(shared_sweep):
    sweep_dir, session = shared_sweep["dir"], shared_sweep["ray_session"]
    scanned = 0
    for path in _files_under(shared_sweep["storage"], session):
        data = path.read_bytes()
        scanned += 1
        for secret in (FAKE_HF, FAKE_WANDB, FAKE_MLFLOW):
            assert secret.encode() not in data, f"{secret[:6]}... found in {path}"
    for stream in (shared_sweep["stdout"], shared_sweep["stderr"]):
        assert FAKE_HF not in stream and FAKE_WANDB not in stream and FAKE_MLFLOW not in stream
    # what was scanned is what matters: the sweep's outputs, the W&B offline runs, the MLflow
    # server's database and artifacts, and Ray's logs
    for expected in ("sweep_config.json", "leaderboard.csv", "data_report.json", "best_adapters/rank_1/README.md"):
        assert (sweep_dir / expected).is_file()
    assert (shared_sweep["mlflow"] / "mlflow.db").is_file()
    assert list((shared_sweep["mlflow"] / "artifacts").rglob("adapter_model.safetensors"))
    assert len(list((sweep_dir / "wandb").glob("offline-run-*"))) == 6  # 5 trials + the summary run
    assert list(session.glob("logs/*")) and scanned > 50


def test_console_is_one_line_per_event_and_a_failure_names_its_traceback(shared_sweep):
    """What a user watches: each trial's start, its reports, ASHA's stops and each failure on one
    line; no Tune config boxes, no tracebacks, no Ray or library noise (``--verbose`` brings those)."""
    out, err = shared_sweep["stdout"], shared_sweep["stderr"]
    lines = out.splitlines()
    board = json.loads((shared_sweep["dir"] / "leaderboard.json").read_text())
    for row in board:
        tid = row["trial_id"]
        assert sum(line.startswith(f"[lorasweep] {tid} started: r=") for line in lines) == 1, tid
        ends = [line for line in lines if line.startswith(f"[lorasweep] {tid} ")
                and any(w in line for w in (" failed", " finished:", " stopped by ASHA"))]
        assert len(ends) == 1, (tid, ends)
        if row["status"] == "failed":
            assert row["error"] in ends[0]
            trace = Path(ends[0].rsplit("; traceback: ", 1)[1])
            assert trace.is_file() and 'File "' in trace.read_text()  # Ray's formatted traceback, frames and all
        else:
            assert (" finished:" if row["status"] == "completed" else " stopped by ASHA at rung") in ends[0]
    for noise in ("trial/settings", "Configuration for experiment", "Traceback", "core_worker.cc", "FutureWarning",
                  "Checkpoint successfully created", "Token authentication", "Trials did not complete",
                  "may be a performance bottleneck", "Exception ignored"):
        assert noise not in out and noise not in err, noise
    # a trial's own output (the worker's plan line) is in its folder, once, not in the console
    assert "steps planned" not in out
    for row in board:
        log = shared_sweep["dir"] / f"trial_{row['trial_id']}" / "stdout"
        assert log.read_text().count("steps planned") == 1, log
    minutes = max(1.0, shared_sweep["wall_s"] / 60)
    assert len(lines) + len(err.splitlines()) < 50 * minutes  # one screen per minute of the sweep



def test_the_optuna_study_is_a_sqlite_database_optuna_opens(shared_sweep):
    """What `optuna-dashboard sqlite:///.../optuna.db` reads: every trial, the failed ones as FAIL,
    the finished ones with the value Tune gave the searcher, the known points first."""
    import optuna

    study = optuna.load_study(study_name="shared", storage=f"sqlite:///{shared_sweep['dir'] / 'optuna.db'}")
    states = sorted(t.state.name for t in study.trials)
    assert states == ["COMPLETE"] * 3 + ["FAIL"] * 2, states
    first, second = study.trials[0], study.trials[1]
    assert first.params["learning_rate"] == 1e-4 and second.params["learning_rate"] == 1e-3  # the seeds, in order
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    # Tune hands the searcher each trial's last report: the leaderboard's final eval loss, trial by trial.
    finished = [r for r in _leaderboard(shared_sweep["dir"]) if r["status"] != "failed"]
    told = sorted(t.value for t in study.trials if t.state.name == "COMPLETE")
    assert told == pytest.approx(sorted(float(r["final_eval_loss"]) for r in finished), rel=1e-6)
    assert "Optuna study 'shared': sqlite:///" in shared_sweep["stdout"]


def test_the_merged_export_loads_with_plain_transformers_and_matches_the_adapter(shared_sweep, tmp_path, monkeypatch):
    """`python -m lorasweep.export`: the best adapter (QLoRA-trained) merged into its fp32 base gives
    the adapter's logits on a fixed input, from a folder plain Transformers loads; its card records
    the sweep; --push-to-hub needs HF_TOKEN and uploads exactly that folder."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from common.errors import ConfigError
    from lorasweep.export import main, push

    out = tmp_path / "merged"
    assert main([str(shared_sweep["dir"]), "--dtype", "fp32", "--out", str(out), "--gguf", "f32"]) == 0
    rank_1 = shared_sweep["dir"] / "best_adapters" / "rank_1"
    meta = json.loads((rank_1 / "lorasweep.json").read_text())
    merged = AutoModelForCausalLM.from_pretrained(out)  # no PEFT involved
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(meta["settings"]["model"],
                                                                           dtype=torch.float32), rank_1)
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of Kaloren?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        want, got = adapter(input_ids=ids).logits, merged(input_ids=ids).logits
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
    # the GGUF file, read back by Transformers' own GGUF loader: the same tokens and logits
    gguf_model = AutoModelForCausalLM.from_pretrained(out, gguf_file="model-f32.gguf", dtype=torch.float32)
    gguf_tok = AutoTokenizer.from_pretrained(out, gguf_file="model-f32.gguf")
    text = "What is 12 plus 30? 12 plus 30 is 42."
    assert gguf_tok(text)["input_ids"] == tok(text)["input_ids"]
    with torch.no_grad():
        assert torch.allclose(gguf_model(input_ids=ids).logits, got, atol=1e-5)
    card = (out / "README.md").read_text()
    assert meta["trial_id"] in card and "## The winner's knobs" in card and "5 trials" in card
    assert FAKE_HF not in card and all(FAKE_HF.encode() not in p.read_bytes() for p in out.rglob("*") if p.is_file())
    # a second merge keeps the first one, renamed
    assert main([str(shared_sweep["dir"]), "--dtype", "fp32", "--out", str(out)]) == 0
    assert len(list(tmp_path.glob("merged.*"))) == 1

    class Recorder:  # the Hub is out of reach: the calls' arguments are what is checked
        def __init__(self):
            self.calls = []

        def create_repo(self, repo, **kw):
            self.calls.append(("create_repo", repo, kw))

        def upload_folder(self, **kw):
            self.calls.append(("upload_folder", kw))

    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="needs HF_TOKEN in the environment"):
        push(out, "me/model", api=Recorder())
    monkeypatch.setenv("HF_TOKEN", FAKE_HF)
    with pytest.raises(ConfigError, match="give a Hub repo id as owner/name"):
        push(out, "model", api=Recorder())
    api = Recorder()
    push(out, "me/model", api=api)
    assert api.calls == [("create_repo", "me/model", {"private": True, "exist_ok": True}),
                         ("upload_folder", {"repo_id": "me/model", "folder_path": str(out),
                                            "commit_message": "lorasweep: merged"})]
