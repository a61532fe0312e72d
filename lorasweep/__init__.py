"""lorasweep's driver: what every sweep script shares (CLI, checks, Tuner, results, tracking).

Layers, each importing only the ones below it:
  sweeps/<model>_<dataset>.py  a recipe: model, data, task, search space, presets; calls ``engine.main``
  lorasweep/                   the driver (this package): runs on the head node, starts the trials
  trainers/, search_spaces/    what a trial runs inside its Ray Train workers, and what it searches
  lorasweep.errors             the two error types every layer raises (imports nothing)
"""

from importlib.metadata import PackageNotFoundError as _Missing, version as _version

try:
    __version__ = _version("lorasweep")
except _Missing:  # run from a checkout that was never pip-installed
    __version__ = "0.1.0"
