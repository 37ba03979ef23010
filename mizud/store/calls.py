"""Live calls (tb_calls) and their CDRs (tb_cdrs): the rows the call control writes.

A call's row is inserted in the transaction that holds its money (or alone
when nothing is held), marked connected when both legs are up, and deleted
in the transaction that writes its CDRs and settles the hold: the row going
away with the CDRs is what makes a retried settlement find its work done.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from .database import Database, Txn


class AlreadySettled(Exception):
    """The call's live-call row is gone: its settlement committed before."""


async def insert_call(txn: Txn, userid: int, kind: str, anum: str, bnum: str, cnum: str, holdid: int, held: Decimal,
                      sipcallida: str, sipcallidb: str, created: datetime, node: str) -> int:
    """Insert a live call in state C{calling} inside C{txn}; its id."""
    row = await txn.execute(
        "INSERT INTO tb_calls (userid, kind, anum, bnum, cnum, state, holdid, held, sipcallida, sipcallidb, "
        "created, node) VALUES (?, ?, ?, ?, ?, 'calling', ?, ?, ?, ?, ?, ?) RETURNING id",
        (userid, kind, anum[:64], bnum[:64], cnum[:64], holdid, held, sipcallida, sipcallidb, created, node))
    return int(row.rows[0][0])


async def insert_cdrs(txn: Txn, rows: list[dict[str, Any]]) -> list[int]:
    """Insert CDR rows (column name -> value) inside C{txn}; their ids."""
    ids = []
    for row in rows:
        names = sorted(row)
        result = await txn.execute(
            f"INSERT INTO tb_cdrs ({', '.join(names)}) VALUES ({', '.join('?' * len(names))}) RETURNING id",
            tuple(row[name] for name in names))
        ids.append(int(result.rows[0][0]))
    return ids


async def close_call(txn: Txn, callid: int, rows: list[dict[str, Any]]) -> list[int]:
    """Delete the live call and write its CDRs inside C{txn}; their ids.  Raises L{AlreadySettled} when the
    row is gone (an earlier attempt committed)."""
    if not (await txn.execute("DELETE FROM tb_calls WHERE id = ? RETURNING id", (callid,))).rows:
        raise AlreadySettled(callid)
    return await insert_cdrs(txn, rows)


async def end_call(txn: Txn, callid: int, rows: list[dict[str, Any]]) -> list[int]:
    """Delete the live call if it is still there and write its CDRs inside C{txn} (a call whose holds
    another node released: its row must not outlive it); the CDRs' ids."""
    await txn.execute("DELETE FROM tb_calls WHERE id = ?", (callid,))
    return await insert_cdrs(txn, rows)


@dataclass(frozen=True)
class LiveCall:
    """One row of tb_calls, with the caller's username."""

    id: int
    username: str
    kind: str
    anum: str
    bnum: str
    state: str
    held: Decimal
    node: str
    created: datetime | None
    connected: datetime | None


class CallRows:
    """The live-call and CDR statements run on their own (the rest run inside a money transaction)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def listing(self, userid: int | None = None) -> list[LiveCall]:
        """The live calls of every node (of one user, with C{userid}), oldest first."""
        where, params = ("", ()) if userid is None else (" WHERE c.userid = ?", (userid,))
        rows = (await self.db.run_query(
            "live_calls",
            "SELECT c.id, u.username, c.kind, c.anum, c.bnum, c.state, c.held, c.node, c.created, c.connected "
            f"FROM tb_calls c LEFT JOIN tb_users u ON u.id = c.userid{where} ORDER BY c.id", params)).rows
        engine = self.db.engine
        return [LiveCall(int(r[0]), r[1] or "", r[2], r[3], r[4], r[5], engine.money(r[6]), r[7], engine.time(r[8]),
                         engine.time(r[9])) for r in rows]

    async def connected(self, callid: int, now: datetime) -> None:
        """Both legs are up."""
        await self.db.run_statement(
            "call_connected", "UPDATE tb_calls SET state = 'connected', connected = ? WHERE id = ?", (now, callid))

    async def is_live(self, callid: int) -> bool:
        """Whether the call's row is still there (its settlement has not committed)."""
        found = await self.db.run_query("call_live", "SELECT id FROM tb_calls WHERE id = ?", (callid,))
        return bool(found.rows)

    async def cdr_ids(self, callid: int) -> list[int]:
        """The ids of the call's CDRs, in order."""
        found = await self.db.run_query("call_cdr_ids", "SELECT id FROM tb_cdrs WHERE callid = ? ORDER BY id",
                                        (callid,))
        return [int(row[0]) for row in found.rows]

    async def hold_status(self, holdid: int) -> int | None:
        """The status of a hold (L{mizud.store.billing.HOLD_SETTLED} and the others), None if there is none."""
        row = (await self.db.run_query("hold_status", "SELECT status FROM tb_holds WHERE id = ?", (holdid,))).one()
        return int(row[0]) if row is not None else None
