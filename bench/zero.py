"""ZeRO optimizer state: per-rank optimizer-state bytes of a full fine-tune on 2 Ray Train workers,
DeepSpeed ZeRO-2 against ZeRO-0 (plain DDP, no DeepSpeed).

    python bench/run.py --only zero            # a 19M-parameter Llama, 4 steps per side (~2 min on 2 cores)
    python bench/run.py --only zero --quick    # a 3.3M-parameter Llama, 2 steps per side (~2 min: start-up is most of it)

Both sides train through the project's real trial path: a ``TorchTrainer`` over
``trainers.loop.train_func`` with 2 CPU workers (``ScalingConfig(num_workers=2, use_gpu=False,
resources_per_worker={"CPU": 1})``), the config a sweep hands a trial (``TrialConfig(...).to_tune``),
``method="full"``, ``quantization="none"``, ``precision="fp32"``, the smoke preset's FineTome-format
sample, and a Llama built from a config with random weights, saved with the smoke preset's tiny
tokenizer. Only ``zero_stage`` differs (2 vs 0).

The measurement happens inside each worker's real ``Trainer``: ``TrainSettings.callbacks`` names
``bench.zero:optimizer_state_probe``, whose ``on_step_end`` at the first optimizer step counts the
optimizer state that rank holds and writes it to ``$LORASWEEP_BENCH_ZERO_OUT/zero<stage>-rank<r>.json``.

What is counted, per rank (bytes = numel x element size, each storage once):
  * ZeRO-0: the Trainer's ``torch.optim.AdamW`` (under accelerate's ``AcceleratedOptimizer``):
    ``state[p]["exp_avg"]``, ``state[p]["exp_avg_sq"]`` and ``state[p]["step"]`` for every trained
    parameter. No fp32 master copy exists: the optimizer's params are the model's own fp32 weights.
  * ZeRO-2: DeepSpeed's ``DeepSpeedZeroOptimizer`` (stage_1_and_2.py, under accelerate's
    ``DeepSpeedOptimizerWrapper``) wraps the same torch AdamW, whose param groups DeepSpeed has
    replaced by this rank's flat partition of each group (``single_partition_of_fp32_groups[i]``):
    the AdamW ``state[flat]`` ``exp_avg``/``exp_avg_sq``/``step`` of those partitions, plus the
    partitions themselves, the fp32 master weights, which DeepSpeed clones from the model's flat
    weight buffer (``bit16_groups_flat``) even when the model is already fp32: a separate copy.

The headline ratio counts every one of those (Adam moments + step + fp32 master copy where one
exists: ZeRO's own definition of optimizer state, the same kinds of tensors on both sides), as the
mean over ranks. In fp32 that is (4 + 8) / 2 bytes per parameter against 8: 0.75, not 0.5, because
DDP in fp32 needs no master copy and DeepSpeed keeps one anyway. ``raw`` also has the Adam-moments-
only ratio (exp_avg + exp_avg_sq: 0.5), the max-over-ranks ratios, and each rank's numbers.
Not counted on either side: the model weights, gradients and gradient buckets (ZeRO-2 partitions
gradients too; that is another figure), learning-rate scheduler state.

``--device cuda`` runs one worker per GPU when the machine has at least 2 GPUs, still in fp32 on
both sides so that the same tensors are compared: with ``precision="auto"`` (bf16 on such GPUs) the
ZeRO-0 path trains the bf16 weights themselves with bf16 Adam moments and no master copy (4 bytes
per parameter), while ZeRO-2 keeps fp32 master + fp32 moments (6 bytes per parameter per rank on
2 ranks), which would compare two different trainings. With fewer than 2 GPUs it falls back to CPU
workers (``DS_ACCELERATOR=cpu`` in their environment) and says so in ``detail``.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.figure import ROOT, Figure, bench_cache

TITLE = "ZeRO optimizer state"
HOW = "per-rank optimizer-state bytes (Adam moments + fp32 master), full fine-tune, 2 workers, ZeRO-2 / ZeRO-0"
TARGET = ("<=", 0.55)

WORKERS = 2
OUT_ENV = "LORASWEEP_BENCH_ZERO_OUT"  # the folder the probes write into (set in the Ray workers' env)
MODEL_VERSION = 1  # of how bench models are built: a cached folder of another version is rebuilt

# (hidden, intermediate, layers, attention heads, KV heads) and optimizer steps per side
SIZES = {"quick": ((256, 768, 4, 4, 2), 2), "full": ((512, 1536, 6, 8, 4), 4)}


# ----------------------------------------------------------------------------- inside the workers


def optimizer_state_probe(trial):
    """``TrainSettings.callbacks`` factory: a probe when the bench set its output folder, else None."""
    out = os.environ.get(OUT_ENV)
    if not out:
        return None
    return _make_probe(trial.effective.zero_stage, Path(out))


def _make_probe(zero_stage: int, out: Path):
    from transformers import TrainerCallback

    class OptimizerStateProbe(TrainerCallback):
        """At the end of the first optimizer step: this rank's optimizer-state bytes, to a JSON file."""

        done = False

        def on_step_end(self, args, state, control, model=None, optimizer=None, **kw):
            if self.done:
                return
            self.done = True
            from trainers.evaluation import world

            rank, world_size = world()
            record = {"rank": rank, "world_size": world_size, "zero_stage": zero_stage,
                      "global_step": state.global_step, **count_optimizer_state(optimizer, model)}
            record["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
            out.mkdir(parents=True, exist_ok=True)
            tmp = out / f".zero{zero_stage}-rank{rank}.json.tmp"
            tmp.write_text(json.dumps(record, indent=1))
            os.replace(tmp, out / f"zero{zero_stage}-rank{rank}.json")

    return OptimizerStateProbe()


def _nbytes(t) -> int:
    return t.numel() * t.element_size()


def _storage_key(t):
    return (t.device.type, t.device.index, t.untyped_storage().data_ptr())


def _unwrap(optimizer) -> tuple[list[str], object | None, object]:
    """(the wrapper chain's type names, DeepSpeed's ZeRO optimizer or None, the torch optimizer)."""
    import torch

    DeepSpeedZeroOptimizer = ()
    if "deepspeed" in sys.modules:  # not imported: no DeepSpeed optimizer can be in the chain
        from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer
    chain, zero, opt = [], None, optimizer
    for _ in range(8):  # accelerate's wrapper -> (DeepSpeed's ZeRO optimizer ->) torch's optimizer
        chain.append(f"{type(opt).__module__}.{type(opt).__qualname__}")
        if DeepSpeedZeroOptimizer and isinstance(opt, DeepSpeedZeroOptimizer):
            zero = opt
        inner = getattr(opt, "optimizer", None)
        if inner is None or inner is opt:
            break
        opt = inner
    if not isinstance(opt, torch.optim.Optimizer):
        raise TypeError(f"no torch optimizer at the end of {' -> '.join(chain)}")
    return chain, zero, opt


def count_optimizer_state(optimizer, model) -> dict:
    """This rank's optimizer-state bytes by kind (see the module docstring), and what they were found in."""
    import torch

    chain, zero, inner = _unwrap(optimizer)
    seen: set = set()
    by_key: dict[str, int] = {}
    devices, dtypes = set(), set()
    opt_params = [p for g in inner.param_groups for p in g["params"]]
    for p in opt_params:
        for key, value in inner.state.get(p, {}).items():
            if not torch.is_tensor(value):
                continue
            sk = _storage_key(value)
            if sk in seen:
                continue
            seen.add(sk)
            by_key[key] = by_key.get(key, 0) + _nbytes(value)
            devices.add(str(value.device))
            dtypes.add(str(value.dtype).replace("torch.", ""))
    model_params = [p for p in model.parameters()] if model is not None else []
    model_numel = sum(p.numel() for p in model_params)
    trained_numel = sum(p.numel() for p in model_params if p.requires_grad)
    model_storages = {_storage_key(p) for p in model_params}

    masters, master_bytes, master_numel = [], 0, 0
    extra: dict = {}
    if zero is not None:
        masters = list(zero.single_partition_of_fp32_groups)
        ids = {id(m) for m in masters}
        if not all(id(p) in ids for p in opt_params):
            raise RuntimeError("DeepSpeed's inner optimizer steps tensors other than single_partition_of_fp32_groups; "
                               "bench/zero.py counts the wrong tensors for this DeepSpeed version")
        flat_storages = {_storage_key(t) for t in zero.bit16_groups_flat}
        extra["master_aliases_model_weights"] = any(_storage_key(m) in flat_storages | model_storages for m in masters)
        extra["partition_numel"] = [m.numel() for m in masters]
        extra["group_flat_numel"] = [t.numel() for t in zero.bit16_groups_flat]  # all ranks' partitions, padded
        extra["master_dtype"] = sorted({str(m.dtype).replace("torch.", "") for m in masters})
    else:
        # a master copy is an optimizer param that is not a model weight (none for plain AdamW)
        masters = [p for p in opt_params if _storage_key(p) not in model_storages]
    for m in masters:
        sk = _storage_key(m)
        if sk not in seen:
            seen.add(sk)
            master_bytes += _nbytes(m)
        master_numel += m.numel()
    moments = by_key.get("exp_avg", 0) + by_key.get("exp_avg_sq", 0)
    return {
        "optimizer_chain": chain,
        "inner_optimizer": f"{type(inner).__module__}.{type(inner).__qualname__}",
        "state_bytes_by_key": by_key,
        "state_devices": sorted(devices),
        "state_dtypes": sorted(dtypes),
        "moments_bytes": moments,
        "master_bytes": master_bytes,
        "master_numel": master_numel,
        "optimizer_state_bytes": sum(by_key.values()) + master_bytes,
        "optimizer_param_numel": sum(p.numel() for p in opt_params),
        "model_numel": model_numel,
        "trained_numel": trained_numel,
        "model_param_bytes_not_counted": sum(_nbytes(p) for p in model_params),
        **extra,
    }


# ----------------------------------------------------------------------------- driver side


def bench_model(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int, tokenizer_from: Path) -> Path:
    """A Llama of this size, random weights (seed 0), saved with the smoke preset's tiny tokenizer;
    built once under the bench cache. Written to a temp sibling and renamed."""
    out = bench_cache() / "zero" / f"llama-h{hidden}-i{intermediate}-l{layers}-a{heads}-kv{kv_heads}"
    marker = out / "bench_zero.json"
    if marker.is_file() and json.loads(marker.read_text()).get("version") == MODEL_VERSION:
        return out
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from trainers.model import save_folder

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_from))
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=1024, rope_theta=500000.0, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    return save_folder(out, model, tokenizer, "bench_zero.json", {"version": MODEL_VERSION, "parameters": model.num_parameters()})


def _settings(model: Path, dataset: Path, zero_stage: int, steps: int, per_device_batch_size: int):
    from trainers.config import TrainSettings

    # Packed 256-token rows: ~245 tokens each, so a step is ~245 x batch x 2 workers tokens; the budget
    # is ``steps`` of those (plan_steps rounds up). One report, at the end: the probe only needs step 1.
    tokens_per_step = 245 * per_device_batch_size * WORKERS
    return TrainSettings(
        task="chat_sft", model=str(model), dataset=str(dataset),
        method="full", quantization="none", precision="fp32", zero_stage=zero_stage,
        gradient_checkpointing=False, max_seq_length=256, per_device_batch_size=per_device_batch_size,
        gradient_accumulation_steps=1, max_tokens=tokens_per_step * steps - tokens_per_step // 2,
        eval_every=10_000, eval_fraction=0.05, eval_rows=16, max_train_rows=400,
        callbacks=("bench.zero:optimizer_state_probe",),
    ).validate()


def _fit(settings, storage: Path, name: str, use_gpu: bool) -> dict:
    """One trial's TorchTrainer, as ``lorasweep.engine.lora_trial`` builds it (no Tune around it)."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from trainers.config import Resources, TrialConfig
    from trainers.loop import train_func

    res = Resources(workers=WORKERS, cpus=1.0, gpus=1.0 if use_gpu else 0.0)
    # The searched knobs a sweep would sample (the recipe's values for the ones that matter to a full
    # fine-tune), at the top level, the rest under "trial": what Tune hands lora_trial.
    knobs = {"packing": True, "learning_rate": 1e-4, "warmup_ratio": 0.0}
    config = TrialConfig(settings, resources=res, train_storage=str(storage)).to_tune(knobs)
    trainer = TorchTrainer(
        train_func,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=res.workers, use_gpu=res.gpus > 0,
                                     resources_per_worker={"CPU": res.cpus, **({"GPU": res.gpus} if res.gpus > 0 else {})},
                                     placement_strategy=res.placement),
        run_config=RunConfig(name=name, storage_path=str(storage)),
    )
    t0 = time.perf_counter()
    result = trainer.fit()
    wall = time.perf_counter() - t0
    if result.error is not None:
        raise RuntimeError(f"{name}: the trial failed: {result.error}") from result.error
    m = result.metrics or {}
    return {"fit_s": round(wall, 2), "steps": m.get("step"), "tokens_seen": m.get("tokens_seen"),
            "eval_loss": m.get("eval_loss"), "train_time_s": m.get("train_time_s")}


def _read_ranks(out: Path, stage: int) -> list[dict]:
    ranks = []
    for r in range(WORKERS):
        f = out / f"zero{stage}-rank{r}.json"
        if not f.is_file():
            raise RuntimeError(f"ZeRO-{stage}: rank {r} wrote no {f.name}: the probe callback did not run "
                               f"(found: {sorted(p.name for p in out.glob('*.json'))})")
        ranks.append(json.loads(f.read_text()))
    return ranks


def _ratio(z: list[dict], d: list[dict], key: str, how) -> float:
    return how(r[key] for r in z) / how(r[key] for r in d)


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def run(device: str, quick: bool) -> Figure:
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")  # as lorasweep.engine.init_ray, before ray.train
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import ray
    import torch

    from lorasweep.resolve import assets_cache
    from sweeps.llama_finetome import RECIPE

    (hidden, inter, layers, heads, kv), steps = SIZES["quick" if quick else "full"]
    batch = 2
    gpus = torch.cuda.device_count() if device == "cuda" else 0
    use_gpu = device == "cuda" and gpus >= WORKERS
    note = ""
    if device == "cuda" and not use_gpu:
        note = f"; CPU workers: {gpus} GPU(s) here, {WORKERS} needed"

    raw: dict = {"device": device, "workers_on": "cuda" if use_gpu else "cpu", "gpus_seen": gpus, "workers": WORKERS,
                 "precision": "fp32", "quick": quick, "steps_planned": steps, "per_device_batch_size": batch,
                 "model": {"hidden": hidden, "intermediate": inter, "layers": layers, "heads": heads, "kv_heads": kv}}
    t_all = time.perf_counter()
    assets = RECIPE.presets["smoke"].assets(assets_cache() / RECIPE.name)  # tiny Llama + FineTome sample, cached
    t0 = time.perf_counter()
    model = bench_model(hidden, inter, layers, heads, kv, Path(assets["model"]))
    raw["model_build_s"] = round(time.perf_counter() - t0, 2)
    raw["model"]["path"] = str(model)
    raw["model"]["parameters"] = json.loads((model / "bench_zero.json").read_text())["parameters"]

    work = Path(tempfile.mkdtemp(prefix="zero-", dir=bench_cache()))
    out = work / "probes"
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {"PYTHONPATH": pythonpath, OUT_ENV: str(out), "RAY_TRAIN_V2_ENABLED": os.environ["RAY_TRAIN_V2_ENABLED"],
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if not use_gpu and torch.cuda.is_available():
        env["DS_ACCELERATOR"] = "cpu"  # CPU workers on a GPU machine: DeepSpeed must not pick CUDA
    raw["ray_train_v2_enabled"] = os.environ["RAY_TRAIN_V2_ENABLED"]
    started = not ray.is_initialized()
    try:
        if started:
            # address="local": a Ray of our own even when a cluster runs on this machine (as init_ray)
            ray.init(address="local", num_cpus=max(WORKERS, min(os.cpu_count() or WORKERS, 2 * WORKERS)),
                     num_gpus=gpus if use_gpu else 0, include_dashboard=False, log_to_driver=False,
                     runtime_env={"env_vars": env})
        for stage in (2, 0):
            settings = _settings(Path(model), Path(assets["dataset"]), stage, steps, batch)
            print(f"[bench zero] ZeRO-{stage}: {raw['model']['parameters']:,}-parameter Llama, full fine-tune, "
                  f"{WORKERS} {'GPU' if use_gpu else 'CPU'} workers", flush=True)
            raw[f"zero{stage}_fit"] = _fit(settings, work / "runs", f"zero{stage}", use_gpu)
        z2, z0 = _read_ranks(out, 2), _read_ranks(out, 0)
    finally:
        if started:
            ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    raw["wall_s"] = round(time.perf_counter() - t_all, 2)
    # a check that both sides trained the same thing: ZeRO-2 computes DDP's update
    l2, l0 = raw["zero2_fit"]["eval_loss"], raw["zero0_fit"]["eval_loss"]
    raw["eval_loss_rel_diff"] = abs(l2 - l0) / abs(l0) if l2 is not None and l0 else None

    raw["zero2_ranks"], raw["zero0_ranks"] = z2, z0
    for name, ranks in (("zero2", z2), ("zero0", z0)):
        raw[f"{name}_state_bytes_per_rank"] = [r["optimizer_state_bytes"] for r in ranks]
        raw[f"{name}_moments_bytes_per_rank"] = [r["moments_bytes"] for r in ranks]
        raw[f"{name}_master_bytes_per_rank"] = [r["master_bytes"] for r in ranks]
    raw["ratio_mean"] = _ratio(z2, z0, "optimizer_state_bytes", _mean)
    raw["ratio_max"] = _ratio(z2, z0, "optimizer_state_bytes", max)
    raw["ratio_moments_only_mean"] = _ratio(z2, z0, "moments_bytes", _mean)
    raw["ratio_moments_only_max"] = _ratio(z2, z0, "moments_bytes", max)
    n = z0[0]["trained_numel"]
    raw["expected_fp32"] = {"zero0_bytes": 8 * n, "zero2_bytes": 12 * n / WORKERS,
                            "ratio_with_master": 12 / WORKERS / 8, "ratio_moments_only": 1 / WORKERS}
    ratio = raw["ratio_mean"]
    mb = 2**20
    detail = (f"{_mean(raw['zero2_state_bytes_per_rank']) / mb:.1f} MB vs "
              f"{_mean(raw['zero0_state_bytes_per_rank']) / mb:.1f} MB per rank "
              f"(Adam moments {_mean(raw['zero2_moments_bytes_per_rank']) / mb:.1f}+fp32 master "
              f"{_mean(raw['zero2_master_bytes_per_rank']) / mb:.1f} vs moments "
              f"{_mean(raw['zero0_moments_bytes_per_rank']) / mb:.1f}, no master in fp32 DDP); moments only "
              f"{raw['ratio_moments_only_mean']:.3f}; {raw['model']['parameters'] / 1e6:.1f}M-param Llama, fp32, "
              f"{WORKERS} {'GPU' if use_gpu else 'CPU'} workers{note}")
    return Figure(ratio=ratio, target=TARGET, raw=raw, detail=detail)

