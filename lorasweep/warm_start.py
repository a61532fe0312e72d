"""``--warm-start-from <finished sweep>``: a new sweep (its own name; its space, model or data may
differ) whose Optuna study starts with the finished trials that still fit, so the searcher builds
on them instead of measuring them again. Tune's ``--resume`` continues one sweep and cannot change
its space; this can.

A finished trial fits when every knob of the new space has a value it allows, counting a knob the
old sweep did not search at the value it trained with (its recipe's setting or the library
default), and every knob the old sweep searched but the new one fixes had the new fixed value.
Failed trials are not loaded. The known points of the new recipe that the old sweep measured are
not run again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lorasweep import storage
from common.errors import ConfigError


@dataclass
class WarmStart:
    source: str
    points: list[tuple[dict, float | list[float]]] = field(default_factory=list)  # (knobs, objective value(s))
    skipped: list[str] = field(default_factory=list)  # "trial_id: why", one per finished trial left out

    def lines(self) -> list[str]:
        out = [f"warm start from {self.source}: {len(self.points)} finished trial(s) loaded into the "
               f"study, {len(self.skipped)} skipped"]
        out += [f"  skipped {why}" for why in self.skipped]
        return out


def load(source: str, sweep) -> WarmStart:
    """The finished trials of the sweep folder ``source`` that fit ``sweep`` (a ResolvedSweep)."""
    from search_spaces import Choice
    from search_spaces.knobs import current
    from trainers.config import TrainSettings


    try:
        old_config, rows = storage.read_json(storage.join(source, "sweep_config.json")), storage.read_json(storage.join(source, "leaderboard.json"))
    except ValueError:  # a file that is not JSON
        old_config, rows = None, None
    if not isinstance(old_config, dict) or not isinstance(rows, list):
        raise ConfigError(f"`--warm-start-from` {source!r} is not a finished sweep folder (no readable "
                          "sweep_config.json and leaderboard.json); give the folder of a sweep that ended, "
                          "e.g. runs/llama_finetome-smoke")
    objectives = sweep.objectives
    old_settings = TrainSettings.from_dict(old_config["settings"])
    old_knobs = list(old_config.get("space") or {})
    space, settings = sweep.space, sweep.settings
    missing = [m for m in objectives if not any(_value(r, m, m == objectives[0]) is not None for r in rows)]
    if missing:
        raise ConfigError(f"`--warm-start-from` {source!r} has no {', '.join(missing)} for its trials (its objective "
                          f"was {old_config.get('metric')!r}); warm-start from a sweep that reported it")
    out = WarmStart(source)
    for row in rows:
        tid = row.get("trial_id", "?")
        if row.get("status") == "failed":
            continue
        values = [_value(row, m, m == objectives[0]) for m in objectives]
        if any(v is None for v in values):
            out.skipped.append(f"{tid}: no {objectives[values.index(None)]} reported")
            continue
        point, why = {}, ""
        for knob, dist in space.params.items():
            v = row[knob] if knob in old_knobs and knob in row else current(knob, old_settings)
            inside = v in dist.values if isinstance(dist, Choice) else \
                isinstance(v, (int, float)) and dist.low <= v <= dist.high
            if not inside:
                why = f"{knob}={v!r} is outside {dist.describe()}"
                break
            point[knob] = v
        for knob in old_knobs:
            if not why and knob not in space.params and row.get(knob) != current(knob, settings):
                why = f"{knob} was {row.get(knob)!r}; this sweep trains with {current(knob, settings)!r}"
        if why:
            out.skipped.append(f"{tid}: {why}")
            continue
        out.points.append((point, values[0] if len(values) == 1 else values))
    return out


def _value(row: dict, metric: str, primary: bool):
    """The value Optuna gets for a finished trial: what Tune handed the searcher, the last report
    (``final_<metric>``), else its best; a second objective as the leaderboard holds it."""
    for key in ((f"final_{metric}", f"best_{metric}") if primary else (metric, f"best_{metric}")):
        v = row.get(key)
        if isinstance(v, (int, float)) and v == v:
            return float(v)
    return None


def remaining_known_points(seeds: tuple[dict, ...], warm: WarmStart) -> tuple[dict, ...]:
    """The known points the warm start did not already measure."""
    measured = [p for p, _ in warm.points]
    return tuple(s for s in seeds if not any(all(p.get(k) == v for k, v in s.items()) for p in measured))


def searcher_class():
    """``OptunaSearch`` that adds the warm start's points to its study once Tune has built it (the
    study is made when Tune hands the searcher the space, after the Tuner is built)."""
    from ray.tune.search.optuna import OptunaSearch

    class WarmOptunaSearch(OptunaSearch):
        def __init__(self, *args, warm: WarmStart | None = None, **kwargs):
            super().__init__(*args, **kwargs)
            self._warm_points = list(warm.points) if warm else []
            self._warm_source = warm.source if warm else ""

        def _setup_study(self, mode):
            import optuna

            super()._setup_study(mode)
            for point, value in self._warm_points:  # add_evaluated_point takes one objective only
                given = {"values": value} if isinstance(value, list) else {"value": value}
                self._ot_study.add_trial(optuna.trial.create_trial(
                    state=optuna.trial.TrialState.COMPLETE, params=point, distributions=self._space,
                    user_attrs={"warm_start_from": self._warm_source}, **given))
            self._warm_points = []  # a restored searcher has them in its study already

    return WarmOptunaSearch
