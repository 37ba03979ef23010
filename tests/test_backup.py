"""Backups and restores on both engines (SQLite's online backup API, pg_dump and pg_restore)."""

from __future__ import annotations

import os
import stat
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor

from mizud.store.backup import Backups, BackupError
from mizud.store.billing import BillingStore
from mizud.store.database import Database


def backups_in(db: Database, folder: Path) -> Backups:
    """Backups of C{db} into C{folder} (created), named at a fixed time."""
    folder.mkdir(exist_ok=True)
    return Backups(db, str(folder), lambda: datetime(2026, 12, 3, 10, 0, 0), reactor)


@pytest_twisted.ensureDeferred
async def test_backup_then_restore_brings_back_the_content(db: Database, store: BillingStore, tmp_path: Path) -> None:
    """A backup is one consistent state: changes made after it are gone after the restore, the ledger
    still sums to every balance, and the file is readable by its owner only."""
    alice = await store.create_user("alice", "pw", credit="10")
    backups = backups_in(db, tmp_path / "backups")
    path = await backups.backup()
    assert os.path.dirname(path) == str(tmp_path / "backups")
    assert os.path.basename(path).startswith(f"mizud-{db.engine.name}-20261203-100000.")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    await store.debit(alice, "4")
    await store.create_user("bob", "pw")
    assert await store.balance(alice) == Decimal("6")
    await backups.restore(os.path.basename(path))
    assert await store.balance(alice) == Decimal("10")
    assert await store.find_user("bob") is None
    assert await store.audit() == []
    # Writes go on after a restore, through the same connections.
    await store.debit(alice, "1")
    assert await store.balance(alice) == Decimal("9")
    assert [f.name for f in backups.listing()] == [os.path.basename(path)]
    if db.engine.name == "sqlite":
        assert (await db.run_query("mode", "PRAGMA journal_mode")).rows == [("wal",)]


@pytest_twisted.ensureDeferred
async def test_names_stay_inside_the_backup_directory(db: Database, tmp_path: Path) -> None:
    """A name with a directory part, a hidden name, an existing file and a missing directory are refused
    before anything is written or read."""
    backups = Backups(db, str(tmp_path / "backups"), datetime.now, reactor)
    with pytest.raises(BackupError, match="does not exist"):
        await backups.backup()
    (tmp_path / "backups").mkdir()
    for name in ("../escape", "/etc/passwd", ".hidden", "a/b", ""):
        with pytest.raises(BackupError):
            await backups.restore(name)
    for name in ("../escape", "/tmp/x", ".hidden"):
        with pytest.raises(BackupError, match="file name"):
            await backups.backup(name)
    assert not (tmp_path / "escape").exists()
    await backups.backup("first")
    with pytest.raises(BackupError, match="never overwrites"):
        await backups.backup("first")
    with pytest.raises(BackupError, match="no backup named"):
        await backups.restore("second")
    (tmp_path / "backups" / "linked").symlink_to(tmp_path / "backups" / "first")
    with pytest.raises(BackupError, match="symbolic link"):
        await backups.restore("linked")
    assert Backups(db, "", datetime.now, reactor).folder == ""
    with pytest.raises(BackupError, match="set the backupdir option"):
        await Backups(db, "", datetime.now, reactor).backup()


@pytest_twisted.ensureDeferred
async def test_a_backup_of_another_schema_version_is_refused(db: Database, store: BillingStore,
                                                              tmp_path: Path) -> None:
    """A backup holding a schema version other than this code's is refused and nothing changes."""
    await db.run_statement("v", "INSERT INTO tb_schema_version (version, name, applied) VALUES (999, 'future', ?)",
                           ("2026-12-03T10:00:00",))
    backups = backups_in(db, tmp_path)
    path = await backups.backup("future")
    await db.run_statement("v", "DELETE FROM tb_schema_version WHERE version = 999")
    uid = await store.create_user("carol", "pw")
    with pytest.raises(BackupError, match="schema version 999"):
        await backups.restore(os.path.basename(path))
    assert (await store.get_user(uid)) is not None


@pytest_twisted.ensureDeferred
async def test_a_file_that_is_no_backup_is_refused(db: Database, store: BillingStore, tmp_path: Path) -> None:
    """Random bytes in the backup directory are refused as a backup; the database is untouched."""
    (tmp_path / "junk").write_bytes(os.urandom(8192))
    uid = await store.create_user("dave", "pw")
    with pytest.raises(BackupError):
        await backups_in(db, tmp_path).restore("junk")
    assert (await store.get_user(uid)) is not None


@pytest_twisted.ensureDeferred
async def test_reset_replaces_the_connections(db: Database, store: BillingStore) -> None:
    """reset opens new connections; work before and after it succeeds."""
    uid = await store.create_user("erin", "pw", credit="3")
    assert await db.reset() >= 1
    await store.debit(uid, "1")
    assert await store.balance(uid) == Decimal("2")
    await db.run_outside("vacuum", "VACUUM")
    assert await store.audit() == []
