"""lorasweep's driver: what every sweep script shares (CLI, checks, Tuner, results, tracking).

Layers, each importing only the ones below it:
  sweeps/<model>_<dataset>.py  a recipe (lorasweep.recipe's declarations); calls ``engine.main``
  lorasweep/                   the driver (this package), phase by phase: recipe -> resolve ->
                               preflight/cluster -> tuner -> results/final_round/export -> report;
                               storage.py is the one place that knows local folders from s3:// or gs://
  search_spaces/               what a sweep searches: declarations and parsing
  trainers/                    what a trial runs inside its Ray Train workers
  common/                      errors, their one-line form, the worker half of credentials (imports nothing)
"""

from importlib.metadata import PackageNotFoundError as _Missing, version as _version

try:
    __version__ = _version("lorasweep")
except _Missing:  # run from a checkout that was never pip-installed
    __version__ = "0.1.0"
