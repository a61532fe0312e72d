"""Where lorasweep keeps what it builds once (tiny models, converted checkpoints, WordNet, W&B files
of a sweep on object storage): ``$LORASWEEP_CACHE``, else ``~/.cache/lorasweep``."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("LORASWEEP_CACHE") or Path.home() / ".cache" / "lorasweep").expanduser()
