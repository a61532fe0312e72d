"""What every figure module shares.

A figure module (``bench/<name>.py``) defines::

    TITLE = "packing"                    # the table's first column
    HOW = "non-padding tokens/s, packed vs padded to the longest"   # one line
    TARGET = (">=", 2.5)                 # the ratio's target
    def run(device: str, quick: bool) -> Figure: ...

and ``run`` measures both sides in the same process or run, so the ratio is side by side.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@dataclass
class Figure:
    """One measured figure: ``ratio`` against ``target`` (an operator and a bound), the raw numbers
    both sides of it, and a line saying what the ratio is (``detail``)."""

    ratio: float
    target: tuple[str, float]
    raw: dict = field(default_factory=dict)
    detail: str = ""

    @property
    def met(self) -> bool:
        op, bound = self.target
        return self.ratio <= bound if op == "<=" else self.ratio >= bound

    def to_dict(self) -> dict:
        return {**asdict(self), "target": f"{self.target[0]} {self.target[1]:g}", "met": self.met}


@contextmanager
def timed(into: dict, key: str):
    """``with timed(raw, "load_s"): ...`` stores the block's wall seconds in ``raw[key]``."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        into[key] = round(time.perf_counter() - t0, 4)


def bench_cache() -> Path:
    """Where figures keep what they build once (tiny models, samples): outside the repo."""
    from common.paths import cache_root

    path = cache_root() / "bench"
    path.mkdir(parents=True, exist_ok=True)
    return path
