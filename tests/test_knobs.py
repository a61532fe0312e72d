"""Any knob: a TrainSettings hyperparameter, a peft.LoraConfig field or a TrainingArguments field
can be searched with --space, typed from the library's own field and checked by building the
library's own object; searched values reach the trial's model and trainer. And the searchers
beyond TPE (CMA-ES, Gaussian process) on a real space."""

from __future__ import annotations

import pytest
import torch

from lorasweep.resolve import resolve
from common.errors import ConfigError
from sweeps.llama_finetome import RECIPE
from trainers.config import TrialConfig

KNOBS = ["--space", "use_dora=true,false", "--space", "target_modules=all-linear,q_proj+v_proj",
         "--space", "lora_dropout=0:0.2", "--space", "adam_beta2=0.95,0.999", "--space", "weight_decay=0,0.1"]


def _sweep(*args):
    return resolve(RECIPE, ["--preset", "smoke", *args])


def _run(script: str, tmp_path, name: str, *args):
    """A sweep script run as a user runs it, into ``tmp_path/name``; fails the test on a non-zero exit."""
    import subprocess
    import sys

    from tests.conftest import ROOT, sweep_env

    # No final round: these sweeps test other phases (tests/test_sweep.py checks the final round).
    cmd = [sys.executable, f"sweeps/{script}", "--preset", "smoke", "--final-round", "0", *args,
           "--storage-path", str(tmp_path), "--name", name]
    r = subprocess.run(cmd, cwd=ROOT, env=sweep_env(), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    return r


def test_any_library_field_is_a_knob_and_the_seed_points_keep_their_unsearched_values():
    sweep = _sweep(*KNOBS)
    space = sweep.space
    assert {"use_dora", "target_modules", "lora_dropout", "adam_beta2", "weight_decay"} <= set(space.params)
    # the recipe's known points trained with the values these knobs have when unsearched
    for seed in space.known_points:
        assert seed["use_dora"] is False and seed["target_modules"] == "all-linear"
        assert seed["lora_dropout"] == 0.0 and seed["adam_beta2"] == 0.999 and seed["weight_decay"] == 0.0
    # Tune's param space carries them at the top level, where Optuna samples them
    assert {"use_dora", "adam_beta2"} <= set(space.to_tune())


def test_searched_values_reach_the_model_and_the_trainer(tiny_assets, tmp_path):
    from trainers.loop import setup

    settings = _sweep().settings
    settings.model, settings.dataset = str(tiny_assets["model"]), str(tiny_assets["dataset"])
    knobs = {"r": 8, "lora_alpha": 16, "use_rslora": False, "packing": False, "warmup_ratio": 0.0,
             "learning_rate": 1e-3, "lora_dropout": 0.1, "target_modules": "q_proj+v_proj", "use_dora": True,
             "adam_beta2": 0.95, "weight_decay": 0.0}
    st = setup(TrialConfig(settings, knobs=knobs), torch.device("cpu"), str(tmp_path))
    peft = st.model.peft_config["default"]
    assert peft.lora_dropout == 0.1 and set(peft.target_modules) == {"q_proj", "v_proj"} and peft.use_dora
    assert any("lora_magnitude_vector" in n for n, _ in st.model.named_parameters())  # DoRA is built
    assert not any("mlp" in n and "lora_" in n for n, _ in st.model.named_parameters())  # attention only
    assert st.args.adam_beta2 == 0.95 and st.args.weight_decay == 0.0


@pytest.mark.parametrize("args,needle", [
    (["--space", "lora_dropout=0:1.5"], "`lora_dropout` is 1.5; allowed range is [0, 1)"),
    (["--space", "use_dora=maybe"], "`use_dora` takes bool values (true or false)"),
    (["--space", "optim=sgdx"], "`optim` is 'sgdx'; allowed: one of adamw_torch"),
    (["--space", "per_device_batch_size=0,2"], "`per_device_batch_size` is 0; it must be a positive number"),
    (["--space", "lora_dropot=0.1"], "unknown knob 'lora_dropot'; searchable: any TrainSettings hyperparameter, "
                                     "peft.LoraConfig field or transformers.TrainingArguments field; did you mean `lora_dropout`?"),
    (["--lora-config", '{"use_dorra": true}'], "`lora_config` has 'use_dorra', which is no field there; did you mean `use_dora`?"),
    (["--lora-config", '{"r": 4}'], "`lora_config` sets 'r', which lorasweep sets from its own setting; pass --r"),
    (["--training-args", '{"optim": "nosuch"}'], "`training_args` `optim` value 'nosuch' is refused by transformers.TrainingArguments"),
])
def test_a_bad_knob_is_one_line_naming_it(args, needle):
    with pytest.raises(ConfigError) as e:
        _sweep(*args)
    assert needle in str(e.value) and "\n" not in str(e.value), e.value


def test_fixed_library_fields_reach_the_trainer_arguments():
    from trainers.loop import training_arguments

    settings = _sweep("--training-args", '{"optim": "adafactor", "adam_beta2": 0.95}').settings
    args = training_arguments(settings, "fp32", torch.device("cpu"), 10, "/tmp/lorasweep-test-args")
    assert args.optim == "adafactor" and args.adam_beta2 == 0.95


@pytest.mark.parametrize("name", ["cmaes", "gp"])
def test_cmaes_and_gp_propose_points_inside_the_space(name):
    import optuna

    from lorasweep.tuner import sampler
    from search_spaces import Choice, distributions

    sweep = _sweep("--searcher", name, "--space", "lora_dropout=0:0.2")
    space = sweep.space
    dists = distributions(space.to_json())
    study = optuna.create_study(sampler=sampler(name, space, 0), direction="minimize")
    for i in range(12):  # past the samplers' random start-up trials: the model proposes the later ones
        trial = study.ask(dists)
        for knob, dist in space.params.items():
            v = trial.params[knob]
            assert v in dist.values if isinstance(dist, Choice) else dist.low <= v <= dist.high, (knob, v)
        study.tell(trial, (trial.params["learning_rate"] - 3e-4) ** 2 + trial.params["lora_dropout"])
    # The named sampler drew them (not a random fallback), and it moved through the space.
    expected = {"cmaes": optuna.samplers.CmaEsSampler, "gp": optuna.samplers.GPSampler}[name]
    assert type(study.sampler) is expected
    assert len({t.params["learning_rate"] for t in study.trials}) == 12


def test_tpe_models_from_a_third_of_a_small_sweep_not_after_ten_random_trials():
    import optuna

    from lorasweep.tuner import sampler, tpe_startup
    from search_spaces import distributions

    space = _sweep().space
    assert (tpe_startup(6, 2), tpe_startup(16, 2), tpe_startup(60, 2), tpe_startup(4, 3)) == (2, 6, 10, 3)
    dists = distributions(space.to_json())

    def draws(name):
        study = optuna.create_study(sampler=sampler(name, space, 0, trials=6), direction="minimize")
        lrs = []
        for _ in range(6):
            trial = study.ask(dists)
            lrs.append(trial.params["learning_rate"])
            study.tell(trial, (trial.params["learning_rate"] - 3e-4) ** 2)
        return lrs

    # TPE's start-up draws are its seeded random sampler's; from the third trial on, its model proposes.
    tpe, rand = draws("tpe"), draws("random")
    assert tpe[:2] == rand[:2] and tpe[2] != rand[2]


def test_no_known_points_leaves_the_search_to_the_searcher():
    from lorasweep.tuner import tpe_startup

    assert len(_sweep().space.known_points) == 2
    sweep = _sweep("--no-known-points", "--space", "learning_rate=1e-4:5e-4")
    assert sweep.space.known_points == () and sweep.space.moved == ()
    assert sweep.space.known_point_label({"learning_rate": 2e-4}) == ""
    assert tpe_startup(6, len(sweep.space.known_points)) == 2  # a third of the trials, none of them given


def test_a_seed_moved_by_a_narrowed_space_is_labelled_with_what_moved():
    space = _sweep("--space", "learning_rate=1e-4:5e-4").space
    first, second = space.known_points
    assert second["learning_rate"] == 5e-4  # the recipe's 1e-3, clipped into the range
    assert space.known_point_label(first) == "known point 1"
    assert space.known_point_label(second) == "known point 2 (moved: learning_rate 0.001 -> 0.0005)"
    assert space.known_point_label({**second, "r": 64}) == ""  # a point the searcher proposed


# ----------------------------------------------------------------------------- quality against cost


def test_pareto_marks_exactly_the_trials_no_other_beats_on_both():
    from lorasweep.leaderboard import mark_pareto

    def row(tid, loss, hours, status="completed"):
        return {"trial_id": tid, "best_eval_loss": loss, "device_hours": hours, "status": status}

    rows = [row("a", 0.90, 3.0), row("b", 0.95, 1.0), row("c", 0.95, 2.0), row("d", 1.20, 0.5),
            row("e", 1.30, 0.5), row("f", 0.10, 0.1, "failed"), row("g", 0.90, 3.0)]
    front = mark_pareto(rows, ["eval_loss", "device_hours"])
    # c loses to b (same loss, dearer), e to d; a and g tie (neither dominates the other); f failed
    assert [r["trial_id"] for r in front] == ["a", "b", "d", "g"]
    assert [r["pareto"] for r in rows] == [True, True, False, True, False, False, True]
    assert mark_pareto(rows, ["eval_loss"]) == []  # one objective: no front


def test_two_objectives_are_refused_where_they_cannot_work():
    with pytest.raises(ConfigError, match="`--searcher cmaes` optimises one objective"):
        _sweep("--objective", "eval_loss,device_hours", "--searcher", "cmaes")
    with pytest.raises(ConfigError, match="give one metric, or two different ones"):
        _sweep("--objective", "eval_loss,eval_loss")
    with pytest.raises(ConfigError, match="`--objective` has 'cost'; task `chat_sft` reports: eval_loss, device_hours"):
        _sweep("--objective", "eval_loss,cost")
    assert _sweep("--objective", "eval_loss,device_hours").objectives == ["eval_loss", "device_hours"]


def test_the_export_cap_keeps_dearer_adapters_out():
    from lorasweep.best_adapters import export_best

    sweep = _sweep("--export-max-cost", "0.25")
    rows = [{"trial_id": "a", "checkpoint": "/nonexistent/a", "status": "completed", "device_hours": 0.5}]
    assert export_best(rows, [], sweep, 3) == []  # over the cap: nothing read, nothing written


@pytest.mark.slow
def test_a_two_objective_sweep_reports_a_pareto_front_and_a_two_direction_study(tiny_assets, tmp_path):
    import csv

    import optuna

    r = _run("llama_finetome.py", tmp_path, "par", "--num-samples", "4", "--max-tokens", "6000", "--scheduler", "none",
             "--objective", "eval_loss,device_hours")
    with open(tmp_path / "par" / "leaderboard.csv", newline="") as f:
        rows = [row for row in csv.DictReader(f) if row["status"] != "failed"]
    points = {row["trial_id"]: (float(row["best_eval_loss"]), float(row["device_hours"])) for row in rows}
    front = [row["trial_id"] for row in rows if row["pareto"] == "True"]
    assert front, rows

    def dominates(p, q):
        return p[0] <= q[0] and p[1] <= q[1] and p != q

    for t in front:  # no member is dominated; every other trial is
        assert not any(dominates(points[o], points[t]) for o in points), t
    for t in set(points) - set(front):
        assert any(dominates(points[o], points[t]) for o in front), t
    assert "Pareto front, eval_loss against device_hours" in r.stdout
    study = optuna.load_study(study_name="par", storage=f"sqlite:///{tmp_path / 'par' / 'optuna.db'}")
    assert len(study.directions) == 2 and len(study.trials) == 4 and study.best_trials
    print("\n[pareto] " + "; ".join(f"{t} eval_loss {points[t][0]:.4f} at {points[t][1]:.5f} device-hours" for t in front))


# ----------------------------------------------------------------------------- warm start


@pytest.fixture(scope="module")
def warm_sweep(shared_sweep, tmp_path_factory):
    """ONE sweep for two phases: warm-started from the shared sweep on a narrowed space, and its top
    configurations trained once more (--repeats 1). Returns (completed process, storage folder)."""
    tmp_path = tmp_path_factory.mktemp("warm")
    r = _run("llama_finetome.py", tmp_path, "warm", "--num-samples", "2", "--max-tokens", "6000", "--scheduler", "none",
             "--space", "r=8,16,32", "--warm-start-from", str(shared_sweep["dir"]), "--repeats", "1")
    return r, tmp_path


@pytest.mark.slow
def test_a_warm_started_sweep_loads_the_finished_trials_that_fit_and_runs_only_new_points(shared_sweep, warm_sweep):
    """From the shared sweep (3 finished trials; its 2 known points failed there, by injected faults):
    a new sweep on a narrowed space gets the fitting finished trials in its study, with their values,
    lists the others as skipped, and runs the known points again (not measured, only failed)."""
    import json

    import optuna

    source = shared_sweep["dir"]
    finished = [r for r in json.loads((source / "leaderboard.json").read_text()) if r["status"] != "failed"]
    fits = [r for r in finished if r["r"] in (8, 16, 32)]
    r, tmp_path = warm_sweep
    assert (f"warm start from {source}: {len(fits)} finished trial(s) loaded into the study, "
            f"{len(finished) - len(fits)} skipped") in r.stdout
    for row in finished:
        if row not in fits:
            assert f"skipped {row['trial_id']}: r={row['r']} is outside {{8, 16, 32}}" in r.stdout
    study = optuna.load_study(study_name="warm", storage=f"sqlite:///{tmp_path / 'warm' / 'optuna.db'}")
    warm = [t for t in study.trials if t.user_attrs.get("warm_start_from") == str(source)]
    assert sorted(t.value for t in warm) == sorted(row["final_eval_loss"] for row in fits)
    assert len(study.trials) == len(fits) + 2  # and only two trials ran
    board = json.loads((tmp_path / "warm" / "leaderboard.json").read_text())
    assert sorted(row["known_point"] for row in board) == ["known point 1", "known point 2"]


# ----------------------------------------------------------------------------- spaces that know LoRA


def test_alpha_mode_ratio_searches_the_updates_scale_and_alpha_follows():
    import math

    from search_spaces import LogUniform

    space = _sweep("--alpha-mode", "ratio").space
    assert "lora_alpha" not in space.params and space.params["alpha_ratio"] == LogUniform(0.25, 8.0)
    # the known points keep their scale: 16/16, and 16/sqrt(8) with rsLoRA
    assert [s["alpha_ratio"] for s in space.known_points] == [1.0, 16 / math.sqrt(8)]
    settings = _sweep("--alpha-mode", "ratio").settings
    assert TrialConfig(settings, knobs={"r": 8, "alpha_ratio": 2.0, "use_rslora": False}).effective.lora_alpha == 16
    assert TrialConfig(settings, knobs={"r": 16, "alpha_ratio": 2.0, "use_rslora": True}).effective.lora_alpha == 8
    with pytest.raises(ConfigError, match="`--alpha-mode` is 'auto'; choose free or ratio"):
        _sweep("--alpha-mode", "auto")


@pytest.mark.parametrize("scaling,workers,factor", [("none", 1, 1.0), ("sqrt", 1, 2.0), ("linear", 1, 4.0),
                                                    ("sqrt", 2, 8 ** 0.5), ("linear", 2, 8.0)])
def test_lr_scaling_follows_the_tokens_of_an_optimizer_step(scaling, workers, factor):
    import dataclasses

    from trainers.data import Split, Tokenized
    from trainers.loop import scaled_learning_rate
    from trainers.tasks import Prepared

    settings = dataclasses.replace(_sweep().settings, lr_scaling=scaling, learning_rate=1e-4)
    unpacked = [{"input_ids": [1] * 10}] * 40  # the reference: one worker, 10-token examples
    packed = [{"input_ids": [1] * 40}] * 10  # four examples a row: 4x the tokens a step
    data = Prepared(Split([], []), Tokenized(unpacked), Tokenized(unpacked[:4]), 40)
    lr, note = scaled_learning_rate(settings, data, packed, workers)
    assert lr == pytest.approx(1e-4 * factor)
    assert (note == "") == (scaling == "none")
    fixed = dataclasses.replace(settings, lr_reference_tokens=int(40 * settings.per_device_batch_size
                                                                  * settings.gradient_accumulation_steps))
    assert scaled_learning_rate(fixed, data, packed, 1)[0] == pytest.approx(1e-4)  # the reference batch itself


def test_a_repeat_changes_the_training_seed_not_the_data_split():
    from trainers.loop import training_arguments

    settings = _sweep().settings
    again = TrialConfig(settings, knobs={"r": 8, "repeat": 2}).effective
    assert again.repeat == 2 and again.seed == settings.seed  # split_rows reads seed alone
    args = training_arguments(again, "fp32", torch.device("cpu"), 10, "/tmp/lorasweep-test-args")
    assert args.seed == args.data_seed == settings.seed + 2


@pytest.mark.slow
def test_repeats_give_the_top_configurations_a_mean_and_a_spread(warm_sweep):
    """The warm-started sweep's two trials (its known points), each trained once more with another
    training seed: the leaderboard gives each configuration a mean and a spread over its two runs."""
    import json
    import statistics

    r, tmp_path = warm_sweep
    rows = json.loads((tmp_path / "warm" / "leaderboard.json").read_text())
    again = {}  # the repeats' own results: knobs -> best eval loss
    for result in (tmp_path / "warm-repeats").glob("trial_*/result.json"):
        reports = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        config = reports[-1]["config"]
        assert config["repeat"] == 1
        again[(config["r"], config["learning_rate"])] = min(rep["eval_loss"] for rep in reports)
    assert len(again) == 2  # each configuration once more
    for row in rows:
        values = [row["best_eval_loss"], again[(row["r"], row["learning_rate"])]]
        assert row["runs"] == 2
        assert row["mean_eval_loss"] == pytest.approx(statistics.fmean(values))
        assert row["std_eval_loss"] == pytest.approx(statistics.stdev(values))
        assert values[0] != values[1]  # another training seed: another result
    assert "over repeats: " in r.stdout and "mean_eval_loss" in (tmp_path / "warm" / "leaderboard.csv").read_text()


@pytest.mark.slow
def test_finalize_retrains_the_winner_on_train_and_eval_rows_and_scores_it_once(tmp_path):
    """DistilBERT's smoke recipe (it has a test split): the final run trains on train + eval rows, is
    exported apart (final_adapter/) and scored on the same test rows as the base and the tuned one."""
    import json
    import re

    r = _run("distilbert_imdb.py", tmp_path, "fin", "--num-samples", "1", "--max-tokens", "8000", "--scheduler", "none",
             "--finalize")

    def examples(folder):
        (out,) = [p.read_text() for p in folder.glob("trial_*/stdout")][:1]
        train, held = re.search(r"(\d+) train examples -> \d+ rows .*?, (\d+) eval", out).groups()
        return int(train), int(held)

    # the sweep's trials read the driver's sample of the rows their budget reaches; the final run
    # tokenises its own (train + eval rows): every training row of the audit, and the eval rows
    audit = json.loads((tmp_path / "fin" / "data_report.json").read_text())
    sampled, held = examples(tmp_path / "fin")
    assert sampled < audit["train_examples"] and held == audit["eval_examples"]
    assert examples(tmp_path / "fin-final") == (audit["train_examples"] + held, held)
    final = tmp_path / "fin" / "final_adapter"
    winner = json.loads((tmp_path / "fin" / "leaderboard.json").read_text())[0]
    weights = "model.safetensors" if winner.get("method") == "full" else "adapter_model.safetensors"  # method is searched
    assert (final / "EXPORT_COMPLETE").is_file() and (final / "rank_1" / weights).is_file(), winner.get("method")
    baseline = json.loads((tmp_path / "fin" / "baseline.json").read_text())
    assert baseline["final"]["n"] == baseline["tuned"]["n"] == baseline["base 0-shot"]["n"] > 0
    assert "final adapter: " in r.stdout and re.search(r"metric +base 0-shot +tuned +final", r.stdout)


def test_gguf_export_refuses_an_architecture_it_cannot_write(tmp_path):
    from lorasweep.export import GGUFUnsupported, write_gguf
    from stand_ins import conversation_texts, finetome_rows
    from stand_ins.tiny import write_tiny_model
    from trainers.families import get_family

    folder = write_tiny_model(tmp_path / "gemma", get_family("gemma"), conversation_texts(finetome_rows(20)),
                              pretrain_steps=0)
    with pytest.raises(GGUFUnsupported, match="GGUF export writes llama models; 'gemma' is not one"):
        write_gguf(folder, tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()
