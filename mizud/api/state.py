"""API state every node must share: login nonces and bans, in the database."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any, Awaitable, Callable
from datetime import datetime, timedelta, timezone


from ..store.database import Database, Txn
from .ratelimit import Clock

#: Characters of the nonce a client sends back (the spec says 10; more is fine).
NONCE_PREFIX = 10


def utcnow(clock: Clock) -> datetime:
    """The clock's time as naive UTC."""
    return datetime.fromtimestamp(clock.seconds(), timezone.utc).replace(tzinfo=None)


_EPOCH = datetime(1970, 1, 1)


def _seconds(when: datetime) -> float:
    """A naive UTC datetime as seconds since the epoch."""
    return (when - _EPOCH).total_seconds()


@dataclass(frozen=True)
class Nonce:
    """An issued nonce."""

    id: int
    nonce: str
    address: str
    expires: datetime


class Nonces:
    """Issue nonces, find them by the prefix clients send, and refuse replays."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self.db = db
        self.clock = clock

    async def issue(self, address: str, ttl: float) -> str:
        """A new random nonce bound to C{address}, valid for C{ttl} seconds."""
        nonce = secrets.token_hex(16)
        now = utcnow(self.clock)
        await self.db.run_statement(
            "issue_nonce",
            "INSERT INTO tb_nonces (nonce, prefix, address, created, expires) VALUES (?, ?, ?, ?, ?)",
            (nonce, nonce[:NONCE_PREFIX], address, now, now + timedelta(seconds=ttl)),
        )
        return nonce

    async def find(self, given: str) -> list[Nonce]:
        """Unexpired nonces starting with C{given} (at least L{NONCE_PREFIX} characters)."""
        given = given.strip().lower()
        if len(given) < NONCE_PREFIX or len(given) > 64 or any(c not in "0123456789abcdef" for c in given):
            return []
        result = await self.db.run_query(
            "find_nonce",
            "SELECT id, nonce, address, expires FROM tb_nonces WHERE prefix = ? AND expires > ?",
            (given[:NONCE_PREFIX], utcnow(self.clock)),
        )
        time = self.db.engine.time
        return [
            Nonce(int(r[0]), r[1], r[2], time(r[3]))  # type: ignore[arg-type]
            for r in result.rows
            if r[1].startswith(given)
        ]

    async def use(self, nonce: Nonce, authmd5: str) -> bool:
        """Record an authmd5 under a nonce; False if it was used before (a replay)."""
        result = await self.db.run_statement(
            "use_nonce",
            "INSERT INTO tb_nonceuse (nonceid, authmd5, created) VALUES (?, ?, ?) "
            "ON CONFLICT (nonceid, authmd5) DO NOTHING RETURNING id",
            (nonce.id, authmd5.lower(), utcnow(self.clock)),
        )
        return bool(result.rows)

    async def expire(self) -> int:
        """Delete expired nonces and their uses; returns how many nonces went."""

        async def expire_txn(txn: Txn) -> int:
            now = utcnow(self.clock)
            await txn.execute(
                "DELETE FROM tb_nonceuse WHERE nonceid IN (SELECT id FROM tb_nonces WHERE expires <= ?)", (now,)
            )
            return (await txn.execute("DELETE FROM tb_nonces WHERE expires <= ?", (now,))).rowcount

        return await self.db.run_interaction("expire_nonces", expire_txn)


@dataclass(frozen=True)
class Ban:
    """One active ban."""

    id: int
    kind: str
    value: str
    reason: str
    until: datetime


class Bans:
    """Bans of addresses and users, kept in the database, checked from memory.

    L{is_banned} reads an in-memory copy, so the check costs nothing on the
    request path.  L{refresh} reloads the copy from the database; the API
    service runs it every few seconds, so a ban made on one node reaches the
    others within that time.  A node sees its own bans at once.
    """

    def __init__(self, db: Database, clock: Clock) -> None:
        self.db = db
        self.clock = clock
        self._until: dict[tuple[str, str], float] = {}
        #: Called after a ban is added or lifted (to tell the other nodes).
        self.changed: Callable[[], Awaitable[Any]] | None = None
        #: Called with the kind of each new ban (metrics).
        self.counted: Callable[[str], Any] | None = None

    def is_banned(self, kind: str, value: str) -> bool:
        """Whether C{value} (an address or a username) is banned now."""
        until = self._until.get((kind, value))
        return until is not None and until > self.clock.seconds()

    async def refresh(self) -> None:
        """Reload the active bans from the database."""
        self._until = {(b.kind, b.value): _seconds(b.until) for b in await self.active()}

    async def ban(self, kind: str, value: str, seconds: float, reason: str) -> None:
        """Ban C{value} for C{seconds}."""
        now = utcnow(self.clock)
        until = now + timedelta(seconds=seconds)
        await self.db.run_statement(
            "ban",
            "INSERT INTO tb_banned (kind, value, reason, created, until) VALUES (?, ?, ?, ?, ?)",
            (kind, value, reason, now, until),
        )
        self._until[(kind, value)] = _seconds(until)
        if self.counted is not None:
            self.counted(kind)
        await self._tell()

    async def _tell(self) -> None:
        """Let the other nodes reload the bans (when a notifier is attached)."""
        if self.changed is not None:
            await self.changed()

    async def active(self) -> list[Ban]:
        """Every ban in force, soonest ending first."""
        result = await self.db.run_query(
            "active_bans",
            "SELECT id, kind, value, reason, until FROM tb_banned WHERE until > ? ORDER BY until",
            (utcnow(self.clock),),
        )
        time = self.db.engine.time
        return [Ban(int(r[0]), r[1], r[2], r[3], time(r[4])) for r in result.rows]  # type: ignore[arg-type]

    async def lift(self, value: str | None) -> int:
        """Lift the bans of an address or user (None: all); returns how many."""
        now = utcnow(self.clock)
        if value is None:
            result = await self.db.run_statement("lift_bans", "UPDATE tb_banned SET until = ? WHERE until > ?", (now, now))
            self._until.clear()
        else:
            result = await self.db.run_statement(
                "lift_ban", "UPDATE tb_banned SET until = ? WHERE value = ? AND until > ?", (now, value, now)
            )
            for key in [k for k in self._until if k[1] == value]:
                del self._until[key]
        await self._tell()
        return result.rowcount



