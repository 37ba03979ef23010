"""API state every node must share: login nonces and bans."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any, Awaitable, Callable
from datetime import datetime, timedelta, timezone

from ..store.authstate import NonceUses, server_key
from ..store.database import Database
from ..ratelimit import Clock

#: Characters of the nonce a client sends back (the spec says 10; more is fine).
NONCE_PREFIX = 10
#: The issue time is kept in units of L{_TICK} seconds, modulo L{_TICKS} (about two years).
_TICK = 64
_TICKS = 1 << 20
#: How far ahead of this node's clock another node's nonce may be (their clocks differ a little).
_AHEAD = 60


def utcnow(clock: Clock) -> datetime:
    """The clock's time as naive UTC."""
    return datetime.fromtimestamp(clock.seconds(), timezone.utc).replace(tzinfo=None)


_EPOCH = datetime(1970, 1, 1)


def _seconds(when: datetime) -> float:
    """A naive UTC datetime as seconds since the epoch."""
    return (when - _EPOCH).total_seconds()


class Nonces:
    """preauth's nonces: stateless until used, valid on every node.

    A nonce is 32 lower-case hex digits: 5 of the time it was issued (in
    64-second ticks, modulo 2**20), 3 random, 2 of a keyed hash of the
    address it was issued to, and 22 of an HMAC-SHA256 over those first 10
    under a key kept in
    C{tb_serverkeys} (so every node sharing the database accepts it).  A
    client sends back at least the first L{NONCE_PREFIX} digits, from which
    the rest is recomputed.  Issuing one writes nothing: a flood of
    anonymous requests costs no server state.  Only an accepted
    (nonce, authmd5) pair is stored, in C{tb_nonceuse}, until the nonce
    expires, so a replay is refused.
    """

    def __init__(self, db: Database, clock: Clock) -> None:
        self.db = db
        self.clock = clock
        self.uses = NonceUses(db, lambda: utcnow(clock))
        self._key: bytes | None = None

    async def key(self) -> bytes:
        """The shared signing key (read once, created by the first node)."""
        if self._key is None:
            self._key = await server_key(self.db, "apinonce", utcnow(self.clock))
        return self._key

    def _mac(self, key: bytes, text: str) -> str:
        return hmac.new(key, text.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()

    async def issue(self, address: str) -> str:
        """A new nonce for a client at C{address}."""
        key = await self.key()
        tick = int(self.clock.seconds() // _TICK) % _TICKS
        prefix = f"{tick:05x}{secrets.token_hex(2)[:3]}{self._mac(key, 'address ' + address)[:2]}"
        return prefix + self._mac(key, "nonce " + prefix)[:32 - NONCE_PREFIX]

    async def find(self, given: str, ttl: float, address: str | None = None) -> str | None:
        """The whole nonce C{given} begins, if it is ours and not older than C{ttl} seconds
        (and, with C{address}, was issued to that address); None otherwise."""
        given = given.strip().lower()
        if not NONCE_PREFIX <= len(given) <= 32 or any(c not in "0123456789abcdef" for c in given):
            return None
        key = await self.key()
        prefix = given[:NONCE_PREFIX]
        nonce = prefix + self._mac(key, "nonce " + prefix)[:32 - NONCE_PREFIX]
        if not hmac.compare_digest(nonce[:len(given)], given):
            return None
        ticks = (int(self.clock.seconds() // _TICK) - int(prefix[:5], 16)) % _TICKS
        if ticks > _TICKS // 2:
            if (_TICKS - ticks) * _TICK > _AHEAD:
                return None  # from the future: not ours
        elif ticks * _TICK > ttl:
            return None  # expired
        if address is not None and not hmac.compare_digest(prefix[8:], self._mac(key, "address " + address)[:2]):
            return None
        return nonce

    async def use(self, nonce: str, authmd5: str, ttl: float) -> bool:
        """Record that C{authmd5} was accepted with C{nonce}; False if it was before (a replay)."""
        return await self.uses.use(nonce, authmd5, ttl + 120)

    async def expire(self) -> int:
        """Forget the uses of expired nonces; returns how many went."""
        return await self.uses.expire()


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
        #: Bans this node made lately: (until, when made), so a reload that raced them keeps them.
        self._made: dict[tuple[str, str], tuple[float, float]] = {}
        #: Called after a ban is added or lifted (to tell the other nodes).
        self.changed: Callable[[], Awaitable[Any]] | None = None
        #: Called with the kind of each new ban (metrics).
        self.counted: Callable[[str], Any] | None = None

    def is_banned(self, kind: str, value: str) -> bool:
        """Whether C{value} (an address or a username) is banned now."""
        until = self._until.get((kind, value))
        return until is not None and until > self.clock.seconds()

    async def refresh(self) -> None:
        """Reload the active bans from the database (keeping bans this node made while it read)."""
        started = self.clock.seconds()
        fresh = {(b.kind, b.value): _seconds(b.until) for b in await self.active()}
        for key, (until, made) in list(self._made.items()):
            if made >= started:
                fresh[key] = until  # its row may not have been visible to the read
            elif made < started - 60:
                del self._made[key]
        self._until = fresh

    async def ban(self, kind: str, value: str, seconds: float, reason: str) -> None:
        """Ban C{value} for C{seconds}: in force on this node at once (before anything waits), then stored."""
        now = utcnow(self.clock)
        until = now + timedelta(seconds=seconds)
        self._until[(kind, value)] = _seconds(until)
        self._made[(kind, value)] = (_seconds(until), self.clock.seconds())
        if self.counted is not None:
            self.counted(kind)
        await self.db.run_statement(
            "ban",
            "INSERT INTO tb_banned (kind, value, reason, created, until) VALUES (?, ?, ?, ?, ?)",
            (kind, value, reason, now, until),
        )
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
            self._made.clear()
        else:
            result = await self.db.run_statement(
                "lift_ban", "UPDATE tb_banned SET until = ? WHERE value = ? AND until > ?", (now, value, now)
            )
            for key in [k for k in self._until if k[1] == value]:
                del self._until[key]
            for key in [k for k in self._made if k[1] == value]:
                del self._made[key]
        await self._tell()
        return result.rowcount



