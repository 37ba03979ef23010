"""API state: login nonces (shared by every node) and this dispatcher's traffic."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from ..ratelimit import Clock, utcnow
from ..store.authstate import NonceUses, server_key
from ..store.database import Database

#: Characters of the nonce a client sends back (the spec says 10; more is fine).
NONCE_PREFIX = 10
#: The issue time is kept in units of L{_TICK} seconds, modulo L{_TICKS} (about two years).
_TICK = 64
_TICKS = 1 << 20
#: How far ahead of this node's clock another node's nonce may be (their clocks differ a little).
_AHEAD = 60


@dataclass
class Traffic:
    """What this dispatcher has served: since when (clock seconds) and how many requests."""

    started: float
    requests: int = 0


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
