"""Bad input ends with one line naming the field, exit status 2, before Ray starts."""

import json
import subprocess
import sys

import pytest

from sweeps.engine import resolve
from sweeps.llama_finetome import RECIPE
from trainers.errors import ConfigError

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "sweeps/llama_finetome.py", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env=env)


@pytest.fixture()
def bad_dataset(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps({"instruction": "x", "output": "y"}) + "\n")
    return p


@pytest.mark.parametrize("args,needle", [
    (["--preset", "huge"], "`--preset` is 'huge'"),
    (["--space", "learning_rate=1e-3:1e-5"], "low 0.001 > high 1e-05"),
    (["--space", "r=0,8"], "`r` is 0"),
    (["--space", "r=-8"], "`r` is -8"),
    (["--dataset", "/nonexistent/chats.jsonl"], "`dataset` path '/nonexistent/chats.jsonl' does not exist"),
    (["--quantization", "3bit"], "`quantization` is '3bit'"),
    (["--zero-stage", "5"], "`zero_stage` is 5"),
    (["--eval-fraction", "1.5"], "`eval_fraction` is 1.5"),
    (["--max-tokens", "0"], "`max_tokens` is 0"),
    (["--scheduler", "pbt"], "`--scheduler` is 'pbt'"),
    (["--num-samples", "0"], "`--num-samples` is 0"),
    (["--model", "./no-such-model"], "`model` folder './no-such-model' has no config.json"),
])
def test_bad_input_is_one_clear_line(args, needle, tmp_path):
    r = run_cli("--preset", "smoke", "--storage-path", str(tmp_path), *args)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], r.stderr[-2000:]
    assert "Started a local Ray instance" not in r.stdout + r.stderr
    assert not any(tmp_path.iterdir())  # nothing written


def test_dataset_without_conversations_names_the_column(bad_dataset, tmp_path):
    r = run_cli("--preset", "smoke", "--storage-path", str(tmp_path / "s"), "--dataset", str(bad_dataset))
    assert r.returncode == 2
    assert "needs `conversations`" in r.stderr and "['instruction', 'output']" in r.stderr


def test_resolve_layers_recipe_preset_and_flags():
    sweep = resolve(RECIPE, ["--preset", "smoke", "--max-tokens", "1234", "--space", "r=8,16", "--no-gradient-checkpointing",
                             "--storage-path", "/tmp/x"])
    assert sweep.settings.max_tokens == 1234  # flag beats preset
    assert sweep.settings.max_seq_length == 256  # preset beats recipe
    assert sweep.settings.family == "llama" and sweep.settings.quantization == "4bit"  # recipe
    assert sweep.options.num_samples == 6 and sweep.options.name == "llama_finetome-smoke"
    assert sweep.space.params["r"].values == (8, 16)
    assert [s["r"] for s in sweep.space.seeds] == [16, 8]
    real = resolve(RECIPE, ["--storage-path", "/tmp/x"])
    assert real.settings.model == "unsloth/Llama-3.2-1B-Instruct" and real.settings.dataset == "mlabonne/FineTome-100k"
    assert real.settings.zero_stage == 2 and real.options.num_samples == 16


def test_existing_sweep_is_never_overwritten(tmp_path):
    (tmp_path / "llama_finetome-smoke").mkdir()
    (tmp_path / "llama_finetome-smoke" / "leaderboard.csv").write_text("keep me")
    r = run_cli("--preset", "smoke", "--storage-path", str(tmp_path))
    assert r.returncode == 2 and "already exists" in r.stderr and "--resume" in r.stderr
    assert (tmp_path / "llama_finetome-smoke" / "leaderboard.csv").read_text() == "keep me"


def test_dry_run_prints_the_resolved_config_and_exits_0(tmp_path):
    r = run_cli("--preset", "smoke", "--storage-path", str(tmp_path), "--dry-run")
    assert r.returncode == 0, r.stderr[-2000:]
    assert '"max_tokens": 60000' in r.stdout and "learning_rate: log-uniform[1e-05, 0.002]" in r.stdout
    assert "trial(s) at once on this cluster" in r.stdout


def test_help_lists_presets_and_knobs():
    r = run_cli("--help")
    assert r.returncode == 0 and "smoke (" in r.stdout and "--zero-stage" in r.stdout and "--space" in r.stdout


def test_unknown_family_is_a_config_error():
    from trainers.registry import get_family

    with pytest.raises(ConfigError, match="known families: llama"):
        get_family("gpt5")
