"""Test helpers for the SIP layer: a scriptable phone and an in-memory rig around L{SipCore}."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet import reactor as global_reactor
from twisted.internet.task import deferLater

from mizud.api.sipbridge import backend_for
from mizud.sip.core import SipCore
from mizud.sip.digest import parse_credentials
from mizud.sip.message import SipMessage, parse_datagram
from mizud.sip.transaction import Source
from test_api_dispatch import Harness, make_harness


def md5(text: str) -> str:
    """Hex MD5."""
    return hashlib.md5(text.encode()).hexdigest()


def digest_header(challenge: str, method: str, uri: str, username: str, password: str, nc: int = 1,
                  cnonce: str = "0a4f113b", header: str = "Authorization") -> tuple[str, str]:
    """An Authorization header answering a WWW-Authenticate value (qop=auth)."""
    params = parse_credentials(challenge)
    assert params is not None
    realm, nonce = params["realm"], params["nonce"]
    ha1 = md5(f"{username}:{realm}:{password}")
    ha2 = md5(f"{method}:{uri}")
    count = f"{nc:08x}"
    response = md5(f"{ha1}:{nonce}:{count}:{cnonce}:auth:{ha2}")
    value = (f'Digest username="{username}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
             f'response="{response}", algorithm=MD5, qop=auth, nc={count}, cnonce="{cnonce}"')
    return header, value


@dataclass
class Phone:
    """Builds requests of one user agent (one Call-ID for its registrations, rising CSeq)."""

    username: str
    password: str
    host: str = "192.0.2.10"
    port: int = 5062
    domain: str = "example.com"
    transport: str = "UDP"
    call_id: str = field(default_factory=lambda: os.urandom(6).hex() + "@phone")
    cseq: int = 0

    def request(self, method: str, uri: str = "", *headers: tuple[str, str], body: bytes = b"",
                to: str = "", call_id: str = "") -> bytes:
        """A request with fresh branch and the next CSeq."""
        self.cseq += 1
        uri = uri or f"sip:{self.domain}"
        lines = [
            f"{method} {uri} SIP/2.0",
            f"Via: SIP/2.0/{self.transport} {self.host}:{self.port};branch=z9hG4bK{os.urandom(5).hex()};rport",
            "Max-Forwards: 70",
            f"From: <sip:{self.username}@{self.domain}>;tag={os.urandom(3).hex()}",
            f"To: <{to or f'sip:{self.username}@{self.domain}'}>",
            f"Call-ID: {call_id or self.call_id}",
            f"CSeq: {self.cseq} {method}",
            "User-Agent: sipkit",
            *(f"{name}: {value}" for name, value in headers),
            f"Content-Length: {len(body)}",
            "",
            "",
        ]
        return "\r\n".join(lines).encode() + body

    def register(self, *headers: tuple[str, str], contact: str = "", expires: int | None = 3600) -> bytes:
        """A REGISTER for this phone's contact."""
        extra = [("Contact", contact or f"<sip:{self.username}@{self.host}:{self.port}>")]
        if expires is not None:
            extra.append(("Expires", str(expires)))
        return self.request("REGISTER", "", *extra, *headers)

    def answer(self, challenge: SipMessage, method: str, uri: str = "", nc: int = 1) -> tuple[str, str]:
        """Credentials for a 401's challenge."""
        return digest_header(challenge.get("www-authenticate"), method, uri or f"sip:{self.domain}",
                             self.username, self.password, nc)


class Rig:
    """A L{SipCore} on a harness's API whose output is captured per source."""

    def __init__(self, harness: Harness) -> None:
        self.h = harness
        self.core = SipCore(harness.api.settings, lambda: self.backend, harness.clock)
        # The dispatcher's SIP functions are bound to the SIP element when it is built: build it again with it.
        self.backend = backend_for(harness.rebuild(sip=self.core))
        self.sent: list[tuple[tuple[str, int], bytes]] = []
        self.core.add_udp_socket(lambda data, addr: self.sent.append((addr, data)), "192.0.2.1:5060")

    def source(self, host: str = "192.0.2.10", port: int = 5062, transport: str = "udp") -> Source:
        """A source whose answers are captured."""
        write = (lambda data, addr: self.sent.append((addr, data)))
        return Source(transport, host, port, lambda data: write(data, (host, port)), "192.0.2.1:5060",
                      write if transport == "udp" else None)

    async def exchange(self, data: bytes, source: Source | None = None) -> list[SipMessage]:
        """Feed one message; wait for the database work; the messages sent back to that source."""
        source = source or self.source()
        before = len(self.sent)
        self.core.datagram(data, source)
        for _ in range(200):
            if len(self.sent) > before:
                break
            await deferLater(global_reactor, 0.005, lambda: None)
        await deferLater(global_reactor, 0.01, lambda: None)
        return [parse_datagram(data) for addr, data in self.sent[before:] if addr == (source.host, source.port)]

    async def one(self, data: bytes, source: Source | None = None) -> SipMessage:
        """Feed one request and return its single response (requests mizud sends meanwhile are ignored)."""
        answers = [m for m in await self.exchange(data, source) if not m.is_request]
        assert len(answers) == 1, answers
        return answers[0]

    async def register(self, phone: Phone, *headers: tuple[str, str], contact: str = "",
                       expires: int | None = 3600, source: Source | None = None) -> SipMessage:
        """REGISTER, answer the challenge, return the final response."""
        first = await self.one(phone.register(*headers, contact=contact, expires=expires), source)
        if first.status != 401:
            return first
        credentials = phone.answer(first, "REGISTER")
        return await self.one(phone.register(*headers, credentials, contact=contact, expires=expires), source)


async def make_rig(tmp_path: Path, *sets: str, database: str | None = None) -> Rig:
    """A rig on a fresh harness (users alice/alicepw and root/rootpw)."""
    return Rig(await make_harness(tmp_path, *sets, database=database))


async def settle() -> None:
    """Let pending database work finish."""
    await deferLater(global_reactor, 0.05, lambda: None)


def ignore(_: Any) -> None:
    """Swallow a result."""


__all__ = ["Phone", "Rig", "make_rig", "digest_header", "settle", "defer"]
