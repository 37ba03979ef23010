"""Table and column names that are written into a statement's text (they cannot be bound parameters)."""

from __future__ import annotations

import re

_NAME = re.compile(r"[a-z_][a-z0-9_]*")


def identifier(name: str) -> str:
    """C{name}, checked to be a plain lower-case SQL identifier; raises L{ValueError} otherwise.

    The callers check names against what they allow first: this is the second line, so no caller can pass
    SQL in a name."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"not an identifier: {str(name)[:64]!r}")
    return name
