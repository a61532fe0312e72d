"""ASHA that judges every trial at every rung.

Ray's asynchronous successive halving decides at a rung from the results recorded there so far. The
first trial to reach a rung has no peers and always passes; with 2 or 3 trials at once the first
few pass their first rungs unjudged and, early in a sweep, the recipe's known points do. Here a
decision taken with fewer than ``min_results`` results at a rung is provisional: the trial goes on,
and once the rung has ``min_results`` results it is judged again and stopped at its next report if
it falls below the cutoff. No trial is paused (a CPU or GPU trial restarting costs more than the
few reports it trains past the rung meanwhile).

It prunes on its own metric (``eval_loss`` by default: smooth, where accuracy or F1 on a few hundred
rows moves in steps of one row), while the search and the final choice use the objective.
"""

from __future__ import annotations

from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler
from ray.tune.schedulers.async_hyperband import _Bracket


class JudgedBracket(_Bracket):
    def __init__(self, *args, min_results: int = 2, **kwargs):
        super().__init__(*args, **kwargs)
        self.min_results = min_results
        self.provisional: dict[str, set] = {}  # trial id -> milestones it passed without enough peers

    def on_result(self, trial, cur_iter, cur_rew) -> str:
        if self._stopped_on_rejudging(trial.trial_id):
            return TrialScheduler.STOP
        action = TrialScheduler.CONTINUE
        for milestone, recorded in self._rungs:
            if cur_iter < milestone or trial.trial_id in recorded:
                continue
            if cur_rew is None:
                break
            recorded[trial.trial_id] = cur_rew
            if len(recorded) < self.min_results:
                self.provisional.setdefault(trial.trial_id, set()).add(milestone)
            elif cur_rew < self.cutoff(recorded):
                action = TrialScheduler.STOP
            break
        return action

    def _stopped_on_rejudging(self, trial_id: str) -> bool:
        """Judge the rungs this trial passed provisionally that now have enough results."""
        pending = self.provisional.get(trial_id)
        if not pending:
            return False
        for milestone, recorded in self._rungs:
            if milestone in pending and len(recorded) >= self.min_results:
                pending.discard(milestone)
                if recorded[trial_id] < self.cutoff(recorded):
                    return True
        return False


class JudgedASHA(AsyncHyperBandScheduler):
    """``AsyncHyperBandScheduler`` (one bracket) with ``JudgedBracket``: a trial continues past a
    rung only in the top 1/``reduction_factor`` of at least ``min_results`` results there."""

    def __init__(self, *, time_attr: str, metric: str, mode: str, max_t: int, grace_period: int,
                 reduction_factor: float, min_results: int = 0):
        super().__init__(time_attr=time_attr, metric=metric, mode=mode, max_t=max_t, grace_period=grace_period,
                         reduction_factor=reduction_factor)
        # One peer is enough to judge (2 results): trials at once reach a rung together, so the first
        # is judged within a report or two. Waiting for round(rf) results let a 2-at-a-time sweep's
        # first trials finish before their rung was judged (bench/quality.py encoder, rf 6: 5 of 8
        # trials ran to the cap).
        self.min_results = min_results or 2
        self._brackets = [JudgedBracket(grace_period, max_t, reduction_factor, 0, min_results=self.min_results)]
