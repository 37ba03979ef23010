"""docs/api.md is the registry's own listing, kept current."""

from __future__ import annotations

from pathlib import Path

from mizud.api.docs import render
from mizud.api.functions import build_registry

DOC = Path(__file__).resolve().parent.parent / "docs" / "api.md"


def test_api_md_is_current() -> None:
    """The committed docs/api.md equals what the registry generates."""
    assert DOC.read_text() == render(), "run: python -m mizud.api.docs > docs/api.md"


def test_every_function_is_listed_with_status() -> None:
    """Every registered function has a row saying implemented or not supported."""
    text = DOC.read_text()
    for function in build_registry():
        assert f"| {function.name} |" in text
        assert function.status in text
