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


def test_mypy_strict_finds_only_calls_into_untyped_libraries() -> None:
    """Under --strict, the only errors left are calls into Twisted's and autobahn's untyped functions
    (no-untyped-call): mizud's own code returns what it declares and ignores nothing it need not."""
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "mizud"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode in (0, 1), result.stdout + result.stderr
    assert result.stdout.strip().splitlines()[-1].startswith(("Success:", "Found ")), result.stdout[-500:]
    errors = [line for line in result.stdout.splitlines() if ": error: " in line]
    others = [line for line in errors if not line.endswith("[no-untyped-call]")]
    assert others == []
