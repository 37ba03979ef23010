"""SQLite's writer thread: group commit, savepoint isolation, commit failure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet import reactor as global_reactor

from mizud.store.database import DatabaseError, SqliteDatabase, Txn
from mizud.store.schema import migrate


async def open_db(tmp_path: Path, batch: int = 256) -> SqliteDatabase:
    """A migrated, open SQLite database with a scratch table."""
    path = str(tmp_path / "g.sqlite")
    migrate(path, "2026-01-01")
    db = SqliteDatabase(path, global_reactor, max_batch=batch)
    await db.start()
    await db.run_statement("create", "CREATE TABLE t (x INTEGER NOT NULL)")
    return db


async def insert(txn: Txn, value: int) -> int:
    """Insert one row."""
    await txn.execute("INSERT INTO t (x) VALUES (?)", (value,))
    return value


async def insert_then_fail(txn: Txn, value: int) -> int:
    """Insert a row, then fail: the row must not survive."""
    await txn.execute("INSERT INTO t (x) VALUES (?)", (value,))
    raise ValueError("refused")


async def rows(db: SqliteDatabase) -> list[int]:
    """The values in the scratch table."""
    return sorted(r[0] for r in (await db.run_statement("read", "SELECT x FROM t")).rows)


@pytest_twisted.ensureDeferred
async def test_queued_transactions_share_commits(tmp_path: Path) -> None:
    """Transactions queued together commit in fewer commits, each answered."""
    db = await open_db(tmp_path)
    commits = db.commits
    results = await defer.gatherResults([defer.ensureDeferred(_run(db, insert, i)) for i in range(200)])
    assert results == list(range(200))
    assert db.commits - commits < 200
    assert await rows(db) == list(range(200))
    await db.close()


async def _run(db: SqliteDatabase, func: Any, *args: Any) -> Any:
    return await db.run_interaction(func.__name__, func, *args)


@pytest_twisted.ensureDeferred
async def test_failed_transaction_rolls_back_only_itself(tmp_path: Path) -> None:
    """A transaction that raises inside a batch leaves the others committed."""
    db = await open_db(tmp_path)
    calls = [defer.ensureDeferred(_run(db, insert_then_fail if i == 5 else insert, i)) for i in range(10)]
    outcomes = await defer.DeferredList(calls, consumeErrors=True)
    assert [ok for ok, _ in outcomes] == [i != 5 for i in range(10)]
    assert outcomes[5][1].check(ValueError)
    assert await rows(db) == [i for i in range(10) if i != 5]
    await db.close()


async def orphan_ledger_row(txn: Txn) -> None:
    """Defer foreign keys, then write a row whose commit must fail."""
    await txn.execute("PRAGMA defer_foreign_keys = ON")
    await txn.execute(
        "INSERT INTO tb_credits (userid, amount, balance, kind, created) VALUES (999, 1, 1, 'x', 'now')"
    )


@pytest_twisted.ensureDeferred
async def test_commit_failure_fails_every_caller(tmp_path: Path) -> None:
    """When the group's COMMIT fails, every caller in it gets an error and nothing is kept."""
    db = await open_db(tmp_path)
    calls = [defer.ensureDeferred(_run(db, insert, i)) for i in range(3)]
    calls.append(defer.ensureDeferred(_run(db, orphan_ledger_row)))
    outcomes = await defer.DeferredList(calls, consumeErrors=True)
    assert all(not ok and failure.check(DatabaseError) for ok, failure in outcomes)
    assert await rows(db) == []
    assert await _run(db, insert, 7) == 7  # the writer carries on
    await db.close()


@pytest_twisted.ensureDeferred
async def test_awaiting_anything_else_is_refused(tmp_path: Path) -> None:
    """A transaction function may await only txn.execute."""
    db = await open_db(tmp_path)

    async def waits(txn: Txn) -> None:
        await defer.Deferred()

    with pytest.raises(RuntimeError, match="awaited something other than txn.execute"):
        await db.run_interaction("waits", waits)
    await db.close()


@pytest_twisted.ensureDeferred
async def test_close_finishes_queued_work(tmp_path: Path) -> None:
    """close() lets queued transactions commit, then refuses new ones."""
    db = await open_db(tmp_path)
    calls = [defer.ensureDeferred(_run(db, insert, i)) for i in range(50)]
    await db.close()
    assert len(await defer.gatherResults(calls)) == 50
    with pytest.raises(DatabaseError):
        await db.run_interaction("late", insert, 1)
