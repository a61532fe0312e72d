"""lorasweep's performance figures, each measured side by side in one run, against its target.

    python bench/run.py                      # every figure on the CPU (about 25 min on 2 cores)
    python bench/run.py --only packing       # one figure (repeat --only for more)
    python bench/run.py --quick              # small sizes: checks the script works, figures are rough
    python bench/run.py --device cuda        # on a GPU machine (figures that have a CUDA variant use it)

Each figure runs in its own Python process (a clean Ray, clean memory), prints one table row and
goes into ``bench/results.json`` (``results_quick.json`` with --quick): the raw numbers of both
sides, the ratio, the target and whether it is met. A benchmark is not a test: nothing here fails
on a timing; the exit status is 0 unless a figure could not be measured at all.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.figure import ROOT  # noqa: E402

# In the order of the table. Module name -> what the row is called.
FIGURES = {
    "startup": "trial start-up",
    "overhead": "framework overhead",
    "plain": "sweep vs plain HF search",
    "packing": "packing",
    "qlora_memory": "QLoRA memory",
    "zero": "ZeRO optimizer state",
    "search": "search efficiency",
    "driver_scale": "driver scale",
    "data_setup": "data set-up per trial",
    "checkpoints": "checkpoint share of trial time",
    "gpu_slots": "GPU-slot utilisation",
}


def _child(name: str, device: str, quick: bool, out: str) -> None:
    module = importlib.import_module(f"bench.{name}")
    fig = module.run(device, quick)
    Path(out).write_text(json.dumps(fig.to_dict(), default=str))


def measure(name: str, device: str, quick: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "figure.json")
        cmd = [sys.executable, __file__, "--child", name, "--device", device, "--out", out] + (["--quick"] if quick else [])
        t0 = time.time()
        proc = subprocess.run(cmd, cwd=ROOT, text=True)
        wall = round(time.time() - t0, 1)
        if proc.returncode != 0 or not os.path.exists(out):
            return {"error": f"exit status {proc.returncode} (its output is above)", "bench_wall_s": wall}
        result = json.loads(Path(out).read_text())
    return {**result, "bench_wall_s": wall}


def table(results: dict) -> str:
    rows = [("figure", "ratio", "target", "met", "what")]
    for name, r in results.items():
        if "error" in r:
            rows.append((FIGURES[name], "-", "-", "ERROR", r["error"]))
        else:
            rows.append((FIGURES[name], f"{r['ratio']:.3g}", r["target"], "yes" if r["met"] else "NO", r["detail"]))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row[:4], widths)) + "  " + row[4] for row in rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", action="append", choices=list(FIGURES), help="measure only this figure (repeatable)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--quick", action="store_true", help="small sizes: the script works, the figures are rough")
    p.add_argument("--out", default=None, help="where the JSON goes (default bench/results.json, "
                                                "bench/results_quick.json with --quick)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        _child(a.child, a.device, a.quick, a.out)
        return 0
    out = Path(a.out or ROOT / "bench" / ("results_quick.json" if a.quick else "results.json"))
    previous = json.loads(out.read_text()).get("figures", {}) if out.is_file() else {}
    results = {}
    for name in a.only or FIGURES:
        print(f"\n===== {FIGURES[name]} ({name}) =====", flush=True)
        results[name] = measure(name, a.device, a.quick)
        print(json.dumps(results[name], indent=1, default=str), flush=True)
    print("\n" + table(results))
    import torch

    record = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__, "device": a.device,
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "quick": a.quick,
        # --only keeps the other figures of the last full run
        "figures": {**previous, **results},
    }
    out.write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(f"written: {out}")
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
