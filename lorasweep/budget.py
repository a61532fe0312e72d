"""The token budget: where ASHA's rungs fall on training tokens, what a trial is expected to spend
under them, and the dry run's estimate of a sweep's GPU-hours and wall time."""

from __future__ import annotations

import math

# Dense bf16/fp16 tensor-core peaks (TFLOP/s) by the `accelerator_type:<X>` resource Ray gives GPU
# nodes. A10G is the AWS part (lower clocks than the A10's 125).
PEAK_TFLOPS = {"H200": 989, "H100": 989, "A100": 312, "L40S": 362, "L40": 181, "L4": 121, "A10G": 70, "A10": 125,
               "V100": 125, "T4": 65}
DEFAULT_GPU = "A100"
# Model FLOPs utilisation of a LoRA step: ~30% with bf16 weights; 4-bit bases dequantise every
# matmul's weights, which costs about a third of that.
MFU = {"none": 0.30, "8bit": 0.20, "4bit": 0.20}
TRIAL_OVERHEAD_S = 120  # worker start, imports, weight load, tokenisation: per trial, per worker



def asha_grace(max_t: int, grace_tokens: int) -> int:
    """ASHA's first rung: ``--grace-tokens``, or max_tokens/8 when it is 0, never past the budget."""
    return min(grace_tokens or max(1, max_t // 8), max_t)


def asha_rungs(max_t: int, grace: float, rf: float) -> list[float]:
    """Where Ray's ASHA (one bracket) decides, in tokens seen: grace * rf^k below max_t (its last
    milestone is the budget itself, where every trial ends anyway)."""
    rungs, t = [], grace
    while t < max_t:
        rungs.append(t)
        t *= rf
    return rungs


def asha_tokens(max_t: int, grace: int, rf: float) -> float:
    """Expected training tokens of one trial under ASHA: everyone reaches the first rung, 1/rf of
    them the next, and so on. E.g. max 2M, grace 250k, rf 3 -> rungs 250k, 750k:
    250k + (750k-250k)/3 + (2M-750k)/9 = 0.56M, 28% of running every trial to the end."""
    total, prev = 0.0, 0
    for k, rung in enumerate([*asha_rungs(max_t, grace, rf), max_t]):
        total += (rung - prev) / rf**k
        prev = rung
    return total


def expected_tokens(settings, options) -> float:
    """A trial's expected training tokens: its whole budget, or less under ASHA (``asha_tokens``)."""
    if options.scheduler != "asha":
        return float(settings.max_tokens)
    return asha_tokens(settings.max_tokens, asha_grace(settings.max_tokens, options.grace_tokens),
                       options.reduction_factor)


def estimate(sweep, inputs, res, cluster: dict, at_once: int) -> list[str]:
    """What the dry run prints about cost: tokens, steps, GPU-hours (a FLOP count at an assumed
    MFU, plus start-up per trial) and wall time at the cluster's concurrency. ``inputs`` is
    ``preflight.check_inputs``'s: the data audit and the model's parameter count."""
    from trainers.tasks import get_task

    settings, options = sweep.settings, sweep.options
    task = get_task(settings.task)
    n = options.num_samples
    per_trial = expected_tokens(settings, options)
    cap = settings.max_tokens
    lines = [f"budget: {n} trials x {cap:,} training tokens = {n * cap:,} tokens at most; "
             f"~{n * per_trial:,.0f} expected" + (" with ASHA's early stops" if options.scheduler == "asha" else "")]
    data = inputs.data or {}
    rows_per_step = settings.per_device_batch_size * settings.gradient_accumulation_steps * res.workers
    if data.get("tokens_per_example"):
        unpacked = settings.max_tokens / (data["tokens_per_example"] * rows_per_step)
        packed = settings.max_tokens / (0.95 * settings.max_seq_length * rows_per_step)  # best-fit fills rows ~95%
        lines.append(f"steps per trial: ~{math.ceil(unpacked)}" + (f" unpacked, ~{math.ceil(packed)} packed" if task.can_pack
                                                                  else "")
                     + f" ({rows_per_step} rows per optimizer step, {data['tokens_per_example']:.0f} tokens per example)")
    if res.gpus <= 0:
        lines.append("GPU-hours: none (this sweep runs on CPUs)")
        return lines
    if not inputs.parameters():
        lines.append("GPU-hours: unknown (the model's config could not be read from here)")
        return lines
    gpu = next((t.split(":", 1)[1] for t in cluster.get("accelerators", []) if t.split(":", 1)[1] in PEAK_TFLOPS),
               DEFAULT_GPU)
    # Per token: forward 2N, backward through the frozen base for activation gradients 2N (LoRA's
    # own weight gradients are negligible), recomputed forward 2N with gradient checkpointing.
    n_params = inputs.num_parameters
    # + 2N per token for each extra forward pass the task makes (a preference trial's reference model)
    flops_per_token = (6 if settings.gradient_checkpointing else 4) * n_params + 2 * task.reference_forwards * n_params
    evals = per_trial / (data.get("tokens_per_example") or settings.max_seq_length) / rows_per_step / settings.eval_every
    trial_flops = per_trial * flops_per_token + evals * data.get("eval_tokens", 0) * 2 * n_params
    gpu_s_compute = trial_flops / (PEAK_TFLOPS[gpu] * 1e12 * MFU[settings.quantization])  # on one whole GPU
    gpus_per_trial = res.workers * res.gpus
    gpu_h = n * (gpu_s_compute + TRIAL_OVERHEAD_S * gpus_per_trial) / 3600
    wall_h = math.ceil(n / max(1, at_once)) * (gpu_s_compute / gpus_per_trial + TRIAL_OVERHEAD_S) / 3600
    lines.append(f"GPU-hours: ~{gpu_h:.2f} ({n_params / 1e9:.2f}B params x {flops_per_token // n_params} FLOP/token, "
                 f"{gpu} at {MFU[settings.quantization]:.0%} of {PEAK_TFLOPS[gpu]} TFLOP/s, "
                 f"+{TRIAL_OVERHEAD_S}s start-up "
                 f"per trial); wall time ~{wall_h:.1f} h at {at_once} trial(s) at once")
    return lines
