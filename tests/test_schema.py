"""Schema deltas and migration, on both engines, and refusals that write nothing."""

from __future__ import annotations

import hashlib
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from mizud.store.defaults import with_defaults
from mizud.store.engines import PostgresEngine, SqliteEngine
from mizud.store.schema import (
    StartupError,
    code_version,
    load_deltas,
    migrate,
    own_tables,
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


def _connect(database: str) -> Any:
    """A plain DB-API connection to a migrated test database (autocommit on PostgreSQL)."""
    if database.startswith("postgresql://"):
        import psycopg2

        connection = psycopg2.connect(database)
        connection.autocommit = True
        return connection
    return sqlite3.connect(database, isolation_level=None)


#: The required columns that keep no default: keys, unique columns and references to other rows.
IDENTIFYING = {
    ("tb_api", "fname"), ("tb_nodes", "name"), ("tb_presence", "userid"), ("tb_serverkeys", "name"),
    ("tb_credits", "userid"), ("tb_holds", "userid"), ("tb_moneyops", "txid"),
    ("tb_moneyops", "userid"), ("tb_nonceuse", "authmd5"), ("tb_nonceuse", "nonce"),
    ("tb_phonenumbers", "number"), ("tb_pins", "pin"), ("tb_registrations", "contact"),
    ("tb_registrations", "userid"), ("tb_tariffs", "prefix"), ("tb_tariffs", "tariffid"),
    ("tb_usernumbers", "kind"), ("tb_usernumbers", "number"), ("tb_usernumbers", "userid"),
    ("tb_users", "username"), ("tb_websessions", "userid"),
}


def required_without_default(connection: Any, database: str) -> set[tuple[str, str]]:
    """The (table, column) pairs of mizud's tables that an INSERT must name."""
    cursor = connection.cursor()
    found = set()
    for table in own_tables():
        if database.startswith("postgresql://"):
            cursor.execute("SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
                           "AND table_name = %s AND is_nullable = 'NO' AND column_default IS NULL "
                           "AND is_identity = 'NO'", (table,))
            found.update((table, row[0]) for row in cursor.fetchall())
        else:
            cursor.execute(f"PRAGMA table_info({table})")
            # Keys too (SQLite reports a key as nullable unless declared NOT NULL); id is every table's own.
            found.update((table, row[1]) for row in cursor.fetchall()
                         if (row[3] or row[5]) and row[4] is None and row[1] != "id")
    return found


def test_the_specs_minimal_inserts_work(database_option: str) -> None:
    """The spec's own example INSERT of a user works, as do minimal INSERTs of PINs, numbers, tariffs and bans;
    the opening balance enters the ledger; only identifying columns stay required (issue 16, item 10)."""
    migrate(database_option, NOW)
    connection = _connect(database_option)
    cursor = connection.cursor()
    assert required_without_default(connection, database_option) == IDENTIFYING
    cursor.execute("insert into tb_users (type, username, password, name, email, credit, postpaid) "
                   "values (0, 'bob', 'bobpw', 'Bob', 'bob@example.com', 10, 0)")
    cursor.execute("insert into tb_pins (pin, credit) values ('1234567890', 5)")
    cursor.execute("insert into tb_phonenumbers (number) values ('3612345')")
    cursor.execute("insert into tb_tariffs (tariffid, prefix, price) values (1, '36', 2)")
    cursor.execute("insert into tb_banned (kind, value) values ('ip', '192.0.2.9')")
    cursor.execute("SELECT u.credit, c.amount, c.balance, c.kind, u.created FROM tb_users u "
                   "JOIN tb_credits c ON c.userid = u.id WHERE u.username = 'bob'")
    credit, amount, balance, kind, created = cursor.fetchone()
    assert credit == amount == balance and kind == "initial"
    made = created if isinstance(created, datetime) else datetime.fromisoformat(created)
    assert abs(made - datetime.now(timezone.utc).replace(tzinfo=None)) < timedelta(minutes=1)
    cursor.execute("SELECT until FROM tb_banned")
    assert str(cursor.fetchone()[0]).startswith("9999-12-31")
    cursor.execute("SELECT count(*) FROM tb_users u JOIN tb_credits c ON c.userid = u.id")
    assert cursor.fetchone()[0] == 1
    connection.close()


def test_defaults_reach_a_database_that_has_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A SQLite database of version 15 with rows is upgraded in place: its rows stay, the file checks out,
    and minimal INSERTs work afterwards."""
    import mizud.store.schema as schema

    path = str(tmp_path / "old.sqlite")
    every = schema.load_deltas
    monkeypatch.setattr(schema, "load_deltas", lambda engine: [d for d in every(engine) if d.version < 16])
    assert migrate(path, NOW)[1] == 15
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("INSERT INTO tb_users (username, password, created) VALUES ('old', 'pw', '2025-01-01 00:00:00')")
    with pytest.raises(sqlite3.IntegrityError):
        connection.execute("INSERT INTO tb_pins (pin) VALUES ('1')")
    connection.close()
    monkeypatch.setattr(schema, "load_deltas", every)
    assert migrate(path, NOW) == (15, code_version())
    connection = sqlite3.connect(path, isolation_level=None)
    assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert connection.execute("SELECT username, created FROM tb_users").fetchall() == [("old", "2025-01-01 00:00:00")]
    connection.execute("INSERT INTO tb_pins (pin) VALUES ('1')")
    assert connection.execute("SELECT credit, currency FROM tb_pins").fetchall() == [(0, "USD")]
    connection.close()


def test_with_defaults_edits_only_the_named_columns() -> None:
    """Column definitions are found at the top level of the statement, past nested parentheses and quotes."""
    create = "CREATE TABLE t (\n    id INTEGER PRIMARY KEY,\n    a TEXT NOT NULL CHECK (a <> ','),\n    b INTEGER NOT NULL\n)"
    assert with_defaults(create, {"a": "''", "b": "0"}) == (
        "CREATE TABLE t (\n    id INTEGER PRIMARY KEY,\n    a TEXT NOT NULL CHECK (a <> ',') DEFAULT '',\n"
        "    b INTEGER NOT NULL DEFAULT 0\n)")
    with pytest.raises(StartupError):
        with_defaults(create, {"c": "0"})
