"""Benchmarks behind `smoe bench` (layer, train, parallel) and the skewed-stream balancing check."""

from __future__ import annotations

import json
from pathlib import Path


def write_json(path: str | None, records: object) -> None:
    """Write a benchmark's records to `path` as indented JSON (nothing when path is None)."""
    if path:
        Path(path).write_text(json.dumps(records, indent=1))
