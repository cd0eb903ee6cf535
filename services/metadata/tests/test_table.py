"""The committed table module is exactly what the generator makes of the committed table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from orstream.metadata import table

SERVICE = Path(__file__).resolve().parents[1]


def test_generated_module_matches_its_source(tmp_path: Path) -> None:
    out = tmp_path / "e11_table.py"
    subprocess.run(
        [sys.executable, str(SERVICE / "scripts" / "generate_table.py"), "-o", str(out)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    committed = SERVICE / "src" / "orstream" / "metadata" / "e11_table.py"
    assert out.read_text() == committed.read_text(), "regenerate: scripts/generate_table.py"


def test_lookups() -> None:
    assert len(table.ATTRIBUTES) == 617  # 621 rows: 3 repeating-group rows, 1 private row
    assert table.rule_for(0x00100010) is not None and table.rule_for(0x00100010).basic == "Z"
    assert table.rule_for(0x60023000) is not None  # Overlay Data of the second overlay group
    assert table.rule_for(0x00291010) is table.PRIVATE
    assert table.rule_for(0x00280010) is None  # Rows: not in the table, kept
