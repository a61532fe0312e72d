"""Which reports carry a checkpoint (trainers/reporting.py, ``--checkpoint-minutes``): the trial's best
so far by its objective, its last, and one at least every N minutes; the rest carry metrics only.

The decision is driven through ``ReportCallback`` itself on a sequence of reports (a sweep's eval
losses mostly fall at every report, so tests/test_sweep.py's shared sweep shows few skips)."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from trainers.config import TrainSettings, TrialConfig
from trainers.reporting import BackgroundReporter, ReportCallback


def _callback(objective: str = "eval_loss", minutes: float = 10.0) -> ReportCallback:
    settings = TrainSettings(model="m", dataset="d.jsonl", checkpoint_minutes=minutes)
    st = SimpleNamespace(settings=settings, trial=TrialConfig(settings, objective=objective))
    return ReportCallback(trainer=None, st=st, report=None)


def _decisions(cb: ReportCallback, objective: str, values: list[float]) -> list[bool]:
    return [cb._checkpoint_due({objective: v, "finished": i == len(values) - 1}) for i, v in enumerate(values)]


@pytest.mark.parametrize("objective,values,due", [
    # falling loss with two setbacks: only the new bests and the last
    ("eval_loss", [1.0, 0.9, 0.95, 0.85, 0.86, 0.9], [True, True, False, True, False, True]),
    # a maximised metric: the same rule turned over; a tie is no improvement
    ("f1", [0.5, 0.7, 0.7, 0.6, 0.8, 0.75], [True, True, False, False, True, True]),
    # a NaN (a diverged eval) is never a best
    ("eval_loss", [1.0, float("nan"), 0.9, 0.95], [True, False, True, True]),
])
def test_a_checkpoint_at_each_best_so_far_and_at_the_last(objective, values, due):
    assert _decisions(_callback(objective), objective, values) == due


def test_zero_minutes_is_a_checkpoint_at_every_report():
    assert _decisions(_callback(minutes=0), "eval_loss", [1.0, 1.1, 1.2, 1.3]) == [True] * 4


def test_the_clock_adds_one_for_a_restart_once_the_minutes_have_passed():
    cb = _callback(minutes=10)
    assert cb._checkpoint_due({"eval_loss": 1.0, "finished": False})
    cb.last_checkpoint_at = time.time()  # on_save sets it when the checkpoint is handed over
    assert not cb._checkpoint_due({"eval_loss": 1.5, "finished": False})
    cb.last_checkpoint_at = time.time() - 601
    assert cb._checkpoint_due({"eval_loss": 1.5, "finished": False})


def test_a_restarted_trial_compares_with_the_best_before_its_checkpoint(tmp_path):
    import json

    from trainers.reporting import BEST_KEY, STATE_FILE

    (tmp_path / STATE_FILE).write_text(json.dumps({"eval_loss": 0.95, "tokens_seen": 4000, BEST_KEY: 0.9}))
    cb = _callback()
    cb.trainer = SimpleNamespace(tokens_local=0)
    cb.restore(str(tmp_path))
    assert cb.best == 0.9 and not cb._checkpoint_due({"eval_loss": 0.92, "finished": False})
    assert cb._checkpoint_due({"eval_loss": 0.89, "finished": False})


def test_a_bad_value_is_one_line_naming_the_field():
    with pytest.raises(ValueError, match=r"`checkpoint_minutes` is -1; give minutes >= 0"):
        TrainSettings(model="m", dataset="d.jsonl", checkpoint_minutes=-1).validate()


# ----------------------------------------------------------------------------- reports from their own thread


def _checkpoint(tmp_path, step: int) -> str:
    d = tmp_path / f"checkpoint-{step}"
    d.mkdir()
    (d / "adapter_model.safetensors").write_text(str(step))
    return str(d)


def test_reports_reach_ray_in_order_while_training_goes_on(tmp_path):
    """A slow upload (0.3 s a checkpoint) does not hold up the hand-over until two are waiting; each
    report arrives in order with its checkpoint's files, moved out of the names Transformers rotates
    and removed once handed over."""
    seen = []

    def slow_report(metrics, ckpt_dir):
        files = sorted(p.name for p in Path(ckpt_dir).iterdir()) if ckpt_dir else []
        seen.append((metrics["step"], Path(ckpt_dir).name if ckpt_dir else "", files))
        time.sleep(0.3)

    reporter = BackgroundReporter(slow_report)
    t0 = time.time()
    reporter({"step": 1}, _checkpoint(tmp_path, 1))
    reporter({"step": 2}, "")
    handed = time.time() - t0
    reporter({"step": 3}, _checkpoint(tmp_path, 3))  # waits: one in flight, one queued
    reporter.close()
    assert handed < 0.2, handed
    assert seen == [(1, "reporting-checkpoint-1", ["adapter_model.safetensors"]), (2, "", []),
                    (3, "reporting-checkpoint-3", ["adapter_model.safetensors"])]
    assert list(tmp_path.iterdir()) == []  # every checkpoint folder removed after its report


def test_an_upload_error_is_raised_in_the_training_thread(tmp_path):
    def failing(metrics, ckpt_dir):
        raise OSError("bucket gone")

    reporter = BackgroundReporter(failing)
    reporter({"step": 1}, _checkpoint(tmp_path, 1))
    with pytest.raises(OSError, match="bucket gone"):
        reporter.thread.join()
        reporter({"step": 2}, "")
    reporter.close(quietly=True)


def test_a_trial_stopped_at_a_report_in_flight_ends_its_training(tmp_path):
    """Tune stops a trial (ASHA) by ending the thread waiting in ``report`` with SystemExit: the next
    step of training ends the same way."""
    def stopping(metrics, ckpt_dir):
        raise SystemExit(0)

    cb = _callback()
    cb.report = reporter = BackgroundReporter(stopping)
    reporter({"step": 1}, "")
    reporter.thread.join()
    assert reporter.stopped
    with pytest.raises(SystemExit):
        cb.on_step_end(None, SimpleNamespace(global_step=2), SimpleNamespace())
    with pytest.raises(SystemExit):
        reporter({"step": 2}, "")
    reporter.close(quietly=True)  # the training thread's own SystemExit is already on its way


def test_a_trial_stopped_at_its_last_report_ends_by_systemexit_not_by_returning(tmp_path):
    """Stopped while its last report is in flight, a trial's training thread must end by SystemExit,
    as it would have inside ``report``: returning makes Tune's function wrapper report once more and
    wait for an answer that never comes (the process then cannot be reused: seen in a smoke sweep)."""
    def stopping(metrics, ckpt_dir):
        raise SystemExit(0)

    reporter = BackgroundReporter(stopping)
    reporter({"step": 22, "finished": True}, "")
    with pytest.raises(SystemExit):
        reporter.close()
    done = BackgroundReporter(lambda metrics, ckpt_dir: None)  # not stopped: close returns
    done({"step": 22, "finished": True}, "")
    done.close()
