"""Telling trials apart (lorasweep/selection.py, final_round.py, scheduling.py), without a sweep:

  * the eval split's standard error, and the one-line warning when it cannot see the differences;
  * label metrics recomputed on resamples agree with the trial's own (scikit-learn) metrics;
  * paired intervals: a real difference is called one, a coin flip is not;
  * the final round reorders the top by its scoring, breaks ties by eval loss, names the verdicts
    and says when the winner is worse than the untrained model;
  * ASHA judges a rung's first trial once enough peers reached it;
  * ties on the leaderboard go to the lower eval loss, never to the order trials ran in.
"""

from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from lorasweep import final_round, selection


def _labels(truth, pred, names=("negative", "positive")):
    return {"kind": "labels", "pred": list(pred), "truth": list(truth), "labels": len(names), "names": list(names)}


def test_standard_error_and_the_warning_follow_the_eval_rows():
    small = selection.noise_lines("f1", 80, 0.02)
    assert "standard error <= 0.056" in small[0] and small[1].startswith("warning: 80 eval rows")
    assert "2,500 rows" in small[1] and "--detectable" in small[1]
    big = selection.noise_lines("accuracy", 10_000, 0.02)
    assert len(big) == 1 and "0.005" in big[0]
    # accepting a coarser resolution silences the warning
    assert len(selection.noise_lines("f1", 80, 0.12)) == 1
    # a loss has no binomial bound: measured by bootstrap in the final round instead
    assert "final round" in selection.noise_lines("eval_loss", 80, 0.02)[0]
    assert selection.rows_for(0.01) == 2500


@pytest.mark.parametrize("n_classes", [2, 3])
def test_label_metrics_on_resamples_match_the_trials_own(n_classes):
    from trainers.evaluation import classification_metrics

    names = tuple(f"c{i}" for i in range(n_classes))
    rng = random.Random(n_classes)
    truth = [rng.randrange(n_classes) for _ in range(200)]
    pred = [t if rng.random() < 0.7 else rng.randrange(n_classes) for t in truth]
    record = _labels(truth, pred, names)
    idx = np.random.default_rng(0).integers(0, 200, size=(5, 200))
    for metric in ("accuracy", "precision", "recall", "f1", "accuracy_c1"):
        ours = selection.metric_on(record, metric, idx)
        for b in range(5):
            theirs = classification_metrics([truth[i] for i in idx[b]], [pred[i] for i in idx[b]], names)[metric]
            assert ours[b] == pytest.approx(theirs), (metric, b)
    assert selection.metric_on(record, "accuracy") == pytest.approx(classification_metrics(truth, pred, names)["accuracy"])


def test_a_weighted_mean_record_is_the_token_weighted_loss():
    record = {"kind": "mean", "values": [1.0, 3.0], "weights": [3, 1]}
    assert selection.metric_on(record, "eval_loss") == pytest.approx(1.5)


def test_paired_comparison_calls_a_real_difference_and_not_a_coin_flip():
    rng = random.Random(0)
    truth = [rng.randrange(2) for _ in range(400)]
    good = [t if rng.random() < 0.9 else 1 - t for t in truth]
    worse = [t if rng.random() < 0.7 else 1 - t for t in truth]
    c = selection.compare(_labels(truth, good), _labels(truth, worse), "accuracy")
    assert c.distinguishable and c.low > 0 and c.p < 0.01 and c.n == 400
    # the same model with 4 of 400 answers flipped: not distinguishable
    near = list(good)
    for i in range(4):
        near[i] = 1 - near[i]
    c = selection.compare(_labels(truth, good), _labels(truth, near), "accuracy")
    # 4 discordant rows, all one way: exact McNemar p = 2/2^4 = 0.125 (a percentile bootstrap says 0.04)
    assert not c.distinguishable and c.p == pytest.approx(0.125, abs=0.03)
    assert selection.mcnemar(_labels(truth, good), _labels(truth, near))[2] == pytest.approx(0.125)
    line = selection.verdict("best vs runner-up", c, "accuracy", "max")
    assert line.startswith("best vs runner-up: +1.0 accuracy points (95% CI") and "not distinguishable (p=0.1" in line
    with pytest.raises(ValueError, match="same rows"):
        selection.compare(_labels(truth, good), _labels(truth[:10], good[:10]), "accuracy")


def test_mcnemar_is_exact():
    truth = [1] * 10
    a = _labels(truth, [1] * 10)
    b = _labels(truth, [0] * 8 + [1] * 2)
    wins, losses, p = selection.mcnemar(a, b)
    assert (wins, losses) == (8, 0) and p == pytest.approx(2 / 2**8)


def test_interval_covers_the_value():
    rng = random.Random(1)
    truth = [rng.randrange(2) for _ in range(300)]
    value, lo, hi = selection.interval(_labels(truth, truth[:150] + [1 - t for t in truth[150:]]), "accuracy")
    assert value == pytest.approx(0.5) and lo < 0.5 < hi and hi - lo < 0.15


def _row(tid, best, loss, seed=""):
    return {"trial_id": tid, "status": "completed", "best_f1": best, "eval_loss": loss, "checkpoint": f"/x/{tid}",
            "known_point": seed}


def _scored(truth, pred, n_eval=None):
    return {"record": _labels(truth, pred), "value": selection.metric_on(_labels(truth, pred), "f1"),
            "eval_rows": n_eval or len(truth), "validation_rows": 0}


def test_final_round_reranks_breaks_ties_by_loss_and_names_the_verdicts():
    rng = random.Random(2)
    truth = [rng.randrange(2) for _ in range(300)]
    strong = [t if rng.random() < 0.92 else 1 - t for t in truth]
    weak = [t if rng.random() < 0.75 else 1 - t for t in truth]
    rows = [_row("a", 0.90, 0.40), _row("b", 0.88, 0.30), _row("c", 0.88, 0.20), _row("k", 0.70, 0.5, "known point 1"),
            {"trial_id": "f", "status": "failed", "best_f1": None}]
    assert [r["trial_id"] for r in final_round.candidates(rows, "f1", 2)] == ["a", "b", "k"]
    # on the larger split, b and c tie and beat a; the tie goes to c's lower eval loss
    scored = {"a": _scored(truth, weak), "b": _scored(truth, strong), "c": _scored(truth, strong),
              "k": _scored(truth, weak), final_round.BASE: _scored(truth, [0] * 300)}
    ranked = final_round.rerank(rows, {k: v for k, v in scored.items() if k != final_round.BASE}, "f1", "max")
    assert [r["trial_id"] for r in ranked] == ["c", "b", "a", "k", "f"] and [r["rank"] for r in ranked] == [1, 2, 3, 4, 5]
    data, lines = final_round.summarise(ranked, scored, "f1", "max")
    assert data["order"] == ["c", "b", "a", "k"] and ranked[0]["final_round_f1_low"] < ranked[0]["final_round_f1"]
    verdicts = "\n".join(data["verdicts"])
    assert "best (c) vs runner-up (b): +0.0 f1 points" in verdicts and "not distinguishable (p=1.00)" in verdicts
    assert "best vs the untrained model: +" in verdicts and "better (p<0.001)" in verdicts
    assert "best vs known point 1 (k)" in verdicts and "best vs the untrained model" in verdicts
    assert not data["winner_worse_than_base"]


def test_final_round_says_when_the_winner_is_worse_than_the_untrained_model():
    rng = random.Random(3)
    truth = [rng.randrange(2) for _ in range(200)]
    rows = [_row("a", 0.6, 4.1), _row("b", 0.5, 4.2)]
    scored = {"a": _scored(truth, [1 - t for t in truth]), "b": _scored(truth, [rng.randrange(2) for _ in truth]),
              final_round.BASE: _scored(truth, truth)}
    ranked = final_round.rerank(rows, {k: v for k, v in scored.items() if k != final_round.BASE}, "f1", "max")
    data, lines = final_round.summarise(ranked, scored, "f1", "max")
    assert data["winner_worse_than_base"]
    assert any(ln.startswith("warning: even the best trial") and "untrained model" in ln for ln in lines)


def test_asha_judges_the_first_trial_once_enough_peers_reached_the_rung():
    from ray.tune.schedulers import TrialScheduler
    from ray.tune.schedulers.async_hyperband import _Bracket

    from lorasweep.scheduling import JudgedBracket

    t = [SimpleNamespace(trial_id=f"t{i}") for i in range(3)]
    ours = JudgedBracket(10, 1000, 3, 0, min_results=3)
    ray = _Bracket(10, 1000, 3, 0)
    # the first trial reaches rung 10 with the worst value: nobody to compare with yet
    assert ours.on_result(t[0], 10, -5.0) == ray.on_result(t[0], 10, -5.0) == TrialScheduler.CONTINUE
    assert ours.on_result(t[1], 10, -1.0) == TrialScheduler.CONTINUE  # still fewer than 3 results
    assert ours.on_result(t[2], 10, -0.5) == TrialScheduler.CONTINUE  # 3 results: t2 is judged, passes
    # t0 went on meanwhile; its next report is judged against the rung it passed unjudged
    assert ours.on_result(t[0], 20, -4.0) == TrialScheduler.STOP
    # Ray's own bracket lets it run on
    ray.on_result(t[1], 10, -1.0)
    ray.on_result(t[2], 10, -0.5)
    assert ray.on_result(t[0], 20, -4.0) == TrialScheduler.CONTINUE
    # a good first trial, judged late, goes on
    good = JudgedBracket(10, 1000, 3, 0, min_results=3)
    good.on_result(t[0], 10, -0.5)
    good.on_result(t[1], 10, -1.0)
    good.on_result(t[2], 10, -2.0)
    assert good.on_result(t[0], 20, -0.4) == TrialScheduler.CONTINUE


def test_tied_reports_and_trials_go_to_the_lower_eval_loss(tmp_path):
    from ray.tune import Result

    from lorasweep.leaderboard import _best_report, leaderboard_rows

    df = pd.DataFrame({"f1": [0.8, 0.9, 0.9, 0.9], "eval_loss": [0.5, 0.6, 0.4, 0.7], "step": [1, 2, 3, 4]})
    assert int(_best_report(df, "f1", "max")["step"]) == 3

    def result(tid, losses):
        reports = pd.DataFrame({"f1": [0.7, 0.9], "eval_loss": losses, "step": [1, 2], "tokens_seen": [10, 20],
                                "finished": [False, True], "time_total_s": [1.0, 2.0]})
        return Result(metrics={"trial_id": tid}, checkpoint=None, error=None, path=str(tmp_path / f"trial_{tid}"),
                      metrics_dataframe=reports)

    # the first trial to run ties the second on F1; the second's lower eval loss ranks it first
    rows = leaderboard_rows([result("first", [0.9, 0.6]), result("second", [0.9, 0.3])], [], "f1", "max",
                            ("eval_loss", "f1"))
    assert [r["trial_id"] for r in rows] == ["second", "first"] and rows[0]["eval_loss"] == 0.3


def test_by_default_one_peer_is_enough_to_judge_the_first_trial():
    from ray.tune.schedulers import TrialScheduler

    from lorasweep.scheduling import JudgedASHA

    sched = JudgedASHA(time_attr="tokens_seen", metric="eval_loss", mode="min", max_t=1000, grace_period=10,
                       reduction_factor=6)
    assert sched.min_results == 2
    bracket = sched._brackets[0]
    first, second = SimpleNamespace(trial_id="a"), SimpleNamespace(trial_id="b")
    assert bracket.on_result(first, 10, -3.0) == TrialScheduler.CONTINUE  # alone at the rung
    assert bracket.on_result(second, 10, -1.0) == TrialScheduler.CONTINUE  # the better of two
    assert bracket.on_result(first, 12, -2.9) == TrialScheduler.STOP  # judged now that a peer is there


def test_final_round_says_when_its_trials_trained_to_different_lengths():
    """ASHA stopped the runner-ups early: the round weighs a full-length adapter against short ones,
    and says so; trials of like length get no such line."""
    rng = random.Random(4)
    truth = [rng.randrange(2) for _ in range(200)]
    rows = [{**_row("a", 0.9, 0.3), "tokens_seen": 36_311},
            {**_row("b", 0.8, 0.4), "tokens_seen": 5_044, "status": "stopped early"},
            {**_row("c", 0.7, 0.5), "tokens_seen": 1_923, "status": "stopped early"}]
    scored = {t: _scored(truth, truth) for t in "abc"}
    _, lines = final_round.summarise(rows, scored, "f1", "max")
    assert ("note: the final round compares trials trained to different lengths (tokens: a 36.3k, b 5.0k stopped "
            "early, c 1.9k stopped early); a stopped trial is scored as it was when stopped") in lines
    for r in rows:
        r["tokens_seen"] = 36_000 + len(r["trial_id"])
    _, lines = final_round.summarise(rows, scored, "f1", "max")
    assert not [ln for ln in lines if "different lengths" in ln]
