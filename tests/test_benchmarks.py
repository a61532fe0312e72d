"""``--lm-eval``: lm-evaluation-harness on the base model and every exported adapter, after the shared
sweep (tests/conftest.py gives it a task of our own over a local file: the capitals of the smoke
sample's invented countries, multiple choice), and the refusals before Ray."""

from __future__ import annotations

import json

import pytest

from common.errors import ConfigError
from tests.conftest import LM_EVAL_TASK


def test_lm_eval_scores_the_base_and_every_exported_adapter_into_lm_eval_and_baseline_json(shared_sweep):
    out = json.loads((shared_sweep["dir"] / "lm_eval.json").read_text())
    exported = sorted(p.name for p in (shared_sweep["dir"] / "best_adapters").iterdir() if p.is_dir())
    assert out["tasks"] == [LM_EVAL_TASK] and out["args"] == {"apply_chat_template": True}
    assert list(out["models"]) == ["base", *exported] and len(exported) >= 2
    for name, scored in out["models"].items():
        m = scored[LM_EVAL_TASK]
        assert 0.0 <= m["acc"] <= 1.0 and m["acc_stderr"] >= 0.0, (name, m)
    baseline = json.loads((shared_sweep["dir"] / "baseline.json").read_text())
    key = f"lm_eval/{LM_EVAL_TASK}/acc"
    assert baseline["base 0-shot"][key] == out["models"]["base"][LM_EVAL_TASK]["acc"]
    assert baseline["tuned"][key] == out["models"]["rank_1"][LM_EVAL_TASK]["acc"]
    assert "lm-eval on the base model and the exported adapters:" in shared_sweep["stdout"]
    assert key in (shared_sweep["dir"] / "report.md").read_text()


def test_the_score_is_the_exported_adapters_own(shared_sweep):
    """Scored again here, in this process: the base and the best adapter give what the sweep wrote,
    and differ from each other (the adapter is on the model lm-eval scores)."""
    from lorasweep.benchmarks import score

    config = json.loads((shared_sweep["dir"] / "sweep_config.json").read_text())
    out = json.loads((shared_sweep["dir"] / "lm_eval.json").read_text())
    include = str(shared_sweep["storage"] / "lm_eval_tasks")
    args = {"apply_chat_template": True}
    for name, adapter in (("base", None), ("rank_1", str(shared_sweep["dir"] / "best_adapters" / "rank_1"))):
        again = score(config["settings"], adapter, [LM_EVAL_TASK], include, args)
        assert again == out["models"][name], (name, again, out["models"][name])


def _options(*args):
    from lorasweep.resolve import resolve
    from sweeps.llama_finetome import RECIPE

    return resolve(RECIPE, ["--preset", "smoke", *args]).options


@pytest.mark.parametrize("args, says", [
    (["--lm-eval", "no_such_task_xyz"], "`--lm-eval` task(s) 'no_such_task_xyz' unknown to lm-eval"),
    (["--lm-eval", LM_EVAL_TASK, "--lm-eval-include", "/nonexistent/tasks"], "`--lm-eval-include`"),
    (["--lm-eval", "arc_easy", "--lm-eval-args", '{"model": "hf"}'], "`--lm-eval-args` key(s) model"),
])
def test_bad_lm_eval_options_are_refused_in_one_line_before_ray(args, says):
    from lorasweep.benchmarks import check
    from trainers.tasks import get_task

    with pytest.raises(ConfigError) as e:
        check(_options(*args), get_task("chat_sft"))
    assert says in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_a_classifier_is_refused_and_known_tasks_pass():
    from lorasweep.benchmarks import check
    from trainers.tasks import get_task

    with pytest.raises(ConfigError, match="trains a classifier head"):
        check(_options("--lm-eval", "arc_easy"), get_task("classification"))
    check(_options("--lm-eval", "arc_easy,hellaswag", "--lm-eval-args", '{"num_fewshot": 5, "limit": 10}'),
          get_task("chat_sft"))
