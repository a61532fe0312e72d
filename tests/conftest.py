import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the Hub is out of reach; fail fast instead of retrying
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_assets():
    """The smoke preset's offline model + FineTome-format sample (built once, cached)."""
    from lorasweep.engine import assets_cache
    from sweeps.llama_finetome import smoke_assets

    return smoke_assets(assets_cache() / "llama_finetome")


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_assets):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_assets["model"])
