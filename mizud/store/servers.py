"""The rows C{addserver} reads and writes besides the server's account: the routing entry (tb_routing)
a new server joins, the extra tb_users columns it sets, and the server's own routing entry.  The last
two run inside the transaction that creates the account (L{mizud.store.billing.BillingStore.create_user}'s
C{then})."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Mapping

from .database import Database, Txn
from .identifiers import identifier


async def routing_entry_by_id(db: Database, entryid: int) -> tuple[str, str] | None:
    """(name, prefix) of the routing entry C{entryid}, or None when there is none."""
    row = (await db.run_query(
        "routing_entry", "SELECT name, prefix FROM tb_routing WHERE id = ? ORDER BY id", (entryid,))).one()
    return (row[0], row[1]) if row is not None else None


async def routing_entry_named(db: Database, name: str) -> tuple[str, str] | None:
    """(name, prefix) of the oldest routing entry called C{name}, or None when there is none."""
    row = (await db.run_query(
        "routing_entry", "SELECT name, prefix FROM tb_routing WHERE name = ? ORDER BY id", (name,))).one()
    return (row[0], row[1]) if row is not None else None


async def set_user_columns(txn: Txn, userid: int, values: Mapping[str, Any]) -> None:
    """Set tb_users columns (name -> value) of the user inside C{txn}, one statement each in the order of
    the names.  The caller decides which columns may be set; names that are not plain identifiers raise
    L{ValueError} before any is set."""
    changes = sorted(values.items())
    for column, _ in changes:
        identifier(column)
    for column, value in changes:
        await txn.execute(f"UPDATE tb_users SET {column} = ? WHERE id = ?", (value, userid))


async def insert_route(txn: Txn, name: str, prefix: str, serverid: int, priority: int, created: datetime) -> None:
    """Add an enabled routing entry to the server C{serverid} inside C{txn}."""
    await txn.execute(
        "INSERT INTO tb_routing (name, prefix, serverid, priority, enabled, created) VALUES (?, ?, ?, ?, 1, ?)",
        (name, prefix, serverid, priority, created))
