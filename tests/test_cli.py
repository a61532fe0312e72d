"""Bad input ends with one line naming the field, exit status 2, before Ray starts."""

import json
import subprocess
import sys

import pytest

from lorasweep.resolve import resolve
from sweeps.llama_finetome import RECIPE
from common.errors import ConfigError

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "sweeps/llama_finetome.py", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env=env)


def run_main(capsys, *args, recipe=RECIPE):
    """The CLI in-process (same code path as the script; seconds instead of a fresh interpreter)."""
    import ray

    from lorasweep.engine import main

    rc = main(recipe, list(args))
    out = capsys.readouterr()
    assert not ray.is_initialized(), "a bad input must be refused before Ray starts"
    return rc, out.out, out.err


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def chat(*turns):
    return {"conversations": [{"from": r, "value": v} for r, v in turns]}


@pytest.fixture()
def bad_inputs(tmp_path):
    """Files that are each wrong in one way."""
    d = tmp_path / "inputs"
    d.mkdir()
    write_jsonl(d / "no_conversations.jsonl", [{"prompt": "x", "completion": "y"}])
    (d / "not_json.jsonl").write_text("this is not json\n")
    write_jsonl(d / "unusable.jsonl", [chat(("human", "hi")), chat(("human", "hi"), ("gpt", " ")),
                                        chat(("robot", "hi"), ("gpt", "yo"))] * 5)
    (d / "notes.txt").write_text("hello")
    (d / "folder.jsonl").mkdir()
    return d


BAD_INPUTS = [
    (["--preset", "huge"], "`--preset` is 'huge'"),
    (["--space", "learning_rate=1e-3:1e-5"], "low 0.001 > high 1e-05"),
    (["--space", "r=0,8"], "`r` is 0"),
    (["--space", "r=-8"], "`r` is -8"),
    (["--space", "lora_alpha=0"], "`lora_alpha` is 0"),
    (["--space", "learning_rate=0:1e-3"], "`learning_rate` is 0"),
    (["--space", "warmup_ratio=0:1"], "`warmup_ratio` is 1"),
    (["--space", "r="], "no choices"),
    (["--dataset", "/nonexistent/chats.jsonl"], "`dataset` path '/nonexistent/chats.jsonl' does not exist"),
    (["--dataset", "{d}/folder.jsonl"], "is a folder"),
    (["--dataset", "{d}/notes.txt"], "is not .jsonl, .json or .parquet"),
    (["--dataset", "{d}/not_json.jsonl"], "could not be read as .jsonl"),
    (["--dataset", "{d}/unusable.jsonl"], "no usable training rows"),
    (["--quantization", "3bit"], "`quantization` is '3bit'"),
    (["--zero-stage", "5"], "`zero_stage` is 5"),
    (["--zero-stage", "3", "--quantization", "8bit"], "`zero_stage` 3 with `quantization` 8bit saves no memory"),
    (["--max-seq-length", "4096"], "`max_seq_length` is 4096 but `model`"),
    (["--eval-fraction", "1.5"], "`eval_fraction` is 1.5"),
    (["--max-tokens", "0"], "`max_tokens` is 0"),
    (["--max-tokens", "5000", "--grace-tokens", "5000"], "`--grace-tokens` is 5,000, not below max_tokens"),
    (["--scheduler", "pbt"], "`--scheduler` is 'pbt'"),
    (["--num-samples", "0"], "`--num-samples` is 0"),
    (["--model", "./no-such-model"], "`model` folder './no-such-model' has no config.json"),
    (["--storage-path", "/etc/passwd/runs"], "`--storage-path` '/etc/passwd/runs' is not writable"),
    (["--storage-path", "/proc/nosuch"], "`--storage-path` '/proc/nosuch' is not writable (FileNotFoundError"),
    (["--resume"], "`--resume`: no sweep named 'llama_finetome-smoke'"),
    (["--objective", "accuracy"], "`--objective` is 'accuracy'; task `chat_sft` reports: eval_loss, device_hours"),
    (["--task", "nosuch"], "`task` is 'nosuch'; known tasks: chat_sft, classification, extractive_qa, instruct_classification, instruction_sft, preference, summarization"),
    (["--method", "full"], "`method` full trains every weight, which a 4bit base cannot hold"),
    (["--shots", "0,-1"], "`--shots` is 0,-1"),
    (["--family", "gpt5"], "`family` is 'gpt5'; known families:"),
    # a worker trains on one device: the second GPU idled; DeepSpeed's offload without ZeRO did nothing
    (["--gpus-per-worker", "2"], "`--gpus-per-worker` is 2, but a worker trains on one GPU and the others would idle"),
    (["--offload", "--zero-stage", "0"], "`offload` is on but `zero_stage` is 0 (no DeepSpeed), which offloads nothing"),
    (["--attn-implementation", "flash_attention_2"], "`attn_implementation` flash_attention_2 runs on CUDA GPUs only and `--gpus-per-worker` is 0"),
    (["--attn-implementation", "flash_attention_2", "--precision", "fp32"], "flash_attention_2 runs in bf16 or fp16, not `precision` fp32"),
    (["--attn-implementation", "flash"], "`attn_implementation` is 'flash'; choose auto, sdpa, flash_attention_2, eager"),
]


@pytest.mark.parametrize("args,needle", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_is_one_clear_line_before_ray_starts(args, needle, bad_inputs, tmp_path, capsys):
    storage = tmp_path / "runs"
    args = [a.format(d=bad_inputs) for a in args]
    if "--storage-path" not in args:
        args += ["--storage-path", str(storage)]
    rc, out, err = run_main(capsys, "--preset", "smoke", *args)
    assert rc == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err
    assert not storage.exists()  # nothing written


def test_every_problem_of_the_flags_is_a_line_of_its_own_in_one_run(tmp_path, capsys):
    """A user fixes them all at once: the options' and the settings' problems together, then those of
    the objective and the space (which need valid settings to be checked)."""
    rc, _, err = run_main(capsys, "--preset", "smoke", "--storage-path", str(tmp_path / "runs"),
                          "--num-samples", "0", "--eval-fraction", "2", "--learning-rate", "3")
    assert rc == 2 and err.strip().splitlines() == [
        "error: `--num-samples` is 0; it must be at least 1",
        "error: `eval_fraction` is 2.0; it must be in (0, 1), e.g. 0.02",
        "error: `learning_rate` is 3.0; it must be in (0, 1]"], err
    rc, _, err = run_main(capsys, "--preset", "smoke", "--storage-path", str(tmp_path / "runs"),
                          "--objective", "nosuch", "--prune-metric", "bad", "--space", "lora_dropout=0:1.5")
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 3 and all(line.startswith("error: ") for line in lines), err
    assert "`lora_dropout` is 1.5" in lines[0] and "`--objective` is 'nosuch'" in lines[1] and "`--prune-metric`" in lines[2]
    assert not (tmp_path / "runs").exists()


def test_the_script_exits_2_with_one_line(tmp_path):
    r = run_cli("--preset", "smoke", "--storage-path", str(tmp_path), "--space", "r=0")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: search space `r`: `r` is 0; allowed range is [1, 4096]"], r.stderr
    assert "Started a local Ray instance" not in r.stdout + r.stderr and not any(tmp_path.iterdir())


def test_dataset_without_conversations_names_the_column_and_schema(bad_inputs, tmp_path, capsys):
    rc, _, err = run_main(capsys, "--preset", "smoke", "--storage-path", str(tmp_path / "s"),
                          "--dataset", str(bad_inputs / "no_conversations.jsonl"))
    assert rc == 2
    assert "needs `conversations`" in err and "['completion', 'prompt']" in err and '"from": "human"' in err
    assert "`instruction`" in err  # the Alpaca schema is named too


def test_no_usable_rows_counts_each_reason(bad_inputs, tmp_path, capsys):
    rc, _, err = run_main(capsys, "--preset", "smoke", "--storage-path", str(tmp_path / "s"),
                          "--dataset", str(bad_inputs / "unusable.jsonl"))
    assert rc == 2
    for reason in ("'no assistant turn'", "'empty text'", "'unknown role'"):
        assert reason in err, err


def test_resolve_layers_recipe_preset_and_flags():
    sweep = resolve(RECIPE, ["--preset", "smoke", "--max-tokens", "1234", "--space", "r=8,16", "--no-gradient-checkpointing",
                             "--storage-path", "/tmp/x"])
    assert sweep.settings.max_tokens == 1234  # flag beats preset
    assert sweep.settings.max_seq_length == 256  # preset beats recipe
    assert sweep.settings.task == "chat_sft" and sweep.settings.quantization == "4bit"  # recipe
    assert sweep.options.num_samples == 6 and sweep.options.name == "llama_finetome-smoke"
    assert sweep.space.params["r"].values == (8, 16)
    assert [s["r"] for s in sweep.space.known_points] == [16, 8]
    real = resolve(RECIPE, ["--storage-path", "/tmp/x"])
    assert real.settings.model == "unsloth/Llama-3.2-1B-Instruct" and real.settings.dataset == "mlabonne/FineTome-100k"
    assert real.settings.zero_stage == 2 and real.options.num_samples == 16


def test_existing_sweep_is_never_overwritten(tmp_path):
    (tmp_path / "llama_finetome-smoke").mkdir()
    (tmp_path / "llama_finetome-smoke" / "leaderboard.csv").write_text("keep me")
    r = run_cli("--preset", "smoke", "--storage-path", str(tmp_path))
    assert r.returncode == 2 and "already exists" in r.stderr and "--resume" in r.stderr
    assert (tmp_path / "llama_finetome-smoke" / "leaderboard.csv").read_text() == "keep me"


def test_resume_of_a_sweep_another_version_started_is_one_line_and_changes_nothing(tmp_path):
    """Its trials' settings have other fields (Tune's restore would refuse it after Ray started, in a
    traceback: the QA benchmark's random arm, resumed after an upgrade)."""
    import json

    sweep_dir = tmp_path / "llama_finetome-smoke"
    sweep_dir.mkdir()
    settings = resolve(RECIPE, ["--preset", "smoke", "--storage-path", str(tmp_path)]).settings.to_dict()
    settings.pop("attn_implementation")
    settings["old_knob"] = 1
    config = json.dumps({"settings": settings})
    (sweep_dir / "sweep_config.json").write_text(config)
    (sweep_dir / "tuner.pkl").write_bytes(b"kept")
    r = run_cli("--preset", "smoke", "--storage-path", str(tmp_path), "--resume")
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1] == (
        "error: `--resume`: sweep 'llama_finetome-smoke' was started by another lorasweep version: its trial settings "
        "differ (this version adds attn_implementation; has no old_knob); resume it with the lorasweep that started "
        "it, or start a new --name (nothing was changed)")
    assert sorted(p.name for p in sweep_dir.iterdir()) == ["sweep_config.json", "tuner.pkl"]
    assert (sweep_dir / "sweep_config.json").read_text() == config and (sweep_dir / "tuner.pkl").read_bytes() == b"kept"


def test_dry_run_answers_without_ray_summary_first_config_only_when_verbose(tmp_path):
    r = run_cli("--preset", "smoke", "--storage-path", str(tmp_path), "--dry-run")
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.splitlines()
    assert lines[0].startswith("dry run of llama_finetome (preset smoke) on this machine, Ray not started")
    assert "learning_rate: log-uniform[1e-05, 0.002]" in r.stdout
    assert "1 worker(s) x (1 CPU, 0 GPU); 2 trial(s) at once on this machine" in r.stdout
    assert sum("data: 1200 rows -> 1104 train + 96 eval examples" in line for line in lines) == 1  # said once
    assert "6 trials x 60,000 training tokens" in r.stdout and "GPU-hours: none" in r.stdout
    assert "4-bit QLoRA (bitsandbytes NF4, double quant) on the CPU" in r.stdout
    assert "wall time on this machine: ~" in r.stdout and "(probe: 3 steps each, unpacked " in r.stdout
    assert '"max_tokens"' not in r.stdout  # the full config only with --verbose
    assert "Ray dashboard" not in r.stdout + r.stderr and "Started a local Ray" not in r.stdout + r.stderr
    assert not any(tmp_path.iterdir())  # a dry run writes nothing
    verbose = run_cli("--preset", "smoke", "--storage-path", str(tmp_path), "--dry-run", "--verbose")
    assert verbose.returncode == 0 and '"max_tokens": 60000' in verbose.stdout
    assert verbose.stdout.index("budget:") < verbose.stdout.index('"max_tokens": 60000')  # summary first


def test_help_lists_presets_and_knobs():
    r = run_cli("--help")
    assert r.returncode == 0 and "smoke (" in r.stdout and "--zero-stage" in r.stdout and "--space" in r.stdout


def test_unknown_family_is_a_config_error():
    from trainers.families import get_family

    with pytest.raises(ConfigError, match="known families: bert, distilbert, gemma"):
        get_family("gpt5")


def test_zero3_with_4bit_is_checked_against_the_installed_versions():
    from lorasweep.preflight import check_pairings, zero3_4bit_unsupported
    from trainers.config import TrainSettings

    # what is installed here trains 4-bit + ZeRO-3 (tests/test_deepspeed.py covers ZeRO-2; the
    # ZeRO-3 pairs were run the same way: adapters complete and reloading to their eval loss)
    check_pairings(TrainSettings(model="m", dataset="d", quantization="4bit", zero_stage=3))
    assert zero3_4bit_unsupported({"bitsandbytes": "0.42.0", "peft": "0.21.0", "transformers": "5.23.0"}) == [
        "bitsandbytes 0.42.0 < 0.43.0"]


@pytest.mark.parametrize("where,change,needle", [
    ("settings", {"max_token": 5}, "recipe 'llama_finetome' settings: unknown key 'max_token'; did you mean `max_tokens`?"),
    ("preset_sweep", {"num_sample": 5}, "preset 'smoke' sweep: unknown key 'num_sample'; did you mean `num_samples`?"),
    ("preset_settings", {"lora_rank": 5}, "preset 'smoke' settings: unknown key 'lora_rank'"),
])
def test_a_typo_in_a_recipe_is_one_line_not_a_silent_drop(where, change, needle, tmp_path, capsys):
    import dataclasses

    smoke = RECIPE.presets["smoke"]
    if where == "settings":
        recipe = dataclasses.replace(RECIPE, settings={**RECIPE.settings, **change})
    else:
        key = where.split("_")[1]
        preset = dataclasses.replace(smoke, **{key: {**getattr(smoke, key), **change}})
        recipe = dataclasses.replace(RECIPE, presets={**RECIPE.presets, "smoke": preset})
    rc, out, err = run_main(capsys, "--preset", "smoke", "--storage-path", str(tmp_path / "runs"), recipe=recipe)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: recipe 'llama_finetome'") and needle in lines[0], err


def test_a_checkpoint_of_the_wrong_kind_is_refused_before_ray(tmp_path, capsys):
    """An encoder on the chat recipe: one line naming the family, its kind and the task."""
    from lorasweep.resolve import assets_cache
    from sweeps.distilbert_imdb import smoke_assets

    encoder = smoke_assets(assets_cache() / "distilbert_imdb")["model"]
    capsys.readouterr()  # building the tiny encoder (first run) may warn; the sweep's own stderr is checked
    rc, out, err = run_main(capsys, "--preset", "smoke", "--model", str(encoder), "--storage-path", str(tmp_path / "r"))
    assert rc == 2, err
    assert err.strip().splitlines() == [
        f"error: `model` {str(encoder)!r} is an encoder (distilbert); task `chat_sft` trains decoder models; "
        "pass --model with a checkpoint of that kind"], err
