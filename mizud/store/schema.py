"""Versioned schema: numbered delta files applied at start in one transaction.

Deltas live in C{mizud/store/deltas/} as C{NN_name.sql} (both engines),
C{NN_name.sql.sqlite} or C{NN_name.sql.postgres} (one engine).  The applied
version is recorded in C{tb_schema_version}.  An applied delta is never
edited; a change is a new number.

Migration runs before the reactor starts, on a plain blocking DB-API
connection, so that a database that cannot be opened, is unreachable, or is
newer than this code stops the start with one line and a non-zero exit,
having written nothing.
"""

from __future__ import annotations

import os
import sqlite3
from typing import Any, Callable

from .defaults import add_defaults
from ..errors import StartupError
from .deltafiles import (Delta, code_version, load_deltas, money_columns, own_tables, split_statements,
                         typed_columns)
from .engines import Engine, PostgresEngine, SqliteEngine, is_postgres

__all__ = ["Delta", "StartupError", "code_version", "load_deltas", "migrate", "migrate_cursor", "money_columns",
           "own_tables", "split_statements", "steps", "typed_columns"]


_VERSION_TABLE = (
    "CREATE TABLE IF NOT EXISTS tb_schema_version "
    "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied TEXT NOT NULL)"
)


def _has_version_table(cursor: Any, engine: Engine) -> bool:
    if isinstance(engine, PostgresEngine):
        cursor.execute("SELECT to_regclass('tb_schema_version') IS NOT NULL")
    else:
        cursor.execute(
            "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'tb_schema_version'"
        )
    return bool(cursor.fetchone()[0])


def current_version(cursor: Any, engine: Engine) -> int:
    """The schema version recorded in the database (0 for an empty one)."""
    if not _has_version_table(cursor, engine):
        return 0
    cursor.execute("SELECT max(version) FROM tb_schema_version")
    row = cursor.fetchone()
    return int(row[0] or 0)


def steps() -> dict[int, Callable[[Any, Engine], None]]:
    """Deltas whose work SQL alone cannot describe for both engines: a function run on the migration's
    cursor, in its transaction, after the delta's own statements."""
    return {16: add_defaults}


def migrate_cursor(cursor: Any, engine: Engine, now: str) -> tuple[int, int]:
    """Inside an open transaction: check the version and apply pending deltas.

    Returns (version before, version after).  Raises L{StartupError} if the
    database is newer than this code, before writing anything.
    """
    deltas = load_deltas(engine)
    newest = deltas[-1].version if deltas else 0
    before = current_version(cursor, engine)
    if before > newest:
        raise StartupError(
            f"database schema version {before} is newer than this mizud "
            f"(knows up to {newest}); upgrade mizud"
        )
    if before == newest:
        return before, before
    cursor.execute(_VERSION_TABLE)
    extra = steps()
    mark = "%s" if isinstance(engine, PostgresEngine) else "?"
    for delta in deltas:
        if delta.version <= before:
            continue
        for statement in delta.statements:
            cursor.execute(statement)
        step = extra.get(delta.version)
        if step is not None:
            step(cursor, engine)
        cursor.execute(
            f"INSERT INTO tb_schema_version (version, name, applied) VALUES ({mark}, {mark}, {mark})",
            (delta.version, delta.name, now),
        )
    return before, newest


def migrate_sqlite(path: str, now: str) -> tuple[int, int]:
    """Open (creating if needed) and migrate a SQLite database file."""
    folder = os.path.dirname(path) or "."
    if not os.path.isdir(folder):
        raise StartupError(f"cannot open SQLite database {path}: directory {folder} does not exist")
    if os.path.isdir(path):
        raise StartupError(f"cannot open SQLite database {path}: it is a directory")
    engine = SqliteEngine()
    try:
        connection = sqlite3.connect(path, isolation_level=None, timeout=30)
    except sqlite3.Error as error:
        raise StartupError(f"cannot open SQLite database {path}: {error}") from None
    try:
        cursor = connection.cursor()
        try:
            # Read first: a foreign or newer file must be refused unmodified.
            current_version(cursor, engine)
            cursor.execute("BEGIN IMMEDIATE")
            try:
                result = migrate_cursor(cursor, engine, now)
            except BaseException:
                cursor.execute("ROLLBACK")
                raise
            cursor.execute("COMMIT")
            cursor.execute("PRAGMA journal_mode = WAL")
        except sqlite3.Error as error:
            raise StartupError(f"cannot open SQLite database {path}: {error}") from None
        return result
    finally:
        connection.close()


def migrate_postgres(dsn: str, now: str, connect_timeout: int = 10) -> tuple[int, int]:
    """Connect to PostgreSQL and migrate, serialised across nodes by an advisory lock."""
    import psycopg2

    engine = PostgresEngine()
    try:
        connection = psycopg2.connect(dsn, connect_timeout=connect_timeout)
    except psycopg2.Error as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise StartupError(f"cannot connect to PostgreSQL: {first}") from None
    try:
        with connection:  # one transaction: commit on success, roll back on error
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(7297316)")
                return migrate_cursor(cursor, engine, now)
    except psycopg2.Error as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise StartupError(f"cannot migrate the PostgreSQL schema: {first}") from None
    finally:
        connection.close()


def migrate(database: str, now: str) -> tuple[int, int]:
    """Migrate the database named by the C{database} option."""
    if is_postgres(database):
        return migrate_postgres(database, now)
    return migrate_sqlite(database, now)
