"""Which device a trial trains on, and the one line that says why a GPU trial cannot have CUDA.

Ray counts a node's GPUs through NVML, torch finds CUDA through its own build and the driver: a
trial Ray gave a GPU can still see none (a CPU build of torch, a driver older than the wheel's CUDA).
Falling back to the CPU then trains for hours on one core while the GPU is billed, so such a trial
stops at once; the driver asks the same question on each GPU node before the sweep (lorasweep/gpus.py).
"""

from __future__ import annotations

import os
import re
import subprocess

import torch

from common.errors import TrialError


def nvidia_driver() -> str:
    """The NVIDIA driver's version as the kernel module or nvidia-smi gives it, or why there is none."""
    try:
        with open("/proc/driver/nvidia/version") as f:
            m = re.search(r"Kernel Module\s+(?:for \S+\s+)?([\d.]+)", f.read())
            if m:
                return f"NVIDIA driver {m.group(1)}"
    except OSError:
        pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        text = (out.stdout or out.stderr).strip()
        if out.returncode == 0 and text:
            return f"NVIDIA driver {text.split()[0]}"
        return f"nvidia-smi failed ({text.splitlines()[0][:80] if text else f'exit {out.returncode}'})"
    except (OSError, subprocess.TimeoutExpired):
        return "no NVIDIA driver found (no /proc/driver/nvidia/version, no nvidia-smi)"


def cuda_report() -> dict:
    """What this process's torch makes of CUDA (run where a trial runs: Ray sets CUDA_VISIBLE_DEVICES),
    and whether flash-attn is installed here."""
    from importlib.metadata import PackageNotFoundError, version

    available = torch.cuda.is_available()
    try:
        flash = version("flash-attn")
    except PackageNotFoundError:
        flash = None
    return {"available": available, "devices": torch.cuda.device_count() if available else 0,
            "torch": torch.__version__, "torch_cuda": torch.version.cuda, "driver": nvidia_driver(),
            "visible": os.environ.get("CUDA_VISIBLE_DEVICES"), "flash_attn": flash,
            "gpu": torch.cuda.get_device_name(0) if available else None,
            "capability": list(torch.cuda.get_device_capability(0)) if available else None}


def flash_attention_problem(report: dict) -> str | None:
    """Why flash_attention_2 cannot run where ``report`` was made, or None."""
    if not report["available"]:
        return "it runs on CUDA GPUs only and torch sees none here"
    if report["flash_attn"] is None:
        return "the flash-attn package is not installed (pip install flash-attn --no-build-isolation, after torch)"
    if tuple(report["capability"]) < (8, 0):
        major, minor = report["capability"]
        return f"it needs a GPU from Ampere on (compute capability 8.0), and the {report['gpu']} is {major}.{minor}"
    return None


def flash_attention_line(problem: str) -> str:
    return f"`attn_implementation` flash_attention_2: {problem}; pass --attn-implementation sdpa (or auto)"


def no_cuda_line(report: dict) -> str:
    build = f"CUDA {report['torch_cuda']} build" if report["torch_cuda"] else "a CPU-only build"
    return (f"a GPU trial but torch sees no CUDA device: torch {report['torch']} is {build}, {report['driver']}, "
            f"CUDA_VISIBLE_DEVICES={report['visible']!r}; install a torch whose CUDA the driver supports "
            f"(./install.sh picks one where nvidia-smi runs) or pass --gpus-per-worker 0 to train on CPUs")


# A test switch, for simulated clusters only (tests/test_autoscaling.py, bench/gpu_slots.py): their
# nodes declare fake GPUs (Ray schedules by the count; there is no CUDA), and with this set to 1 in
# the driver's environment (``cluster.job_env`` passes it to the sweep's Ray processes) a one-worker
# trial that Ray gave a GPU trains on the CPU instead of refusing. Unset, as on every real cluster, a
# GPU trial without CUDA fails with ``no_cuda_line``. Multi-worker trials are not covered: Ray Train
# sets their CUDA devices itself.
CPU_FOR_FAKE_GPUS = "LORASWEEP_TEST_CPU_FOR_FAKE_GPUS"


def cpu_for_fake_gpus() -> bool:
    return os.environ.get(CPU_FOR_FAKE_GPUS) == "1"


def trial_device(gpus: float) -> torch.device:
    """The device of a trial process that Ray gave ``gpus`` GPUs: its first visible CUDA device
    (Ray sets CUDA_VISIBLE_DEVICES), or the CPU for a CPU trial. A GPU trial without CUDA raises
    (unless ``CPU_FOR_FAKE_GPUS``, the simulated clusters' test switch, is set)."""
    if gpus <= 0 or (cpu_for_fake_gpus() and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise TrialError(no_cuda_line(cuda_report()))
    return torch.device("cuda", 0)


def release_host_memory() -> None:
    """Hand the heap a finished trial freed back to the OS. glibc keeps freed blocks of the process's
    heap for reuse: after a 4-bit SmolLM2 trial and ``gc.collect()`` a process held 3.7-4.3 GB of
    them (0.48 GB after ``malloc_trim``), which a reused trial process carries into the next trial
    beside the other trials on the node. A no-op where the C library has no malloc_trim."""
    import ctypes

    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (AttributeError, OSError):  # musl, macOS
        pass
