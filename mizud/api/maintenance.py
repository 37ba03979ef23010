"""Periodic upkeep of the API's tables and the database."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from ..sip.bindings import Bindings
from ..store.presence import Presence


class Maintenance:
    """The periodic upkeep: runs hourly and daily on timers, and on demand."""

    def __init__(self, api: Any) -> None:
        self.api = api

    async def hourly(self) -> dict[str, int]:
        """Expire nonces, ended bans, lapsed number reservations, registrations and web sessions."""
        db, now = self.api.db, self.api.store.now()
        done = {"nonces": await self.api.nonces.expire()}
        done["bans"] = (await db.run_statement(
            "expire_bans", "DELETE FROM tb_banned WHERE until < ?", (now - timedelta(days=1),))).rowcount
        await self.api.lockout.chore()
        done["numbers"] = (await db.run_statement(
            "expire_locks", "UPDATE tb_phonenumbers SET userid = 0, status = 0, lockeduntil = NULL "
            "WHERE status = 1 AND lockeduntil < ?", (now,))).rowcount
        # The SIP service sweeps every few seconds too; this one also serves nodes without it.
        done["registrations"] = await Bindings(db, self.api.store.now).expire()
        done["websessions"] = await Presence(db, self.api.store.now).expire()
        return done

    async def daily(self) -> dict[str, int]:
        """The hourly work, then the database's own upkeep (statistics, WAL truncation)."""
        done = await self.hourly()
        db = self.api.db
        if db.engine.name == "postgresql":
            await db.run_statement("analyze", "ANALYZE")
        else:
            await db.run_statement("optimize", "PRAGMA optimize")
        done["optimized"] = 1
        return done
