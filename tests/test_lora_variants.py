"""LoRA's variants as knobs: the attention/MLP rank split (PEFT rank_pattern at the adapter size of
rank r everywhere), LoRA+ (the B matrices' learning rate x the ratio) and init_lora_weights as a
choice, with one-line refusals for the initialisations a trial cannot use; all three searched in one
real sweep whose exported adapters carry them."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from common.errors import ConfigError
from lorasweep.resolve import resolve
from sweeps.llama_finetome import RECIPE
from trainers.config import TrialConfig

BASE = {"r": 8, "lora_alpha": 16, "use_rslora": False, "packing": False, "warmup_ratio": 0.0, "learning_rate": 1e-3}


def _setup(tiny_assets, tmp_path, **knobs):
    from trainers.loop import setup

    settings = resolve(RECIPE, ["--preset", "smoke", "--quantization", "none"]).settings
    settings.model, settings.dataset = str(tiny_assets["model"]), str(tiny_assets["dataset"])
    return setup(TrialConfig(settings, knobs={**BASE, **knobs}), torch.device("cpu"), str(tmp_path))


def _ranks_and_scales(model) -> dict[str, tuple[int, float]]:
    from peft.tuners.lora import LoraLayer

    return {name: (m.r["default"], m.scaling["default"]) for name, m in model.named_modules() if isinstance(m, LoraLayer)}


@pytest.mark.parametrize("rslora", [False, True])
def test_rank_split_moves_rank_to_attention_at_the_same_adapter_size_and_scale(tiny_assets, tmp_path, rslora):
    def lora_params(model):
        return sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)

    even = _setup(tiny_assets, tmp_path / "even", use_rslora=rslora)
    split = _setup(tiny_assets, tmp_path / "split", use_rslora=rslora, rank_split=3.0)
    layers = _ranks_and_scales(split.model)
    attn = {r for n, (r, _) in layers.items() if "self_attn" in n}
    mlp = {r for n, (r, _) in layers.items() if ".mlp." in n}
    assert len(attn) == len(mlp) == 1 and attn | mlp != {8}, layers
    (ra,), (rm,) = attn, mlp
    assert abs(ra / rm - 3.0) < 0.5, (ra, rm)
    # the same adapter size within rounding, and every module's update scale that of rank 8
    assert abs(lora_params(split.model) / lora_params(even.model) - 1) < 0.08
    scales = {round(s, 6) for _, s in layers.values()} | {round(s, 6) for _, s in _ranks_and_scales(even.model).values()}
    assert scales == {round(16 / (8 ** 0.5 if rslora else 8), 6)}, scales
    # and the saved adapter says so: PEFT reloads it with these ranks
    split.model.save_pretrained(tmp_path / "saved")
    cfg = json.loads((tmp_path / "saved" / "adapter_config.json").read_text())
    assert cfg["r"] == rm and set(cfg["rank_pattern"].values()) == {ra} and cfg["alpha_pattern"]


def test_loraplus_trains_the_b_matrices_at_the_ratio(tiny_assets, tmp_path):
    from trainers.loop import TokenCountingTrainer

    st = _setup(tiny_assets, tmp_path, loraplus_lr_ratio=16.0)
    trainer = TokenCountingTrainer(model=st.model, args=st.args, train_dataset=st.train,
                                   data_collator=st.task.collator(st.settings, st.tokenizer))
    trainer.loraplus_lr_ratio = 16.0
    opt = trainer.create_optimizer()
    names = {id(p): n for n, p in st.model.named_parameters()}
    lr_of = {names[id(p)]: g["lr"] for g in opt.param_groups for p in g["params"]}
    b = {lr for n, lr in lr_of.items() if "lora_B" in n}
    a = {lr for n, lr in lr_of.items() if "lora_A" in n}
    assert a == {st.args.learning_rate} and b == {16.0 * st.args.learning_rate}, (a, b)
    assert type(opt).__name__ == "AdamW"  # the Trainer's own optimizer class, only its groups differ


@pytest.mark.parametrize("args,needle", [
    (["--space", "init_lora_weights=true,pissa"], "`init_lora_weights` pissa rewrites the base weights it "
                                                   "decomposes, which a 4bit base cannot take"),
    (["--quantization", "none", "--lora-config", '{"init_lora_weights": "pissa_niter_4"}'], "randomised SVD"),
    (["--space", "init_lora_weights=loftq"], "`init_lora_weights` loftq: LoftQ needs a loftq_config"),
    (["--space", "init_lora_weights=orthogonal"], "orthogonal writes float LoRA weights in the base layer's dtype, "
                                                  "which a 4bit base does not have"),
    (["--quantization", "none", "--r", "7", "--lora-config", '{"init_lora_weights": "orthogonal"}'],
     "orthogonal needs an even `r`; r is 7"),
    (["--space", "init_lora_weights=kaiming"], "`init_lora_weights` is 'kaiming'"),
    (["--space", "loraplus_lr_ratio=0.5,16"], "`loraplus_lr_ratio` is 0.5; give 0 (plain LoRA) or a ratio in [1, 1000]"),
    (["--space", "rank_split=0,2"], "`rank_split` is 0"),
    (["--space", "rank_pattern=x"], "set it in the recipe instead; `--space rank_split=0.5,1,2` searches the "
                                    "attention/MLP rank split"),
])
def test_a_variant_a_trial_cannot_use_is_one_line_before_any_cluster_work(args, needle):
    with pytest.raises(ConfigError) as e:
        resolve(RECIPE, ["--preset", "smoke", *args])
    assert needle in str(e.value) and "\n" not in str(e.value), e.value


@pytest.mark.slow
def test_a_sweep_searches_the_variants_and_exports_what_each_trial_used(tmp_path):
    from tests.test_knobs import _run

    _run("llama_finetome.py", tmp_path, "variants", "--quantization", "none", "--num-samples", "4",
         "--no-known-points", "--max-tokens", "4000", "--top-k", "4",
         "--space", "init_lora_weights=true,orthogonal", "--space", "rank_split=0.5,2",
         "--space", "loraplus_lr_ratio=0,16")
    sweep = tmp_path / "variants"
    with open(sweep / "leaderboard.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("status") != "failed"]
    assert len(rows) == 4 and {"init_lora_weights", "rank_split", "loraplus_lr_ratio"} <= set(rows[0])
    exported = sorted(p for p in (sweep / "best_adapters").iterdir() if p.is_dir())
    assert exported
    for d in exported:
        meta = json.loads((d / "lorasweep.json").read_text())
        cfg = json.loads((d / "adapter_config.json").read_text())
        knobs = meta["hyperparameters"]
        split = float(knobs["rank_split"])
        ranks = set(cfg["rank_pattern"].values())
        # attention's rank beside the MLP's (r) is the trial's split, at rank r = 8's size
        assert len(ranks) == 1 and (next(iter(ranks)) > cfg["r"]) == (split > 1), (split, cfg["r"], ranks)
        assert cfg["init_lora_weights"] == ({"true": True}.get(str(knobs["init_lora_weights"]),
                                                                 knobs["init_lora_weights"]))


@pytest.mark.slow
def test_pissa_and_olora_adapters_export_as_a_plain_lora_of_the_untouched_base(tmp_path):
    """PiSSA and OLoRA train on a base their init changed; the exported adapter is converted to a
    plain LoRA of rank 2r of the original base, and scores there what its trial reported."""
    from tests.test_knobs import _run
    from trainers.loop import evaluate_folder

    args = ["--quantization", "none", "--max-tokens", "3000", "--eval-every", "2", "--scheduler", "none"]
    _run("llama_finetome.py", tmp_path, "pissa", *args, "--num-samples", "2", "--no-known-points", "--top-k", "2",
         "--searcher", "grid", "--space", "init_lora_weights=pissa,olora", "--space", "r=4",
         "--space", "lora_alpha=8", "--space", "learning_rate=0.001", "--space", "warmup_ratio=0",
         "--space", "use_rslora=false", "--space", "packing=false")
    sweep = tmp_path / "pissa"
    with open(sweep / "leaderboard.csv", newline="") as f:
        rows = {r["trial_id"]: r for r in csv.DictReader(f)}
    assert {r["init_lora_weights"] for r in rows.values()} == {"pissa", "olora"}, rows
    settings = resolve(RECIPE, ["--preset", "smoke", *args]).settings
    for d in sorted(p for p in (sweep / "best_adapters").iterdir() if p.is_dir()):
        meta = json.loads((d / "lorasweep.json").read_text())
        cfg = json.loads((d / "adapter_config.json").read_text())
        assert cfg["init_lora_weights"] is True and cfg["r"] == 8 and cfg["lora_alpha"] == 16, cfg
        assert "converted to a plain LoRA of the original base" in (d / "README.md").read_text()
        row = rows[meta["trial_id"]]
        # on the original base, the converted adapter is the trained model its trial evaluated
        loss = evaluate_folder(settings, str(d))["eval_loss"]
        assert loss == pytest.approx(float(row["best_eval_loss"]), rel=1e-4), (meta["trial_id"], loss, row)
