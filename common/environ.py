"""Environment variables set for a while and then put back as they were (set, changed or absent)."""

from __future__ import annotations

import os
from contextlib import contextmanager


@contextmanager
def scoped_env(values: dict[str, str]):
    """``os.environ`` with ``values`` set inside the block, restored after it."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
