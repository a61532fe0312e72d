import math

import pytest

from search_spaces import Choice, LogUniform, SearchSpace, Uniform, project
from search_spaces.lora_sft import LORA_SFT
from common.errors import ConfigError


def test_flagship_space_has_the_six_knobs_and_valid_seeds():
    LORA_SFT.validate()
    assert set(LORA_SFT.params) == {"r", "lora_alpha", "use_rslora", "packing", "warmup_ratio", "learning_rate"}
    assert LORA_SFT.params["r"] == Choice((8, 16, 32, 64))
    assert LORA_SFT.params["learning_rate"] == LogUniform(1e-5, 2e-3)
    notebook, tuned = LORA_SFT.known_points
    assert (notebook["r"], notebook["lora_alpha"], notebook["use_rslora"], notebook["packing"]) == (16, 16, False, False)
    assert math.isclose(notebook["warmup_ratio"], 5 / 60, rel_tol=0.01)
    assert (tuned["r"], tuned["use_rslora"], tuned["packing"], tuned["learning_rate"]) == (8, True, True, 1e-3)


def test_to_tune_gives_ray_domains_that_sample_inside_the_ranges():
    from ray.tune.search.sample import Categorical, Float

    tune_space = LORA_SFT.to_tune()
    assert isinstance(tune_space["r"], Categorical) and tune_space["r"].categories == [8, 16, 32, 64]
    lr = tune_space["learning_rate"]
    assert isinstance(lr, Float)
    samples = lr.sample(size=200)
    assert all(1e-5 <= v <= 2e-3 for v in samples)
    # log-uniform: about half the samples fall below the geometric middle
    assert 60 < sum(v < math.sqrt(1e-5 * 2e-3) for v in samples) < 140


@pytest.mark.parametrize("spec,expected", [
    ("r=8,16", Choice((8, 16))),
    ("use_rslora=true", Choice((True,))),
    ("learning_rate=1e-4:1e-3", LogUniform(1e-4, 1e-3)),
    ("warmup_ratio=0:0.05", Uniform(0.0, 0.05)),
    ("learning_rate=uniform:1e-4:1e-3", Uniform(1e-4, 1e-3)),
])
def test_overrides(spec, expected):
    name = spec.split("=")[0]
    assert LORA_SFT.override(spec).params[name] == expected


@pytest.mark.parametrize("spec,needle", [
    ("r=0,8", "`r` is 0"),
    ("r=-4", "`r` is -4"),
    ("learning_rate=1e-3:1e-5", "low 0.001 > high 1e-05"),
    ("warmup_ratio=0:1.5", "`warmup_ratio` is 1.5"),
    ("r=", "no choices"),
    ("rank=8", "unknown knob 'rank'"),
    ("r=8:16", "takes a list of values"),
    ("learning_rate=log:0:1e-3", "learning_rate"),
    ("packing=maybe", "packing=maybe"),
    ("r", "must look like"),
])
def test_bad_overrides_name_the_knob(spec, needle):
    with pytest.raises(ConfigError) as e:
        LORA_SFT.override(spec)
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_seeds_are_projected_into_a_narrowed_space():
    narrowed = LORA_SFT.override("r=32,64").override("learning_rate=1e-5:5e-4")
    seeds = [project(narrowed, s) for s in narrowed.known_points]
    assert [s["r"] for s in seeds] == [32, 32]
    assert seeds[1]["learning_rate"] == 5e-4
    SearchSpace(narrowed.params, narrowed.bounds, known_points=tuple(seeds)).validate()


def test_seed_missing_a_knob_is_refused():
    with pytest.raises(ConfigError, match="lacks"):
        SearchSpace({"r": Choice((8,))}, LORA_SFT.bounds, known_points=({},)).validate()
