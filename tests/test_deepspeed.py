"""DeepSpeed ZeRO-2 across 2 Ray Train workers on the CPU: the trial function as a sweep runs it
(``trainers.causal_lm.train_func`` in a ``TorchTrainer``), without the Tune layer around it.

DeepSpeed falls back to its CPU accelerator and reuses the gloo process group Ray Train set up.
Its first run in a fresh environment JIT-builds a small C++ op (``deepspeed_shm_comm``, ~70 s,
cached under ~/.cache/torch_extensions); after that this module takes about two minutes.

What is checked, from the reports and the checkpoints Ray stored:
  * DeepSpeed ran ZeRO stage 2 over 2 data-parallel ranks: the DeepSpeed files in every
    checkpoint say so (``dp_world_size``, the ZeRO stage, one optimizer partition per rank);
  * Ray merged both ranks' files into one checkpoint folder (rank 1 writes only its optimizer
    partition and RNG state, rank 0 everything else);
  * the eval loss went down, and ZeRO-2 computes exactly the same training as plain DDP;
  * the best checkpoint's adapter is a plain PEFT folder that reloads to the reported eval loss.

And ZeRO-3 on two ranks of our own (no Ray): the model built partitioned, and an eval whose batches
do not split evenly across the ranks finishes with the single-process numbers.
"""

from __future__ import annotations

import os

import pytest

pytest.importorskip("deepspeed")
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")

pytestmark = pytest.mark.slow

WORKERS = 2


@pytest.fixture(scope="module")
def local_ray():
    """A Ray of this module's own, started as a sweep starts its (``start_local_ray``): with its own
    dashboard, which its processes are pointed at. Ray Train's placement-group cleaner asks the state
    API whether the run's job is alive; asking 127.0.0.1:8265, under pytest-xdist another worker's
    sweep's Ray, got the run's workers destroyed mid-training ("Destroying worker since its
    placement group was removed", Dec 3)."""
    import ray

    from lorasweep.cluster import free_port, start_local_ray

    if ray.is_initialized():
        yield
        return
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("RAY_API_SERVER_ADDRESS", raising=False)  # put back as it was afterwards
        start_local_ray(port=free_port(0), num_cpus=WORKERS, log_to_driver=True)
        yield
        ray.shutdown()


def _settings(assets, quantization: str, zero_stage: int):
    from trainers.config import TrainSettings

    return TrainSettings(
        model=str(assets["model"]), dataset=str(assets["dataset"]),
        quantization=quantization, zero_stage=zero_stage,
        # QLoRA runs as the real recipe does (gradient checkpointing on); the full-precision run is
        # compared bit-for-bit with DDP, which needs nothing else to differ.
        gradient_checkpointing=quantization != "none",
        # 2 workers x 8 packed rows x ~245 tokens = ~3.9k tokens per step: 3 steps, 3 reports
        max_seq_length=256, per_device_batch_size=8, gradient_accumulation_steps=1,
        max_tokens=8_000, eval_every=1, eval_fraction=0.1, eval_rows=48,
        checkpoint_minutes=0,  # a checkpoint at every report: each is compared below
    ).validate()


def _fit(settings, storage) -> tuple[list[dict], list]:
    """One Ray Train run; returns every report's metrics and checkpoint, in step order."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from trainers.config import TrialConfig
    from trainers.loop import train_func

    knobs = {"r": 8, "lora_alpha": 16, "use_rslora": False, "packing": True, "warmup_ratio": 0.0, "learning_rate": 1e-3}
    config = TrialConfig(settings).to_tune(knobs)
    result = TorchTrainer(
        train_func,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=WORKERS, use_gpu=False, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name="run", storage_path=str(storage)),  # keeps every checkpoint
    ).fit()
    assert result.error is None, result.error
    reports = sorted(result.best_checkpoints, key=lambda cm: cm[1]["step"])
    assert reports and reports[-1][1] == result.metrics
    return [m for _, m in reports], [c for c, _ in reports]


@pytest.fixture(scope="module")
def runs(local_ray, tiny_assets, tmp_path_factory):
    cache: dict = {}

    def get(quantization: str, zero_stage: int = 2):
        key = (quantization, zero_stage)
        if key not in cache:
            settings = _settings(tiny_assets, quantization, zero_stage)
            metrics, ckpts = _fit(settings, tmp_path_factory.mktemp(f"ds-{quantization}-z{zero_stage}"))
            print(f"\n[{quantization}, zero {zero_stage}] eval_loss by step: "
                  f"{[(m['step'], round(m['eval_loss'], 4)) for m in metrics]}; "
                  f"peak_mem_gb {max(m['peak_mem_gb'] for m in metrics):.2f}")
            cache[key] = settings, metrics, ckpts
        return cache[key]

    return get


@pytest.mark.parametrize("quantization", ["none", "4bit"])
def test_zero2_runs_on_two_ranks_and_learns(runs, quantization):
    import torch

    _, metrics, ckpts = runs(quantization)
    steps = [m["step"] for m in metrics]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 3, steps
    assert metrics[-1]["finished"] and metrics[-1]["tokens_seen"] >= 8_000
    losses = [m["eval_loss"] for m in metrics]
    assert losses[-1] < losses[0], losses

    for m, ckpt in zip(metrics, ckpts):
        with ckpt.as_directory() as d:
            names = set(os.listdir(d))
            step_dir = os.path.join(d, f"global_step{m['step']}")
            assert os.path.isdir(step_dir), names  # DeepSpeed's own checkpoint, not the Trainer's optimizer.pt
            assert "optimizer.pt" not in names
            shards = sorted(os.listdir(step_dir))
            assert shards == ["mp_rank_00_model_states.pt"] + [
                f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in range(WORKERS)], shards

            state = torch.load(os.path.join(step_dir, "mp_rank_00_model_states.pt"), map_location="cpu",
                               weights_only=False)
            assert state["dp_world_size"] == WORKERS
            assert state["global_steps"] == m["step"]
            assert state["ds_config"]["zero_optimization"]["stage"] == 2
            # only the LoRA matrices are trained (and checkpointed) by the engine
            assert state["param_shapes"] and all(
                "lora_" in name for group in state["param_shapes"] for name in group)

            sizes = []
            for r in range(WORKERS):
                shard = torch.load(os.path.join(step_dir, f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt"),
                                   map_location="cpu", weights_only=False)["optimizer_state_dict"]
                assert int(shard["zero_stage"]) == 2 and shard["partition_count"] == [WORKERS]
                sizes.append(sum(t.numel() for t in shard["single_partition_of_fp32_groups"]))
            # each rank holds its own half of the fp32 master weights + Adam state
            assert sizes[0] > 0 and abs(sizes[0] - sizes[1]) <= sizes[0] * 0.01, sizes

            # One Ray checkpoint per report holds both ranks' files: rank 1 wrote only its
            # optimizer partition and RNG state into its own local folder; Ray uploaded both
            # ranks' folders into the same checkpoint directory.
            assert {"rng_state_0.pth", "rng_state_1.pth", "adapter_model.safetensors", "adapter_config.json",
                    "lorasweep_state.json", "trainer_state.json"} <= names, names


@pytest.mark.parametrize("quantization", ["none", "4bit"])
def test_best_adapter_reloads_with_peft_to_its_eval_loss(runs, tiny_assets, quantization):
    from dataclasses import replace

    from trainers.loop import evaluate_folder

    settings, metrics, ckpts = runs(quantization)
    best = min(range(len(metrics)), key=lambda i: metrics[i]["eval_loss"])
    with ckpts[best].as_directory() as d:
        assert os.path.getsize(os.path.join(d, "adapter_model.safetensors")) > 0
        # the trial's knobs are what the checkpoint was trained with; the family comes from the model
        trained = replace(settings, r=8, lora_alpha=16)
        base_loss = evaluate_folder(trained)["eval_loss"]  # 4-bit NF4 when the run trained on it
        loss = evaluate_folder(trained, d)["eval_loss"]
    assert loss < base_loss
    assert loss == pytest.approx(metrics[best]["eval_loss"], rel=1e-4)


def test_zero2_trains_exactly_like_ddp(runs):
    """ZeRO-2 partitions gradients and optimizer state but must compute the same update as DDP."""
    _, zero2, _ = runs("none", 2)
    _, ddp, ddp_ckpts = runs("none", 0)
    with ddp_ckpts[-1].as_directory() as d:
        assert not any(n.startswith("global_step") for n in os.listdir(d))  # DDP: no DeepSpeed files
    assert [m["step"] for m in zero2] == [m["step"] for m in ddp]
    assert [m["tokens_seen"] for m in zero2] == [m["tokens_seen"] for m in ddp]
    for z, p in zip(zero2, ddp):
        assert z["eval_loss"] == pytest.approx(p["eval_loss"], rel=1e-5), (zero2, ddp)


# ----------------------------------------------------------------------------- ZeRO-3, two processes


def _zero3_worker(rank: int, port: int, config: dict, out) -> None:
    """One of two ranks running ``train_func`` as a Ray worker would, on a gloo group of our own;
    puts (rank, what build_model saw, the reports) on ``out``."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import torch
    import torch.distributed as dist
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    import trainers.loop as loop

    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    built = {}
    build_model = loop.build_model

    def recording_build_model(*args, **kwargs):
        built["zero3_enabled"] = is_deepspeed_zero3_enabled()
        model = build_model(*args, **kwargs)
        base = [p for name, p in model.named_parameters() if "lora_" not in name]
        built["base_params"] = len(base)
        built["partitioned"] = sum(hasattr(p, "ds_id") and p.numel() == 0 for p in base)
        built["held"] = sum(p.ds_tensor.numel() for p in base if hasattr(p, "ds_tensor"))
        built["total"] = sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in base)
        return model

    loop.build_model = recording_build_model
    try:
        out.put((rank, built, loop.train_func(config)))
    except BaseException as e:  # noqa: BLE001  the parent reports it
        out.put((rank, built, repr(e)))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("quantization", ["none", "4bit"])  # 4bit: the QLoRA + ZeRO-3 recipe
def test_zero3_builds_partitioned_and_evaluates_uneven_shards(tiny_assets, tmp_path, quantization):
    """Two ranks on ZeRO-3, an instruction-classification trial whose eval work does not split
    evenly: 17 eval rows = 3 loss batches (2 on rank 0, 1 on rank 1), 17 prompts scored in calls of
    8 (2 calls against 1), and one row generated (rank 1 has none). Each of those forwards gathers
    weights from both ranks, so before ``shard_calls`` rank 0 waited forever.

    Also checked: Transformers knew of ZeRO-3 when the model was built (the TrainingArguments that
    register it came first), so a full-precision base was built inside ``zero.Init``, each rank
    holding half of every weight (a 4-bit base is loaded whole and partitioned by the engine); and
    the eval equals the single-process eval of the base (one step at learning rate 1e-9 leaves it
    as it was)."""
    import multiprocessing
    import socket

    from stand_ins import imdb_rows, write_jsonl
    from trainers.config import TrainSettings, TrialConfig
    from trainers.loop import evaluate_folder

    data = write_jsonl(imdb_rows(100), tmp_path / "imdb.jsonl")
    settings = TrainSettings(
        task="instruct_classification", model=str(tiny_assets["model"]), dataset=str(data),
        labels=("negative", "positive"), prompt="Review: {text}\nIs it negative or positive?",
        quantization=quantization, zero_stage=3, gradient_checkpointing=False, max_seq_length=256,
        per_device_batch_size=4, gradient_accumulation_steps=1, max_tokens=1, eval_every=1,
        eval_fraction=0.2, eval_rows=17, gen_eval_rows=1, learning_rate=1e-9, r=8, lora_alpha=16,
    ).validate()
    config = TrialConfig(settings).to_tune({})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_zero3_worker, args=(rank, port, config, out)) for rank in range(2)]
    for p in procs:
        p.start()
    results = {}
    try:
        for _ in procs:
            rank, built, history = out.get(timeout=420)  # a hang in a collective ends here
            results[rank] = built, history
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    for rank, (built, history) in results.items():
        assert isinstance(history, list), (rank, history)
        assert built["zero3_enabled"], built
        if quantization == "none":  # zero.Init; a 4-bit base is partitioned by the engine, after loading
            assert built["partitioned"] == built["base_params"] > 0, built
            assert abs(built["held"] - built["total"] / 2) <= built["base_params"], built  # half of every weight
    reports = [results[rank][1] for rank in range(2)]
    assert [len(r) for r in reports] == [1, 1]
    ours = {k: v for k, v in reports[0][0].items() if k in base_metrics(settings)}
    assert ours == {k: v for k, v in reports[1][0].items() if k in ours}  # all-reduced: the same on both ranks

    base = evaluate_folder(settings)
    print(f"\n[zero3, 2 ranks] {ours}\n[one process]    {base}")
    assert ours["eval_loss"] == pytest.approx(base["eval_loss"], rel=1e-5)
    assert ours == pytest.approx(base, rel=1e-5)


def base_metrics(settings) -> tuple[str, ...]:
    from trainers.tasks import get_task

    return get_task(settings.task).metric_names(settings)
