"""Packing: non-padding tokens/s of LoRA training steps, packed rows vs batches padded to the longest.

A LoRA trial's model (a Llama-architecture base, hidden 768, random weights, adapters r=16 on every
linear layer through the project's own ``lora_config``; no KV cache, as ``build_model`` sets it)
trains on the same FineTome-like documents both ways, with the same number of rows per step:

  packed  ``trainers.chat.pack_examples`` rows of at most ``max_len`` tokens, several documents a
          row, ``position_ids`` restarting per document, through ``Collator(packed=True)`` (no
          attention mask: Transformers builds the block-diagonal mask from the restarts);
  padded  the documents unpacked, shuffled as the Trainer's sampler does, ``Collator(packed=False)``
          (right-padded to the longest of each batch, with an attention mask).

One step = forward + backward + grad clipping + AdamW on the LoRA parameters. Both sides warm up
once, then their steps alternate (the side that is further behind goes next), so a change in the
machine's load hits both alike. Ratio = packed tokens/s / padded tokens/s (the same tokens, so the
padded side's time over the packed side's).

Before the timing, a few packed rows are checked for isolation: the loss of a packed row must equal
the token-weighted loss of its documents each run alone (fp32, 1e-4 relative).

The lengths: chat SFT conversations (FineTome-100k) are long-tailed, most a few hundred tokens and a
few up to the length cap, so lengths are drawn from a lognormal (median 300, sigma 0.8) clipped to
[32, max_len]; the first 10-50% of each (the prompt) carries no labels, like assistant-only loss.
"""

from __future__ import annotations

import math
import random
import time
from statistics import NormalDist

from bench.figure import Figure, timed

TITLE = "packing"
HOW = "non-padding tokens/s, packed vs padded to the longest (LoRA steps, FineTome-like lengths)"
TARGET = (">=", 2.5)

HIDDEN, HEADS, INTERMEDIATE, VOCAB = 768, 12, 2048, 32000
PAD_ID = 0
MEDIAN_LEN, SIGMA, MIN_LEN = 300, 0.8, 32
ISOLATION_RTOL = 1e-4


def sizes(device: str, quick: bool) -> dict:
    if device == "cuda":
        return dict(layers=2, max_len=512, docs=256, rows=4, check_rows=2) if quick else \
            dict(layers=4, max_len=1024, docs=2048, rows=4, check_rows=4)
    # ~350 computed tokens (padding included) per second for 4 layers on 2 idle cores: 48 documents
    # (18k tokens, 53k computed both sides) is ~2.5 min of steps (4.4 min on a CPU shared with a test
    # run); --quick under a minute
    return dict(layers=2, max_len=512, docs=8, rows=4, check_rows=1) if quick else \
        dict(layers=4, max_len=1024, docs=48, rows=4, check_rows=2)


def documents(n: int, max_len: int, seed: int = 0) -> list[dict]:
    """``n`` token-id documents with FineTome-like lengths, in random order: ``input_ids`` and ``labels``
    (the prompt masked)."""
    from trainers.chat import IGNORE_INDEX

    rng = random.Random(seed)
    # The lognormal's quantiles at (i + 0.5) / n, not n random draws: a few dozen documents then have
    # the distribution's shape (its tail included) instead of one draw's luck.
    normal = NormalDist()
    lengths = [MEDIAN_LEN * math.exp(SIGMA * normal.inv_cdf((i + 0.5) / n)) for i in range(n)]
    rng.shuffle(lengths)
    out = []
    for x in lengths:
        length = int(min(max_len, max(MIN_LEN, round(x))))
        ids = [rng.randrange(3, VOCAB) for _ in range(length)]  # 0-2: pad/bos/eos, never in a document
        prompt = int(length * rng.uniform(0.1, 0.5))
        out.append({"input_ids": ids, "labels": [IGNORE_INDEX] * prompt + ids[prompt:]})
    return out


def build_lora_model(layers: int, max_len: int, dev):
    """The base as a trial trains it (no cache), fp32, random weights, adapters from ``lora_config``."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig

    from trainers.config import TrainSettings
    from trainers.families import get_family
    from trainers.model import lora_config
    from trainers.tasks import get_task

    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
                      num_hidden_layers=layers, num_attention_heads=HEADS, num_key_value_heads=HEADS,
                      max_position_embeddings=max(max_len, 2048), tie_word_embeddings=False,
                      pad_token_id=PAD_ID, bos_token_id=1, eos_token_id=2, use_cache=False)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa", dtype=torch.float32)
    model.config.use_cache = False  # as build_model: with a cache, packed documents would see each other
    settings = TrainSettings(quantization="none", r=16, lora_alpha=16, lora_dropout=0.0)
    torch.manual_seed(settings.seed)
    model = get_peft_model(model, lora_config(settings, get_family("llama"), get_task("chat_sft")))
    return model.to(dev)


def split_row(row: dict) -> list[dict]:
    """The documents of a packed row, from its ``position_ids`` restarts."""
    pos = row["position_ids"]
    starts = [i for i, p in enumerate(pos) if p == 0] + [len(pos)]
    return [{"input_ids": row["input_ids"][a:b], "labels": row["labels"][a:b]} for a, b in zip(starts, starts[1:])]


def isolation_check(model, rows: list[dict], dev) -> dict:
    """Loss of each packed row vs the token-weighted loss of its documents run one at a time.

    And a control: the same row with a plain causal mask (an all-ones attention mask turns off the
    packed-sequence mask, the positions still restart), where documents do see each other, must
    differ by more than the tolerance, or the check could not have seen a leak (``isolation_has_power``).
    """
    import torch

    from trainers.chat import IGNORE_INDEX, Collator

    collate = Collator(PAD_ID, packed=True)
    model.train()  # train mode, as in a trial (no dropout: lora_dropout 0)
    worst, control, checked, docs = 0.0, float("inf"), [], 0
    with torch.no_grad():
        for row in rows:
            batch = collate([row])
            inputs = {k: batch[k].to(dev) for k in ("input_ids", "position_ids", "labels")}
            packed = model(**inputs).loss.item()
            leaky = model(**inputs, attention_mask=torch.ones_like(inputs["input_ids"])).loss.item()
            total, count = 0.0, 0
            for doc in split_row(row):
                n = sum(lab != IGNORE_INDEX for lab in doc["labels"][1:])  # the first label is never scored
                if n == 0:
                    continue
                loss = model(input_ids=torch.tensor([doc["input_ids"]], device=dev),
                             labels=torch.tensor([doc["labels"]], device=dev)).loss.item()
                total, count = total + loss * n, count + n
                docs += 1
            alone = total / count
            rel, rel_leaky = abs(packed - alone) / abs(alone), abs(leaky - alone) / abs(alone)
            worst, control = max(worst, rel), min(control, rel_leaky)
            checked.append({"packed_loss": round(packed, 7), "alone_loss": round(alone, 7), "rel_diff": rel,
                            "leaky_loss": round(leaky, 7), "leaky_rel_diff": rel_leaky})
    return {"isolation_rows": len(rows), "isolation_docs": docs, "isolation_max_rel_diff": worst,
            "isolation_ok": worst <= ISOLATION_RTOL, "isolation_control_min_rel_diff": control,
            "isolation_has_power": control > ISOLATION_RTOL, "isolation_detail": checked}


def run(device: str, quick: bool) -> Figure:
    import torch

    from trainers.chat import Collator, pack_examples

    dev = torch.device(device)
    cuda = dev.type == "cuda"
    if cuda:
        dev = torch.device("cuda", torch.cuda.current_device())
    sz = sizes(dev.type, quick)
    raw: dict = {"device": device, "quick": quick, **{f"size_{k}": v for k, v in sz.items()},
                 "length_dist": f"lognormal quantiles (median {MEDIAN_LEN}, sigma {SIGMA}), "
                                f"clipped to [{MIN_LEN}, {sz['max_len']}]",
                 "torch_threads": torch.get_num_threads()}

    docs = documents(sz["docs"], sz["max_len"])
    lengths = sorted(len(d["input_ids"]) for d in docs)
    tokens = sum(lengths)
    raw.update(documents=len(docs), tokens=tokens, doc_len_mean=round(tokens / len(docs), 1),
               doc_len_median=lengths[len(lengths) // 2], doc_len_max=lengths[-1],
               doc_len_p90=lengths[int(0.9 * (len(lengths) - 1))])

    # Packed rows, and the unpacked documents in a Trainer-like shuffled order; both batched by `rows`.
    with timed(raw, "pack_s"):
        packed_rows = pack_examples(docs, sz["max_len"])
    rng = random.Random(1)
    rng.shuffle(packed_rows)
    shuffled = docs[:]
    rng.shuffle(shuffled)
    r = sz["rows"]
    packed_batches = [Collator(PAD_ID, packed=True)(packed_rows[i:i + r]) for i in range(0, len(packed_rows), r)]
    padded_batches = [Collator(PAD_ID, packed=False)(shuffled[i:i + r]) for i in range(0, len(shuffled), r)]
    for name, batches in (("packed", packed_batches), ("padded", padded_batches)):
        cells = sum(b["input_ids"].numel() for b in batches)
        assert sum(int(b["num_tokens"]) for b in batches) == tokens
        raw[f"{name}_rows"] = sum(b["input_ids"].shape[0] for b in batches)
        raw[f"{name}_steps"] = len(batches)
        raw[f"{name}_cells"] = cells  # rows x width summed: tokens computed, padding included
        raw[f"{name}_padding_fraction"] = round(1 - tokens / cells, 4)
        raw[f"{name}_docs_per_row"] = round(len(docs) / raw[f"{name}_rows"], 2)

    with timed(raw, "build_s"):
        model = build_lora_model(sz["layers"], sz["max_len"], dev)
    raw["params_total"] = sum(p.numel() for p in model.parameters())
    raw["params_trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)

    # Isolation first, in fp32, on the rows holding the most documents.
    most = sorted(packed_rows, key=lambda row: -sum(p == 0 for p in row["position_ids"]))[: sz["check_rows"]]
    with timed(raw, "isolation_s"):
        raw.update(isolation_check(model, most, dev))

    autocast = None
    if cuda:  # a bf16 trial: frozen base in bf16, adapters in fp32 (PEFT's default), autocast to bf16
        for p in model.parameters():
            if not p.requires_grad:
                p.data = p.data.to(torch.bfloat16)
        autocast = lambda: torch.autocast("cuda", dtype=torch.bfloat16)  # noqa: E731
        raw["precision"] = "bf16 (base) + fp32 adapters, autocast bf16"
    else:
        raw["precision"] = "fp32"

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
    model.train()

    def sync():
        if cuda:
            torch.cuda.synchronize(dev)

    def step(batch: dict) -> tuple[float, float]:
        """One training step; its wall seconds and this process's CPU seconds."""
        inputs = {k: v.to(dev, non_blocking=True) for k, v in batch.items() if k != "num_tokens"}
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        if autocast is not None:
            with autocast():
                loss = model(**inputs).loss
        else:
            loss = model(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        if not math.isfinite(loss.item()):
            raise RuntimeError(f"non-finite loss {loss.item()}")
        return dt, dc

    # Warm up each side once, outside the timing: its widest batch on CUDA (kernels, the caching
    # allocator); on the CPU, where a full step is seconds, its first batch cut to 128 columns: the
    # first-use costs (AdamW's state, autograd, oneDNN) are paid there and not in the timing.
    with timed(raw, "warmup_s"):
        for batches in (packed_batches, padded_batches):
            if cuda:
                step(max(batches, key=lambda b: b["input_ids"].numel()))
            else:
                step({k: v if v.dim() == 0 else v[:, :128] for k, v in batches[0].items()})

    sides = {"packed": packed_batches, "padded": padded_batches}
    done = {"packed": 0, "padded": 0}
    wall = {"packed": 0.0, "padded": 0.0}
    cpu = {"packed": 0.0, "padded": 0.0}
    peak = {"packed": 0, "padded": 0}
    times: dict[str, list] = {"packed": [], "padded": []}
    with timed(raw, "timed_wall_s"):
        while any(done[s] < len(sides[s]) for s in sides):
            # the side further behind (by its share of its own steps) goes next
            side = min((s for s in sides if done[s] < len(sides[s])), key=lambda s: done[s] / len(sides[s]))
            if cuda:
                torch.cuda.reset_peak_memory_stats(dev)
            dt, dc = step(sides[side][done[side]])
            wall[side] += dt
            cpu[side] += dc
            times[side].append(round(dt, 3))
            if cuda:
                peak[side] = max(peak[side], torch.cuda.max_memory_allocated(dev))
            done[side] += 1

    for s in sides:
        raw[f"{s}_s"] = round(wall[s], 3)
        raw[f"{s}_tokens_per_s"] = round(tokens / wall[s], 1)
        raw[f"{s}_cells_per_s"] = round(raw[f"{s}_cells"] / wall[s], 1)
        raw[f"{s}_step_s"] = times[s]
        if cuda:
            raw[f"{s}_peak_mem_gb"] = round(peak[s] / 2**30, 3)
        else:  # on a shared CPU, CPU seconds are a cross-check less sensitive to other processes' load
            raw[f"{s}_cpu_s"] = round(cpu[s], 3)
    ratio = raw["packed_tokens_per_s"] / raw["padded_tokens_per_s"]
    raw["ratio_wall"] = round(ratio, 4)
    if not cuda:
        raw["ratio_cpu_time"] = round(cpu["padded"] / cpu["packed"], 4)
        # CPU seconds this process got over what its threads could have had: well under 1 when other
        # processes share the cores, and then the wall-clock figures are as much their load as ours.
        raw["cpu_share"] = round((cpu["packed"] + cpu["padded"]) / ((wall["packed"] + wall["padded"])
                                                                    * torch.get_num_threads()), 3)
    raw["ratio_cells"] = round(raw["padded_cells"] / raw["packed_cells"], 4)  # the ratio if a cell cost the same

    detail = (f"{raw['packed_tokens_per_s']:.0f} vs {raw['padded_tokens_per_s']:.0f} tok/s; padded side "
              f"{raw['padded_padding_fraction']:.0%} padding, packed {raw['packed_padding_fraction']:.0%} "
              f"({raw['packed_docs_per_row']} docs/row; at an equal cost per computed token "
              f"{raw['ratio_cells']:.2f}x); {len(docs)} docs, {sz['layers']} layers, "
              f"max_len {sz['max_len']}")
    if not cuda and raw["cpu_share"] < 0.75:
        detail += (f"; CPU shared: this run got {raw['cpu_share']:.0%} of its {torch.get_num_threads()} "
                   f"threads' time (by CPU time {raw['ratio_cpu_time']:.2f}x)")
    if raw["isolation_ok"]:
        detail += f"; documents isolated (max rel diff {raw['isolation_max_rel_diff']:.1e}"
        detail += f", {raw['isolation_control_min_rel_diff']:.1e} when not)" if raw["isolation_has_power"] else \
            f"; BUT the check cannot see a leak: {raw['isolation_control_min_rel_diff']:.1e} with documents mixed)"
    else:
        detail += (f"; ISOLATION FAILED: packed-row loss differs from its documents' by "
                   f"{raw['isolation_max_rel_diff']:.1e} relative (> {ISOLATION_RTOL:g})")
    return Figure(ratio=round(ratio, 3), target=TARGET, raw=raw, detail=detail)
