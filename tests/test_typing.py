"""The package type-checks: annotations everywhere, mypy clean."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_mypy_clean() -> None:
    """mypy finds no errors in mizud and the plugin."""
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "mizud", "twisted/plugins/mizud_plugin.py"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
