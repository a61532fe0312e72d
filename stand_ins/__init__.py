"""Generated, learnable stand-ins for the Hub's datasets and models, in the real schemas, so every
recipe runs offline (the smoke presets, the tests, the benchmarks).

No row of a real dataset is copied here: the rows are generated from small rules, so they are
learnable (answers follow from the question) and a sweep shows a real signal between good and bad
hyperparameters. Everything is deterministic in ``seed``. One module per kind of dataset (chat,
sentiment, qa, dialogue, instructions); ``tiny`` builds tiny models of a family's architecture.

Layering: this package may import ``common`` and ``trainers``; nothing in ``common``, ``trainers``,
``search_spaces`` or ``lorasweep`` imports it (only the recipes in ``sweeps/``, ``tests/`` and
``bench/`` do).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from stand_ins.chat import alpaca_rows, alpaca_texts, conversation_texts, finetome_rows, support_chat_rows
from stand_ins.dialogue import dialogsum_rows, dialogue_texts
from stand_ins.instructions import dolly_rows, dolly_texts
from stand_ins.preference import preference_texts, ultrafeedback_rows
from stand_ins.qa import qa_texts, squad_v2_rows
from stand_ins.sentiment import imdb_rows, sentiment_texts, sst2_rows

__all__ = ["alpaca_rows", "alpaca_texts", "conversation_texts", "dialogsum_rows", "dialogue_texts", "dolly_rows",
           "dolly_texts", "finetome_rows", "imdb_rows", "offline_assets", "preference_texts", "qa_texts", "sentiment_texts",
           "squad_v2_rows", "sst2_rows", "support_chat_rows", "ultrafeedback_rows", "write_jsonl"]


def write_jsonl(rows: list[dict], path: str | Path) -> Path:
    """Write atomically: a temp file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


def offline_assets(cache: Path, family: str, rows: list[dict], texts: list[str], data_name: str) -> dict:
    """What a smoke preset trains on: ``rows`` written to ``cache/data_name`` and a tiny model of
    ``family``'s architecture (tokenizer trained on ``texts``, briefly pretrained on them); built
    once, then cached."""
    from stand_ins.tiny import write_tiny_model
    from trainers.families import get_family

    data = cache / data_name
    if not data.exists():
        write_jsonl(rows, data)
    model = write_tiny_model(cache / f"tiny-{family}", get_family(family), texts)
    return {"model": model, "dataset": data}
