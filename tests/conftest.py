"""Shared fixtures: a fresh billing store on each engine.

SQLite runs always.  PostgreSQL runs when MIZUD_TEST_POSTGRES holds a DSN of
a database the tests may create schemas in (CI sets it); each test gets its
own schema, dropped afterwards.  With MIZUD_REQUIRE_POSTGRES=1 a missing DSN
fails instead of skipping, so CI cannot pass without the second engine.
"""

from __future__ import annotations

import os
import uuid
from typing import Any, AsyncIterator, Iterator
from urllib.parse import quote

import pytest
import pytest_twisted
from twisted.internet import reactor as global_reactor
from twisted.internet.task import Clock

from mizud.store.billing import BillingStore
from mizud.store.database import Database, open_database
from mizud.store.schema import migrate

#: Fixed test time: 2026-01-02 03:04:05 UTC.
T0 = 1767323045.0


def postgres_dsn() -> str | None:
    """The test PostgreSQL DSN, or skip (or fail in CI) without one."""
    dsn = os.environ.get("MIZUD_TEST_POSTGRES")
    if not dsn:
        if os.environ.get("MIZUD_REQUIRE_POSTGRES") == "1":
            pytest.fail("MIZUD_REQUIRE_POSTGRES=1 but MIZUD_TEST_POSTGRES is not set")
        pytest.skip("PostgreSQL tests need MIZUD_TEST_POSTGRES (a DSN); CI sets it")
    return dsn


def _with_search_path(dsn: str, schema: str) -> str:
    joiner = "&" if "?" in dsn else "?"
    return f"{dsn}{joiner}options={quote(f'-csearch_path={schema}')}"


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A DSN whose search_path is a fresh, empty schema (dropped afterwards)."""
    import psycopg2

    dsn = postgres_dsn()
    assert dsn is not None
    schema = "t_" + uuid.uuid4().hex[:12]
    admin = psycopg2.connect(dsn)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f"CREATE SCHEMA {schema}")
    try:
        yield _with_search_path(dsn, schema)
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f"DROP SCHEMA {schema} CASCADE")
        admin.close()


@pytest.fixture
def sqlite_database(tmp_path: Any) -> str:
    """A path for a new SQLite database file."""
    return str(tmp_path / "mizud.sqlite")


@pytest.fixture(params=["sqlite", "postgresql"])
def database_option(request: Any) -> str:
    """The C{database} option value of an empty database, on each engine."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_database")  # type: ignore[no-any-return]
    return request.getfixturevalue("pg_database")  # type: ignore[no-any-return]


@pytest.fixture
def clock() -> Clock:
    """A fake clock set to L{T0}."""
    clock = Clock()
    clock.advance(T0)
    return clock


@pytest_twisted.async_yield_fixture
async def db(database_option: str) -> AsyncIterator[Database]:
    """An open, migrated database on each engine."""
    migrate(database_option, "2026-01-02T03:04:05")
    database = open_database(database_option, global_reactor, pool_size=8)
    await database.start()
    yield database
    await database.close()


@pytest.fixture
def store(db: Database, clock: Clock) -> BillingStore:
    """A billing store on each engine, its time from the fake clock."""
    return BillingStore(db, clock)
