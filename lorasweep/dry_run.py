"""``--dry-run``: what the sweep would train, on what, where, and what it would cost; nothing trained."""

from __future__ import annotations

import json

from lorasweep.recipe import ResolvedSweep
from trainers.config import Resources


def dry_run_report(sweep: ResolvedSweep, inputs, res: Resources, cluster: dict, at_once: int) -> str:
    """What the sweep would do, summary first: what it trains, on what, where, and what it costs;
    the full resolved config (JSON) only with --verbose."""
    from lorasweep.budget import estimate

    settings, options, space = sweep.settings, sweep.options, sweep.space
    where = ("this machine, Ray not started" if not options.address else f"the cluster at {options.address}")
    lines = [f"dry run of {sweep.recipe.name} (preset {sweep.preset}) on {where}: nothing is trained or written",
             f"sweep: {options.name} -> {sweep.sweep_dir}; {options.num_samples} trials, "
             f"{len(space.known_points)} known point(s) first, "
             f"{options.searcher}{' + ASHA' if options.scheduler == 'asha' else ''} on {', '.join(sweep.objectives)} "
             f"({space.mode})" + (f", ASHA pruning on {options.prune_metric}" if options.scheduler == "asha"
                                  and options.prune_metric != space.metric else "")
             + (f"; final round: top {options.final_round} on eval + validation rows" if options.final_round else ""),
             "space: " + "; ".join(space.describe()),
             f"model: {settings.model} ({model_line(sweep, inputs, res)})"]
    if inputs.data:
        from lorasweep.selection import sweep_noise_lines

        lines.append(data_line(inputs.data))
        lines += sweep_noise_lines(sweep, inputs.data)
    lines.append(f"per trial: {res.workers} worker(s) x ({res.cpus:g} CPU, {res.gpus:g} GPU); "
                 f"{at_once} trial(s) at once on {'this machine' if not options.address else 'this cluster'} "
                 f"({cluster['cpu']:g} CPU, {cluster['gpu']:g} GPU, {len(cluster['nodes'])} node(s))")
    from lorasweep.gpu_memory import load_line

    lines += [line for line in [load_line(sweep, inputs, res, cluster)] if line]
    lines += estimate(sweep, inputs, res, cluster, at_once)
    if res.gpus <= 0:
        lines += cpu_wall_time(sweep, inputs, res, at_once)
    if options.verbose:
        lines += ["resolved config:", json.dumps(sweep.summary(), indent=2, default=str)]
    else:
        lines.append("(--verbose adds the full resolved config; a sweep writes it to sweep.yaml, a sweep file that reruns it)")
    return "\n".join(lines)


# Above this size a CPU probe would itself take minutes (a 1B model: a few seconds per step on 2
# cores, plus loading): the dry run says so instead of measuring.
PROBE_MAX_PARAMS = 500_000_000


def cpu_wall_time(sweep: ResolvedSweep, inputs, res: Resources, at_once: int) -> list[str]:
    """CPU trials: the wall time from a few measured steps of the first known point, in this process
    (lorasweep/probe.py), where a FLOP count at an assumed utilisation would say little."""
    from lorasweep.probe import measure, wall_time_lines
    from common.errors import first_line

    params = inputs.parameters()
    if params and params > PROBE_MAX_PARAMS:
        return [f"wall time: not probed ({params / 1e9:.1f}B params on CPUs: minutes per optimizer step; "
                "give the trials GPUs, or a smaller --model)"]
    try:
        return wall_time_lines(sweep, inputs, res, at_once, measure(sweep, res))
    except Exception as e:  # noqa: BLE001 - a model that does not load, ...: the rest of the dry run stands
        return [f"wall time: unknown (probe failed: {first_line(e)[:200]})"]


def model_line(sweep: ResolvedSweep, inputs, res: Resources) -> str:
    """``llama, 0.13M params, 4-bit QLoRA (...) on the CPU, fp32``: what each trial loads, and how."""
    settings = sweep.settings
    params = inputs.parameters()
    parts = [settings.family or "family from its config"]
    if params:
        parts.append(f"{params / 1e9:.2f}B params" if params >= 1e8 else f"{params / 1e6:.2f}M params")
    bits = {"4bit": "4-bit QLoRA (bitsandbytes NF4, double quant)", "8bit": "8-bit (bitsandbytes LLM.int8)"}
    if settings.quantization in bits:
        # bitsandbytes >= 0.49 quantises and trains on the CPU too (tests/test_families.py does, on 2 cores)
        cpu = " on the CPU: bitsandbytes runs it without CUDA" if res.gpus <= 0 else ""
        parts.append(bits[settings.quantization] + cpu)
    elif settings.method == "full":
        parts.append("full fine-tune")
    auto = "bf16 (fp16 on GPUs without it)" if res.gpus > 0 else "fp32"
    precision = settings.precision if settings.precision != "auto" else auto
    parts.append(f"{settings.method}, {precision}")
    return ", ".join(parts)


def data_line(data: dict) -> str:
    skipped = ", ".join(f"{k}: {v}" for k, v in data["skipped"].items()) or "none"
    val = f" + {data['validation_rows']} validation rows" if data.get("validation_rows") else ""
    return (f"data: {data['rows']} rows -> {data['train_examples']} train + {data['eval_examples']} eval examples{val} "
            f"({data['tokens_per_example']:.0f} tokens each on average); skipped {skipped}; "
            f"{data['truncated']} truncated to max_seq_length")
