"""What a trial's base weights take on each GPU as they are loaded, before any training memory: the
dry run prints it, and a GPU sweep whose load cannot fit the GPUs on offer is refused before the
cluster provisions anything.

A 4-bit or 8-bit base is loaded whole on every rank, ZeRO-3 included (bitsandbytes quantises while
loading; ZeRO-3 partitions it only when the engine starts): a 70B base is ~37 GB per GPU at load,
more than an A10G's or an L4's 24 GB, however many workers the trial has. A bf16 base under ZeRO-3
is built partitioned (``deepspeed.zero.Init``). Embeddings and the output head stay unquantised, in
fp32 where PEFT's ``prepare_model_for_kbit_training`` upcasts them (every stage but 3).
"""

from __future__ import annotations

from common.errors import ConfigError

# Per GPU, by Ray's `accelerator_type:<X>`. A100: the 40 GB part (the resource does not tell 40 from 80).
GPU_MEMORY_GB = {"H200": 141, "H100": 80, "A100": 40, "L40S": 48, "L40": 48, "L4": 24, "A10G": 24, "A10": 24,
                 "V100": 16, "T4": 16}
NF4_BITS = 4.127  # 4 bits + double-quantised absmax constants (an 8-bit constant per 64 weights, ...)
FITS = 0.9  # of a GPU's memory: CUDA's context and the allocator's slack take the rest


def embedding_params(config) -> int:
    """Input embeddings plus the output head (one matrix when tied): what bitsandbytes leaves unquantised."""
    vocab = getattr(config, "vocab_size", 0) or 0
    hidden = getattr(config, "hidden_size", None) or getattr(config, "d_model", 0) or 0
    return vocab * hidden * (1 if getattr(config, "tie_word_embeddings", True) else 2)


def load_gb(params: int, config, settings, workers: int) -> float:
    """GiB of base weights per rank of a GPU trial once loaded (see the module's docstring)."""
    half = 4 if settings.precision == "fp32" else 2
    unquantised = min(embedding_params(config), params)
    rest = params - unquantised
    kept = unquantised * (half if settings.zero_stage == 3 else 4)  # fp32 after prepare_model_for_kbit_training
    if settings.quantization == "4bit":
        total = rest * NF4_BITS / 8 + kept
    elif settings.quantization == "8bit":
        total = rest + kept
    else:
        total = params * half / (workers if settings.zero_stage == 3 and workers > 1 else 1)
    return total / 2**30


def smallest_gpu(cluster: dict) -> tuple[str, float] | None:
    """(type, GiB) of the smallest known GPU type on offer (live nodes, or node types an autoscaler adds)."""
    kinds = {k.split(":", 1)[1] for k in cluster.get("accelerators", [])}
    for node_type in (cluster.get("node_types") or {}).values():
        kinds |= {k.split(":", 1)[1] for k in node_type if k.startswith("accelerator_type:")}
    known = [(k, GPU_MEMORY_GB[k]) for k in kinds if k in GPU_MEMORY_GB]
    return min(known, key=lambda kv: kv[1]) if known else None


def _load(sweep, inputs, res, cluster: dict) -> tuple[int, float, tuple[str, float] | None] | None:
    """(params, GiB per GPU at load, smallest known GPU on offer), or None for CPU trials or an unknown model size."""
    params = inputs.parameters() if res.gpus > 0 and inputs.model_config is not None else None
    if not params:
        return None
    return params, load_gb(params, inputs.model_config, sweep.settings, res.workers), smallest_gpu(cluster)


def load_line(sweep, inputs, res, cluster: dict) -> str | None:
    """The dry run's line, or None when the model's size is unknown here or the trials get no GPU."""
    load = _load(sweep, inputs, res, cluster)
    if load is None:
        return None
    _, gb, gpu = load
    on = f"; the smallest GPU on offer, {gpu[0]}, has {gpu[1]} GB" if gpu else ""
    return f"GPU memory at load: ~{gb:.1f} GB of base weights on each GPU before training{on}"


def check_load(sweep, inputs, res, cluster: dict) -> None:
    """Refuse a GPU sweep whose weights alone would not fit the smallest known GPU on offer."""
    load = _load(sweep, inputs, res, cluster)
    if load is None or load[2] is None:
        return
    params, gb, gpu = load
    settings = sweep.settings
    if gb > FITS * gpu[1] * res.gpus:
        whole = (f" ({settings.quantization} bases load whole on every rank, ZeRO-3 too)"
                 if settings.quantization != "none" else "")
        raise ConfigError(f"`model` {settings.model!r} ({params / 1e9:.1f}B params) loads ~{gb:.0f} GB of weights on "
                          f"each GPU{whole}, more than the {gpu[0]}'s {gpu[1]} GB; use GPUs with more memory or a smaller "
                          f"--model" + (", or --quantization 4bit" if settings.quantization != "4bit" else ""))
