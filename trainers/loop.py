"""One trial, inside each of its Ray Train workers: ``train_func(config)``.

    setup:  TrialConfig -> task + family -> tokenizer -> data (split, formatted, packed)
            -> TrainingArguments (DDP or ZeRO; plain for one worker) -> base model (4-bit NF4 /
            8-bit / full) + LoRA -> transformers.Trainer
    train:  every ``eval_every`` steps (and at the end of the budget): the task's metrics on the
            eval split, a checkpoint, ``ray.train.report`` (trainers/reporting.py: the report
            callback, checkpoints, resuming)

The budget is training tokens seen (non-padding), not steps: a packed trial takes far fewer steps
for the same data, and ASHA's rungs must compare packed and unpacked trials on equal terms.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass

import torch
from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

from common.errors import TrialError
from trainers.config import TrainSettings, TrialConfig, deepspeed_config, for_workers
from common.errors import first_line
from trainers.data import count_tokens
from trainers.devices import cpu_for_fake_gpus, cuda_report, no_cuda_line, release_host_memory, trial_device
from trainers.evaluation import world
from trainers.families import resolve_family
from trainers.model import build_model, pick_precision
from trainers.shared_data import SharedData, data_key
from trainers.shared_data import receive as receive_data
from trainers.reporting import (BackgroundReporter, ReportCallback, checkpoint_finished, in_ray_train, ray_report,
                                tune_report, tune_resume)
from trainers.tasks import Prepared, get_task
from trainers.lora_variants import changes_base, save_initial


class TokenCountingTrainer(Trainer):
    """Counts non-padding training tokens and refuses non-finite losses.

    Both stay on the device: reading a GPU tensor (``int(n)``, ``bool(isfinite(...))``) stalls
    the host until the GPU catches up, and per micro-batch that is 4-8 stalls per optimizer step.
    The count is read at reports; finiteness once per optimizer step (``check_finite``, where the
    Trainer reads the gradient norm anyway)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._tokens = torch.zeros((), dtype=torch.float64, device=self.args.device)
        self._tokens_base = 0  # restored from a checkpoint on resume
        self._nonfinite = torch.zeros((), dtype=torch.bool, device=self.args.device)
        self._loss_sum = torch.zeros((), dtype=torch.float64, device=self.args.device)  # since take_loss
        self._loss_n = 0

    @property
    def tokens_local(self) -> int:
        return self._tokens_base + int(self._tokens.item())

    @tokens_local.setter
    def tokens_local(self, value: int) -> None:
        self._tokens_base, self._tokens = int(value), torch.zeros_like(self._tokens)

    def take_loss(self) -> float:
        """The mean training loss of the micro-batches since the last call (one device read); nan
        when there were none. For --tensorboard's step curves (trainers/step_curves.py)."""
        mean = float((self._loss_sum / self._loss_n).item()) if self._loss_n else float("nan")
        self._loss_sum.zero_()
        self._loss_n = 0
        return mean

    loraplus_lr_ratio = 0.0  # LoRA+ (--loraplus-lr-ratio): set before training
    task_loss = None  # Task.training_loss: set before training

    def use_task_loss(self, loss) -> None:
        """Train on ``loss`` (a task's own, e.g. DPO's): a mean per micro-batch, so the Trainer
        divides it by the accumulation steps as it does a loss not normalised by the token count."""
        self.task_loss = loss
        if loss is not None:
            self.model_accepts_loss_kwargs = False

    def create_optimizer(self, model=None):
        if self.optimizer is None and self.loraplus_lr_ratio > 0:
            from trainers.lora_variants import loraplus_optimizer

            self.optimizer = loraplus_optimizer(self, self.model if model is None else model, self.loraplus_lr_ratio)
            return self.optimizer
        return super().create_optimizer(model)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        n = inputs.pop("num_tokens", None)
        if self.task_loss is not None:
            loss = self.task_loss(model, self.accelerator.unwrap_model(model), inputs)
            out = (loss, None) if return_outputs else loss
        else:
            out = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                       num_items_in_batch=num_items_in_batch)
        if model.training:
            loss = (out[0] if return_outputs else out).detach()
            self._nonfinite |= ~torch.isfinite(loss).all().to(self._nonfinite.device)
            self._loss_sum += loss.float().mean().to(self._loss_sum.device, torch.float64)
            self._loss_n += 1
            if n is not None:
                self._tokens += n.to(self._tokens.device, torch.float64).sum() if torch.is_tensor(n) else float(n)
        return out

    def check_finite(self) -> None:
        if bool(self._nonfinite):
            raise TrialError(f"non-finite loss at step {self.state.global_step} "
                             f"(learning_rate {self.args.learning_rate:g}); the trial stops, the sweep goes on")


@dataclass
class Setup:
    """Everything a trial builds before its first step."""

    trial: TrialConfig
    settings: TrainSettings  # what the trial trains with: its effective settings for its number of workers
    task: object
    family: object
    tokenizer: object
    data: Prepared
    train: list[dict]  # what the Trainer iterates: examples, or packed rows
    model: object
    precision: str
    device: torch.device
    max_steps: int
    report_every: int  # optimizer steps between reports, scaled so packed trials report at the same tokens
    args: TrainingArguments
    started_at: float = 0.0  # wall clock when train_func began


def tokens_per_step(train: list[dict], settings, n_workers: int) -> float:
    """e.g. 2 rows x 4 accum x 2 workers x 1,500 tokens/packed row = 24,000 tokens per optimizer step."""
    tokens_per_row = count_tokens(train) / len(train)
    return tokens_per_row * settings.per_device_batch_size * settings.gradient_accumulation_steps * n_workers


def plan_steps(train: list[dict], settings, n_workers: int) -> int:
    """Optimizer steps that consume ``max_tokens`` on this data (24,000 tokens/step -> 2M = 84 steps)."""
    return max(1, math.ceil(settings.max_tokens / tokens_per_step(train, settings, n_workers)))


def scaled_learning_rate(settings, data: Prepared, train: list[dict], n_workers: int) -> tuple[float, str]:
    """``--lr-scaling``: learning_rate x (this trial's tokens per step / the reference batch's)^p,
    p = 1/2 (sqrt, Adam's usual rule) or 1 (linear, SGD's). The reference is ``lr_reference_tokens``,
    else one worker training unpacked with the recipe's batch: a packed or 4-worker trial takes
    bigger steps, and without scaling its learning rate means something else than its peers'."""
    if settings.lr_scaling == "none":
        return settings.learning_rate, ""
    reference = settings.lr_reference_tokens or tokens_per_step(data.train.examples, settings, 1)
    ratio = tokens_per_step(train, settings, n_workers) / reference
    lr = settings.learning_rate * ratio ** (0.5 if settings.lr_scaling == "sqrt" else 1.0)
    return lr, (f"learning rate {settings.learning_rate:g} x ({ratio:.3g}x the reference batch)^"
                f"{'1/2' if settings.lr_scaling == 'sqrt' else '1'} = {lr:.3g} (--lr-scaling {settings.lr_scaling})")


def report_interval(eval_every: int, examples: int, rows: int) -> int:
    """``eval_every`` counts steps over unpacked examples. A packed trial trains on fewer, longer rows
    (e.g. 1,000 examples -> 480 rows), so it reports every ``eval_every * rows / examples`` steps:
    every trial then reports at about the same training tokens, and none jumps an ASHA rung that
    its unpacked peers are judged at (a skipped rung is judged later, against their early numbers)."""
    return max(1, round(eval_every * rows / max(examples, 1)))


_DATA: dict = {}  # this process's last data: key -> (tokenizer, Prepared, {packing: training rows}, whence)


def prepared_data(s: TrainSettings, task, shared: SharedData | None = None) -> tuple[object, Prepared, list, str]:
    """``(tokenizer, prepared, training rows, whence)``. The sweep's data as the driver tokenised it
    (``shared``, trainers/shared_data.py) where it serves these settings; else this process's own,
    kept for the next trial Tune runs in it, so trials that differ only in training knobs tokenise
    and pack once per process. ``whence`` says which, for the trial's log ("" when tokenised here)."""
    key = data_key(s)
    if key in _DATA:
        tokenizer, data, rows, first = _DATA[key]
        whence = f"as an earlier trial in this process had it ({first or 'tokenised in this process'})"
    else:
        _DATA.clear()  # one dataset at a time: memory stays that of one trial's data
        tokenizer = task.load_tokenizer(s)
        if shared is not None and shared.serves(s, key):
            whence = shared.line()
            _DATA[key] = (tokenizer, *shared.prepared(), whence)
        else:
            whence = ""
            _DATA[key] = (tokenizer, task.prepare(s, tokenizer), {}, whence)
        tokenizer, data, rows, _ = _DATA[key]
    if s.packing not in rows:
        rows[s.packing] = task.train_examples(s, data)
    return tokenizer, data, rows[s.packing], whence


def setup(trial: TrialConfig, device: torch.device, out_dir: str, shared: SharedData | None = None) -> Setup:
    started_at = time.time()
    rank, n = world()
    task, family = get_task(trial.effective.task), resolve_family(trial.effective)
    precision = pick_precision(trial.effective, device, family)
    s, note = for_workers(trial.effective, n, precision)
    tokenizer, data, train, whence = prepared_data(s, task, shared)
    max_steps = plan_steps(train, s, n)
    report_every = report_interval(s.eval_every, len(data.train.examples), len(train))
    lr, lr_note = scaled_learning_rate(s, data, train, n)
    s = dataclasses.replace(s, learning_rate=lr)
    if rank == 0:
        print(f"[lorasweep] {len(data.train.examples)} train examples -> {len(train)} rows (packing={s.packing}), "
              f"{len(data.eval.examples)} eval, skipped {dict(data.train.skipped)}, {max_steps} steps planned, "
              f"a report every {report_every}")
        if note:
            print(f"[lorasweep] {note}")
        if whence:
            print(f"[lorasweep] data: {whence}")
        if lr_note:
            print(f"[lorasweep] {lr_note}")
    # The TrainingArguments before the model, as PEFT's DeepSpeed guide orders them: a ZeRO-3 config
    # in them registers itself with Transformers (HfDeepSpeedConfig, held by a weak reference: the
    # Setup keeps them alive), and from_pretrained then builds the model inside deepspeed.zero.Init,
    # each rank holding only its shard of the weights. Built after, every rank loads the whole model.
    args = training_arguments(s, precision, device, max_steps, out_dir)
    model = build_model(s, family, task, precision, device)
    return Setup(trial, s, task, family, tokenizer, data, train, model, precision, device, max_steps, report_every, args,
                 started_at)


def training_arguments(s: TrainSettings, precision: str, device: torch.device, max_steps: int,
                       out_dir: str) -> TrainingArguments:
    chosen = dict(
        output_dir=out_dir,
        per_device_train_batch_size=s.per_device_batch_size,
        gradient_accumulation_steps=s.gradient_accumulation_steps,
        learning_rate=float(s.learning_rate),
        warmup_steps=int(round(float(s.warmup_ratio) * max_steps)),
        lr_scheduler_type=s.lr_scheduler_type,
        weight_decay=s.weight_decay,
        max_grad_norm=s.max_grad_norm,
        max_steps=max_steps,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=device.type == "cpu",
        activation_checkpointing=s.gradient_checkpointing,  # transformers 5's name (the old one warns)
        activation_checkpointing_kwargs={"use_reentrant": False},
        deepspeed=deepspeed_config(s.zero_stage, s.offload),
        # On a GPU: the fused AdamW kernel (one launch for every parameter instead of several per
        # tensor) and TF32 matmuls where the GPU has them (Ampere on; bf16 training is unaffected,
        # fp32 parts like the LoRA matrices' master copies get faster). ZeRO offload keeps the
        # optimizer on the CPU, where DeepSpeed's own CPU Adam is used.
        optim="adamw_torch_fused" if device.type == "cuda" and not s.offload else "adamw_torch",
        tf32=bool(device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8) or None,
        logging_strategy="no",  # the report callback decides when to log, save and report
        save_strategy="no",
        save_total_limit=1,
        eval_strategy="no",
        report_to=[],
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,
        seed=s.seed + s.repeat,  # shuffling; the eval/test split is split_rows' own, by s.seed alone
        data_seed=s.seed + s.repeat,
    )
    # any other TrainingArguments field (adam_beta2, a searched optim, ...): a knob or the recipe's.
    # Those lorasweep derives from its own settings are refused before the sweep (search_spaces.knobs).
    return TrainingArguments(**{**chosen, **s.training_args})


def user_callbacks(trial: TrialConfig) -> list[TrainerCallback]:
    """``settings.callbacks``: ``module:factory`` names; ``factory(trial)`` returns a
    ``TrainerCallback`` for this trial, or None to stay out of it."""
    out = []
    for spec in trial.settings.callbacks:
        module, _, attr = spec.partition(":")
        callback = getattr(importlib.import_module(module), attr)(trial)
        if callback is not None:
            out.append(callback)
    return out


def train_func(config: dict) -> list[dict]:
    """Ray Train per-worker loop (also runs outside Ray, reporting to the returned list)."""
    if in_ray_train():
        import ray.train

        _train(config, ray.train.torch.get_device(), ray_report, ray.train.get_checkpoint())
        return []
    history: list[dict] = []
    _train(config, torch.device("cuda" if torch.cuda.is_available() else "cpu"), lambda m, d: history.append(m), None)
    return history


def train_in_trial_process(config: dict) -> None:
    """A one-worker trial without Ray Train: the loop runs in the Tune trial's own process, which
    Tune reuses for the next trial (``reuse_actors``), torch and Transformers already imported.
    Reports and checkpoints go straight to Tune; a restarted trial resumes from its last one."""
    import gc

    device = trial_device(config["trial"]["resources"]["gpus"])  # a GPU trial without CUDA stops here
    resume = tune_resume()  # its last report made again if the driver missed it; _train then trains nothing
    try:
        _train(config, device, tune_report, resume)
    finally:
        # The process lives on for the next trial: hand the model's memory back now.
        gc.collect()
        release_host_memory()
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)


def _train(config: dict, device: torch.device, report, resume) -> None:
    from common.credentials import receive

    config = receive(config)  # the driver's HF_TOKEN, through Ray's object store, before any Hub call
    config, shared = receive_data(config)  # the sweep's tokenised data, likewise (trainers/shared_data.py)
    trial = TrialConfig.from_tune(config)
    if trial.resources.gpus > 0 and device.type != "cuda" and not cpu_for_fake_gpus():  # a GPU torch cannot use
        raise TrialError(no_cuda_line(cuda_report()))
    if resume is not None and checkpoint_finished(resume):
        # Its budget was spent before the driver went: nothing to train, nothing new to report.
        print(f"[lorasweep] the trial finished at its last checkpoint ({os.path.basename(resume.path)}): nothing to resume")
        return
    out_dir = tempfile.mkdtemp(prefix="lorasweep-")
    try:
        st = setup(trial, device, out_dir, shared)
    except BaseException:
        shutil.rmtree(out_dir, ignore_errors=True)
        raise
    trainer = TokenCountingTrainer(
        model=st.model,
        args=st.args,
        train_dataset=st.train,
        data_collator=st.task.collator(st.settings, st.tokenizer),
        processing_class=st.tokenizer,
    )
    trainer.loraplus_lr_ratio = float(st.settings.loraplus_lr_ratio)
    trainer.use_task_loss(st.task.training_loss(st.settings))
    trainer.remove_callback(PrinterCallback)  # the report callback prints what matters
    reporter = BackgroundReporter(report, background=st.settings.background_upload)
    callback = ReportCallback(trainer, st, reporter)
    if changes_base(getattr(st.model, "peft_config", {}).get("default")) and world()[0] == 0:
        callback.initial_adapter = save_initial(st.model, out_dir)  # what the export converts against
    trainer.add_callback(callback)
    for extra in user_callbacks(trial):
        if hasattr(extra, "bind"):  # a callback that reads the trainer's own counters (step_curves)
            extra.bind(trainer)
        trainer.add_callback(extra)

    resume_dir = None
    if resume is not None:
        resume_dir = resume.to_directory(os.path.join(out_dir, "resume"))
        callback.restore(resume_dir)
    try:
        try:
            trainer.train(resume_from_checkpoint=resume_dir)
        except BaseException:
            reporter.close(quietly=True)  # the reports made before the error reach Ray before it
            raise
        reporter.close()  # the last report (and its checkpoint) handed over before the trial ends
    except RuntimeError as e:  # torch.OutOfMemoryError is one
        if not _is_oom(e):
            raise
        step = trainer.state.global_step + 1
        del trainer, st  # let the allocator have it back before the error travels up
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        raise TrialError(f"out of memory at step {step} on {device.type} ({first_line(e)[:120]}); lower "
                         "per_device_batch_size or max_seq_length, or turn on gradient_checkpointing") from None
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


def _is_oom(e: BaseException) -> bool:
    # CUDA raises torch.OutOfMemoryError; the CPU allocator a RuntimeError that says so.
    return isinstance(e, torch.OutOfMemoryError) or "can't allocate memory" in str(e) or "out of memory" in str(e)


# ----------------------------------------------------------------------------- after training


def load_trained(settings, folder: str | None = None, device: torch.device | None = None):
    """``(task, tokenizer, model)`` as a trial loads them, plus the adapter in ``folder`` (a PEFT
    folder, or a full fine-tune's model folder); the base alone when ``folder`` is None."""
    from dataclasses import replace

    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # One process and no DeepSpeed: load as a one-worker trial without ZeRO-3 would (a ZeRO-3 4-bit
    # base differs only in the storage dtype of the same quantised bytes, and its device placement).
    settings = replace(settings, zero_stage=0)
    task, family = get_task(settings.task), resolve_family(settings)
    tokenizer = task.load_tokenizer(settings)
    full = folder is not None and not os.path.exists(os.path.join(folder, "adapter_config.json"))
    from trainers.model import load_base_model

    model = load_base_model(replace(settings, model=folder) if full else settings, family, task,
                            pick_precision(settings, device, family), device)
    if folder is not None and not full:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, folder)
    model.config.use_cache = False
    return task, tokenizer, model


def evaluate_folder(settings, folder: str | None = None) -> dict:
    """The task's eval-split metrics of the base (+ the adapter in ``folder``), as a trial reports them."""
    task, tokenizer, model = load_trained(settings, folder)
    return task.evaluate(model, tokenizer, settings, task.prepare(settings, tokenizer))
