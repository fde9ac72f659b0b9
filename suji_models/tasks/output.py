"""Prediction files: JSONL, one record per line, UTF-8 kept readable (no \\u escapes)."""

from __future__ import annotations

import json
from pathlib import Path


def write_jsonl(path, records) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path
