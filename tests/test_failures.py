"""A sweep survives its bad trials, bad rows and Ctrl-C, and leaks no secret.

Real sweeps of the flagship script on a local Ray (the smoke preset's tiny Llama, small budgets):

  * failure isolation: two trials fail for real inside their Ray Train workers, one asking the
    allocator for 1 PiB (out of memory), one whose LoRA weights go to inf (non-finite loss);
    ``LORASWEEP_INJECT_FAULT`` picks them by their seed learning rates. The sweep goes on, the
    other trials finish in the resources the failed ones gave back, the leaderboard says why
    each failed, and only healthy adapters are exported;
  * bad rows are skipped and counted by reason in ``data_report.json``; emoji rows train;
  * secrets: HF_TOKEN and WANDB_API_KEY (fake values) are in the environment of that sweep, with
    W&B logging on (offline); no file it wrote, nor Ray's session logs, contains them;
  * Ctrl-C: SIGINT after the first checkpoint keeps everything, prints the resume command, and
    that command finishes the sweep, the interrupted trial continuing from its checkpoint.
"""

from __future__ import annotations

import csv
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
FAKE_HF = "hf_FAKEtok3nThatMustNeverBeWritten0123456789"
FAKE_WANDB = "wandbFAKEkey0123456789abcdef0123456789abcdef01"
SMALL = ["--preset", "smoke", "--max-tokens", "6000", "--eval-every", "4", "--scheduler", "none"]


def _env(**extra) -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **extra}


def _leaderboard(sweep_dir: Path) -> list[dict]:
    with open(sweep_dir / "leaderboard.csv", newline="") as f:
        return list(csv.DictReader(f))


def _chat(*turns) -> dict:
    return {"conversations": [{"from": r, "value": v} for r, v in turns], "source": "test", "score": 5.0}


BAD_ROWS = {  # reason -> rows that must be skipped for it
    "no assistant turn": [_chat(("human", "What is 2 plus 2?"))] * 3,
    "empty text": [_chat(("human", "Hi"), ("gpt", "   "))] * 2,
    "unknown role": [_chat(("narrator", "Once"), ("gpt", "upon a time."))],
}
EMOJI_ROWS = [_chat(("human", f"Describe the emoji {e}"), ("gpt", f"{e} is {name}."))
              for e, name in [("🦊", "a fox"), ("👩🏽‍🚀", "an astronaut"), ("🇯🇵", "the flag of Japan")] * 4]


@pytest.fixture(scope="module")
def data_with_bad_rows(tiny_assets, tmp_path_factory) -> Path:
    good = [json.loads(line) for line in Path(tiny_assets["dataset"]).read_text(encoding="utf-8").splitlines()][:600]
    rows = good + EMOJI_ROWS + [r for rows in BAD_ROWS.values() for r in rows]
    path = tmp_path_factory.mktemp("data") / "finetome_with_bad_rows.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- failure isolation + secrets


@pytest.fixture(scope="module")
def faulty_sweep(data_with_bad_rows, tmp_path_factory) -> dict:
    storage = tmp_path_factory.mktemp("runs")
    cmd = [sys.executable, "sweeps/llama_finetome.py", *SMALL, "--dataset", str(data_with_bad_rows),
           "--num-samples", "4", "--max-concurrent", "2", "--storage-path", str(storage), "--name", "faulty",
           "--wandb-project", "lorasweep-tests"]
    env = _env(HF_TOKEN=FAKE_HF, WANDB_API_KEY=FAKE_WANDB, WANDB_MODE="offline",
               # the two seed points: the notebook default (lr 1e-4) and the hand-tuned one (lr 1e-3)
               LORASWEEP_INJECT_FAULT="oom@2:learning_rate=0.0001;nan@3:learning_rate=0.001")
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, (r.stdout[-4000:], r.stderr[-4000:])
    return {"dir": storage / "faulty", "storage": storage, "stdout": r.stdout, "stderr": r.stderr,
            "ray_session": Path("/tmp/ray/session_latest").resolve()}


def test_failed_trials_are_reported_and_the_sweep_goes_on(faulty_sweep):
    rows = _leaderboard(faulty_sweep["dir"])
    assert len(rows) == 4
    by_lr = {r["learning_rate"]: r for r in rows}
    oom, nan = by_lr["0.0001"], by_lr["0.001"]
    assert oom["status"] == "failed" and oom["error"].startswith("out of memory at step 2 on cpu"), oom
    assert "per_device_batch_size" in oom["error"]
    assert nan["status"] == "failed" and nan["error"].startswith("non-finite loss at step 3"), nan
    healthy = [r for r in rows if r["status"] != "failed"]
    assert len(healthy) == 2 and all(r["status"] == "completed" for r in healthy)
    # healthy trials rank above failed ones, and only they are exported (top_k 3 > 2 healthy)
    assert [r["status"] for r in rows] == ["completed", "completed", "failed", "failed"]
    adapters = sorted(p.name for p in (faulty_sweep["dir"] / "best_adapters").iterdir())
    assert adapters == ["rank_1", "rank_2"]
    exported = {json.loads((faulty_sweep["dir"] / "best_adapters" / a / "lorasweep.json").read_text())["trial_id"]
                for a in adapters}
    assert exported == {r["trial_id"] for r in healthy}
    assert "(2 failed)" in faulty_sweep["stdout"]


def test_bad_rows_are_skipped_and_counted_by_reason(faulty_sweep):
    report = json.loads((faulty_sweep["dir"] / "data_report.json").read_text())
    assert report["skipped"] == {reason: len(rows) for reason, rows in BAD_ROWS.items()}
    assert report["rows"] == 600 + len(EMOJI_ROWS) + sum(len(r) for r in BAD_ROWS.values())
    assert report["train_examples"] + report["eval_examples"] == 600 + len(EMOJI_ROWS)
    assert "skipped empty text: 2, no assistant turn: 3, unknown role: 1" in faulty_sweep["stdout"]


def _files_under(*roots: Path):
    for root in roots:
        for dirpath, _, names in os.walk(root):
            for name in names:
                path = Path(dirpath) / name
                if path.is_file() and not path.is_symlink():
                    yield path


def test_no_secret_in_any_file_the_sweep_wrote(faulty_sweep):
    sweep_dir, session = faulty_sweep["dir"], faulty_sweep["ray_session"]
    scanned = 0
    for path in _files_under(faulty_sweep["storage"], session):
        data = path.read_bytes()
        scanned += 1
        for secret in (FAKE_HF, FAKE_WANDB):
            assert secret.encode() not in data, f"{secret[:6]}... found in {path}"
    for stream in (faulty_sweep["stdout"], faulty_sweep["stderr"]):
        assert FAKE_HF not in stream and FAKE_WANDB not in stream
    # what was scanned is what matters: the sweep's outputs, the W&B offline runs and Ray's logs
    for expected in ("sweep_config.json", "leaderboard.csv", "data_report.json", "best_adapters/rank_1/README.md"):
        assert (sweep_dir / expected).is_file()
    assert list((sweep_dir / "wandb").rglob("*.wandb")), "W&B offline runs were not written"
    assert list(session.glob("logs/*")) and scanned > 50


# ----------------------------------------------------------------------------- Ctrl-C and resume


def test_ctrl_c_keeps_everything_and_the_printed_command_resumes(tiny_assets, tmp_path):
    storage = tmp_path / "runs"
    args = [*SMALL, "--num-samples", "3", "--max-concurrent", "1", "--storage-path", str(storage), "--name", "cc"]
    proc = subprocess.Popen([sys.executable, "sweeps/llama_finetome.py", *args], cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sweep_dir = storage / "cc"
    deadline = time.time() + 600
    while not list(sweep_dir.glob("train_runs/*/checkpoint_*")):
        assert proc.poll() is None and time.time() < deadline, "no checkpoint before the sweep ended"
        time.sleep(1)
    time.sleep(2)  # mid-trial: the first checkpoint is in, the trial still training
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 130, out[-4000:]
    checkpoints = sorted(sweep_dir.glob("train_runs/*/checkpoint_*"))
    assert checkpoints, "checkpoints were lost"
    interrupted = checkpoints[0].parent.name  # the trial that was training
    assert (sweep_dir / "leaderboard.csv").is_file() and (sweep_dir / "tuner.pkl").is_file()
    assert not (sweep_dir / "best_adapters").exists()  # nothing exported from a partial sweep
    resume = next(line for line in out.splitlines() if "resume with: " in line).split("resume with: ", 1)[1]
    assert resume.endswith("--resume") and "--name cc" in resume

    cmd = shlex.split(resume)
    assert cmd[:2] == ["python", "sweeps/llama_finetome.py"], cmd
    r = subprocess.run([sys.executable, *cmd[1:]], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, (r.stdout[-4000:], r.stderr[-4000:])
    rows = _leaderboard(sweep_dir)
    assert len(rows) == 3 and all(row["status"] == "completed" for row in rows), rows
    assert (sweep_dir / "best_adapters" / "rank_1" / "adapter_model.safetensors").is_file()
    # the interrupted trial went on from its checkpoint: its reports never restart at an earlier step
    reports = [json.loads(line) for line in (sweep_dir / f"trial_{interrupted}" / "result.json").read_text().splitlines()]
    steps = [rep["step"] for rep in reports]
    assert steps == sorted(set(steps)) and reports[-1]["tokens_seen"] >= 6000, steps
