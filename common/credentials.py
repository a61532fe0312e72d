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


def take_shared(config: dict, key: str) -> tuple[dict, object]:
    """Worker side: the value a ``train_loop_config`` holds by reference under ``key`` (``[ObjectRef]``,
    ``ray.get`` here; None when absent) and the config without it. The secrets travel so, and the
    sweep's tokenised data (trainers/shared_data.py)."""
    if key not in config:
        return config, None
    config = dict(config)
    shared = config.pop(key)
    if not shared:
        return config, None
    import ray

    return config, ray.get(shared[0])


def receive(config: dict) -> dict:
    """Worker side, first thing in ``train_func``: apply the secrets a ``train_loop_config`` carries
    and return the config without them."""
    config, values = take_shared(config, CONFIG_KEY)
    if values:
        os.environ.update(values)
    return config
