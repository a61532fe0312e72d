"""The versions a sweep's numbers depend on (its config, the report and the model cards show them)."""

from __future__ import annotations

# What a sweep's numbers depend on; the report and the model cards show them.
KEY_LIBRARIES = ("torch", "transformers", "peft", "ray", "optuna", "bitsandbytes", "deepspeed", "datasets",
                 "accelerate", "wandb")


def versions() -> dict[str, str]:
    """The installed versions of ``KEY_LIBRARIES`` (read from package metadata: nothing imported)."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in KEY_LIBRARIES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out
