"""Sweep vs the plain alternative: the same search written as users write it without this tool,
HF ``Trainer.hyperparameter_search(backend="optuna")``, sequential, against ``python
sweeps/llama_finetome.py --preset smoke`` (Optuna TPE from the recipe's known-good points, ASHA,
2 trials at once), both from a fresh Python process on the same machine, one after the other.

Same search: the six knobs over the smoke preset's ranges, the same number of trials, the same tiny
Llama in 4-bit with LoRA on every linear layer, the same data (the recipe's split and tokenisation,
packed rows when a trial draws packing) and the same training-token budget per trial (max_steps =
the steps the sweep plans for that trial's packing). The plain script builds its model in
``model_init`` per trial, sets its data from the trial's packing draw, and scores each trial with
HF's own ``evaluate`` as its objective; after each trial the bench also scores it with the
recipe's eval loss (what the sweep reports), and that scoring time is taken out of the plain arm's
clock.

Figure: wall seconds, from its process start, for the sweep to report an eval loss at or below the
plain search's best, over the plain search's seconds to reach that best (its process start to the
end of its best trial); both arms with the same Optuna seed, three seeds (0, 1, 2), the median
ratio. <= 1.0: the sweep gets there first. Which trial finds the best is largely luck with six
trials, hence the seeds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.figure import ROOT, Figure

TITLE = "sweep vs plain HF search"
TARGET = ("<=", 1.0)

PLAIN = r'''
import time
T0 = time.time()
import json, sys
sys.path.insert(0, {root!r})
import optuna, torch
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, Trainer, TrainerCallback, TrainingArguments

from trainers.chat import Collator, pack_examples
from trainers.config import TrainSettings
from trainers.loop import plan_steps
from trainers.tasks import get_task

spec = json.loads(open({spec!r}).read())
settings = TrainSettings.from_dict(spec["settings"])
task = get_task(settings.task)
tok = task.load_tokenizer(settings)
data = task.prepare(settings, tok)
rows = {{False: data.train.examples, True: pack_examples(data.train.examples, settings.max_seq_length)}}
steps = {{p: plan_steps(rows[p], settings, 1) for p in rows}}
space = spec["space"]
measured = []  # (seconds since T0 at the end of a trial, minus the bench's own scoring, recipe eval loss)
scoring = [0.0]


def suggest(trial, name):
    d = space[name]
    if d["kind"] == "choice":
        return trial.suggest_categorical(name, d["values"])
    return trial.suggest_float(name, d["low"], d["high"], log=d["kind"] == "log")


def hp_space(trial):
    knobs = {{k: suggest(trial, k) for k in space}}
    n = steps[knobs["packing"]]
    return {{"learning_rate": knobs["learning_rate"], "max_steps": n, "warmup_steps": int(round(knobs["warmup_ratio"] * n))}}


def model_init(trial):
    # Optuna returns the same value when a trial suggests a name again
    p = {{k: suggest(trial, k) for k in space}} if trial is not None else {{"r": 16, "lora_alpha": 16, "use_rslora": False, "packing": False}}
    if "trainer" in globals():  # Trainer.__init__ calls this once before `trainer` exists
        trainer.train_dataset = rows[p["packing"]]
    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(settings.model, quantization_config=bnb, device_map={{"": "cpu"}})
    model.config.use_cache = False
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    torch.manual_seed(settings.seed)
    return get_peft_model(model, LoraConfig(r=p["r"], lora_alpha=p["lora_alpha"], use_rslora=p["use_rslora"],
                                            target_modules="all-linear", task_type="CAUSAL_LM"))


class Score(TrainerCallback):
    def on_train_end(self, args, state, control, model=None, **kw):
        t = time.time()
        measured.append((t - T0 - scoring[0], task.evaluate(model, tok, settings, data)["eval_loss"]))
        scoring[0] += time.time() - t


args = TrainingArguments(output_dir={out!r}, per_device_train_batch_size=settings.per_device_batch_size,
                         per_device_eval_batch_size=settings.per_device_batch_size,
                         gradient_accumulation_steps=settings.gradient_accumulation_steps, max_steps=10,
                         weight_decay=settings.weight_decay, lr_scheduler_type=settings.lr_scheduler_type,
                         use_cpu=True, save_strategy="no", eval_strategy="no", logging_strategy="no",
                         report_to=[], disable_tqdm=True, remove_unused_columns=False, seed=settings.seed)


COLLATE = {{packed: Collator(tok.pad_token_id, packed=packed) for packed in (True, False)}}


def collate(batch):  # packed training rows carry position_ids; eval examples are single documents
    return COLLATE["position_ids" in batch[0]](batch)


class PlainTrainer(Trainer):  # drop the collator's token count before the model sees it
    def compute_loss(self, model, inputs, **kw):
        inputs.pop("num_tokens", None)
        return super().compute_loss(model, inputs, **kw)


trainer = PlainTrainer(model_init=model_init, args=args, train_dataset=rows[False], eval_dataset=data.eval.examples,
                       data_collator=collate, callbacks=[Score()])
trainer.hyperparameter_search(direction="minimize", backend="optuna", hp_space=hp_space, n_trials=spec["trials"],
                              sampler=optuna.samplers.TPESampler(seed=spec["seed"]))
json.dump({{"t0": T0, "measured": measured, "wall_s": time.time() - T0 - scoring[0]}}, open({result!r}, "w"))
'''


def _space(space) -> dict:
    from search_spaces import Choice, LogUniform

    out = {}
    for name, d in space.params.items():
        if isinstance(d, Choice):
            out[name] = {"kind": "choice", "values": list(d.values)}
        else:
            out[name] = {"kind": "log" if isinstance(d, LogUniform) else "uniform", "low": d.low, "high": d.high}
    return out


def _once(trials: int, tokens: int, seed: int, tmp: str) -> dict:
    """Both arms with one seed (the plain search's TPE seed and the sweep's --seed)."""
    from lorasweep.resolve import resolve
    from sweeps.llama_finetome import RECIPE

    flags = ["--preset", "smoke", "--num-samples", str(trials), "--max-tokens", str(tokens), "--seed", str(seed)]
    sweep = resolve(RECIPE, flags)
    spec, result = Path(tmp, f"spec{seed}.json"), Path(tmp, f"plain{seed}.json")
    spec.write_text(json.dumps({"settings": sweep.settings.to_dict(), "space": _space(sweep.space), "trials": trials,
                                "seed": seed}, default=str))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    script = PLAIN.format(root=str(ROOT), spec=str(spec), out=os.path.join(tmp, f"hf{seed}"), result=str(result))
    if subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env).returncode:
        raise RuntimeError("the plain HF search failed (its output is above)")
    plain = json.loads(result.read_text())

    t0 = time.time()
    subprocess.run([sys.executable, "sweeps/llama_finetome.py", *flags, "--storage-path", tmp, "--name", f"sweep{seed}"],
                   cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    sweep_wall = time.time() - t0
    reports = [json.loads(line) for p in Path(tmp, f"sweep{seed}").glob("trial_*/result.json")
               for line in p.read_text().splitlines() if line.strip()]
    best_plain_at, best_plain = min(plain["measured"], key=lambda m: (m[1], m[0]))
    reached = sorted(r["reported_at"] - t0 for r in reports if r["eval_loss"] <= best_plain)
    return {"seed": seed, "plain_trials": [[round(t, 2), round(loss, 4)] for t, loss in plain["measured"]],
            "plain_best_eval_loss": round(best_plain, 4), "plain_s_to_best": round(best_plain_at, 2),
            "plain_wall_s": round(plain["wall_s"], 2), "sweep_best_eval_loss": round(min(r["eval_loss"] for r in reports), 4),
            "sweep_s_to_plain_best": round(reached[0], 2) if reached else None, "sweep_wall_s": round(sweep_wall, 2),
            "ratio": reached[0] / best_plain_at if reached else float("inf")}


def run(device: str, quick: bool) -> Figure:
    import statistics

    trials, tokens = (3, 20_000) if quick else (6, 60_000)
    with tempfile.TemporaryDirectory() as tmp:
        runs = [_once(trials, tokens, seed, tmp) for seed in ((0,) if quick else (0, 1, 2))]
    ratio = statistics.median(r["ratio"] for r in runs)
    raw = {"runs": runs, "trials": trials, "max_tokens": tokens,
           "plain_wall_s": [r["plain_wall_s"] for r in runs], "sweep_wall_s": [r["sweep_wall_s"] for r in runs]}
    return Figure(ratio=ratio, target=TARGET, raw=raw,
                  detail="per seed: " + "; ".join(
                      f"plain best {r['plain_best_eval_loss']:.3f} at {r['plain_s_to_best']:.0f} s, sweep "
                      + (f"there at {r['sweep_s_to_plain_best']:.0f} s" if r["sweep_s_to_plain_best"] is not None
                         else f"never (best {r['sweep_best_eval_loss']:.3f})") for r in runs)
                  + f"; walls sweep {statistics.mean(raw['sweep_wall_s']):.0f} s vs plain {statistics.mean(raw['plain_wall_s']):.0f} s")
