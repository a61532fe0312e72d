"""``--tensorboard``: every optimizer step's training loss and learning rate, and the training tokens
so far, in TensorBoard event files of the trial's own (``<trial folder>/tensorboard/``), beside the
event file Tune writes there from the trial's reports (``ray/tune/eval_loss``, ... at each report).

    python sweeps/llama_finetome.py --preset smoke --tensorboard
    tensorboard --logdir runs/llama_finetome-smoke      # every trial, both files

A report comes every ``eval_every`` steps; these curves come at every step (``train/loss``: the mean
loss of the step's micro-batches, ``train/learning_rate``, ``train/tokens_seen``), so a learning rate
that diverges at step 3 of a 50-step report interval shows. Written by rank 0 only, with the
tensorboardX that Ray Tune brings (no TensorFlow, no ``tensorboard`` package in a trial). The cost is
one device read per optimizer step (the loss), which is why it is a flag.

The folder is the trial's working folder, which Tune copies into the trial's folder under
``--storage-path`` with its checkpoints (``SyncConfig(sync_artifacts=True)``) and at its end.
"""

from __future__ import annotations

import os

from transformers import TrainerCallback

from trainers.evaluation import world

FOLDER = "tensorboard"
SPEC = "trainers.step_curves:step_curves"  # what --tensorboard adds to settings.callbacks


class StepCurves(TrainerCallback):
    def __init__(self, logdir: str):
        self.logdir = logdir
        self.trainer = None
        self.writer = None

    def bind(self, trainer) -> None:
        """The trial's ``loop.TokenCountingTrainer``: its ``take_loss`` and token count."""
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kw):
        from tensorboardX import SummaryWriter

        os.makedirs(self.logdir, exist_ok=True)
        self.writer = SummaryWriter(self.logdir, flush_secs=30)

    def on_step_end(self, args, state, control, lr_scheduler=None, **kw):
        if self.writer is None or self.trainer is None:
            return control
        step = state.global_step
        self.writer.add_scalar("train/loss", self.trainer.take_loss(), step)
        if lr_scheduler is not None:
            self.writer.add_scalar("train/learning_rate", float(lr_scheduler.get_last_lr()[0]), step)
        self.writer.add_scalar("train/tokens_seen", float(self.trainer.tokens_local), step)
        return control

    def on_log(self, args, state, control, **kw):  # a report: what is written so far goes to disk
        if self.writer is not None:
            self.writer.flush()
        return control

    def on_train_end(self, args, state, control, **kw):
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        return control


def step_curves(trial) -> StepCurves | None:
    """The ``settings.callbacks`` factory: rank 0's writer in the trial's working folder."""
    if world()[0] != 0:
        return None
    return StepCurves(os.path.join(os.getcwd(), FOLDER))
