import os
import sys
from pathlib import Path

import pytest


# The slowest files first (minutes each on 2 cores, from --durations), so that the two pytest-xdist
# workers (pyproject's addopts: --dist loadfile, a file's tests on one worker, so its module-scoped
# sweeps run once) do not end on one long file; the others keep their order. (xdist 3.8's
# loadgroup cannot group under pytest 9: it renames a node id through an attribute pytest 9 no
# longer reads.)
HEAVY_FIRST = ("test_real", "test_real_qa", "test_generation_recipes", "test_knobs", "test_cluster", "test_deepspeed",
               "test_sweepfile", "test_sweep", "test_interrupt", "test_s3", "test_dashboard", "test_families", "test_chat_recipe",
               "test_tracking", "test_report")


def pytest_configure(config):
    """The CPU tier runs with CUDA hidden (this process, xdist's workers and every sweep they start),
    so that on a GPU machine it tests what it tests here: a trial outside Ray would pick the GPU, and
    a re-score on CUDA/bf16 of what trained on CPU/fp32 differs past the tests' 1e-5. ``pytest -m
    gpu`` (bench/gpu_check.sh) runs the CUDA tests with the GPUs visible."""
    if "gpu" not in (config.option.markexpr or ""):
        os.environ["CUDA_VISIBLE_DEVICES"] = ""


def pytest_collection_modifyitems(config, items):
    """Benchmarks are run, not tested: tests marked ``bench`` run only when -m names them."""
    if "bench" not in (config.option.markexpr or ""):
        bench = [item for item in items if item.get_closest_marker("bench")]
        if bench:
            config.hook.pytest_deselected(items=bench)
            items[:] = [item for item in items if not item.get_closest_marker("bench")]

    def rank(item) -> int:
        name = item.module.__name__.rsplit(".", 1)[-1]
        return HEAVY_FIRST.index(name) if name in HEAVY_FIRST else len(HEAVY_FIRST)

    items.sort(key=rank)  # stable: the same order in every worker, as xdist requires


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the Hub is out of reach; fail fast instead of retrying
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_assets():
    """The smoke preset's offline model + FineTome-format sample (built once, cached)."""
    from lorasweep.resolve import assets_cache
    from sweeps.llama_finetome import smoke_assets

    return smoke_assets(assets_cache() / "llama_finetome")


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_assets):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_assets["model"])


# ----------------------------------------------------------------------------- the shared smoke sweep

FAKE_HF = "hf_FAKEtok3nThatMustNeverBeWritten0123456789"
FAKE_WANDB = "wandbFAKEkey0123456789abcdef0123456789abcdef01"
FAKE_MLFLOW = "mlflowFAKEtoken0123456789abcdef0123456789ab"


def _chat(*turns) -> dict:
    return {"conversations": [{"from": r, "value": v} for r, v in turns], "source": "test", "score": 5.0}


BAD_ROWS = {  # reason -> rows that must be skipped for it
    "no assistant turn": [_chat(("human", "What is 2 plus 2?"))] * 3,
    "empty text": [_chat(("human", "Hi"), ("gpt", "   "))] * 2,
    "unknown role": [_chat(("narrator", "Once"), ("gpt", "upon a time."))],
}
EMOJI_ROWS = [_chat(("human", f"Describe the emoji {e}"), ("gpt", f"{e} is {name}."))
              for e, name in [("🦊", "a fox"), ("👩🏽‍🚀", "an astronaut"), ("🇯🇵", "the flag of Japan")] * 4]
GOOD_ROWS = 900


def sweep_env(**extra) -> dict:
    """The environment of a sweep subprocess: offline Hub, and this checkout importable by Ray's
    workers (they load tests.faults through --callbacks)."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            # any free port for each sweep's dashboard: two sweeps started together on the two xdist
            # workers could both find 8265 free, and one then ran without its dashboard
            "LORASWEEP_DASHBOARD_PORT": "0",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])), **extra}


@pytest.fixture(scope="session")
def shared_sweep(tiny_assets, tmp_path_factory):
    """ONE smoke sweep of the flagship script (Optuna + ASHA on a local Ray) for every test that only
    reads what a sweep leaves behind. It carries everything those tests look for at once:

      * faults: the two seed points fail for real inside their workers (out of memory at step 2,
        a non-finite loss at step 3; tests/faults.py through --callbacks); the other trials finish;
      * bad rows (skipped and counted by reason) and emoji rows (trained) in the data;
      * W&B logging on, offline, with fake HF_TOKEN and WANDB_API_KEY in the environment.
    """
    import fcntl
    import json

    # One sweep for the whole run: under pytest-xdist both workers' sessions ask for it; the first
    # runs it under a lock in the run's shared temp folder, the other waits and reads what it left.
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent
    record = shared / "shared_sweep.json"
    with open(shared / "shared_sweep.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not record.exists():
            record.write_text(json.dumps(_run_shared_sweep(tiny_assets, tmp_path_factory)))
    info = json.loads(record.read_text())
    yield {**info, **{k: Path(info[k]) for k in ("dir", "storage", "ray_session", "data", "probe", "mlflow")}}


def _run_shared_sweep(tiny_assets, tmp_path_factory) -> dict:
    import json
    import subprocess
    import sys
    import tempfile
    import time

    good = [json.loads(line) for line in Path(tiny_assets["dataset"]).read_text(encoding="utf-8").splitlines()]
    rows = good[:GOOD_ROWS] + EMOJI_ROWS + [r for rows in BAD_ROWS.values() for r in rows]
    data = tmp_path_factory.mktemp("data") / "finetome_with_bad_rows.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    storage = tmp_path_factory.mktemp("runs")
    # A real MLflow server on loopback, its database and artifacts under the storage folder (so the
    # secret scan reads them too); stopped after the sweep, tests read what it stored.
    mlflow_dir = storage / "mlflow"
    server, mlflow_uri = mlflow_server(mlflow_dir)
    tasks = write_lm_eval_task(storage / "lm_eval_tasks")  # --lm-eval on a task of our own, offline
    cmd = [sys.executable, "sweeps/llama_finetome.py", "--preset", "smoke", "--dataset", str(data),
           "--num-samples", "5", "--max-tokens", "30000", "--grace-tokens", "8000",
           "--lm-eval", LM_EVAL_TASK, "--lm-eval-include", str(tasks), "--lm-eval-args", '{"apply_chat_template": true}',
           "--callbacks", "tests.faults:seed_faults,tests.faults:thread_timeout", "--wandb-project", "lorasweep-tests",
           "--mlflow-tracking-uri", mlflow_uri, "--mlflow-experiment", "lorasweep-tests", "--tensorboard",
           "--storage-path", str(storage), "--name", "shared"]
    # A Ray temp dir of its own (short: Unix socket paths), so the session scanned for secrets is this
    # sweep's and not whatever /tmp/ray/session_latest another Ray on the machine points to.
    ray_tmp = Path(tempfile.mkdtemp(prefix="rs", dir="/tmp"))
    probe = storage / "thread_timeout.txt"  # tests.faults:thread_timeout: what each trial's process saw
    env = sweep_env(HF_TOKEN=FAKE_HF, WANDB_API_KEY=FAKE_WANDB, WANDB_MODE="offline", RAY_TMPDIR=str(ray_tmp),
                    LORASWEEP_TEST_PROBE=str(probe), MLFLOW_TRACKING_TOKEN=FAKE_MLFLOW)
    t0 = time.time()
    try:
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    finally:
        server.terminate()
        server.wait(timeout=60)
    assert r.returncode == 0, (r.stdout[-4000:], r.stderr[-4000:])
    print(f"\n[shared_sweep] {time.time() - t0:.0f}s")
    sessions = [d for d in ray_tmp.rglob("session_2*") if d.is_dir() and not d.is_symlink()]
    assert len(sessions) == 1, sessions
    # ray_tmp stays (the other worker's tests may still read its session); it is under /tmp
    return {"dir": str(storage / "shared"), "storage": str(storage), "probe": str(probe), "stdout": r.stdout, "stderr": r.stderr,
            "wall_s": time.time() - t0, "ray_session": str(sessions[0]), "data": str(data), "mlflow": str(mlflow_dir)}


LM_EVAL_TASK = "lorasweep_capitals"


def write_lm_eval_task(folder: Path) -> Path:
    """An lm-evaluation-harness task of our own over a local file, so ``--lm-eval`` runs offline: the
    capital of each invented country of the flagship smoke sample (stand_ins' world, seed 0), four
    choices, as a multiple-choice question (lm-eval's ``acc``: the likeliest choice right)."""
    import json
    import random

    from stand_ins._words import _world

    world = _world(0)
    rng = random.Random(1)
    rows = []
    for country in sorted(world):
        choices = [world[country], *rng.sample([world[c] for c in sorted(world) if c != country], 3)]
        rng.shuffle(choices)
        # the answer as the sample's chats give it, straight after the assistant header
        rows.append({"country": country, "choices": [f"The capital of {country} is {c}." for c in choices],
                     "label": choices.index(world[country])})
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "capitals.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (folder / f"{LM_EVAL_TASK}.yaml").write_text(
        f"task: {LM_EVAL_TASK}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\noutput_type: multiple_choice\ntarget_delimiter: \"\"\n"
        'doc_to_text: "What is the capital of {{country}}?"\ndoc_to_choice: "{{choices}}"\n'
        'doc_to_target: "{{label}}"\nmetric_list:\n  - metric: acc\n    aggregation: mean\n'
        "    higher_is_better: true\n", encoding="utf-8")
    return folder


def mlflow_server(folder: Path):
    """``(process, uri)``: ``mlflow server`` on a free loopback port, its SQLite database and proxied
    artifacts in ``folder``, once its /health answers."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    folder.mkdir(parents=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(folder.parent / "mlflow_server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--workers", "1", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
                             "--artifacts-destination", str(folder / "artifacts")],
                            stdout=log, stderr=subprocess.STDOUT,
                            # no job runner (seven huey workers, ~1.6 GB): the tracking API is what is tested
                            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(uri + "/health", timeout=5) as answer:
                if answer.status == 200:
                    return proc, uri
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise RuntimeError(f"mlflow server did not start: {(folder.parent / 'mlflow_server.log').read_text()[-2000:]}")
        time.sleep(0.5)
