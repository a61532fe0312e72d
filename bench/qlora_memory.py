"""QLoRA memory: the weight bytes of the quantised linear layers, NF4 + double quant vs bf16.

A ~110M-parameter Llama-architecture model (hidden 768, 12 layers, 12 heads, intermediate 2048,
vocab 32000, tied embeddings like SmolLM2's; random weights) is saved once in bf16 to the bench
cache, then loaded twice, as a trial loads its base (``from_pretrained`` with a ``device_map``):

  bf16   ``dtype=torch.bfloat16``;
  4-bit  the same plus the project's own ``trainers.model.quantization_config`` for
         ``quantization="4bit"`` (NF4, double quant, uint8 storage, bf16 compute).

Bytes are counted from the tensors themselves, not estimated: for every ``bitsandbytes.nn.Linear4bit``
its packed 4-bit weight, and everything its ``QuantState`` keeps: ``absmax`` (with double quant the
uint8 absmax quantised in blocks of 256), ``code`` (the NF4 map), ``offset``, and the nested state's
``absmax`` (fp32) and ``code`` (the 8-bit dynamic map); a bias if the layer has one. A tensor shared
by several layers (a quantisation map) is counted once, as memory holds it; the count with every
layer's tensors counted for that layer (as each layer's state dict serialises them) is in ``raw``
too. The other side is the same layers' weights (and biases) in the bf16 model.

Ratio = bf16 bytes / 4-bit bytes of the quantised layers; NF4 with blocksize 64 and double quant
costs 4 + 8/64 + 32/(64*256) = 4.127 bits a weight, so 16/4.127 = 3.88 is the limit.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.figure import Figure, bench_cache, timed

TITLE = "qlora_memory"
HOW = "weight bytes of the quantised linear layers, NF4 + double quant vs bf16 (~110M Llama)"
TARGET = (">=", 3.8)

CONFIG = dict(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
              num_attention_heads=12, num_key_value_heads=12, max_position_embeddings=2048,
              tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def checkpoint(layers: int) -> Path:
    """The bf16 checkpoint, built and saved once (random weights, seed 0); rebuilt if its config differs."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from trainers.model import save_folder

    want = {**CONFIG, "num_hidden_layers": layers}
    path = bench_cache() / ("llama100m" if layers == CONFIG["num_hidden_layers"] else f"llama100m_{layers}l")
    cfg_file = path / "config.json"
    if cfg_file.is_file() and any(path.glob("*.safetensors")):
        saved = json.loads(cfg_file.read_text())
        dtype = saved.get("dtype", saved.get("torch_dtype"))
        if dtype == "bfloat16" and all(saved.get(k) == v for k, v in want.items()):
            return path
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig(**want), dtype=torch.bfloat16)
    return save_folder(path, model)  # whole or not at all: a killed run leaves no half-written checkpoint


def nbytes(t) -> int:
    return t.numel() * t.element_size()


class Counter:
    """Bytes of distinct tensors (by address and size): a tensor seen twice is counted once."""

    def __init__(self):
        self.seen: set[tuple[int, int]] = set()
        self.total = 0

    def add(self, t) -> int:
        if t is None:
            return 0
        key = (t.data_ptr(), nbytes(t))
        if key in self.seen:
            return 0
        self.seen.add(key)
        self.total += key[1]
        return key[1]


def quant_state_tensors(state) -> dict:
    """Every tensor a bitsandbytes ``QuantState`` keeps (functional.QuantState: absmax, code, offset,
    and with double quant the nested state2's absmax and code)."""
    out = {"absmax": state.absmax, "code": state.code}
    if getattr(state, "offset", None) is not None:
        out["offset"] = state.offset
    if getattr(state, "state2", None) is not None:
        out["state2.absmax"] = state.state2.absmax
        out["state2.code"] = state.state2.code
        if getattr(state.state2, "offset", None) is not None:  # not set by bitsandbytes 0.50; counted if ever
            out["state2.offset"] = state.state2.offset
    return out


def model_bytes(model, counter: Counter) -> int:
    """Parameters and buffers (tied weights once), plus every Linear4bit's quantisation state."""
    import bitsandbytes as bnb

    before = counter.total
    for t in list(model.parameters()) + list(model.buffers()):
        counter.add(t.data)
    for m in model.modules():
        if isinstance(m, bnb.nn.Linear4bit) and getattr(m.weight, "quant_state", None) is not None:
            for t in quant_state_tensors(m.weight.quant_state).values():
                counter.add(t)
    return counter.total - before


def run(device: str, quick: bool) -> Figure:
    import bitsandbytes as bnb
    import torch
    from bitsandbytes import functional as bnb_f
    from transformers import AutoModelForCausalLM

    from trainers.config import TrainSettings
    from trainers.model import quantization_config

    cuda = device == "cuda"
    index = torch.cuda.current_device() if cuda else None
    device_map = {"": index if cuda else "cpu"}
    layers = 4 if quick else CONFIG["num_hidden_layers"]
    raw: dict = {"device": device, "quick": quick, "layers": layers, "hidden": CONFIG["hidden_size"],
                 "intermediate": CONFIG["intermediate_size"], "vocab": CONFIG["vocab_size"],
                 "tied_embeddings": CONFIG["tie_word_embeddings"], "bitsandbytes": bnb.__version__}

    with timed(raw, "checkpoint_s"):
        path = checkpoint(layers)
    raw["checkpoint"] = str(path)

    def allocated():
        if cuda:
            torch.cuda.synchronize()
            return torch.cuda.memory_allocated(index)
        return 0

    # --- bf16
    base_alloc = allocated()
    with timed(raw, "load_bf16_s"):
        plain = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, device_map=device_map)
    if cuda:
        raw["cuda_allocated_bf16"] = allocated() - base_alloc
    raw["params"] = sum(p.numel() for p in plain.parameters())  # tied weights once
    raw["whole_model_bytes_bf16"] = model_bytes(plain, Counter())
    bf16_layers = {name: m for name, m in plain.named_modules() if isinstance(m, torch.nn.Linear)}

    # --- 4-bit, with the project's own quantisation config
    settings = TrainSettings(quantization="4bit", zero_stage=0)
    qconf = quantization_config(settings, torch.bfloat16)
    raw["quant_config"] = {k: str(v) for k, v in qconf.to_dict().items()
                           if k.startswith("bnb_4bit") or k in ("load_in_4bit", "llm_int8_skip_modules")}
    base_alloc = allocated()
    with timed(raw, "load_4bit_s"):
        quant = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, quantization_config=qconf,
                                                     device_map=device_map)
    if cuda:
        raw["cuda_allocated_4bit"] = allocated() - base_alloc
    raw["whole_model_bytes_4bit"] = model_bytes(quant, Counter())

    # --- the quantised layers, both ways
    q_layers = {name: m for name, m in quant.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    if not q_layers:
        raise RuntimeError("no bitsandbytes Linear4bit layer in the 4-bit model")
    missing = sorted(set(q_layers) - set(bf16_layers))
    if missing:
        raise RuntimeError(f"4-bit layers with no bf16 counterpart: {missing[:3]}")
    unquantised = sorted(n for n in bf16_layers if n not in q_layers)  # the output head, by default
    raw["quantised_layers"] = len(q_layers)
    raw["linear_layers_left_16bit"] = unquantised

    shared, per_layer = Counter(), 0
    parts: dict[str, int] = {}
    bf16_bytes, q_params = 0, 0
    blocksizes = set()
    for name, m in q_layers.items():
        ref = bf16_layers[name]
        bf16_bytes += nbytes(ref.weight) + (nbytes(ref.bias) if ref.bias is not None else 0)
        q_params += ref.weight.numel()
        state = m.weight.quant_state
        if getattr(state, "packing_format_for_cpu", False):
            raise RuntimeError(f"{name}: weight repacked for bitsandbytes' CPU inference path; counts would differ")
        tensors = {"weight": m.weight.data, **quant_state_tensors(state)}
        if m.bias is not None:
            tensors["bias"] = m.bias.data
        blocksizes.add((state.blocksize, state.state2.blocksize if state.state2 is not None else None))
        for key, t in tensors.items():
            per_layer += nbytes(t)
            parts[key] = parts.get(key, 0) + shared.add(t)
    q_bytes = shared.total
    raw["quantised_params"] = q_params
    raw["quantised_layers_bytes_bf16"] = bf16_bytes
    raw["quantised_layers_bytes_4bit"] = q_bytes
    raw["quantised_layers_bytes_4bit_by_part"] = parts
    raw["quantised_layers_bytes_4bit_per_layer_count"] = per_layer  # shared maps counted in every layer
    raw["blocksizes"] = sorted(blocksizes, key=str)
    raw["weight_storage_dtype"] = str(next(iter(q_layers.values())).weight.dtype)
    raw["bits_per_param_4bit"] = round(8 * q_bytes / q_params, 4)
    raw["bits_per_param_bf16"] = round(8 * bf16_bytes / q_params, 4)
    raw["ratio_per_layer_count"] = round(bf16_bytes / per_layer, 4)
    raw["whole_model_ratio"] = round(raw["whole_model_bytes_bf16"] / raw["whole_model_bytes_4bit"], 4)
    raw["transformers_memory_footprint_bf16"] = plain.get_memory_footprint()
    raw["transformers_memory_footprint_4bit"] = quant.get_memory_footprint()

    # The counted layers are the quantised weights: one dequantises back to the bf16 weight within
    # NF4's error (about 0.1 relative for Gaussian weights), not to something else.
    name, m = next(iter(q_layers.items()))
    with torch.no_grad():
        deq = bnb_f.dequantize_4bit(m.weight.data, m.weight.quant_state).float()
        ref = bf16_layers[name].weight.float()
        raw["dequant_rel_err_first_layer"] = round(float((deq - ref).norm() / ref.norm()), 4)

    ratio = bf16_bytes / q_bytes
    detail = (f"{len(q_layers)} linear layers ({q_params / 1e6:.1f}M params): {bf16_bytes / 2**20:.1f} MiB bf16 vs "
              f"{q_bytes / 2**20:.2f} MiB NF4+DQ ({raw['bits_per_param_4bit']:.3f} bits/param); whole model "
              f"({raw['params'] / 1e6:.0f}M) {raw['whole_model_bytes_bf16'] / 2**20:.0f} vs "
              f"{raw['whole_model_bytes_4bit'] / 2**20:.0f} MiB = {raw['whole_model_ratio']:.2f}x")
    del plain, quant
    if cuda:
        torch.cuda.empty_cache()
    return Figure(ratio=round(ratio, 4), target=TARGET, raw=raw, detail=detail)
