"""The worker half of the secrets hand-over (the driver half, and why: lorasweep/credentials.py):
a process that needs the secrets takes the reference out of its config and ``ray.get``s them into its
own environment, before its first Hub call."""

from __future__ import annotations

import os

# Key of ``train_loop_config`` (never of Tune's param space) holding the reference; the trial
# workers take it out before reading the rest as a ``TrialConfig``.
CONFIG_KEY = "lorasweep_secrets"


def apply(shared: list | None) -> None:
    """Worker side: put the shared secrets into this process's environment."""
    if shared:
        import ray

        os.environ.update(ray.get(shared[0]))


def receive(config: dict) -> dict:
    """Worker side, first thing in ``train_func``: apply the secrets a ``train_loop_config`` carries
    and return the config without them."""
    if CONFIG_KEY not in config:
        return config
    config = dict(config)
    apply(config.pop(CONFIG_KEY))
    return config
