"""Benchmark reports: one JSON file per run (the README's tables are built from them)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_report(report: dict[str, Any], path: str | Path) -> None:
    """Write ``report`` as indented JSON to ``path`` (parents created) and print it."""
    text = json.dumps(report, indent=2)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text + "\n")
    print(text)
