"""Hostile SIP input found in review: each gets a clear answer or a silent drop, never a crash,
a ban of somebody else, reflected traffic or unbounded work."""

from __future__ import annotations

from pathlib import Path

import pytest_twisted
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from mizud.sip.message import ParseError, parse_datagram, parse_head, split_head
from mizud.sip.transport import SipStreamProtocol
from sipkit import Phone, digest_header, make_rig, settle


class _Address:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port


def test_folding_is_linear_and_right() -> None:
    """A folded header followed by a long run of spaces unfolds to one space (no quadratic regex)."""
    head = b"OPTIONS sip:x SIP/2.0\r\nX-Long: a\r\n b" + b" " * 15000 + b"x\r\nSubject: s\r\n   t"
    message = parse_head(head)
    assert message.get("x-long") == "a b" + " " * 15000 + "x" and message.get("subject") == "s t"


def test_numbers_that_int_would_choke_on() -> None:
    """Thousands of digits in Content-Length, ports, CSeq or Max-Forwards are refused, not crashed on."""
    base = Phone("a", "b").request("OPTIONS", "sip:x@example.com")
    huge = b"9" * 5000
    cases = [
        (base.replace(b"Content-Length: 0", b"Content-Length: " + huge), 413),
        (base.replace(b"sip:x@example.com", b"sip:x@example.com:" + huge, 1), 400),
        (base.replace(b"CSeq: 1 ", b"CSeq: " + huge + b" "), 400),
        (base.replace(b"Max-Forwards: 70", b"Max-Forwards: " + huge), 400),
    ]
    from mizud.sip.responses import KNOWN
    from mizud.sip.message import check_request

    for data, status in cases:
        try:
            check_request(parse_datagram(data), KNOWN)
        except ParseError as error:
            assert error.status == status, data[:80]
        else:
            raise AssertionError("accepted")
    try:
        parse_datagram("SIP/2.0 ²00 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\r\n\r\n".encode())
    except ParseError as error:
        assert error.status is None
    assert split_head(b"A\n\nB\r\n\r\nC") == (b"A", b"B\r\n\r\nC")


@pytest_twisted.ensureDeferred
async def test_spoofed_sources_cannot_ban_or_register(tmp_path: Path) -> None:
    """Credentials whose nonce was issued to another address are re-challenged (stale), count as nothing,
    and look the same for existing and unknown users."""
    rig = await make_rig(tmp_path, "authfailmax=3")
    victim = rig.source("203.0.113.7")
    attacker = Phone("alice", "alicepw", host="198.51.100.1")
    challenge = await rig.one(attacker.register(), rig.source("198.51.100.1"))
    for name in ("alice", "nobody", "alice", "nobody", "alice"):
        phone = Phone(name, "guess", host="203.0.113.7")
        forged = phone.register(digest_header(challenge.get("www-authenticate"), "REGISTER", "sip:example.com",
                                              name, "guess"))
        answer = await rig.one(forged, victim)
        assert answer.status == 401 and "stale=true" in answer.get("www-authenticate")
    assert not rig.h.api.bans.is_banned("ip", "203.0.113.7")
    assert not rig.h.api.bans.is_banned("user", "alice")
    assert rig.core.stats["auth_failures"] == 0
    await rig.h.db.close()


@pytest_twisted.ensureDeferred
async def test_odd_credentials_and_contacts_get_answers_not_tracebacks(tmp_path: Path) -> None:
    """Non-ASCII nonces, undecodable usernames, q=NaN, a digest uri for another URI: 4xx answers."""
    rig = await make_rig(tmp_path)
    phone = Phone("alice", "alicepw")
    odd = phone.register(("Authorization", 'Digest username="alice", realm="example.com", nonce="é' + "x" * 55
                          + '", uri="sip:example.com", response="00", qop=auth, nc=00000001, cnonce="c"'))
    assert (await rig.one(odd)).status == 401
    first = await rig.one(phone.register())
    undecodable = phone.register(phone.answer(first, "REGISTER")).replace(b'username="alice"', b'username="\xff\xfe"')
    assert (await rig.one(undecodable)).status == 401
    assert (await rig.register(phone, contact="<sip:alice@192.0.2.10>;q=NaN")).status == 400
    first = await rig.one(phone.register())
    other_uri = phone.register(phone.answer(first, "REGISTER", uri="sip:elsewhere.example.com"))
    assert (await rig.one(other_uri)).status == 400
    assert rig.core.stats["bad_messages"] == 0  # nothing escaped as an error
    await rig.h.db.close()


@pytest_twisted.ensureDeferred
async def test_no_reflection_and_a_cap_on_contacts(tmp_path: Path) -> None:
    """A copy of someone's request from another address gets nothing sent anywhere; an 11th contact is 403."""
    rig = await make_rig(tmp_path)
    request = Phone("alice", "alicepw", host="203.0.113.9").request("OPTIONS", "sip:x@example.com")
    assert len(await rig.exchange(request, rig.source("203.0.113.9"))) == 1
    before = len(rig.sent)
    for _ in range(5):
        rig.core.datagram(request, rig.source("198.51.100.66", 4000))
    await settle()
    assert len(rig.sent) == before
    phone = Phone("alice", "alicepw")
    for i in range(10):
        assert (await rig.register(phone, contact=f"<sip:alice@192.0.2.10:{6000 + i}>")).status == 200
    eleventh = await rig.register(phone, contact="<sip:alice@192.0.2.10:7000>")
    assert eleventh.status == 403
    # Refreshing an existing one is still fine; so is an unregister with zero-padded Expires.
    assert (await rig.register(phone, contact="<sip:alice@192.0.2.10:6000>")).status == 200
    gone = await rig.register(phone, contact="<sip:alice@192.0.2.10:6000>", expires=None)
    assert gone.status == 200
    padded = await rig.register(phone, ("Expires", "0000000000"), contact="<sip:alice@192.0.2.10:6001>", expires=None)
    assert "<sip:alice@192.0.2.10:6001>" not in " ".join(padded.all("contact"))
    await rig.h.db.close()


@pytest_twisted.ensureDeferred
async def test_stream_framing_of_a_large_message_byte_by_byte(tmp_path: Path) -> None:
    """A 40 KB message (body included) fed one byte at a time is framed once and answered once."""
    rig = await make_rig(tmp_path)
    protocol = SipStreamProtocol(rig.core, Clock())
    transport = StringTransport(peerAddress=_Address("192.0.2.77", 40000))
    protocol.makeConnection(transport)
    body = b"x" * 30000
    data = Phone("alice", "alicepw", transport="TCP").request(
        "OPTIONS", "sip:x@example.com", *[("X-Pad", "y" * 100) for _ in range(90)], body=body)
    for i in range(len(data)):
        protocol.dataReceived(data[i:i + 1])
    await settle()
    assert transport.value().startswith(b"SIP/2.0 200 ") and transport.value().count(b"SIP/2.0 ") == 1
    await rig.h.db.close()


@pytest_twisted.ensureDeferred
async def test_stored_messages_stop_retrying(tmp_path: Path) -> None:
    """A message a phone keeps refusing is sent again at most five times, then only handed over on a poll."""
    from mizud.sip.responses import response_to

    rig = await make_rig(tmp_path)
    await rig.h.store.create_user("bob", "bobpw")
    bob = Phone("bob", "bobpw", host="192.0.2.30")
    await rig.register(bob, source=rig.source("192.0.2.30"))
    await rig.h.call("apientry=sendim&bnum=bob&txt=hi&authkey=apikey123&authid=alice&authpwd=alicepw")
    sends = 0
    for _ in range(8):
        mark = len(rig.sent)
        await settle()
        for addr, data in rig.sent[mark - 1:] + rig.sent[mark:]:
            message = parse_datagram(data)
            if message.method == "MESSAGE":
                sends += 1
                rig.core.datagram(response_to(message, 415).serialize(), rig.source("192.0.2.30"))
        await settle()
        await rig.register(bob, source=rig.source("192.0.2.30"))
        await settle()
    attempts = (await rig.h.db.run_query("x", "SELECT attempts, delivered FROM tb_messages")).rows[0]
    assert attempts[0] == 5 and attempts[1] is None
    polled = await rig.h.call("apientry=presence_set&pstatus=online&authkey=apikey123&authid=bob&authpwd=bobpw")
    assert polled.text.endswith("XOFFMESSAGE:alice:hiXOFFMESSAGE:")
    await rig.h.db.close()


@pytest_twisted.ensureDeferred
async def test_unreg_by_ip_is_exact(tmp_path: Path) -> None:
    """unreg's ip matches a host exactly (no SQL wildcards)."""
    rig = await make_rig(tmp_path)
    await rig.register(Phone("alice", "alicepw"))
    assert (await rig.h.call("apientry=unreg&username=all&ip=%25", "127.0.0.1")).text == "OK: all was not registered"
    assert (await rig.h.call("apientry=unreg&username=all&ip=192.0.2.10", "127.0.0.1")).text == \
        "OK: unregistered 1 users: alice"
    await rig.h.db.close()


@pytest_twisted.ensureDeferred
async def test_keepalive_split_across_segments(tmp_path: Path) -> None:
    """A double-CRLF keep-alive arriving in pieces still gets its CRLF pong (RFC 5626)."""
    rig = await make_rig(tmp_path)
    protocol = SipStreamProtocol(rig.core, Clock())
    transport = StringTransport(peerAddress=_Address("192.0.2.77", 40000))
    protocol.makeConnection(transport)
    for piece in (b"\r", b"\n", b"\r", b"\n"):
        protocol.dataReceived(piece)
    assert transport.value() == b"\r\n"
    protocol.dataReceived(b"\r\n\r\n")
    assert transport.value() == b"\r\n\r\n" and not transport.disconnecting
    await rig.h.db.close()
