"""The SMS log (tb_sms): one row per SMS sent, with its route, status, cost and hold."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Callable

from .database import Database


class SmsRows:
    """The tb_sms statements."""

    def __init__(self, db: Database, now: Callable[[], datetime]) -> None:
        self.db = db
        self.now = now

    async def record(self, userid: int, anum: str, bnum: str, body: str, parts: int, route: str, status: str,
                     cost: Decimal, holdid: int) -> int:
        """Log an SMS being sent; its id."""
        result = await self.db.run_statement(
            "sms_record",
            "INSERT INTO tb_sms (userid, anum, bnum, body, parts, route, status, cost, holdid, created) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (userid, anum[:64], bnum[:64], body, parts, route, status, cost, holdid, self.now()),
        )
        return int(result.rows[0][0])

    async def received(self, userid: int, anum: str, bnum: str, body: str) -> None:
        """Log an SMS received for a user (smsreceive)."""
        now = self.now()
        await self.db.run_statement(
            "sms_in", "INSERT INTO tb_sms (userid, anum, bnum, body, direction, route, status, created, finished) "
                      "VALUES (?, ?, ?, ?, 'in', 'user', 'received', ?, ?)",
            (userid, anum, bnum[:64], body, now, now))

    async def finish(self, smsid: int, status: str, route: str, reason: str) -> None:
        """Record how an SMS ended."""
        await self.db.run_statement(
            "sms_finish", "UPDATE tb_sms SET status = ?, route = ?, reason = ?, finished = ? WHERE id = ?",
            (status, route, reason, self.now(), smsid))
