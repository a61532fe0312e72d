"""A trial's reports and checkpoints: every ``report_every`` steps ``ReportCallback`` evaluates and
hands the report to Ray Train or Tune, with a checkpoint (the report in ``STATE_FILE`` beside the
adapter and optimizer state) only where one is used: the trial's best report so far, the last of a
finished trial, and one every ``--checkpoint-minutes``; ``BackgroundReporter`` uploads them while
training goes on. A restarted trial finds its newest
checkpoint in the sweep's storage, restores its counters from it, or makes again a last report that
the driver never recorded."""

from __future__ import annotations

import json
import math
import os
import resource
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

from trainers.evaluation import all_gather_lists, all_reduce_sum, world
from trainers.tasks import metric_mode

STATE_FILE = "lorasweep_state.json"  # metrics + tokens_seen, written into every checkpoint
BEST_KEY = "best_objective_so_far"  # in STATE_FILE beside the report's metrics


class BackgroundReporter:
    """Hands a trial's reports to Ray (``report(metrics, checkpoint_dir)``) from a thread of its own,
    in order, so that training goes on while a checkpoint uploads: Tune and Ray Train copy a
    checkpoint into the sweep's storage (S3, GCS, NFS) before ``report`` returns, and the GPUs would
    wait that long. One report is in flight and one queued at most; a third waits for room, and that
    wait is the only part of a checkpoint's upload the trial's devices see.

    A checkpoint's folder is moved out of Transformers' way first (``save_total_limit`` would delete
    it at the next save) and removed once handed over. Tune stops a trial (ASHA) by ending the thread
    that reports (``SystemExit``, as it ends a training thread): ``stopped`` then tells the training
    loop to end too. An error of the reporting thread is raised in the training thread at its next
    report or at ``close``, which waits for the reports queued before it. With ``background`` off
    (``--no-background-upload``) each report is made in the training thread, as it comes."""

    def __init__(self, report, background: bool = True):
        import queue
        import threading

        self.report, self.stopped, self.error = report, False, None
        self.queue: "queue.Queue" = queue.Queue(maxsize=1)
        self.thread = threading.Thread(target=self._run, name="lorasweep-reporter", daemon=True) if background else None
        if self.thread is not None:
            self.thread.start()

    def _run(self) -> None:
        import shutil

        while True:
            item = self.queue.get()
            if item is None:
                return
            metrics, ckpt_dir = item
            try:
                self.report(metrics, ckpt_dir)
            except SystemExit:  # Tune stopped the trial while this report waited for its answer
                self.stopped = True
                return
            except BaseException as e:  # noqa: BLE001 - raised again in the training thread
                self.error = e
                return
            finally:
                if ckpt_dir:
                    shutil.rmtree(ckpt_dir, ignore_errors=True)

    def __call__(self, metrics: dict, ckpt_dir: str) -> None:
        import queue

        if self.thread is None:
            self.report(metrics, ckpt_dir)
            return
        self._raise()
        if ckpt_dir:  # out of the `checkpoint-*` names Transformers rotates
            staged = os.path.join(os.path.dirname(ckpt_dir), "reporting-" + os.path.basename(ckpt_dir))
            os.replace(ckpt_dir, staged)
            ckpt_dir = staged
        while True:
            try:
                self.queue.put((metrics, ckpt_dir), timeout=0.5)
                return
            except queue.Full:
                self._raise()

    def _raise(self) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        if self.stopped or not self.thread.is_alive():
            raise SystemExit(0)  # as Tune ends a stopped trial's training thread

    def close(self, quietly: bool = False) -> None:
        """Waits for every report handed in (the trial's last one included); raises the reporting
        thread's error, or SystemExit where Tune stopped the trial, unless ``quietly`` (training
        already failed: its error is the one to raise)."""
        import queue

        if self.thread is None:
            return
        while self.thread.is_alive():
            try:
                self.queue.put(None, timeout=0.5)
                break
            except queue.Full:  # a report still queued behind the one in flight
                continue
        self.thread.join()
        if self.error is not None and not quietly:
            error, self.error = self.error, None
            raise error
        if self.stopped and not quietly:
            # Tune stopped the trial at a report in flight: its stop signal went to the reporting
            # thread (and Tune cleared it there), so this thread must end as a stopped trial's
            # does, by SystemExit: returning would make Tune's function wrapper report once more
            # and wait forever for an answer (seen: reuse of the process failed after 60 s)
            raise SystemExit(0)


class ReportCallback(TrainerCallback):
    """Every ``report_every`` steps (and at the end of the budget): eval, report, and a checkpoint
    where ``_checkpoint_due`` says."""

    def __init__(self, trainer, st, report):
        """``trainer``: the trial's ``loop.TokenCountingTrainer``; ``st``: its ``loop.Setup``;
        ``report(metrics, checkpoint_dir)``: to Ray Train, to Tune, or to a list."""
        self.trainer, self.st, self.report = trainer, st, report
        self.settings = st.settings
        self.last_loss = float("nan")
        self.t_last, self.tokens_last = time.time(), 0
        self.tokens_seen = 0
        self.train_time_s = 0.0  # carried over on resume
        self.nodes: list[str] = []
        self.first_step_at: float | None = None  # wall clock: where trial start-up ends (bench/startup.py)
        # seconds spent writing checkpoints (Transformers saves between on_step_end and on_save) and
        # handing reports with them over (BackgroundReporter: waiting for room while earlier ones upload)
        self.checkpoint_s = 0.0
        self.save_started = 0.0
        self.last_checkpoint_at = time.time()
        self.best: float | None = None  # the trial's best objective so far: its report gets a checkpoint
        self.pending: dict | None = None  # the report whose checkpoint Transformers is writing
        self.initial_adapter: str | None = None  # PiSSA/OLoRA (rank 0): each checkpoint gets its plain-LoRA form
        res = st.trial.resources
        self.devices = res.workers * (res.gpus if res.gpus > 0 else res.cpus)

    def on_train_begin(self, args, state, control, **kw):
        self.t_last = time.time()
        self.nodes = all_gather_lists([_node_id()])  # the Ray node of each rank, in rank order

    def on_step_begin(self, args, state, control, **kw):
        if self.first_step_at is None:
            self.first_step_at = time.time()

    def _stop_if_stopped(self) -> None:
        if getattr(self.report, "stopped", False):  # Tune stopped the trial at a report in flight
            raise SystemExit(0)

    def on_substep_end(self, args, state, control, **kw):  # each micro-batch of an accumulated step
        self._stop_if_stopped()

    def on_prediction_step(self, args, state, control, **kw):  # each eval batch
        self._stop_if_stopped()

    def on_step_end(self, args, state, control, **kw):
        self._stop_if_stopped()
        self.trainer.check_finite()
        if state.global_step % self.st.report_every == 0 or state.global_step >= state.max_steps:
            # a report: Transformers logs (on_log: eval, metrics, whether to checkpoint), then saves
            # if on_log left should_save on (on_save: the checkpoint's report). A later callback may
            # move reports (lorasweep/probe.py does): a step's log is what makes one.
            control.should_log = control.should_save = True
        return control

    def on_log(self, args, state, control, logs=None, model=None, **kw):
        if not logs or "loss" not in logs:  # the end of training's summary, not a step's log
            return control
        self.last_loss = float(logs["loss"])
        metrics = self._evaluate(state, model)
        if metrics["finished"]:
            control.should_training_stop = True
        if self._checkpoint_due(metrics):
            self.pending = metrics
            control.should_save = True
            self.save_started = time.time()
        else:
            control.should_save = False
            self._hand_over(metrics, "")
        return control

    def on_save(self, args, state, control, **kw):
        if self.pending is None:  # a save this callback did not ask for
            return control
        self.checkpoint_s += time.time() - self.save_started
        metrics, self.pending = self.pending, None
        metrics["checkpoint_s"] = round(self.checkpoint_s, 3)
        ckpt_dir = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if world()[0] == 0:
            # with the trial's best objective so far, which a restart from here goes on comparing with
            Path(ckpt_dir, STATE_FILE).write_text(json.dumps({**metrics, BEST_KEY: self.best}))
            if self.initial_adapter:
                from trainers.lora_variants import save_converted

                save_converted(self.trainer.model, ckpt_dir, self.initial_adapter)
        self.last_checkpoint_at = time.time()
        self._hand_over(metrics, ckpt_dir)
        return control

    def _checkpoint_due(self, metrics: dict) -> bool:
        """A checkpoint where one is used: the trial's best report so far (the export and the final
        round read it), its last, and one at least every ``checkpoint_minutes`` (what a restart resumes
        from). Every rank gets the same answer (DeepSpeed saves a shard on each): the metrics are
        already all-reduced; the clock is rank 0's."""
        objective = self.st.trial.objective
        value = metrics.get(objective)
        best = isinstance(value, (int, float)) and math.isfinite(value) and (
            self.best is None or (value < self.best if metric_mode(objective) == "min" else value > self.best))
        if best:
            self.best = value
        minutes = self.settings.checkpoint_minutes
        clock = minutes <= 0 or time.time() - self.last_checkpoint_at >= 60 * minutes
        due = best or metrics["finished"] or (clock and world()[0] == 0)
        return all_reduce_sum([float(due)])[0] > 0

    def _evaluate(self, state, model) -> dict:
        now = time.time()  # before eval: tokens/s and train time count training only
        (self.tokens_seen,) = all_reduce_sum([float(self.trainer.tokens_local)])
        st = self.st
        task_metrics = st.task.evaluate(model, st.tokenizer, self.settings, st.data, world())
        self.train_time_s += now - self.t_last
        finished = state.global_step >= state.max_steps or self.tokens_seen >= self.settings.max_tokens
        metrics = {
            **task_metrics,
            "train_loss": self.last_loss,
            "tokens_seen": int(self.tokens_seen),
            "step": state.global_step,
            "max_steps": state.max_steps,  # the plan: the console shows step 50/162
            "epoch": round(state.epoch or 0.0, 4),
            "learning_rate_used": self.settings.learning_rate,  # after --lr-scaling
            "tokens_per_s": (self.tokens_seen - self.tokens_last) / max(now - self.t_last, 1e-9),
            "peak_mem_gb": _peak_memory_gb(st.device),
            "train_time_s": self.train_time_s,
            # writing checkpoints and handing them over (waiting while earlier ones upload), so far
            "checkpoint_s": round(self.checkpoint_s, 3),
            "finished": finished,
            "worker_nodes": ",".join(self.nodes),  # a string: loggers take it as it is
            # start-up: seconds from train_func's start to the first optimizer step, and when that was
            "setup_s": round((self.first_step_at or now) - self.st.started_at, 3),
            "first_step_at": self.first_step_at or now,
            # cost so far: the devices the trial holds (GPUs, else CPUs, on every worker) x its wall
            # time since train_func began, start-up included; a second objective can minimise it
            "device_hours": self.devices * (now - self.st.started_at) / 3600,
            "pid": os.getpid(),  # one process reused for several trials shows here
        }
        self.tokens_last = self.tokens_seen
        return metrics

    def _hand_over(self, metrics: dict, ckpt_dir: str) -> None:
        """The report to Ray (with the checkpoint in ``ckpt_dir``, or none for ""); through a
        ``BackgroundReporter`` the time counted is what training waited for room to hand it in."""
        metrics["reported_at"] = time.time()  # wall clock, finer than Tune's whole-second timestamp
        handed = time.time()
        self.report(metrics, ckpt_dir)
        self.t_last = time.time()  # eval, checkpoint upload and report are not training time
        if ckpt_dir:
            self.checkpoint_s += self.t_last - handed

    def restore(self, resume_dir: str) -> None:
        """A resumed trial: the tokens seen and training time carried over from its checkpoint."""
        state = json.loads(Path(resume_dir, STATE_FILE).read_text())
        self.trainer.tokens_local = int(state["tokens_seen"]) // world()[1]
        self.tokens_last = state["tokens_seen"]
        self.train_time_s = float(state.get("train_time_s", 0.0))
        self.checkpoint_s = float(state.get("checkpoint_s", 0.0))
        self.best = state.get(BEST_KEY)


def _node_id() -> str:
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"
    except ImportError:
        return "local"


def _peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


# ----------------------------------------------------------------------------- reports to Ray Train or Tune


def ray_report(metrics: dict, ckpt_dir: str) -> None:
    import ray.train
    from ray.train import Checkpoint

    # Each rank hands in what it wrote (DeepSpeed: its own shard files; DDP: only rank 0 writes)
    # and Ray uploads them into one checkpoint directory.
    has = os.path.isdir(ckpt_dir) and any(os.scandir(ckpt_dir))
    ray.train.report(metrics, checkpoint=Checkpoint.from_directory(ckpt_dir) if has else None)


def in_ray_train() -> bool:
    try:
        import ray.train

        ray.train.get_context().get_world_rank()
        return True
    except Exception:
        return False


def tune_report(metrics: dict, ckpt_dir: str) -> None:
    from ray import tune

    # Tune copies the folder into the trial's storage before this returns.
    has = os.path.isdir(ckpt_dir) and any(os.scandir(ckpt_dir))
    tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(ckpt_dir) if has else None)


# ----------------------------------------------------------------------------- checkpoints and resuming


def tune_resume():
    """The checkpoint a restarted one-worker Tune trial resumes from (None: a new trial). One whose
    budget was spent, but whose last report the driver never recorded (a Ctrl-C as it arrived), has
    that report made again here from the checkpoint; ``loop._train`` then trains nothing."""
    from ray import tune

    resume = _latest_tune_checkpoint(tune.get_checkpoint())
    if resume is not None and checkpoint_finished(resume) and not _recorded(checkpoint_state(resume)):
        tune.report(checkpoint_state(resume), checkpoint=resume)
    return resume


def _latest_tune_checkpoint(given):
    """The newest checkpoint in this trial's storage folder, when it is newer than ``given`` (what Tune
    restored). Tune records a trial's checkpoints in its experiment state, saved every few seconds;
    a driver killed between a report and that save restores the trial one report back, and the trial
    would train that interval again and report its steps twice. Ray Train keeps the newest itself."""
    from ray import tune

    try:
        fs, trial_path = _trial_storage()
        newest = newest_checkpoint(fs, trial_path)
    except (AttributeError, OSError):
        return given
    if newest is None:
        return given
    if given is not None and os.path.basename(given.path.rstrip("/")) >= os.path.basename(newest):
        return given
    return tune.Checkpoint(newest, filesystem=fs)


def newest_checkpoint(fs, trial_path: str) -> str | None:
    """Path of the newest complete ``checkpoint_*`` folder (its state file written) under a Tune
    trial's folder on ``fs`` (a pyarrow filesystem: local or s3), or None."""
    import pyarrow.fs as pafs

    found = [i for i in fs.get_file_info(pafs.FileSelector(trial_path, allow_not_found=True))
             if i.type == pafs.FileType.Directory and i.base_name.startswith("checkpoint_")
             and fs.get_file_info(f"{i.path}/{STATE_FILE}").type == pafs.FileType.File]
    return max(found, key=lambda i: i.base_name).path if found else None


def _trial_storage():
    """``(filesystem, path)`` of this Tune trial's folder in the sweep's storage (local or s3://)."""
    from ray.train._internal.session import get_session  # where Tune keeps it (Ray 2.60)

    storage = get_session().storage
    return storage.storage_filesystem, storage.trial_fs_path


def checkpoint_state(checkpoint) -> dict:
    """A checkpoint's own state (its report's metrics), read without downloading the checkpoint."""
    try:
        with checkpoint.filesystem.open_input_stream(f"{checkpoint.path}/{STATE_FILE}") as f:
            return json.loads(f.read())
    except (OSError, ValueError):
        return {}


def checkpoint_finished(checkpoint) -> bool:
    return bool(checkpoint_state(checkpoint).get("finished", False))


def _recorded(state: dict) -> bool:
    """Whether this trial's result.json (Tune's record of its reports) ends with the report ``state``."""
    try:
        fs, trial_path = _trial_storage()
        with fs.open_input_stream(f"{trial_path}/result.json") as f:
            lines = [line for line in f.read().decode().splitlines() if line.strip()]
        last = json.loads(lines[-1]) if lines else {}
    except (AttributeError, OSError, ValueError):
        return False
    return last.get("step") == state.get("step") and bool(last.get("finished"))
