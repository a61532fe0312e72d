"""Where a sweep writes: ``--storage-path`` is checked by writing to it, a dry run or a refusal takes
back the folder the check made (and only that), and a failed write of the sweep's own files is one
line naming the path and the fix, with everything written before left as it was."""

from __future__ import annotations

import json
import os
import resource
import signal
from contextlib import contextmanager
from pathlib import Path

import pytest

from lorasweep.recipe import SweepOptions
from lorasweep.resolve import resolve
from common.errors import ConfigError, StorageError
from lorasweep.preflight import Inputs, _check_storage, remove_created
from lorasweep.best_adapters import _publish
from lorasweep.leaderboard import write_leaderboard
from lorasweep.results import finish, write_start
from sweeps.llama_finetome import RECIPE


def options(storage: Path | str, **kw) -> SweepOptions:
    return SweepOptions(name="s", storage_path=str(storage), **kw)


# ----------------------------------------------------------------------------- the check


@pytest.mark.parametrize("storage", ["/proc/nosuch", "/proc/self/runs", "/etc/passwd/runs"])
def test_storage_that_cannot_be_written_is_refused_whoever_runs_it(storage):
    # Permission bits would pass all three for root (and /proc is mode 555, not read-only):
    # only making the folder tells.
    with pytest.raises(ConfigError) as e:
        _check_storage(options(storage))
    msg = str(e.value)
    assert msg.startswith(f"`--storage-path` {storage!r} is not writable (") and "pick a folder you can write" in msg
    assert "\n" not in msg


def test_the_check_makes_the_sweep_folder_and_takes_back_only_what_it_made(tmp_path):
    made = _check_storage(options(tmp_path / "new" / "runs"))
    assert made == [str(tmp_path / "new"), str(tmp_path / "new" / "runs"), str(tmp_path / "new" / "runs" / "s")]
    assert (tmp_path / "new" / "runs" / "s").is_dir() and not any((tmp_path / "new" / "runs" / "s").iterdir())
    remove_created(made)
    assert list(tmp_path.iterdir()) == []  # tmp_path itself was there before: kept

    (tmp_path / "s").mkdir()  # an empty folder of the same name, made by someone else: holds nothing to lose
    assert _check_storage(options(tmp_path)) == []
    remove_created([])
    assert (tmp_path / "s").is_dir()


def test_taking_back_never_removes_a_file(tmp_path):
    made = _check_storage(options(tmp_path / "runs"))
    (tmp_path / "runs" / "s" / "leaderboard.csv").write_text("keep me")
    remove_created(made)
    assert (tmp_path / "runs" / "s" / "leaderboard.csv").read_text() == "keep me"


def test_a_dry_run_of_an_existing_sweep_writes_nothing_in_it(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "tuner.pkl").write_bytes(b"x")
    before = sorted(p.name for p in (tmp_path / "s").iterdir())
    assert _check_storage(options(tmp_path, dry_run=True)) == []
    assert _check_storage(options(tmp_path, resume=True)) == []
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == before


# ----------------------------------------------------------------------------- the sweep's own writes


@contextmanager
def file_size_limit(nbytes: int):
    """Writes past ``nbytes`` in any file fail with EFBIG, as a full disk fails them with ENOSPC (and
    for root too). SIGXFSZ would kill the process: ignored, so the write returns the error."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)


def sweep_at(storage: Path | str, *flags: str):
    return resolve(RECIPE, ["--preset", "smoke", "--storage-path", str(storage), "--name", "s", *flags])


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if p.name.startswith(".tmp-") or ".tmp-" in p.name]


def test_write_start_under_a_missing_mount_is_one_line_naming_path_and_fix():
    with pytest.raises(StorageError) as e:
        write_start(sweep_at("/proc/nosuch"), Inputs(data={"rows": 1}))
    msg = str(e.value)
    assert msg.startswith("could not write /proc/nosuch/s/sweep_config.json (FileNotFoundError: ") and "\n" not in msg
    assert "check that --storage-path '/proc/nosuch' has free space and write permission, or pick another" in msg


def test_a_failed_write_start_takes_back_its_own_files_and_keeps_the_rest(tmp_path):
    sweep = sweep_at(tmp_path)
    (tmp_path / "s" / "data_report.json").mkdir(parents=True)  # something in the way of the second file
    (tmp_path / "s" / "data_report.json" / "notes.txt").write_text("keep me")
    with pytest.raises(StorageError, match=r"could not write .*/s/data_report.json \(IsADirectoryError"):
        write_start(sweep, Inputs(data={"rows": 1}))
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["data_report.json"]  # sweep_config.json taken back
    assert (tmp_path / "s" / "data_report.json" / "notes.txt").read_text() == "keep me"


def test_a_leaderboard_that_does_not_fit_leaves_the_previous_one_whole(tmp_path):
    old = json.dumps([{"rank": 1, "trial_id": "old"}])
    (tmp_path / "leaderboard.json").write_text(old)
    rows = [{"rank": i, "trial_id": f"t{i}", "r": 8, "lora_alpha": 16, "best_eval_loss": 1.0 + i, "status": "completed"}
            for i in range(1, 40)]
    with file_size_limit(4096), pytest.raises(StorageError) as e:  # the CSV fits, the JSON does not
        write_leaderboard(rows, ["r", "lora_alpha"], str(tmp_path))
    assert str(e.value).startswith(f"could not write {tmp_path}/leaderboard.json (OSError: File too large)")
    assert (tmp_path / "leaderboard.json").read_text() == old
    assert (tmp_path / "leaderboard.csv").read_text().count("\n") == 40  # written whole, before the JSON
    assert no_temp_files(tmp_path)


def test_a_failed_export_leaves_the_earlier_export_in_place(tmp_path):
    dest = tmp_path / "best_adapters"
    (dest / "rank_1").mkdir(parents=True)
    (dest / "rank_1" / "adapter_model.safetensors").write_bytes(b"earlier")
    staging = tmp_path / "staging" / "rank_1"
    staging.mkdir(parents=True)
    (staging / "adapter_model.safetensors").write_bytes(os.urandom(64 * 1024))
    with file_size_limit(16 * 1024), pytest.raises(OSError):
        _publish(staging.parent, str(dest))
    assert (dest / "rank_1" / "adapter_model.safetensors").read_bytes() == b"earlier"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best_adapters", "staging"]  # no half copy left


class _NoTrials(list):
    """A ResultGrid of a sweep interrupted before any trial ended."""

    num_terminated = num_errors = 0


def test_a_failed_write_after_the_sweep_says_how_to_resume(capsys):
    sweep = sweep_at("/proc/nosuch")
    with pytest.raises(StorageError) as e:
        finish(sweep, _NoTrials(), 1.0, ["--preset", "smoke", "--storage-path", "/proc/nosuch", "--name", "s"])
    msg = str(e.value)
    assert msg.startswith("could not write /proc/nosuch/s/leaderboard.csv (FileNotFoundError: ") and "\n" not in msg
    assert "the trials' results stay in /proc/nosuch/s" in msg
    assert msg.endswith("--preset smoke --storage-path /proc/nosuch --name s --resume")
