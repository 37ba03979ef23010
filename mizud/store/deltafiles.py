"""The schema as the delta files describe it: the deltas of each engine, the tables they leave, the
columns declared with a type token, the newest version.  Read by the migration (L{mizud.store.schema})
and by the steps that run inside it (L{mizud.store.defaults})."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

from .engines import Engine, PostgresEngine, SqliteEngine


@dataclass(frozen=True)
class Delta:
    """One schema delta: its number, name and SQL statements for one engine."""

    version: int
    name: str
    statements: tuple[str, ...]


_DELTA_NAME = re.compile(r"^(\d+)_([a-z0-9_]+)\.sql(?:\.(sqlite|postgres))?$")


def split_statements(text: str) -> list[str]:
    """Split SQL text into statements, dropping C{--} comments."""
    lines = [line.split("--", 1)[0] for line in text.splitlines()]
    statements = []
    current: list[str] = []
    for line in lines:
        current.append(line)
        if line.rstrip().endswith(";"):
            statement = "\n".join(current).strip().rstrip(";").strip()
            if statement:
                statements.append(statement)
            current = []
    rest = "\n".join(current).strip()
    if rest:
        statements.append(rest)
    return statements


def load_deltas(engine: Engine) -> list[Delta]:
    """Return this engine's deltas in version order."""
    wanted = "postgres" if isinstance(engine, PostgresEngine) else "sqlite"
    found: dict[int, list[tuple[str, str]]] = {}
    folder = resources.files("mizud.store") / "deltas"
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        match = _DELTA_NAME.match(entry.name)
        if not match:
            continue
        version, name, only = int(match.group(1)), match.group(2), match.group(3)
        if only and only != wanted:
            continue
        found.setdefault(version, []).append((name, entry.read_text(encoding="utf-8")))
    deltas = []
    for version in sorted(found):
        parts = found[version]
        statements: list[str] = []
        for _, text in parts:
            statements.extend(split_statements(engine.ddl(text)))
        deltas.append(Delta(version, parts[0][0], tuple(statements)))
    return deltas


_TABLE = re.compile(r"CREATE TABLE (\w+)\s*\((.*?)\n\);", re.S | re.I)


def typed_columns(token: str) -> dict[str, frozenset[str]]:
    """The columns of each table declared with a type token (C{:money:}, C{:timestamp:}) in the deltas."""
    added = re.compile(rf"ALTER TABLE (\w+) ADD COLUMN (\w+) {re.escape(token)}", re.I)
    column = re.compile(rf"^\s*(\w+) {re.escape(token)}", re.M)
    found: dict[str, set[str]] = {}
    folder = resources.files("mizud.store") / "deltas"
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not _DELTA_NAME.match(entry.name):
            continue
        text = entry.read_text(encoding="utf-8")
        for table, body in _TABLE.findall(text):
            found.setdefault(table.lower(), set()).update(c.lower() for c in column.findall(body))
        for table, name in added.findall(text):
            found.setdefault(table.lower(), set()).add(name.lower())
    return {table: frozenset(columns) for table, columns in found.items() if columns}


def money_columns() -> dict[str, frozenset[str]]:
    """The columns of each table that hold money (declared C{:money:} in the deltas)."""
    return typed_columns(":money:")


_CREATED = re.compile(r"^\s*CREATE TABLE (?:IF NOT EXISTS )?(\w+)", re.I)
_DROPPED = re.compile(r"^\s*DROP TABLE (?:IF EXISTS )?(\w+)", re.I)
_RENAMED = re.compile(r"^\s*ALTER TABLE (\w+) RENAME TO (\w+)", re.I)


def own_tables(engine: Engine | None = None) -> list[str]:
    """The tables mizud's deltas leave in the database (created, not dropped, under their last name)."""
    names: list[str] = []
    for delta in load_deltas(engine or SqliteEngine()):
        for statement in delta.statements:
            if created := _CREATED.match(statement):
                names.append(created.group(1).lower())
            elif dropped := _DROPPED.match(statement):
                names.remove(dropped.group(1).lower())
            elif renamed := _RENAMED.match(statement):
                names[names.index(renamed.group(1).lower())] = renamed.group(2).lower()
    return names


def code_version(engine: Engine | None = None) -> int:
    """The newest schema version this code knows."""
    deltas = load_deltas(engine or SqliteEngine())
    return deltas[-1].version if deltas else 0
