"""Schema deltas and migration, on both engines, and refusals that write nothing."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from mizud.store.engines import PostgresEngine, SqliteEngine
from mizud.store.schema import (
    StartupError,
    code_version,
    load_deltas,
    migrate,
    split_statements,
)

NOW = "2026-01-02T03:04:05"


def digest(path: Path) -> str:
    """sha256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_split_statements() -> None:
    """Statements split at line-ending semicolons, comments dropped."""
    text = "-- head\nCREATE TABLE a (x INTEGER); -- tail\n\nCREATE INDEX i\n  ON a (x);\nSELECT 1"
    assert split_statements(text) == ["CREATE TABLE a (x INTEGER)", "CREATE INDEX i\n  ON a (x)", "SELECT 1"]


def test_deltas_expand_per_engine() -> None:
    """Type tokens expand to each engine's types; no token survives."""
    for engine in (SqliteEngine(), PostgresEngine()):
        deltas = load_deltas(engine)
        assert [d.version for d in deltas] == sorted({d.version for d in deltas})
        text = "\n".join(s for d in deltas for s in d.statements)
        assert ":money:" not in text and ":autoid:" not in text
    assert "NUMERIC(20,6)" in "".join(load_deltas(PostgresEngine())[0].statements)
    assert code_version() >= 1


def test_migrate_creates_then_is_a_no_op(database_option: str) -> None:
    """A new database gets every delta; a second start changes nothing."""
    newest = code_version()
    assert migrate(database_option, NOW) == (0, newest)
    assert migrate(database_option, NOW) == (newest, newest)


def test_sqlite_newer_schema_refused_untouched(tmp_path: Path) -> None:
    """A SQLite database newer than the code is refused and left byte-identical."""
    path = tmp_path / "m.sqlite"
    migrate(str(path), NOW)
    connection = sqlite3.connect(path)
    connection.execute("INSERT INTO tb_schema_version VALUES (999, 'future', 'x')")
    connection.commit()
    connection.close()
    before = digest(path)
    with pytest.raises(StartupError, match="schema version 999 is newer than this mizud"):
        migrate(str(path), NOW)
    assert digest(path) == before


def test_postgres_newer_schema_refused(pg_database: str) -> None:
    """A PostgreSQL schema newer than the code is refused without changes."""
    import psycopg2

    migrate(pg_database, NOW)
    with psycopg2.connect(pg_database) as connection, connection.cursor() as cursor:
        cursor.execute("INSERT INTO tb_schema_version VALUES (999, 'future', 'x')")
    with pytest.raises(StartupError, match="newer than this mizud"):
        migrate(pg_database, NOW)
    with psycopg2.connect(pg_database) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM tb_schema_version")
        assert cursor.fetchone()[0] == len(load_deltas(PostgresEngine())) + 1


def test_sqlite_missing_directory(tmp_path: Path) -> None:
    """A path in a missing directory is refused and nothing is created."""
    target = tmp_path / "nope" / "m.sqlite"
    with pytest.raises(StartupError, match="does not exist"):
        migrate(str(target), NOW)
    assert not (tmp_path / "nope").exists()


def test_sqlite_path_is_a_directory(tmp_path: Path) -> None:
    """A directory given as the database is refused."""
    with pytest.raises(StartupError, match="is a directory"):
        migrate(str(tmp_path), NOW)


def test_sqlite_foreign_file_refused_untouched(tmp_path: Path) -> None:
    """A file that is not a SQLite database is refused and not modified."""
    path = tmp_path / "notes.txt"
    path.write_bytes(b"this is not a database\n" * 100)
    before = digest(path)
    with pytest.raises(StartupError, match="file is not a database"):
        migrate(str(path), NOW)
    assert digest(path) == before


def test_postgres_unreachable() -> None:
    """An unreachable PostgreSQL is one clear line."""
    with pytest.raises(StartupError) as caught:
        migrate("postgresql://mizud:pw@127.0.0.1:1/mizud", NOW)
    assert str(caught.value).startswith("cannot connect to PostgreSQL:")
    assert "\n" not in str(caught.value)
