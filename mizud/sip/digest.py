"""HTTP Digest authentication for SIP (RFC 3261 22.4, RFC 2617; MD5, qop=auth).

Nonces are stateless until used: C{hex(time) + hex(random) + HMAC} under a
per-process secret, so a flood of unauthenticated requests costs no
memory.  The HMAC also covers the address the challenge was sent to: a
nonce only works from there, so credentials can only be tried (and failed
logins only counted) by someone who receives at that address, never with
a spoofed UDP source.  A nonce older than C{ttl} is stale (the client is told
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
_ESCAPED = re.compile(r"\\(.)")
#: The most used nonces remembered at once (oldest are forgotten first; a forgotten one is stale).
MAX_TRACKED = 1_000_000


def md5(text: str) -> str:
    """Hex MD5 of UTF-8 text (undecodable bytes of the message kept as they came)."""
    return hashlib.md5(text.encode("utf-8", "surrogateescape")).hexdigest()


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
            raw = raw[1:-1]
            if "\\" in raw:
                raw = _ESCAPED.sub(r"\1", raw)
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

    def _mac(self, stamp: str, address: str) -> str:
        return hmac.new(self.secret, f"{stamp} {address}".encode(), hashlib.sha256).hexdigest()[:32]

    def nonce(self, address: str = "") -> str:
        """A fresh nonce, valid from C{address} only."""
        stamp = f"{int(self.clock.seconds()):08x}{os.urandom(8).hex()}"
        return stamp + self._mac(stamp, address)

    def challenge(self, realm: str, stale: bool = False, address: str = "") -> str:
        """A WWW-Authenticate / Proxy-Authenticate value (its nonce valid from C{address})."""
        text = f'Digest realm="{realm}", nonce="{self.nonce(address)}", algorithm=MD5, qop="auth"'
        return text + (", stale=true" if stale else "")

    def issued(self, nonce: str, address: str = "") -> float | None:
        """When this process issued C{nonce} for C{address}; None if it did not."""
        if len(nonce) != 56 or not nonce.isascii():
            return None
        stamp, mac = nonce[:24], nonce[24:]
        if not hmac.compare_digest(mac.encode(), self._mac(stamp, address).encode()):
            return None
        try:
            return float(int(stamp[:8], 16))
        except ValueError:
            return None

    def check(self, params: dict[str, str], method: str, password: str, address: str = "") -> Verdict:
        """Check credentials already matched to a user (C{params} from L{parse_credentials}),
        sent from C{address}."""
        for needed in ("username", "realm", "nonce", "uri", "response"):
            if needed not in params:
                return Verdict(False, reason=f"credentials without {needed}")
        algorithm = params.get("algorithm", "MD5")
        if algorithm.upper() != "MD5":
            return Verdict(False, reason=f"algorithm {algorithm[:20]} not supported")
        nonce = params["nonce"]
        issued = self.issued(nonce, address)
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
        given = params["response"].lower()
        if not given.isascii() or not hmac.compare_digest(given.encode(), expected.encode()):
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


def answer_challenge(challenge: str, method: str, uri: str, username: str, password: str,
                     cnonce: str | None = None) -> str | None:
    """The credentials (for Authorization or Proxy-Authorization) that answer a peer's Digest challenge.

    For mizud as a client, e.g. towards a gateway that challenges (MD5,
    with qop=auth when offered); None for a challenge it cannot answer.
    """
    params = parse_credentials(challenge)
    if params is None or "nonce" not in params:
        return None
    if params.get("algorithm", "MD5").upper() != "MD5":
        return None
    realm, nonce = params.get("realm", ""), params["nonce"]
    ha1 = md5(f"{username}:{realm}:{password}")
    ha2 = md5(f"{method}:{uri}")
    offered = [q.strip() for q in params.get("qop", "").split(",") if q.strip()]
    fields = [f'username="{_quote(username)}"', f'realm="{_quote(realm)}"', f'nonce="{_quote(nonce)}"',
              f'uri="{_quote(uri)}"', "algorithm=MD5"]
    if "auth" in offered:
        cnonce = cnonce or os.urandom(8).hex()
        response = md5(f"{ha1}:{nonce}:00000001:{cnonce}:auth:{ha2}")
        fields += ["qop=auth", "nc=00000001", f'cnonce="{cnonce}"']
    elif offered:
        return None  # only auth-int offered
    else:
        response = md5(f"{ha1}:{nonce}:{ha2}")
    fields.append(f'response="{response}"')
    if "opaque" in params:
        fields.append(f'opaque="{_quote(params["opaque"])}"')
    return "Digest " + ", ".join(fields)


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')
