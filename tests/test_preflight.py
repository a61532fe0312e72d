"""What is checked before a GPU is spent: the cluster's shape, the cost estimate, where a local Ray
listens."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from trainers.config import Resources

from lorasweep.engine import SweepOptions, concurrency, resolve
from sweeps.llama_finetome import RECIPE
from lorasweep.preflight import Inputs, asha_tokens, check_cluster, count_parameters, estimate
from lorasweep.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def gpu_node(gpus: int, cpus: int = 8, kind: str = "A10G") -> dict:
    return {"CPU": cpus, "GPU": gpus, f"accelerator_type:{kind}": 1}


def cluster(*nodes: dict) -> dict:
    return {"cpu": sum(n.get("CPU", 0) for n in nodes), "gpu": sum(n.get("GPU", 0) for n in nodes),
            "nodes": list(nodes), "accelerators": sorted({k for n in nodes for k in n if k.startswith("accel")})}


def res(workers: int, gpus: float, cpus: float = 1) -> Resources:
    return Resources(workers=workers, gpus=gpus, cpus=cpus)


# ----------------------------------------------------------------------------- the cluster's shape


def test_a_worker_that_fits_no_node_is_refused_with_the_largest_node():
    with pytest.raises(ConfigError) as e:
        check_cluster(SweepOptions(name="x", address="auto"), res(1, 2), cluster(gpu_node(1), gpu_node(1)))
    msg = str(e.value)
    assert "no node offers 1 CPU + 2 GPU (largest: 8 CPU, 1 GPU)" in msg and "--autoscale" in msg and "\n" not in msg


def test_workers_per_trial_beyond_the_clusters_slots_is_refused():
    with pytest.raises(ConfigError, match=r"`--workers-per-trial` is 4 but the cluster has room for 3 worker"):
        check_cluster(SweepOptions(name="x"), res(4, 1), cluster(gpu_node(2), gpu_node(1), {"CPU": 16}))
    check_cluster(SweepOptions(name="x"), res(3, 1), cluster(gpu_node(2), gpu_node(1)))  # spans 2 nodes: fine


def test_autoscale_trusts_the_cluster_to_add_nodes():
    check_cluster(SweepOptions(name="x", address="auto", autoscale=True), res(2, 1), cluster({"CPU": 4}))


def test_concurrency_counts_worker_slots_node_by_node():
    # 2 nodes with 3 GPUs each: 2-GPU-worker trials fit one per node, not 3 (the total would say 3)
    two_gpu_workers = res(1, 2)
    assert concurrency(SweepOptions(name="x", max_concurrent=8), two_gpu_workers, cluster(gpu_node(3), gpu_node(3))) == 2
    assert concurrency(SweepOptions(name="x", max_concurrent=8), res(2, 1), cluster(gpu_node(4), gpu_node(4))) == 4
    assert concurrency(SweepOptions(name="x", max_concurrent=3), res(1, 1), cluster(gpu_node(4), gpu_node(4))) == 3


# ----------------------------------------------------------------------------- the estimate


def test_asha_budget_follows_its_rungs():
    # every trial to 250k, a third on to 750k, a ninth to 2M: 250k + 500k/3 + 1.25M/9
    assert asha_tokens(2_000_000, 250_000, 3) == pytest.approx(250_000 + 500_000 / 3 + 1_250_000 / 9)
    assert asha_tokens(1000, 1000, 3) == 1000  # grace at the end: no early stop
    assert asha_tokens(1000, 10, 2) < asha_tokens(1000, 10, 1.5) < 1000


@pytest.fixture(scope="module")
def llama_1b_config():
    """Llama-3.2-1B's architecture (the flagship's base), from its published dimensions."""
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                       num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
                       tie_word_embeddings=True)


def test_parameters_are_counted_from_the_config_alone(llama_1b_config):
    assert count_parameters(llama_1b_config) == pytest.approx(1.236e9, rel=0.01)  # "1.24B" on its model card


def _gpu_hours(lines: list[str]) -> float:
    line = next(x for x in lines if x.startswith("GPU-hours: ~"))
    return float(line.split("~", 1)[1].split(" ", 1)[0])


def test_gpu_hours_scale_with_trials_gpu_speed_and_early_stopping(llama_1b_config):
    inputs = Inputs(model_config=llama_1b_config, num_parameters=count_parameters(llama_1b_config),
                    data={"tokens_per_example": 600.0, "eval_tokens": 150_000})

    def hours(*flags, kind="A10G"):
        sweep = resolve(RECIPE, ["--storage-path", "/tmp/unused", *flags])
        c = cluster(gpu_node(1, kind=kind), gpu_node(1, kind=kind), gpu_node(1, kind=kind), gpu_node(1, kind=kind))
        r = res(1, 1)
        return _gpu_hours(estimate(sweep, inputs, r, c, concurrency(sweep.options, r, c)))

    base = hours()
    assert 1 < base < 100  # 16 trials of a 1B QLoRA on A10Gs: hours, not minutes or weeks
    assert hours("--num-samples", "32") == pytest.approx(2 * base, rel=0.05)
    assert hours("--scheduler", "none") > 2.5 * base  # ASHA stops most trials at a quarter of the budget
    # compute is 989/70 times faster on an H100; the 120 s start-up per trial is not
    startup = 16 * 120 / 3600
    assert (base - startup) / (hours(kind="H100") - startup) == pytest.approx(989 / 70, rel=0.1)
    assert hours("--quantization", "none") < base  # no dequantisation overhead


def test_dry_run_on_a_cpu_machine_says_gpu_hours_do_not_apply(tiny_assets):
    sweep = resolve(RECIPE, ["--preset", "smoke", "--storage-path", "/tmp/unused"])
    c = cluster({"CPU": 2})
    lines = estimate(sweep, Inputs(num_parameters=10**6, data={"tokens_per_example": 46.0}), res(1, 0), c, 2)
    assert lines[0].startswith("budget: 6 trials x 60,000 training tokens = 360,000 tokens at most")
    assert "~164 unpacked, ~31 packed" in lines[1]  # 60k / (46 x 8); 60k / (0.95 x 256 x 8)
    assert lines[-1] == "GPU-hours: none (this sweep runs on CPUs)"


# ----------------------------------------------------------------------------- a local Ray


def test_local_ray_dashboard_listens_on_loopback_only():
    probe = """
import json, psutil, ray
from lorasweep.engine import SweepOptions, init_ray
init_ray(SweepOptions(name="probe"))
url = ray._private.worker.global_worker.node.address_info["webui_url"]
port = int(url.rsplit(":", 1)[1])
print(json.dumps({"url": url, "listen": sorted({c.laddr.ip for c in psutil.net_connections("inet")
                                               if c.status == "LISTEN" and c.laddr.port == port})}))
ray.shutdown()
"""
    r = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    seen = json.loads(r.stdout.strip().splitlines()[-1])
    assert seen["url"].startswith("127.0.0.1:") and seen["listen"] == ["127.0.0.1"], seen
