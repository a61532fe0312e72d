"""What is checked before a GPU is spent: the cluster's shape, the cost estimate, where a local Ray
listens."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from trainers.config import Resources

from lorasweep.cluster import concurrency, trial_resources
from lorasweep.recipe import SweepOptions
from lorasweep.resolve import resolve
from sweeps.llama_finetome import RECIPE
from lorasweep.budget import asha_tokens, estimate
from lorasweep.autoscaler import addable_node_types, monitor_config, with_addable_node_types
from lorasweep.preflight import Inputs, check_cluster, check_paths_on_nodes, count_parameters, node_label, nodes_lacking
from common.errors import ConfigError
from tests.conftest import FAKE_HF

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
    # never more at once than there are trials (the start line, the cost estimate)
    assert concurrency(SweepOptions(name="x", max_concurrent=8, num_samples=1), res(1, 1), cluster(gpu_node(4))) == 1


def test_trials_keep_off_the_head_where_the_cluster_has_other_nodes():
    """cluster.trial_host: the head runs the driver; a trial's actor, controller, workers and scoring
    tasks go elsewhere when there is an elsewhere (tests/test_cluster.py checks it on a real cluster)."""
    head, opts = {"CPU": 4, "node:__internal_head__": 1}, SweepOptions(name="x", max_concurrent=8, num_samples=8)
    marked = {"CPU": 4, "lorasweep_worker": 1000}  # cluster.yaml's and the KubeRay manifest's worker nodes
    r = trial_resources(opts, {**cluster(head, marked), "head_id": "h"})
    assert r.host_resources == {"lorasweep_worker": 1.0} and not r.not_on_node
    assert r.host_options() == {"resources": {"lorasweep_worker": 1.0}}
    assert concurrency(opts, r, cluster(head, marked)) == 4  # the head's 4 CPUs hold no trial
    # node types the autoscaler adds declare it, before any worker node is up
    adds = {"gpu_worker": {"CPU": 4, "GPU": 1, "lorasweep_worker": 1000}}
    r = trial_resources(SweepOptions(name="x", autoscale=True), {**cluster({"CPU": 0, **head}), "head_id": "h",
                                                                 "node_types": adds})
    assert r.host_resources == {"lorasweep_worker": 1.0} and r.gpus == 1
    # any other cluster with a node besides the head: a label selector excluding the head's node id
    r = trial_resources(opts, {**cluster(head, {"CPU": 2}), "head_id": "h"})
    assert r.not_on_node == "h" and r.host_options() == {"label_selector": {"ray.io/node-id": "!h"}}
    assert concurrency(opts, r, cluster(head, {"CPU": 2})) == 2
    # a one-node Ray (a laptop): the head is all there is
    r = trial_resources(opts, {**cluster(head), "head_id": "h"})
    assert not r.host_resources and not r.not_on_node and r.host_options() == {}
    assert concurrency(opts, r, cluster(head)) == 4


# ----------------------------------------------------------------------------- an autoscaling cluster

# What `ray up cluster.yaml` leaves on the head as ~/ray_bootstrap_config.yaml (JSON, which is YAML):
# cluster.yaml with the node types' resources filled in from their AWS instance types.
BOOTSTRAPPED = {
    "cluster_name": "lorasweep", "max_workers": 4, "head_node_type": "head",
    "auth": {"ssh_user": "ubuntu", "ssh_private_key": "~/ray_bootstrap_key.pem"},
    "available_node_types": {
        "head": {"node_config": {"InstanceType": "m6i.xlarge"}, "resources": {"CPU": 0}, "max_workers": 0},
        "gpu_worker": {"min_workers": 0, "max_workers": 4, "node_config": {"InstanceType": "g5.xlarge"},
                       "resources": {"CPU": 4, "memory": 11596411699, "GPU": 1, "accelerator_type:A10G": 1}},
    },
}
HEAD_ONLY = cluster({"CPU": 0})  # what an autoscaling cluster.yaml cluster is before the sweep asks for GPUs


def test_autoscale_takes_gpus_per_worker_from_the_node_types_it_can_add():
    types = addable_node_types(json.dumps(BOOTSTRAPPED))
    assert types == {"gpu_worker": BOOTSTRAPPED["available_node_types"]["gpu_worker"]["resources"]}
    opts = SweepOptions(name="x", address="auto", autoscale=True, max_concurrent=4)
    r = trial_resources(opts, {**HEAD_ONLY, "node_types": types})
    assert r.gpus == 1  # not 0: trials would train on CPUs, one at a time
    assert concurrency(opts, r, HEAD_ONLY) == 4  # --max-concurrent, not the head's 0 worker slots (floored to 1)
    cpu_only = {"cpu_worker": {"CPU": 16, "memory": 6e10}}
    assert trial_resources(opts, {**HEAD_ONLY, "node_types": cpu_only}).gpus == 0  # a CPU cluster, known to be one
    assert trial_resources(SweepOptions(name="x", autoscale=True, gpus_per_worker=2), HEAD_ONLY).gpus == 2


@pytest.mark.parametrize("node_types,why", [
    (None, "no ~/ray_bootstrap_config.yaml on the head"),
    # the shipped cluster.yaml as written: `resources: {}` until `ray up` fills it in from the instance type
    ("cluster.yaml", "its autoscaler config gives no resources for node type(s) gpu_worker"),
    ({}, "its autoscaler config lists no node type to add"),
])
def test_autoscale_without_known_gpus_asks_for_gpus_per_worker(node_types, why):
    if node_types == "cluster.yaml":
        node_types = addable_node_types((ROOT / "cluster.yaml").read_text())
    with pytest.raises(ConfigError) as e:
        trial_resources(SweepOptions(name="x", address="auto", autoscale=True), {**HEAD_ONLY, "node_types": node_types})
    msg = str(e.value)
    assert msg.startswith("`--gpus-per-worker` is -1 (auto) but with --autoscale the GPUs of the nodes the cluster "
                          f"will add are unknown ({why}") and "\n" not in msg
    assert msg.endswith("); pass --gpus-per-worker 1 (or 0 to train on CPUs)")


# ----------------------------------------------------------------------------- a real multi-node cluster


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    """A real two-node Ray cluster on this machine (``ray.cluster_utils.Cluster``) laid out as
    cluster.yaml lays one out: a head that runs no trials (0 CPUs) and a worker node. Each raylet
    starts in its own folder, which its workers inherit as their cwd, so ``/proc/self/cwd/<file>``
    is a path that exists on one node and not on the other: what a local file on the head is to a
    node without a shared filesystem. Started before any test sets HF_TOKEN: a worker can only get
    the token through our code."""
    import ray
    from ray.cluster_utils import Cluster

    from lorasweep.cluster import free_port

    head_cwd, worker_cwd = tmp_path_factory.mktemp("head_cwd"), tmp_path_factory.mktemp("worker_cwd")
    (head_cwd / "only_on_head.jsonl").write_text("{}\n")
    port = free_port(0)
    here = os.getcwd()
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("HF_TOKEN", raising=False)
        mp.setenv("RAY_TRAIN_V2_ENABLED", "1")
        mp.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        # Ray Train asks the state API whether a trial is alive: this cluster's, not another Ray's on 8265.
        mp.setenv("RAY_API_SERVER_ADDRESS", f"http://127.0.0.1:{port}")
        try:
            os.chdir(head_cwd)
            c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "dashboard_port": port,
                                                              "include_dashboard": True})
            os.chdir(worker_cwd)
            worker = c.add_node(num_cpus=2, resources={"worker_node": 1})
        finally:
            os.chdir(here)
        c.wait_for_nodes()
        ray.init(address=c.address)
        try:
            yield SimpleNamespace(address=c.address, head_cwd=head_cwd, worker_id=worker.node_id)
        finally:
            ray.shutdown()
            c.shutdown()


def test_a_local_input_missing_on_a_trial_node_is_refused_naming_that_node(two_nodes, tmp_path):
    import ray

    alive = [n for n in ray.nodes() if n["Alive"]]
    worker = next(n for n in alive if n["NodeID"] == two_nodes.worker_id)
    shared = tmp_path / "chats.jsonl"  # one machine: every node sees tmp_path, as with a shared filesystem
    shared.write_text("{}\n")
    assert nodes_lacking([str(shared)], alive) == {}
    only_on_head = "/proc/self/cwd/only_on_head.jsonl"
    assert nodes_lacking([only_on_head, str(shared)], alive) == {node_label(worker): [only_on_head]}

    def sweep(dataset, model="unsloth/Llama-3.2-1B-Instruct", address=two_nodes.address):
        return SimpleNamespace(settings=SimpleNamespace(dataset=dataset, model=model),
                               options=SweepOptions(name="x", address=address))

    check_paths_on_nodes(sweep(str(shared), model=str(tmp_path)), res(1, 0))
    with pytest.raises(ConfigError) as e:
        check_paths_on_nodes(sweep(only_on_head), res(1, 0))
    assert str(e.value) == (
        f"`dataset` path {only_on_head!r} is missing on 1 of 1 node(s) that run trials ({node_label(worker)}): trials "
        "there cannot read it; put it on a filesystem every node mounts at the same path, or upload it (s3://, gs:// "
        "or the Hugging Face Hub) and pass that")
    check_paths_on_nodes(sweep(only_on_head, address=None), res(1, 0))  # a local Ray: the driver's check suffices


def test_autoscale_reads_the_node_types_on_the_head(two_nodes, tmp_path):
    config = tmp_path / "ray_bootstrap_config.yaml"
    config.write_text(json.dumps(BOOTSTRAPPED))
    seen = with_addable_node_types(HEAD_ONLY, str(config))
    assert seen["node_types"] == {"gpu_worker": BOOTSTRAPPED["available_node_types"]["gpu_worker"]["resources"]}
    assert seen["accelerators"] == ["accelerator_type:A10G"]  # the dry run prices A10Gs, not the default A100
    assert with_addable_node_types(HEAD_ONLY, str(tmp_path / "none.yaml"))["node_types"] is None


def test_autoscale_finds_the_config_the_heads_autoscaler_was_started_with(tmp_path):
    """A head started by hand (``ray start --head --autoscaling-config=...``), not by ``ray up``: the
    config is where its monitor's command line says, for the monitor of this cluster's GCS only."""
    def proc(pid: str, *args: str) -> None:
        (tmp_path / "proc" / pid).mkdir(parents=True)
        (tmp_path / "proc" / pid / "cmdline").write_bytes("\0".join(args).encode() + b"\0")

    proc("11", "python", "/x/ray/autoscaler/_private/monitor.py", "--gcs-address=10.0.0.1:6379",
         "--autoscaling-config=/other.yaml")
    proc("12", "python", "/x/ray/dashboard/dashboard.py", "--gcs-address=10.0.0.1:6380")
    proc("13", "python", "/x/ray/autoscaler/_private/monitor.py", "--logs-dir=/tmp/l", "--gcs-address=10.0.0.1:6380",
         "--autoscaling-config=/mine.yaml")
    (tmp_path / "proc" / "self").mkdir()  # not a pid: skipped
    assert monitor_config("10.0.0.1:6380", str(tmp_path / "proc")) == "/mine.yaml"
    assert monitor_config("10.0.0.1:6379", str(tmp_path / "proc")) == "/other.yaml"
    assert monitor_config("10.0.0.1:7000", str(tmp_path / "proc")) is None
    assert monitor_config("10.0.0.1:6380", str(tmp_path / "nothing")) is None


def _token_probe_worker(config: dict) -> None:
    """A trial worker's first lines, as ``trainers.loop.train_func`` has them, then what it sees."""
    import ray.train

    from common.credentials import receive

    config = receive(config)
    seen = hashlib.sha256(os.environ.get("HF_TOKEN", "").encode()).hexdigest()  # a report is written to disk
    ray.train.report({"token_seen": seen == config["token_sha256"], "node_id": ray.get_runtime_context().get_node_id()})


def _token_probe_trial(config: dict, secrets: list | None = None) -> None:
    """``engine.lora_trial``'s TorchTrainer, its train_loop_config built the same way."""
    from ray import tune
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from lorasweep.credentials import with_secrets

    TorchTrainer(_token_probe_worker, train_loop_config=with_secrets(config, secrets),
                 scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1, "worker_node": 0.1}),
                 run_config=RunConfig(name=tune.get_context().get_trial_id(), storage_path=config["train_storage"],
                                      callbacks=[TuneReportCallback()])).fit()


def test_hf_token_reaches_a_trial_worker_on_another_node_and_is_written_nowhere(two_nodes, tmp_path, monkeypatch):
    import ray
    from ray import tune

    from lorasweep.credentials import share
    from tests.test_sweep import _files_under

    monkeypatch.setenv("HF_TOKEN", FAKE_HF)  # the driver's environment only: the nodes started without it
    storage = tmp_path / "runs"
    # The trainable wrapped as engine.build_tuner wraps lora_trial.
    trainable = tune.with_resources(tune.with_parameters(_token_probe_trial, secrets=share()), {"memory": 1})
    grid = tune.Tuner(trainable, param_space={"token_sha256": hashlib.sha256(FAKE_HF.encode()).hexdigest(),
                                              "train_storage": str(storage / "train_runs")},
                      run_config=tune.RunConfig(name="probe", storage_path=str(storage), verbose=0)).fit()
    (result,) = grid
    assert result.error is None, result.error
    assert result.metrics["token_seen"] is True and result.metrics["node_id"] == two_nodes.worker_id

    session = Path(ray._private.worker._global_node.get_session_dir_path())
    scanned = 0
    for path in _files_under(storage, session):
        assert FAKE_HF.encode() not in path.read_bytes(), f"HF_TOKEN found in {path}"
        scanned += 1
    assert list(session.glob("logs/*")) and (storage / "probe").is_dir() and scanned > 20


# ----------------------------------------------------------------------------- the estimate


def test_asha_budget_follows_its_rungs():
    # Counted trial by trial: 27 trials reach the first rung (250k), 9 the second (750k), 3 the cap (2M).
    trials = [250_000] * 18 + [750_000] * 6 + [2_000_000] * 3
    assert asha_tokens(2_000_000, 250_000, 3) == pytest.approx(sum(trials) / len(trials))
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
    # Compute is 989/70 times faster on an H100 (dense bf16 TFLOPs); a trial's start-up is not, so
    # compare what twice the tokens adds on each GPU.
    def extra(kind):
        return hours("--max-tokens", "4000000", kind=kind) - hours("--max-tokens", "2000000", kind=kind)

    assert extra("A10G") / extra("H100") == pytest.approx(989 / 70, rel=0.1)
    assert hours(kind="H100") > base / (989 / 70)  # the start-up stays
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
from lorasweep.cluster import init_ray
from lorasweep.recipe import SweepOptions
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


def _llama_config(hidden: int, layers: int, inter: int, tied: bool):
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers, num_attention_heads=64,
                       num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=tied)


def test_a_base_whose_weights_cannot_fit_the_gpus_on_offer_is_refused_before_the_sweep():
    """A 70B 4-bit base loads whole on every rank, ZeRO-3 too (~37 GB): refused for an A10G cluster
    (24 GB), also one that only autoscales A10G/L4 nodes in; it fits an H100. A 1B fits an A10G, and
    a CPU sweep or a GPU type we do not know is not judged."""
    from types import SimpleNamespace

    from lorasweep.gpu_memory import check_load, load_line
    from lorasweep.preflight import Inputs
    from trainers.config import Resources, TrainSettings

    settings = TrainSettings(model="meta-llama/Llama-3.3-70B-Instruct", dataset="d.jsonl", quantization="4bit",
                             zero_stage=3)
    sweep, res = SimpleNamespace(settings=settings), Resources(workers=4, gpus=1)
    big = Inputs(model_config=_llama_config(8192, 80, 28672, tied=False))
    a10g = {"accelerators": ["accelerator_type:A10G"]}
    with pytest.raises(ConfigError, match=r"^`model` 'meta-llama/Llama-3.3-70B-Instruct' \(70.6B params\) loads ~37 GB "
                                          r"of weights on each GPU \(4bit bases load whole on every rank, ZeRO-3 too\), "
                                          r"more than the A10G's 24 GB; use GPUs with more memory or a smaller --model$"):
        check_load(sweep, big, res, a10g)
    autoscaled = {"accelerators": [], "node_types": {"head": {"CPU": 4}, "a10g": {"GPU": 4, "accelerator_type:A10G": 1},
                                                     "l4": {"GPU": 1, "accelerator_type:L4": 1}}}
    with pytest.raises(ConfigError, match=r"more than the (A10G|L4)'s 24 GB"):
        check_load(sweep, big, res, autoscaled)
    check_load(sweep, big, res, {"accelerators": ["accelerator_type:H100"]})
    assert load_line(sweep, big, res, {"accelerators": ["accelerator_type:H100"]}) == (
        "GPU memory at load: ~36.8 GB of base weights on each GPU before training; the smallest GPU on offer, H100, has 80 GB")
    # two trials sharing each H100 get half of it each
    with pytest.raises(ConfigError, match="more than the H100's 80 GB"):
        check_load(sweep, big, Resources(workers=4, gpus=0.5), {"accelerators": ["accelerator_type:H100"]})
    small = Inputs(model_config=_llama_config(2048, 16, 8192, tied=True))
    check_load(sweep, small, res, a10g)
    check_load(sweep, big, Resources(workers=1, gpus=0), a10g)  # CPU trials: no GPU to fit
    check_load(sweep, big, res, {"accelerators": ["accelerator_type:B300"]})  # unknown type: not judged
