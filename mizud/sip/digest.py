"""HTTP Digest authentication for SIP (RFC 3261 22.4, RFC 2617; MD5, qop=auth).

Nonces are stateless until used: C{hex(time) + hex(random) + HMAC} under a
per-process secret, so a flood of unauthenticated requests costs no
memory.  A nonce older than C{ttl} is stale (the client is told
C{stale=true} and retries without asking its user).  Each nonce that has
been used remembers the highest nonce-count it was used with; a request
that repeats or goes back is refused as a replay, and a nonce answered
without qop (RFC 2069 style, which has no count) can be used once.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections import deque
from dataclasses import dataclass
from typing import Any

_PARAM = re.compile(r'\s*([A-Za-z0-9_\-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,]*)\s*(?:,|$)')
#: The most used nonces remembered at once (oldest are forgotten first; a forgotten one is stale).
MAX_TRACKED = 1_000_000


def md5(text: str) -> str:
    """Hex MD5 of UTF-8 text."""
    return hashlib.md5(text.encode("utf-8")).hexdigest()


def parse_credentials(value: str) -> dict[str, str] | None:
    """The parameters of a C{Digest ...} Authorization value, or None for another scheme."""
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "digest":
        return None
    params: dict[str, str] = {}
    pos = 0
    rest = rest.strip()
    while pos < len(rest):
        match = _PARAM.match(rest, pos)
        if not match or match.end() == pos:
            return None
        key, raw = match.group(1).lower(), match.group(2)
        if raw.startswith('"'):
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        if key in params:
            return None  # a repeated parameter is an attack or a bug; refuse both
        params[key] = raw
        pos = match.end()
    return params


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of checking credentials."""

    ok: bool
    #: Right password but an old or replayed nonce: challenge again with stale=true.
    stale: bool = False
    #: Why it failed (for the log; never sent to the client).
    reason: str = ""
    #: Whether the failure proves a wrong password (counts towards the lockout).
    wrong_password: bool = False


class DigestAuth:
    """Issues challenges and checks credentials on an injected clock."""

    def __init__(self, clock: Any, ttl: float = 300.0, secret: bytes | None = None) -> None:
        self.clock = clock
        self.ttl = ttl
        self.secret = secret or os.urandom(32)
        self._counts: dict[str, int] = {}
        self._order: deque[tuple[float, str]] = deque()
        #: Nonces issued at or before this time whose counts were forgotten early are stale.
        self._floor = -1.0

    def nonce(self) -> str:
        """A fresh nonce."""
        stamp = f"{int(self.clock.seconds()):08x}{os.urandom(8).hex()}"
        return stamp + hmac.new(self.secret, stamp.encode(), hashlib.sha256).hexdigest()[:32]

    def challenge(self, realm: str, stale: bool = False) -> str:
        """A WWW-Authenticate / Proxy-Authenticate value."""
        text = f'Digest realm="{realm}", nonce="{self.nonce()}", algorithm=MD5, qop="auth"'
        return text + (", stale=true" if stale else "")

    def _issued(self, nonce: str) -> float | None:
        if len(nonce) != 56:
            return None
        stamp, mac = nonce[:24], nonce[24:]
        expected = hmac.new(self.secret, stamp.encode(), hashlib.sha256).hexdigest()[:32]
        if not hmac.compare_digest(mac, expected):
            return None
        try:
            return float(int(stamp[:8], 16))
        except ValueError:
            return None

    def check(self, params: dict[str, str], method: str, password: str) -> Verdict:
        """Check credentials already matched to a user (C{params} from L{parse_credentials})."""
        for needed in ("username", "realm", "nonce", "uri", "response"):
            if needed not in params:
                return Verdict(False, reason=f"credentials without {needed}")
        algorithm = params.get("algorithm", "MD5")
        if algorithm.upper() != "MD5":
            return Verdict(False, reason=f"algorithm {algorithm[:20]} not supported")
        nonce = params["nonce"]
        issued = self._issued(nonce)
        if issued is None:
            return Verdict(False, stale=True, reason="nonce not issued here (or by an earlier run)")
        qop = params.get("qop", "")
        ha1 = md5(f"{params['username']}:{params['realm']}:{password}")
        ha2 = md5(f"{method}:{params['uri']}")
        if qop:
            if qop != "auth" or "nc" not in params or "cnonce" not in params:
                return Verdict(False, reason="qop other than auth, or no nc/cnonce")
            expected = md5(f"{ha1}:{nonce}:{params['nc']}:{params['cnonce']}:{qop}:{ha2}")
        else:
            expected = md5(f"{ha1}:{nonce}:{ha2}")
        if not hmac.compare_digest(params["response"].lower().encode(), expected.encode()):
            return Verdict(False, reason="wrong password", wrong_password=True)
        now = self.clock.seconds()
        if now - issued > self.ttl:
            return Verdict(False, stale=True, reason="nonce expired")
        try:
            count = int(params["nc"], 16) if qop else 0
        except ValueError:
            return Verdict(False, reason="malformed nc")
        self._forget_expired(now)
        last = self._counts.get(nonce)
        if last is None and issued <= self._floor:
            return Verdict(False, stale=True, reason="nonce no longer tracked")
        if last is not None and count <= last:
            return Verdict(False, stale=True, reason="nonce count replayed")
        if last is None:
            self._order.append((issued + self.ttl, nonce))
        self._counts[nonce] = count
        return Verdict(True)

    def _forget_expired(self, now: float) -> None:
        order = self._order
        while order and (order[0][0] < now or len(order) > MAX_TRACKED):
            expiry, nonce = order.popleft()
            self._counts.pop(nonce, None)
            if expiry >= now:  # forgotten while still valid: refuse it from now on
                self._floor = max(self._floor, expiry - self.ttl)
