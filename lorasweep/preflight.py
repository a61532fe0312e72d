"""Everything checked before a GPU is spent, and the dry run's estimate of what a sweep will cost.

Order matters: the cheap checks of the command line come first (``engine.resolve``), then what the
trials will read (paths, the model's config, the data itself), then the cluster's shape. Each
failure is a ``ConfigError``: one line naming the field, the value and the fix; the CLI exits 2
with nothing written.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from lorasweep import log, results, storage
from common.errors import ConfigError, first_line, os_reason
from lorasweep.budget import PEAK_TFLOPS

def _is_local(path: str) -> bool:
    return path.startswith((".", "/", "~")) or os.path.exists(path)


# ----------------------------------------------------------------------------- what trials read


def check_dataset_path(dataset: str) -> str:
    """A local dataset must be a readable file; returns its absolute path (Hub ids pass through)."""
    looks_local = dataset.startswith((".", "/", "~")) or dataset.endswith((".jsonl", ".json", ".parquet"))
    if not looks_local:
        return dataset
    path = Path(os.path.expanduser(dataset))
    if not path.exists():
        raise ConfigError(f"`dataset` path {dataset!r} does not exist; pass --dataset with a .jsonl/.parquet file or a Hub id")
    if not path.is_file():
        raise ConfigError(f"`dataset` path {dataset!r} is a folder; pass the .jsonl/.json/.parquet file inside it")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"`dataset` path {dataset!r} is not readable by this user; fix its permissions")
    if path.suffix.lower() not in (".jsonl", ".json", ".parquet"):
        raise ConfigError(f"`dataset` path {dataset!r} is not .jsonl, .json or .parquet; convert it to one of those")
    return str(path.resolve())


def _hub_error(exc: BaseException) -> str | None:
    """'missing' / 'gated' when the Hub answered no; None when it could not be asked (offline)."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    seen = exc
    while seen is not None:
        if isinstance(seen, GatedRepoError):
            return "gated"
        if isinstance(seen, RepositoryNotFoundError):
            return "missing"
        seen = seen.__cause__ or seen.__context__
    return None


def read_model_config(model: str):
    """The base model's ``config.json`` (no weights). None, with a warning, when the Hub is out of
    reach from here: the trials may still reach it, so that alone is no reason to stop."""
    from transformers import AutoConfig

    if _is_local(model):
        path = Path(os.path.expanduser(model))
        if not (path / "config.json").is_file():
            raise ConfigError(f"`model` folder {model!r} has no config.json; pass --model with a Hub id or a saved model folder")
        model = str(path.resolve())
    try:
        return AutoConfig.from_pretrained(model, token=os.environ.get("HF_TOKEN") or None)
    except (OSError, ValueError) as e:
        kind = _hub_error(e)
        if kind == "missing":
            raise ConfigError(f"`model` {model!r} is not a Hub model id; check the spelling (org/name) or pass a local folder") from None
        if kind == "gated":
            raise ConfigError(f"`model` {model!r} is gated; accept its license on the Hub and export HF_TOKEN") from None
        if _is_local(model):
            raise ConfigError(f"`model` folder {model!r} has an unreadable config.json: {str(e).splitlines()[0]}") from None
        log.warn(f"could not read the config of `model` {model!r} from here ({type(e).__name__}); "
              "its max length and size are not checked")
        return None


def max_positions(config) -> int | None:
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def count_parameters(config) -> int | None:
    """Parameters of the architecture, built on the meta device (no memory, ~0.5 s for 1B)."""
    import torch
    from transformers import AutoModel, AutoModelForCausalLM

    for auto in (AutoModelForCausalLM, AutoModel):
        try:
            with torch.device("meta"):
                model = auto.from_config(config)
            return sum(p.numel() for p in model.parameters())
        except (ValueError, KeyError, TypeError):
            continue
    return None


@dataclass
class Inputs:
    """What the checks learnt about the trials' inputs; feeds the dry run and ``data_report.json``."""

    model_config: object | None = None
    num_parameters: int | None = None  # counted by the dry run's estimate only (needs the config)
    data: dict | None = None  # the task's data audit (rows kept, skipped by reason, tokens)
    # Folders the storage check made (outermost first): removed again, if still empty, after a
    # dry run or a refusal, so bad input leaves nothing behind.
    created: list[str] = field(default_factory=list)

    def parameters(self) -> int | None:
        """The model's parameter count from its config (counted once, when the dry run asks)."""
        if self.num_parameters is None and self.model_config is not None:
            self.num_parameters = count_parameters(self.model_config)
        return self.num_parameters


def check_inputs(sweep) -> Inputs:
    """Paths, the model's family and limits, the pairing rules and the data, before Ray starts.

    Rewrites local paths in ``sweep.settings`` to absolute ones (trials run in other folders) and
    sets ``settings.family`` from the checkpoint's ``model_type`` when the user did not name one."""
    from trainers.families import get_family
    from trainers.tasks import get_task

    settings, options = sweep.settings, sweep.options
    task = get_task(settings.task)
    if settings.family:
        get_family(settings.family)  # a typo is refused before anything is read
    settings.dataset = check_dataset_path(settings.dataset)
    if options.resume:
        results.check_resumable(sweep)
    from lorasweep import benchmarks, mlflow_tracking

    mlflow_tracking.check(options)  # the client is installed and the store answers, before Ray
    benchmarks.check(options, task)  # lm-eval installed, its tasks known
    inputs = Inputs(created=_check_storage(options))
    try:
        _check_trial_inputs(sweep, inputs, task)
    except BaseException:
        remove_created(inputs.created)
        raise
    return inputs


def _check_trial_inputs(sweep, inputs: Inputs, task) -> None:
    from trainers.families import resolve_family

    settings = sweep.settings
    check_pairings(settings)  # cheap: before reading the model and the data
    inputs.model_config = read_model_config(settings.model)
    if _is_local(settings.model):
        settings.model = str(Path(os.path.expanduser(settings.model)).resolve())
    if inputs.model_config is None:  # only a Hub id out of reach gets here (a bad folder raised)
        log.warn("the data is not audited either (the tokenizer comes from the model)")
        return
    family = resolve_family(settings, inputs.model_config)
    task.check(settings, family)
    check_attention_support(settings, task, inputs.model_config)
    settings.family = family.name if not family.generic else ""
    limit = max_positions(inputs.model_config)
    if limit is not None and settings.max_seq_length > limit:
        raise ConfigError(f"`max_seq_length` is {settings.max_seq_length} but `model` {settings.model!r} "
                          f"takes at most {limit} "
                          f"positions; pass --max-seq-length {limit} or less")
    inputs.data, prepared = task.audit_prepared(settings)
    if not sweep.options.dry_run:
        sweep.data = shared_data(sweep, task, prepared)


def shared_data(sweep, task, prepared):
    """The audit's tokenisation, kept for the trials (trainers/shared_data.py): the examples a trial's
    budget can reach, and the packed rows of every packing value the space holds."""
    from trainers.shared_data import share

    settings, space = sweep.settings, sweep.space
    packing = space.params.get("packing")
    packings = list(getattr(packing, "values", ())) if packing is not None else [settings.packing]
    searched_budget = "max_tokens" in space.params  # the longest trial's budget: keep every example
    steps = settings.per_device_batch_size * settings.gradient_accumulation_steps * sweep.options.workers_per_trial
    try:
        return share(settings, task, prepared, packings or [settings.packing],
                     None if searched_budget else settings.max_tokens, steps)
    except (TypeError, ValueError) as e:  # a task whose examples hold more than int lists and scalars
        log.warn(f"the data is not shared with the trials ({first_line(e)}): each trial tokenises its own")
        return None


def check_attention_support(settings, task, config) -> None:
    """An ``--attn-implementation`` that the architecture's model class lacks (Gemma-2 has no sdpa in
    Transformers 5.23) is refused here, not by each trial's ``from_pretrained``."""
    wanted = settings.attn_implementation
    if wanted in ("auto", "eager"):  # eager: every architecture has it
        return
    try:
        cls = task.auto_class()._model_mapping[type(config)]
    except (KeyError, AttributeError):  # a remote-code or unmapped architecture: its load says
        return
    if not getattr(cls, {"sdpa": "_supports_sdpa", "flash_attention_2": "_supports_flash_attn"}[wanted], True):
        import transformers

        raise ConfigError(f"`attn_implementation` {wanted}: {cls.__name__} ({config.model_type}) does not have it in "
                          f"Transformers {transformers.__version__}; pass --attn-implementation eager (or auto)")


# QLoRA under ZeRO-3 needs 4-bit weights stored as the compute dtype so ZeRO can partition them
# (bnb_4bit_quant_storage) and a Trainer that gathers only the adapter on save: PEFT's
# "QLoRA + DeepSpeed ZeRO-3" guide names these releases as the first that do.
ZERO3_4BIT_MINIMUM = {"bitsandbytes": "0.43.0", "transformers": "4.39.0", "peft": "0.10.0", "accelerate": "0.28.0",
                      "deepspeed": "0.13.0"}


def zero3_4bit_unsupported(installed: dict[str, str]) -> list[str]:
    """The packages (``name version < minimum``) too old for 4-bit + ZeRO-3; [] when all fit."""
    from packaging.version import Version

    return [f"{name} {installed[name]} < {low}" for name, low in ZERO3_4BIT_MINIMUM.items()
            if name in installed and Version(installed[name]) < Version(low)]


def check_pairings(settings) -> None:
    """Pairs of settings that the installed libraries cannot train together (or not usefully)."""
    if settings.zero_stage != 3 or settings.quantization == "none":
        return
    if settings.quantization == "8bit":
        # It runs, but bitsandbytes' 8-bit forward keeps a whole int8 copy of every weight on
        # every rank (Linear8bitLt's state.CB), so ZeRO-3 partitions nothing of the base.
        raise ConfigError("`zero_stage` 3 with `quantization` 8bit saves no memory (bitsandbytes keeps the whole "
                          "int8 base on every rank); use --quantization 4bit with ZeRO-3, or --zero-stage 2")
    from importlib.metadata import PackageNotFoundError, version

    installed = {}
    for name in ZERO3_4BIT_MINIMUM:
        try:
            installed[name] = version(name)
        except PackageNotFoundError:
            pass
    too_old = zero3_4bit_unsupported(installed)
    if too_old:
        raise ConfigError(f"`zero_stage` 3 with `quantization` 4bit needs newer packages ({'; '.join(too_old)}); "
                          "upgrade them or use --zero-stage 2")


def _check_storage(options) -> list[str]:
    """A local ``--storage-path`` is checked by writing to it: the sweep folder is made here (a
    permission bit says nothing about /proc, a read-only mount or a full disk). Returns the folders
    made, outermost first, for ``remove_created``. A URI is left to its filesystem."""
    if storage.is_remote(options.storage_path):
        return []
    root = Path(options.storage_path)
    sweep_dir = root / options.name
    exists = sweep_dir.is_dir() and any(sweep_dir.iterdir())  # an empty folder holds nothing to lose
    if exists and not options.resume and not options.dry_run:
        raise ConfigError(f"sweep `--name {options.name}` already exists in {root}; pass --resume to continue it "
                          "or a new --name (nothing was changed)")
    if options.resume and not (sweep_dir / "tuner.pkl").exists():
        raise ConfigError(f"`--resume`: no sweep named {options.name!r} in {root} (no tuner.pkl); check --name and --storage-path")
    made = [str(p) for p in (sweep_dir, *sweep_dir.parents) if not os.path.lexists(p)][::-1]
    try:
        os.makedirs(sweep_dir, exist_ok=True)
        with tempfile.TemporaryFile(dir=sweep_dir, prefix=".lorasweep-probe-"):
            pass
    except OSError as e:
        remove_created(made)
        raise ConfigError(f"`--storage-path` {options.storage_path!r} is not writable ({os_reason(e)}); pick a folder "
                          "you can write") from None
    return made


def remove_created(folders: list[str]) -> None:
    """Remove the folders ``_check_storage`` made, innermost first, each only while it is empty
    (``os.rmdir`` cannot delete a file), so nothing anyone wrote there is ever removed."""
    for folder in reversed(folders):
        try:
            os.rmdir(folder)
        except FileNotFoundError:  # never made (the check failed before it)
            continue
        except OSError:  # something was written in it: it stays, and so do its parents
            return


# ----------------------------------------------------------------------------- the cluster


def worker_slots(node: dict, res) -> int:
    """How many of one trial's workers a node can hold (a worker never spans nodes; none on the head
    when the trial keeps off it: ``cluster.trial_host``)."""
    if not res.may_use(node):
        return 0
    by_cpu = int(node.get("CPU", 0) // res.cpus)
    return min(by_cpu, int(node.get("GPU", 0) // res.gpus)) if res.gpus > 0 else by_cpu


def check_cluster(options, res, cluster: dict) -> None:
    """One worker must fit on one node, and one trial on the cluster. An autoscaling cluster may
    have no GPU node up yet: ``--autoscale`` trusts it to add them."""
    need_cpu, need_gpu = res.cpus, res.gpus
    shape = f"{res.workers} worker(s) x ({need_cpu:g} CPU, {need_gpu:g} GPU)"
    if options.autoscale:
        return
    slots = sum(worker_slots(n, res) for n in cluster["nodes"])
    if not slots:
        biggest = max(cluster["nodes"], key=lambda n: (n.get("GPU", 0), n.get("CPU", 0)), default={})
        raise ConfigError(
            f"a trial needs {shape} but no node offers {need_cpu:g} CPU + {need_gpu:g} GPU (largest: "
            f"{biggest.get('CPU', 0):g} CPU, {biggest.get('GPU', 0):g} GPU); lower --gpus-per-worker/--cpus-per-worker"
            + (", or pass --autoscale if the cluster adds nodes on demand" if options.address else ""))
    if slots < res.workers:
        raise ConfigError(
            f"`--workers-per-trial` is {res.workers} but the cluster has room for {slots} worker(s) of "
            f"({need_cpu:g} CPU, {need_gpu:g} GPU); lower --workers-per-trial"
            + (", or pass --autoscale if the cluster adds nodes on demand" if options.address else ""))


def local_cluster() -> dict:
    """What a local Ray would offer, without starting one (the dry run): this machine's CPUs as Ray
    counts them (cgroup and affinity limits included), its CUDA GPUs and their type, in the shape of
    ``engine.cluster_resources``."""
    try:
        from ray._private.utils import get_num_cpus  # what ray.init() itself registers

        cpus = float(get_num_cpus())
    except Exception:  # noqa: BLE001 - a Ray without that helper: the affinity mask says the same
        cpus = float(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    gpus, accelerators = 0, []
    try:
        import torch

        if torch.cuda.is_available():
            gpus = torch.cuda.device_count()
            name = torch.cuda.get_device_name(0)
            kind = next((k for k in sorted(PEAK_TFLOPS, key=len, reverse=True) if k in name), None)
            accelerators = [f"accelerator_type:{kind}"] if kind else []
    except ImportError:
        pass
    node = {"CPU": cpus, **({"GPU": float(gpus)} if gpus else {}), **{a: 1.0 for a in accelerators}}
    return {"cpu": cpus, "gpu": float(gpus), "nodes": [node], "accelerators": accelerators}


def _missing(paths: list[str]) -> list[str]:
    return [p for p in paths if not os.path.exists(p)]


def node_label(node: dict) -> str:
    return f"{node['NodeManagerAddress']} ({node['NodeID'][:8]})"


def nodes_lacking(paths: list[str], nodes: list[dict], timeout_s: float = 120) -> dict[str, list[str]]:
    """``{node label: paths missing there}`` for the nodes (``ray.nodes()`` entries) where some of
    ``paths`` do not exist, asked by a 0-CPU task pinned to each node; {} when every node has them all."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(num_cpus=0, max_retries=0)(_missing)
    refs = {node_label(n): probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
            .remote(paths) for n in nodes}
    out = {}
    for label, ref in refs.items():
        try:
            missing = ray.get(ref, timeout=timeout_s)
        except (ray.exceptions.RayError, TimeoutError) as e:  # a node going away: the trials will not land there
            log.warn(f"could not check the local inputs on node {label} ({type(e).__name__})")
            continue
        if missing:
            out[label] = missing
    return out


def lacking_message(fields: dict[str, str], lacking: dict[str, list[str]], n_nodes: int) -> str:
    """One line: which local input is missing on which trial nodes, and the fix."""
    parts = []
    for name, path in fields.items():
        where = [label for label, missing in lacking.items() if path in missing]
        if where:
            parts.append(f"`{name}` path {path!r} is missing on {len(where)} of {n_nodes} node(s) that run trials "
                         f"({', '.join(where)})")
    return ("; ".join(parts) + ": trials there cannot read it; put it on a filesystem every node mounts at the same "
            "path, or upload it (s3://, gs:// or the Hugging Face Hub) and pass that")


def check_paths_on_nodes(sweep, res) -> None:
    """On a cluster (``--address``) of more than one node, a local ``--dataset``/``--model`` must exist
    on every node that can run a trial worker: a worker that does not find it would take the path
    for a Hub id. Nodes the autoscaler has yet to add cannot be asked: a warning says so."""
    import ray

    settings, options = sweep.settings, sweep.options
    fields = {name: path for name, path in (("dataset", settings.dataset), ("model", settings.model))
              if os.path.isabs(path)}
    if not options.address or not fields:
        return
    alive = [n for n in ray.nodes() if n.get("Alive")]
    if options.autoscale:
        log.warn(f"{' and '.join(f'`{k}` {p!r}' for k, p in fields.items())}: a local path, which the nodes --autoscale "
              "adds must see at the same path (a shared filesystem, or cluster.yaml file_mounts); or upload it "
              "(s3://, gs:// or the Hub)")
    if len(alive) < 2:
        return
    trial_nodes = [n for n in alive if worker_slots(n["Resources"], res) > 0]
    lacking = nodes_lacking(list(fields.values()), trial_nodes)
    if lacking:
        raise ConfigError(lacking_message(fields, lacking, len(trial_nodes)))
