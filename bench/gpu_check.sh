#!/usr/bin/env bash
# The CUDA paths on one GPU machine, in under 10 minutes (ESTIMATE: never run yet, Dec 3):
#   . .venv/bin/activate && bench/gpu_check.sh [out-dir]
# 1. the gpu-marked tests (tests/test_gpu.py: bf16/tf32/fused AdamW, 4-bit and bf16 trials on CUDA
#    with their peak memory, two trials sharing a GPU, ZeRO-3 + 4-bit + offload exporting LoRA keys only);
# 2. the flagship smoke sweep on CUDA, then per trial: tokens/s, peak GPU memory, and MFU
#    (6 x params x tokens/s over the GPU's dense bf16 peak from lorasweep/budget.py).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-/tmp/lorasweep-gpu-check}
rm -rf "$OUT" && mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"

t0=$(date +%s)
python -m pytest -m gpu -n 0 -v --durations=0 tests/test_gpu.py 2>&1 | tee "$OUT/tests.log" | tail -25
echo "gpu tests: $(( $(date +%s) - t0 )) s"

t0=$(date +%s)
python sweeps/llama_finetome.py --preset smoke --gpus-per-worker 1 --num-samples 2 --max-concurrent 1 \
    --storage-path "$OUT" --name smoke-cuda > "$OUT/smoke.log" 2>&1 || { tail -30 "$OUT/smoke.log"; exit 1; }
echo "flagship smoke on CUDA: $(( $(date +%s) - t0 )) s"
python - "$OUT/smoke-cuda" <<'EOF'
import json, sys
from pathlib import Path

import torch

from lorasweep.budget import PEAK_TFLOPS
from lorasweep.preflight import count_parameters, read_model_config

sweep = Path(sys.argv[1])
config = json.loads((sweep / "sweep_config.json").read_text())
params = count_parameters(read_model_config(config["settings"]["model"]))
name = torch.cuda.get_device_name(0)
peak = next((v for k, v in sorted(PEAK_TFLOPS.items(), key=lambda kv: -len(kv[0])) if k in name), None)
for result in sorted(sweep.glob("trial_*/result.json")):
    reports = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
    last = reports[-1]
    tps = max(r.get("tokens_per_s", 0) for r in reports)
    mfu = f"{6 * params * tps / (peak * 1e12):.2%}" if peak else "unknown GPU peak"
    print(f"{result.parent.name}: {last.get('tokens_seen')} tokens, {tps:,.0f} tokens/s, "
          f"peak {last.get('peak_mem_gb', 0):.2f} GB, MFU {mfu} ({params / 1e6:.2f}M params on {name})")
EOF
