"""Sweep files and the `lorasweep` command: a YAML file holds what the flags hold, validated into the
same config with the same one-line errors (plus file:line); the written sweep.yaml reruns a sweep;
--help shows every default and choice; the installed command dispatches to the same driver."""

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lorasweep import sweepfile
from lorasweep.engine import main
from lorasweep.resolve import resolve
from lorasweep.flags import build_parser
from sweeps.chat_sft import RECIPE as CHAT
from sweeps.llama_finetome import RECIPE as FLAGSHIP

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_llama():
    return resolve(FLAGSHIP, ["--preset", "smoke"]).settings.model


def run_main(capsys, recipe, *args):
    import ray

    rc = main(recipe, list(args))
    out = capsys.readouterr()
    assert not ray.is_initialized()
    return rc, out.out, out.err


def write(tmp_path, text, name="sweep.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# ----------------------------------------------------------------------------- valid files


def test_the_example_files_resolve_to_what_they_say():
    flagship = resolve(FLAGSHIP, ["--config", str(ROOT / "examples/llama_finetome.yaml")])
    assert flagship.preset == "real" and flagship.options.num_samples == 16 and flagship.options.max_concurrent == 8
    assert flagship.options.grace_tokens == 250_000 and flagship.settings.max_tokens == 2_000_000
    assert flagship.settings.model == "unsloth/Llama-3.2-1B-Instruct" and flagship.settings.quantization == "4bit"
    assert flagship.space.describe()[-1] == "learning_rate: log-uniform[1e-05, 0.002]"
    own = resolve(CHAT, ["--config", str(ROOT / "examples/own_chats.yaml")])
    assert own.settings.model == "HuggingFaceTB/SmolLM2-360M-Instruct" and own.settings.quantization == "none"
    assert own.settings.dataset.endswith("examples/data/support_chats.jsonl") and own.options.num_samples == 6
    assert own.options.name == "chat_sft-support_chats"  # named after the data, not after a dataset it never used
    assert own.space.describe()[:2] == ["r: {8, 16, 32}", "lora_alpha: {16, 32}"]


def test_flags_override_the_file_and_file_overrides_the_preset(tmp_path):
    path = write(tmp_path, "recipe: llama_finetome\npreset: smoke\nnum_samples: 3\nsweep:\n  max_concurrent: 1\n"
                           "train:\n  max_tokens: 30_000\n  seed: 7\n  learning_rate: 1e-4\nspace:\n  r: [8, 16]\n")
    s = resolve(FLAGSHIP, ["--config", path, "--num-samples", "5", "--space", "r=32"])
    assert s.options.num_samples == 5 and s.options.max_concurrent == 1  # flag > file > preset (2)
    assert s.settings.max_tokens == 30_000 and s.settings.seed == 7  # train.seed is the data seed
    assert s.settings.learning_rate == 1e-4  # YAML reads 1e-4 as text: a float field takes it
    assert s.space.describe()[0] == "r: {32}"  # the command line's --space comes after the file's


def test_the_generic_recipe_needs_a_model_and_data_and_is_named_after_the_data(tmp_path, capsys, tiny_llama):
    rc, _, err = run_main(capsys, CHAT, "--dataset", str(ROOT / "examples/data/support_chats.jsonl"),
                          "--storage-path", str(tmp_path))
    assert rc == 2 and err.strip().splitlines() == [
        "error: `--model` is unset: recipe 'chat_sft' takes any; pass --model (a Hub id or a local folder), "
        "or --preset smoke to try it offline"]
    s = resolve(CHAT, ["--model", tiny_llama, "--dataset", "hf-org/my_chats-v2", "--preset", "smoke"])
    assert s.options.name == "chat_sft-my_chats-v2-smoke" and s.settings.model == tiny_llama
    assert s.from_assets == frozenset()  # both given: the preset builds nothing


# ----------------------------------------------------------------------------- invalid files

BAD_FILES = [
    ("recipe: llama_finetome\nsweep:\n  num_samples: 3\n   max_concurrent: 2\n", "sweep.yaml:4:18: not valid YAML"),
    ("recipe: llama_finetome\n- r\n", "sweep.yaml:2:1: not valid YAML"),
    ("- recipe\n", "sweep.yaml:1: a sweep file is a mapping of keys"),
    ("preset: smoke\nnum_sampels: 3\n", "sweep.yaml:2: `num_sampels` is not a sweep-file key; did you mean `num_samples`?"),
    ("preset: smoke\ntrain:\n  num_samples: 3\n", "sweep.yaml:3: `train.num_samples` is not a trial setting; it belongs under `sweep:`"),
    ("preset: smoke\nsweep:\n  max_tokens: 3\n", "sweep.yaml:3: `sweep.max_tokens` is not a sweep setting; it belongs under `train:`"),
    ("preset: smoke\ntrain:\n  max_tokens: lots\n", "sweep.yaml:3: `train.max_tokens` is 'lots'; give a whole number"),
    ("preset: smoke\npacking: maybe\n", "sweep.yaml:2: `packing` is 'maybe'; give true or false"),
    ("preset: smoke\nlearning_rate: fast\n", "sweep.yaml:2: `learning_rate` is 'fast'; give a number"),
    ("preset: smoke\nlora_config: [1]\n", "sweep.yaml:2: `lora_config` is [1]; give a mapping"),
    ("preset: smoke\nshots: [true]\n", "sweep.yaml:2: `shots` is [True]; give a list of int"),
    ("preset: smoke\nshots: [a]\n", "sweep.yaml:2: `shots` is ['a']; give a list of int"),
    ("preset: smoke\nnum_samples: 3\nsweep:\n  num_samples: 4\n", "sweep.yaml:4: `num_samples` is given twice (also at line 2)"),
    ("preset: smoke\npreset: real\n", "sweep.yaml:2: `preset` is given twice in the file (first at line 1)"),
    # semantic errors come from the same checks as the flags', located in the file
    ("preset: smoke\nsweep:\n  num_samples: 0\n", "sweep.yaml:3: `--num-samples` is 0; it must be at least 1"),
    ("preset: smoke\nsearcher: tpee\n", "sweep.yaml:2: `--searcher` is 'tpee'; choose tpe, random, grid, cmaes, gp"),
    ("preset: huge\n", "sweep.yaml:1: `--preset` is 'huge'; choose one of: real, smoke"),
    ("preset: smoke\nspace:\n  lr: [1]\n", "sweep.yaml:3: `--space lr=1`"),
    ("preset: smoke\nspace:\n  r: [0, 8]\n", "sweep.yaml:3: search space `r`: `r` is 0"),
    ("preset: smoke\nspace:\n  learning_rate: {loguniform: [1.0e-3, 1.0e-5]}\n", "sweep.yaml:3: search space `learning_rate`"),
    ("preset: smoke\nspace:\n  r: []\n", "sweep.yaml:3: `space.r` has no choices"),
    ("preset: smoke\nquantization: 3bit\n", "sweep.yaml:2: `quantization` is '3bit'"),
    ("preset: smoke\nmax_seq_length: 4096\n", "sweep.yaml:2: `max_seq_length` is 4096 but `model`"),
    ("preset: smoke\ndataset: /nonexistent/chats.jsonl\n", "sweep.yaml:2: `dataset` path '/nonexistent/chats.jsonl' does not exist"),
    ("recipe: distilbert_imdb\n", "sweep.yaml:1: the file's recipe is 'distilbert_imdb' but this runs 'llama_finetome'"),
]


@pytest.mark.parametrize("text,needle", BAD_FILES, ids=[n.split(": ", 1)[1][:40] for _, n in BAD_FILES])
def test_a_bad_sweep_file_is_one_line_with_file_and_line_before_ray(text, needle, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the messages name the file as given: sweep.yaml
    write(tmp_path, text)
    rc, out, err = run_main(capsys, FLAGSHIP, "--config", "sweep.yaml", "--storage-path", str(tmp_path / "runs"))
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err
    assert not (tmp_path / "runs").exists()  # nothing written


def test_an_error_about_a_flag_given_is_not_blamed_on_the_file(tmp_path, capsys):
    path = write(tmp_path, "preset: smoke\nnum_samples: 3\n")
    rc, _, err = run_main(capsys, FLAGSHIP, "--config", path, "--num-samples", "0", "--storage-path", str(tmp_path / "r"))
    assert rc == 2 and err.strip() == "error: `--num-samples` is 0; it must be at least 1"
    path = write(tmp_path, "preset: smoke\nspace:\n  r: [8, 16]\n", name="space.yaml")
    rc, _, err = run_main(capsys, FLAGSHIP, "--config", path, "--space", "r=0", "--storage-path", str(tmp_path / "r"))
    assert rc == 2 and err.startswith("error: search space `r`: `r` is 0"), err  # the flag's knob, not the file's


def test_a_missing_file_and_a_malformed_json_flag_are_one_line(tmp_path, capsys):
    rc, _, err = run_main(capsys, FLAGSHIP, "--config", str(tmp_path / "nope.yaml"))
    assert rc == 2 and err.count("\n") == 1 and "`--config`" in err and "FileNotFoundError" in err
    rc, _, err = run_main(capsys, FLAGSHIP, "--preset", "smoke", "--lora-config", "{bad")
    assert rc == 2 and err.count("\n") == 1 and err.startswith("error: `--lora-config` is not JSON"), err
    rc, _, err = run_main(capsys, FLAGSHIP, "--preset", "smoke", "--max-tokens", "many")
    assert rc == 2 and err == "error: `--max-tokens` is 'many', not an int\n"
    rc, _, err = run_main(capsys, FLAGSHIP, "--preset", "smoke", "--no-such-flag")
    assert rc == 2 and err == "error: unrecognized arguments: --no-such-flag; see --help\n"


# ----------------------------------------------------------------------------- round trip


def _same(a, b):
    da, db = a.summary(), b.summary()
    assert da == db
    assert (a.preset, a.from_assets) == (b.preset, b.from_assets)


@pytest.mark.parametrize("argv", [
    ["--preset", "smoke"],
    ["--preset", "smoke", "--alpha-mode", "ratio", "--lr-scaling", "sqrt", "--num-samples", "3", "--seed", "5",
     "--space", "use_dora=true,false", "--space", "target_modules=all-linear,q_proj+v_proj",
     "--space", "learning_rate=1e-4:1e-3", "--space", "warmup_ratio=uniform:0:0.05", "--data-seed", "11",
     "--training-args", '{"adam_beta2": 0.95}', "--shots", "0,1", "--objective", "eval_loss,device_hours",
     "--name", "rt", "--wandb-project", "p"],
], ids=["smoke", "every-kind-of-value"])
def test_the_written_sweep_file_resolves_to_the_same_sweep(argv, tmp_path):
    first = resolve(FLAGSHIP, [*argv, "--storage-path", str(tmp_path)])
    text = sweepfile.dump(first)
    yaml.safe_load(text)  # valid YAML
    assert "# model:" in text and "(built offline by the smoke preset" in text  # rebuilt, not pinned
    path = write(tmp_path, text)
    again = resolve(FLAGSHIP, ["--config", path])
    _same(first, again)


def test_a_file_recipe_round_trips_by_its_path(tmp_path):
    recipe_file = tmp_path / "my_recipe.py"
    recipe_file.write_text((ROOT / "sweeps/llama_finetome.py").read_text().replace('name="llama_finetome"', 'name="mine"'))
    from lorasweep.recipes import load

    mine = load(str(recipe_file))
    first = resolve(mine, ["--preset", "smoke", "--storage-path", str(tmp_path)], recipe_ref=str(recipe_file))
    path = write(tmp_path, sweepfile.dump(first))
    assert yaml.safe_load(Path(path).read_text())["recipe"] == str(recipe_file)
    _same(first, resolve(load(str(recipe_file)), ["--config", path], recipe_ref=str(recipe_file)))


# ----------------------------------------------------------------------------- --help


def test_help_shows_every_default_and_every_choice():
    parser = build_parser(FLAGSHIP)
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert "[default:" in (action.help or ""), f"{action.option_strings} shows no default"
    text = parser.format_help()
    assert "--num-samples N       trials, the seed points included [default: 16 (smoke\n                        preset: 6)]" in text
    assert "[default: 8 (smoke preset:\n                        2)]" in text or "[default: 8 (smoke preset: 2)]" in " ".join(text.split())
    flat = " ".join(text.split())
    for needle in ("--searcher {tpe,random,grid,cmaes,gp}", "--scheduler {asha,none}", "--placement {pack,spread}",
                   "--quantization {4bit,8bit,none}", "--zero-stage {0,1,2,3}", "--lr-scaling {none,sqrt,linear}",
                   "--preset {real,smoke}", "--cpus-per-worker X CPUs each worker asks Ray for [default: 1]",
                   "[default: unsloth/Llama-3.2-1B-Instruct (smoke preset: built offline by the preset)]"):
        assert needle in flat, needle
    assert "chat_sft" in flat.split("--task {", 1)[1].split("}", 1)[0]  # registry choices filled in
    assert text.count("Llama-3.2-1B-Instruct x FineTome-100k") == 1  # the description once


# ----------------------------------------------------------------------------- the installed command

LORASWEEP = shutil.which("lorasweep") or str(Path(sys.executable).parent / "lorasweep")


def cmd(*args, cwd=ROOT):
    return subprocess.run([LORASWEEP, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_the_installed_command_lists_recipes_and_dispatches(tmp_path):
    r = cmd("recipes")
    assert r.returncode == 0, r.stderr
    from lorasweep.recipes import names

    listed = [line.split()[0] for line in r.stdout.strip().splitlines()[:-2]]
    assert listed == names() and {"llama_finetome", "chat_sft", "flan_t5_dialogsum"} <= set(listed)
    assert cmd("--help").returncode == 0 and "dry-run" in cmd("--help").stdout
    bad = cmd("rnu")
    assert bad.returncode == 2 and bad.stderr == ("error: `rnu` is not a lorasweep command; did you mean 'run'? "
                                                  "choose recipes, run, dry-run, report, export (lorasweep --help)\n")
    bad = cmd("run", "llama_finetom")
    assert bad.returncode == 2 and "did you mean 'llama_finetome'?" in bad.stderr and bad.stderr.count("\n") == 1
    h = cmd("run", "llama_finetome", "--help")
    assert h.returncode == 0 and h.stdout.startswith("usage: lorasweep run llama_finetome [--preset NAME]")
    assert cmd("report", str(tmp_path)).returncode == 2 and cmd("export", "--help").stdout.startswith("usage: lorasweep export")


def test_dry_run_of_a_sweep_file_through_the_command(tmp_path, tiny_llama):
    r = cmd("dry-run", "--config", "examples/own_chats.yaml", "--model", tiny_llama, "--storage-path", str(tmp_path))
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("dry run of chat_sft (preset real) on this machine, Ray not started")
    assert f"sweep: chat_sft-support_chats -> {tmp_path}/chat_sft-support_chats; 6 trials" in r.stdout
    assert "data: 400 rows -> 360 train + 40 eval examples" in r.stdout and not any(tmp_path.iterdir())


# ----------------------------------------------------------------------------- slow: real sweeps


@pytest.mark.slow
def test_the_shared_sweeps_own_sweep_yaml_reruns_it(shared_sweep, tmp_path):
    """The sweep.yaml a real sweep wrote is a sweep file that resolves to the same config it recorded
    (sweep_config.json), and the command takes it (a dry run under another name)."""
    path = shared_sweep["dir"] / "sweep.yaml"
    recorded = json.loads((shared_sweep["dir"] / "sweep_config.json").read_text())
    # "shared" exists: refused. The MLflow server the shared sweep logged to has stopped: no MLflow here.
    again = resolve(FLAGSHIP, ["--config", str(path), "--name", "shared-check", "--mlflow-tracking-uri", ""])
    from lorasweep.preflight import check_inputs, remove_created

    # what the sweep did before recording: absolute paths, the family found
    remove_created(check_inputs(again).created)
    summary = json.loads(json.dumps(again.summary(), default=str))
    for key in ("settings", "space", "search_space", "seeds", "metric", "mode", "preset"):
        assert summary[key] == recorded[key], key
    skip = {*sweepfile.NOT_WRITTEN, "name", "mlflow_tracking_uri"}
    assert {k: v for k, v in summary["sweep"].items() if k not in skip} == \
        {k: v for k, v in recorded["sweep"].items() if k not in skip}
    assert yaml.safe_load(path.read_text())["sweep"]["name"] == "shared"
    assert yaml.safe_load(path.read_text())["sweep"]["mlflow_tracking_uri"].startswith("http://127.0.0.1:")
    r = cmd("dry-run", "--config", str(path), "--name", "shared-2", "--storage-path", str(tmp_path),
            "--mlflow-tracking-uri", "")
    assert r.returncode == 0 and "sweep: shared-2 -> " in r.stdout, r.stderr[-2000:]


@pytest.mark.slow
def test_a_newcomers_own_data_sweep_then_report_and_export_through_the_command(tmp_path, tiny_llama):
    """What the README tells a newcomer: a sweep file of their own chats, then the report and the
    merged export, each one `lorasweep` command (the tiny Llama stands in for SmolLM2 offline)."""
    runs = tmp_path / "runs"
    r = cmd("run", "--config", "examples/own_chats.yaml", "--model", tiny_llama, "--storage-path", str(runs),
            "--num-samples", "2", "--max-tokens", "8000", "--grace-tokens", "4000", "--top-k", "1")
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    folder = runs / "chat_sft-support_chats"
    rows = json.loads((folder / "leaderboard.json").read_text())
    assert len(rows) == 2 and all(row["status"] != "failed" for row in rows)
    assert (folder / "best_adapters" / "rank_1" / "adapter_model.safetensors").is_file()
    written = yaml.safe_load((folder / "sweep.yaml").read_text())
    assert written["recipe"] == "chat_sft" and written["sweep"]["num_samples"] == 2
    assert written["train"]["model"] == tiny_llama and written["space"]["r"] == [8, 16, 32]
    rep = cmd("report", str(folder))
    assert rep.returncode == 0 and (folder / "report.html").is_file(), rep.stderr[-2000:]
    exp = cmd("export", str(folder), "--dtype", "fp32")
    assert exp.returncode == 0, exp.stderr[-2000:]
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(folder / "merged" / "rank_1")
    assert merged.config.model_type == "llama"
    again = cmd("run", "--config", str(folder / "sweep.yaml"))  # the same name again: refused, nothing touched
    assert again.returncode == 2 and "already exists" in again.stderr and "--resume" in again.stderr
    assert json.loads((folder / "leaderboard.json").read_text()) == rows
