"""Several nodes on one database: heartbeats, and the held funds of nodes that died.

Every node writes its heartbeat into tb_nodes every L{BEAT} seconds.  A
node whose heartbeat is older than C{nodedeadafter} is dead.  Its open holds
(tb_holds.node) are released by whichever live node sweeps first, each in
one transaction with the removal of the call it paid for (tb_calls) and a
CDR per leg saying the node died.  The holds are closed by a conditional
update, so two nodes sweeping at once release each hold once.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from twisted.logger import Logger

from .billing import HOLD_OPEN, BillingStore
from .database import Txn
from .money import HoldClosed

log = Logger()

#: Seconds between heartbeats.
BEAT = 10.0


class Nodes:
    """This node's heartbeat and the sweep of dead nodes' holds."""

    def __init__(self, store: BillingStore, name: str) -> None:
        self.store = store
        self.db = store.db
        self.name = name
        self.started: datetime | None = None
        #: Since when this node's heartbeats have all succeeded (None: the last one failed).
        self.healthy_since: float | None = None

    async def beat(self) -> None:
        """Say this node is alive."""
        now = self.store.now()
        if self.started is None:
            self.started = now
        try:
            await self._beat(now)
        except Exception:
            self.healthy_since = None
            raise
        if self.healthy_since is None:
            self.healthy_since = self.store.clock.seconds()

    async def _beat(self, now: datetime) -> None:

        async def beat_txn(txn: Txn) -> None:
            updated = await txn.execute("UPDATE tb_nodes SET seen = ?, started = ? WHERE name = ? RETURNING name",
                                        (now, self.started, self.name))
            if not updated.rows:
                await txn.execute("INSERT INTO tb_nodes (name, started, seen) VALUES (?, ?, ?)",
                                  (self.name, self.started, now))

        await self.db.run_interaction("node_beat", beat_txn)

    async def dead(self, after: float) -> list[str]:
        """The nodes not heard of for C{after} seconds (never this one)."""
        limit = self.store.now() - timedelta(seconds=after)
        result = await self.db.run_query("dead_nodes", "SELECT name FROM tb_nodes WHERE seen < ? AND name <> ?",
                                         (limit, self.name))
        return [str(row[0]) for row in result.rows]

    async def sweep(self, after: float) -> int:
        """Release the open holds of dead nodes and end their free calls; returns how many.

        Only a node whose own heartbeats have all succeeded for C{after}
        seconds sweeps: after a database outage every node's heartbeat is
        old, and each node must first have had the time to beat again.  The
        release re-checks, in its transaction, that the owner is still silent.
        """
        if self.healthy_since is None or self.store.clock.seconds() - self.healthy_since < after:
            return 0
        released = 0
        for node in await self.dead(after):
            holds = await self.db.run_query(
                "dead_holds", "SELECT id FROM tb_holds WHERE node = ? AND status = ? ORDER BY id", (node, HOLD_OPEN))
            for (holdid,) in holds.rows:
                limit = self.store.now() - timedelta(seconds=after)
                try:
                    await self.store.release(int(holdid), then=_end_calls(self.store, int(holdid), node, limit))
                except (HoldClosed, StillAlive):
                    continue  # closed first by another node or by its owner, or the owner beat again
                released += 1
                log.warn("node {node} is dead: hold {hold} released by {me}", node=node, hold=holdid, me=self.name)
            limit = self.store.now() - timedelta(seconds=after)
            released += await end_free_calls(self.store, node, limit, limit)
        return released


class StillAlive(Exception):
    """The node beat again: its hold is not released (the transaction rolls back)."""


async def release_own(store: BillingStore, name: str, before: datetime) -> int:
    """At start: release this node's holds opened before it started (it stopped with them open) and end its
    free calls begun before then."""
    holds = await store.db.run_query(
        "own_stale_holds", "SELECT id FROM tb_holds WHERE node = ? AND status = ? AND created < ? ORDER BY id",
        (name, HOLD_OPEN, before))
    released = 0
    for (holdid,) in holds.rows:
        try:
            await store.release(int(holdid), then=_end_calls(store, int(holdid), name, None))
        except HoldClosed:
            continue
        released += 1
    released += await end_free_calls(store, name, before)
    if released:
        log.warn("released {count} holds left open when this node ({me}) last stopped", count=released, me=name)
    return released


def _end_calls(store: BillingStore, holdid: int, node: str, limit: datetime | None) -> Any:
    """The work done with a dead node's hold: its live call's row goes, each leg gets a CDR saying why.
    With C{limit}, the node must not have beaten since then (else L{StillAlive} rolls it all back)."""

    async def end(txn: Txn, _: int) -> None:
        if limit is not None:
            silent = await txn.execute("SELECT name FROM tb_nodes WHERE name = ? AND seen < ?", (node, limit))
            if not silent.rows:
                raise StillAlive(node)
        # An SMS paid by the hold was never confirmed: it failed (its price comes back with the hold).
        await txn.execute("UPDATE tb_sms SET status = 'failed', reason = ?, finished = ? WHERE holdid = ? "
                          "AND status = 'pending'", (f"node {node} stopped before delivery"[:200], store.now(), holdid))
        calls = await txn.execute(
            "DELETE FROM tb_calls WHERE holdid = ? RETURNING id, userid, anum, bnum, sipcallida, sipcallidb, created",
            (holdid,))
        await _dead_cdrs(txn, calls.rows, node)

    return end


async def _dead_cdrs(txn: Txn, calls: Any, node: str) -> None:
    """A CDR per leg of each call of a dead node (deleted tb_calls rows), saying so."""
    for callid, userid, anum, bnum, sipcallida, sipcallidb, created in calls:
        for leg, caller, number, sipcallid in (("A", "", anum, sipcallida), ("B", anum, bnum, sipcallidb)):
            await txn.execute(
                "INSERT INTO tb_cdrs (datum, callerid, callednumber, userid, duration, cost, sipcallid, "
                "disconnectreason, callid, leg, node) VALUES (?, ?, ?, ?, 0, 0, ?, ?, ?, ?, ?)",
                (created, caller, number, userid, sipcallid, f"node {node} died; call not billed"[:200],
                 callid, leg, node))


async def end_free_calls(store: BillingStore, node: str, before: datetime, limit: datetime | None = None) -> int:
    """Remove a stopped or dead node's free calls (no hold: calls between our users) begun before C{before},
    each with CDRs saying so; how many.  With C{limit}, only while the node has not beaten since then."""

    async def end(txn: Txn) -> int:
        if limit is not None:
            silent = await txn.execute("SELECT name FROM tb_nodes WHERE name = ? AND seen < ?", (node, limit))
            if not silent.rows:
                return 0
        calls = await txn.execute(
            "DELETE FROM tb_calls WHERE node = ? AND holdid = 0 AND created < ? "
            "RETURNING id, userid, anum, bnum, sipcallida, sipcallidb, created", (node, before))
        await _dead_cdrs(txn, calls.rows, node)
        return len(calls.rows)

    return int(await store.db.run_interaction("end_free_calls", end))
