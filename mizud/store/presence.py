"""Presence (presence_set, SIP PUBLISH) and the API sessions of web clients (wsuser).

Both are rows every node reads: a status a user set through one node, or
published from a phone registered with another, is the status every node
reports.  Each write is one statement (an upsert), so concurrent first
writes of one user cannot collide.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable

from .database import Database

#: A web client session not refreshed for this long is no longer listed.
SESSION_FRESH = timedelta(minutes=15)


@dataclass(frozen=True, slots=True)
class WebSession:
    """One web client's API session."""

    username: str
    sessionid: str
    brandname: str
    companyname: str
    version: str
    address: str
    transport: str
    node: str
    created: datetime
    updated: datetime

    def record(self) -> dict[str, Any]:
        """The session as an API record."""
        return {"username": self.username, "sessionid": self.sessionid, "brandname": self.brandname,
                "companyname": self.companyname, "version": self.version, "address": self.address,
                "transport": self.transport, "node": self.node,
                "updated": self.updated.isoformat(sep=" ", timespec="seconds")}


class Presence:
    """tb_presence and tb_websessions on one L{Database}."""

    def __init__(self, db: Database, now: Callable[[], datetime]) -> None:
        self.db = db
        self.now = now

    async def of_users(self, names: list[str]) -> list[tuple[str, str | None, datetime | None, int, datetime | None]]:
        """For each existing user among C{names}: (username, presence status or None, when it was set, how many
        live registrations, when a published status lapses)."""
        now = self.now()
        marks = ", ".join("?" * len(names))
        result = await self.db.run_query(
            "presence",
            "SELECT u.username, p.status, p.updated, (SELECT count(*) FROM tb_registrations r "
            f"WHERE r.userid = u.id AND r.expires > ?), p.expires FROM tb_users u "
            f"LEFT JOIN tb_presence p ON p.userid = u.id WHERE u.username IN ({marks})",
            (now, *names),
        )
        time = self.db.engine.time
        return [(str(r[0]), r[1], time(r[2]), int(r[3]), time(r[4])) for r in result.rows]

    async def set(self, userid: int, status: str, etag: str = "", seconds: float | None = None) -> None:
        """Set a user's presence status (published with C{etag}, lapsing after C{seconds}, when given)."""
        now = self.now()
        expires = None if seconds is None else now + timedelta(seconds=seconds)
        await self.db.run_statement(
            "presence_set",
            "INSERT INTO tb_presence (userid, status, updated, etag, expires) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (userid) DO UPDATE SET status = excluded.status, updated = excluded.updated, "
            "etag = excluded.etag, expires = excluded.expires",
            (userid, status, now, etag, expires))

    async def status(self, userid: int) -> str:
        """The user's presence status ("" when none was set)."""
        row = (await self.db.run_query("presence_status", "SELECT status FROM tb_presence WHERE userid = ?",
                                       (userid,))).one()
        return str(row[0]) if row and row[0] else ""

    async def etag(self, userid: int) -> str:
        """The entity tag of the user's published presence, if it has not lapsed ("" otherwise)."""
        row = (await self.db.run_query(
            "presence_etag", "SELECT etag FROM tb_presence WHERE userid = ? AND expires > ?",
            (userid, self.now()))).one()
        return str(row[0]) if row and row[0] else ""

    async def session(self, userid: int, sessionid: str, *, brandname: str, companyname: str, version: str,
                      address: str, transport: str, node: str) -> None:
        """Record (or refresh) a web client's session."""
        now = self.now()
        await self.db.run_statement(
            "websession",
            "INSERT INTO tb_websessions (userid, sessionid, brandname, companyname, version, address, transport, "
            "node, created, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (userid, sessionid) DO UPDATE SET brandname = excluded.brandname, "
            "companyname = excluded.companyname, version = excluded.version, address = excluded.address, "
            "transport = excluded.transport, node = excluded.node, updated = excluded.updated",
            (userid, sessionid, brandname, companyname, version, address, transport, node, now, now))

    async def sessions(self, username: str = "") -> list[WebSession]:
        """The web sessions refreshed lately (of one username, or all)."""
        sql = ("SELECT u.username, s.sessionid, s.brandname, s.companyname, s.version, s.address, s.transport, "
               "s.node, s.created, s.updated FROM tb_websessions s JOIN tb_users u ON u.id = s.userid "
               "WHERE s.updated > ?")
        params: list[Any] = [self.now() - SESSION_FRESH]
        if username:
            sql += " AND u.username = ?"
            params.append(username)
        result = await self.db.run_query("websessions", sql + " ORDER BY u.username, s.id", params)
        time = self.db.engine.time
        return [WebSession(*row[:8], time(row[8]) or datetime.min, time(row[9]) or datetime.min)  # type: ignore[call-arg]
                for row in result.rows]

    async def expire(self) -> int:
        """Delete web sessions not refreshed for a day; returns how many."""
        result = await self.db.run_statement(
            "expire_websessions", "DELETE FROM tb_websessions WHERE updated < ?", (self.now() - timedelta(days=1),))
        return result.rowcount
