"""Instant messages kept for their recipients (tb_messages) until a contact accepts them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Callable

from .changes import Change
from .database import Database, Txn


@dataclass(frozen=True, slots=True)
class Stored:
    """One stored message."""

    id: int
    fromuser: str
    body: str


#: The most users this node remembers as having no message waiting (L{MessageRows.pending}).
MAX_NONE_WAITING = 100_000


class MessageRows:
    """The tb_messages statements."""

    def __init__(self, db: Database, now: Callable[[], datetime]) -> None:
        self.db = db
        self.now = now
        #: Users known to have no message waiting that was tried fewer times than the number kept, where the
        #: change feed tells every change of tb_messages (SQLite), so that the check after each registration
        #: costs no statement; a read that raced a change is not kept.
        self._none_waiting: dict[int, int] = {}
        self._generation = 0
        if db.changes.tells("tb_messages"):
            db.changes.watch("tb_messages", self._changed)

    def _changed(self, change: Change) -> None:
        """A message stored for a user changed (C{change.id}: the user; None: anyone's)."""
        self._generation += 1
        if change.id is None:
            self._none_waiting.clear()
        else:
            self._none_waiting.pop(change.id, None)

    async def store(self, fromuser: str, touserid: int, tousername: str, body: str) -> Stored:
        """Keep a message for a user."""
        result = await self.db.run_statement(
            "store_message",
            "INSERT INTO tb_messages (fromuser, touserid, tousername, body, created) VALUES (?, ?, ?, ?, ?) "
            "RETURNING id",
            (fromuser, touserid, tousername, body, self.now()),
        )
        return Stored(int(result.rows[0][0]), fromuser, body)

    async def pending(self, userid: int, attempts: int, limit: int) -> list[Stored]:
        """A user's undelivered messages tried fewer than C{attempts} times, oldest first."""
        feed = self.db.changes
        if self._none_waiting.get(userid, -1) >= attempts and feed.trusted():
            return []
        generation = self._generation
        result = await self.db.run_query(
            "pending_messages",
            "SELECT id, fromuser, body FROM tb_messages WHERE touserid = ? AND delivered IS NULL AND attempts < ? "
            "ORDER BY id LIMIT ?",
            (userid, attempts, limit),
        )
        found = [Stored(int(row[0]), row[1], row[2]) for row in result.rows]
        if not found and generation == self._generation and feed.tells("tb_messages") and feed.trusted():
            if len(self._none_waiting) >= MAX_NONE_WAITING:
                self._none_waiting.clear()
            self._none_waiting[userid] = attempts
        return found

    async def hand_over(self, userid: int, limit: int) -> list[Stored]:
        """Take up to C{limit} of a user's undelivered messages, marking them delivered (each only once, whoever
        else takes them at the same time)."""

        async def hand_over_txn(txn: Txn) -> list[Stored]:
            rows = (await txn.execute(
                "SELECT id, fromuser, body FROM tb_messages WHERE touserid = ? AND delivered IS NULL ORDER BY id LIMIT ?",
                (userid, limit))).rows
            taken = []
            for row in rows:
                done = await txn.execute("UPDATE tb_messages SET delivered = ? WHERE id = ? AND delivered IS NULL",
                                         (self.now(), row[0]))
                if done.rowcount:
                    taken.append(Stored(int(row[0]), row[1], row[2]))
            return taken

        return await self.db.run_interaction("hand_over_messages", hand_over_txn)

    async def attempted(self, messageid: int) -> None:
        """One more delivery round went out for the message."""
        await self.db.run_statement("message_attempt", "UPDATE tb_messages SET attempts = attempts + 1 WHERE id = ?",
                                    (messageid,))

    async def delivered(self, messageid: int) -> None:
        """A contact accepted the message."""
        await self.db.run_statement(
            "message_delivered", "UPDATE tb_messages SET delivered = ? WHERE id = ? AND delivered IS NULL",
            (self.now(), messageid))
