"""Secrets from the driver's environment to the Ray processes that use them, and nowhere else.

Ray's workers read their own node's environment, not the driver's: on a multi-node cluster a gated
model fails in every trial unless ``HF_TOKEN`` reaches the trial workers. Not through
``runtime_env={"env_vars": ...}``: Ray's runtime env agent writes a runtime env verbatim to
``/tmp/ray/session_*/logs/runtime_env_agent.log``, and the dashboard and ``ray list`` show it. Not
in a config either: Tune writes the param space to ``params.json`` and Ray Train exports its
``train_loop_config`` to the dashboard.

Instead (as ``lorasweep.tracking`` does for ``WANDB_API_KEY``) the driver ``ray.put``s the values
and hands on the reference inside a list, so Ray neither inlines the values into a task spec nor
resolves them on the way. The process that needs them ``ray.get``s them into its own environment,
where ``trainers.data.hf_token`` reads them, before its first Hub call.
"""

from __future__ import annotations

import os

from common.credentials import CONFIG_KEY

NAMES = ("HF_TOKEN",)


def share(names: tuple[str, ...] = NAMES) -> list | None:
    """Driver side: ``[ObjectRef]`` to those of ``names`` set in this environment; None when none is.

    The driver holds the reference for the sweep's lifetime, so the object outlives every trial."""
    import ray

    values = {name: os.environ[name] for name in names if os.environ.get(name)}
    return [ray.put(values)] if values else None


def with_secrets(config: dict, shared: list | None) -> dict:
    """A ``train_loop_config``: the trial's config plus the reference (the config itself untouched)."""
    return {**config, CONFIG_KEY: shared} if shared else config
