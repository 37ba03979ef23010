"""SIP transactions (RFC 3261 17) on a fake clock: retransmissions absorbed and sent, timers G, H, E, F."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest_twisted

from mizud.sip.message import SipMessage, parse_datagram
from mizud.sip.transaction import T1, T2, ClientTransactions
from sipkit import Phone, make_rig


def statuses(rig: object, since: int) -> list[int]:
    """Statuses of the responses the rig sent since index C{since}."""
    return [parse_datagram(data).status for _, data in rig.sent[since:]]  # type: ignore[attr-defined]


@pytest_twisted.ensureDeferred
async def test_non_invite_retransmission_gets_the_same_response(tmp_path: Path) -> None:
    """A retransmitted OPTIONS is answered with the very same bytes, until timer J ends the transaction."""
    rig = await make_rig(tmp_path)
    request = Phone("alice", "alicepw").request("OPTIONS", "sip:alice@example.com")
    first = await rig.exchange(request)
    again = await rig.exchange(request)
    assert [m.status for m in first] == [200] and again[0].serialize() == first[0].serialize()
    assert rig.core.stats["requests"] == 2 and len(rig.core.transactions.live) == 1
    assert rig.core.transactions.kept == len(rig.sent[-1][1])  # the answer, kept for retransmissions
    rig.h.clock.advance(64 * T1)
    assert rig.core.transactions.live == {} and rig.core.transactions.kept == 0
    await rig.h.db.close()


@pytest_twisted.ensureDeferred
async def test_a_challenge_keeps_no_state_and_an_answered_register_does(tmp_path: Path) -> None:
    """RFC 3261 8.2.7: our 401 to a REGISTER without credentials is stateless (no transaction, no timer J,
    nothing kept), so each copy of the request is challenged again with a fresh nonce, and the fresh
    challenges all work; the 200 to the authenticated REGISTER keeps its transaction for retransmissions."""
    rig = await make_rig(tmp_path)
    phone = Phone("alice", "alicepw")
    register = phone.register()
    first = await rig.one(register)
    assert first.status == 401 and rig.core.transactions.live == {} and rig.core.transactions.kept == 0
    assert not [call for call in rig.h.clock.getDelayedCalls() if "ServerTransaction" in repr(call.func)]
    again = await rig.one(register)  # a retransmission: challenged afresh, not from a kept copy
    assert again.status == 401 and again.get("www-authenticate") != first.get("www-authenticate")
    assert rig.core._challenged == {}
    ok = await rig.one(phone.register(phone.answer(first, "REGISTER")))
    assert ok.status == 200 and len(rig.core.transactions.live) == 1 and rig.core.transactions.kept > 0
    rig.h.clock.advance(64 * T1)
    assert rig.core.transactions.live == {}
    phone.call_id = "other@phone"  # the second challenge is as good as the first
    assert (await rig.one(phone.register(phone.answer(again, "REGISTER")))).status == 200
    await rig.h.db.close()


@pytest_twisted.ensureDeferred
async def test_a_wrong_password_is_challenged_with_state(tmp_path: Path) -> None:
    """Credentials that were weighed and failed get a challenge kept in a transaction: a retransmission of
    the same request (its 401 lost) is answered from it, so it is neither counted as a second failed login
    nor refused with 403 as a second wrong password in the dialog would be."""
    rig = await make_rig(tmp_path)
    phone = Phone("alice", "wrong-password")
    first = await rig.one(phone.register())
    wrong = phone.register(phone.answer(first, "REGISTER"))
    assert (await rig.one(wrong)).status == 401 and rig.core.stats["auth_failures"] == 1
    assert len(rig.core.transactions.live) == 1
    again = await rig.one(wrong)
    assert again.status == 401 and rig.core.stats["auth_failures"] == 1
    await rig.h.db.close()


def _server_invite(reliable: bool = False) -> tuple[Any, Any, SipMessage, list[bytes]]:
    """A live INVITE server transaction on a fake clock, and what it sends."""
    from twisted.internet.task import Clock

    from mizud.sip.transaction import ServerTransactions, Source

    clock = Clock()
    sent: list[bytes] = []
    source = Source("tcp" if reliable else "udp", "192.0.2.10", 5062, sent.append)
    invite = parse_datagram(Phone("alice", "alicepw").request("INVITE", "sip:bob@example.com"))
    table = ServerTransactions(clock)
    transaction = table.create(invite, source)
    assert transaction is not None
    return clock, table, invite, sent


def test_stateful_invite_error_is_retransmitted_until_ack() -> None:
    """Over UDP a final INVITE error of a stateful transaction is resent on timer G (T1, doubling to T2)
    until the ACK comes; timer I then ends it."""
    from mizud.sip.responses import response_to

    clock, table, invite, sent = _server_invite()
    transaction = table.find(invite)
    assert transaction is not None
    transaction.respond(response_to(invite, 486))
    for delay in (T1, 2 * T1, 4 * T1, T2):
        clock.advance(delay)
    assert [parse_datagram(d).status for d in sent] == [486] * 5
    ack = parse_datagram(bytes(sent[0]))  # any message with the INVITE's branch and method ACK
    ack.method, ack.uri, ack.status = "ACK", invite.uri, None
    transaction.retransmitted(ack)
    clock.advance(T2 * 3)
    assert len(sent) == 5  # nothing after the ACK
    clock.advance(10)
    assert table.live == {}  # timer I ended it


def test_stateful_invite_without_ack_ends_on_timer_h() -> None:
    """Without an ACK the retransmissions stop at 64*T1 (timer H); over TCP there are none at all."""
    from mizud.sip.responses import response_to

    for reliable, expected in ((False, range(7, 14)), (True, range(1, 2))):
        clock, table, invite, sent = _server_invite(reliable)
        transaction = table.find(invite)
        assert transaction is not None
        transaction.respond(response_to(invite, 486))
        clock.pump([T1] * 200)
        assert table.live == {} and len(sent) in expected, (reliable, len(sent))


@pytest_twisted.ensureDeferred
async def test_refused_invite_is_answered_once_per_request(tmp_path: Path) -> None:
    """A forged INVITE that mizud refuses (challenges: 407) gets exactly one answer (no timer G: no
    amplifier), and each retransmission of it one more; nothing is kept; its ACK is absorbed."""
    rig = await make_rig(tmp_path)
    phone = Phone("alice", "alicepw")
    invite = phone.request("INVITE", "sip:bob@example.com")
    mark = len(rig.sent)
    assert [m.status for m in await rig.exchange(invite)] == [407]
    assert rig.core.transactions.live == {} and rig.core.transactions.kept == 0
    rig.h.clock.pump([T1] * 80)
    assert statuses(rig, mark) == [407]
    assert [m.status for m in await rig.exchange(invite)] == [407]  # the retransmission, answered once
    rig.h.clock.pump([T1] * 80)
    assert statuses(rig, mark) == [407, 407]
    message = parse_datagram(invite)
    ack = invite.replace(b"INVITE sip:bob", b"ACK sip:bob").replace(
        f"CSeq: {message.cseq()[0]} INVITE".encode(), f"CSeq: {message.cseq()[0]} ACK".encode())
    assert await rig.exchange(ack) == []
    await rig.h.db.close()


@pytest_twisted.ensureDeferred
async def test_cancel(tmp_path: Path) -> None:
    """CANCEL of a live INVITE transaction gets 200; of an INVITE refused (statelessly) or unknown, 481."""
    rig = await make_rig(tmp_path)

    def cancel_of(invite: bytes) -> bytes:
        number = parse_datagram(invite).cseq()[0]
        return invite.replace(b"INVITE sip:bob", b"CANCEL sip:bob").replace(
            f"CSeq: {number} INVITE".encode(), f"CSeq: {number} CANCEL".encode())

    refused = Phone("alice", "alicepw").request("INVITE", "sip:bob@example.com")
    await rig.exchange(refused)
    assert [m.status for m in await rig.exchange(cancel_of(refused))] == [481]
    live = Phone("alice", "alicepw").request("INVITE", "sip:bob@example.com")
    assert rig.core.transactions.create(parse_datagram(live), rig.source()) is not None  # still being served
    assert [m.status for m in await rig.exchange(cancel_of(live))] == [200]
    stray = Phone("alice", "alicepw").request("CANCEL", "sip:bob@example.com")
    assert [m.status for m in await rig.exchange(stray)] == [481]
    await rig.h.db.close()


def test_client_transaction_timers() -> None:
    """A client MESSAGE over UDP is resent on timer E and reports 408 on timer F; a 200 stops it."""
    from twisted.internet.task import Clock

    clock = Clock()
    table = ClientTransactions(clock)
    sent: list[bytes] = []
    request = parse_datagram(Phone("a", "b").request("MESSAGE", "sip:x@example.com"))
    outcome: list[SipMessage] = []
    table.start(request, sent.append, reliable=False).addCallback(outcome.append)
    clock.pump([T1] * 70)
    assert outcome[0].status == 408 and table.live == {}
    assert 9 <= len(sent) <= 12  # 0, .5, 1.5, 3.5, 7.5, then every 4 s to 32 s
    request2 = parse_datagram(Phone("a", "b").request("MESSAGE", "sip:x@example.com"))
    sent.clear()
    outcome.clear()
    table.start(request2, sent.append, reliable=True).addCallback(outcome.append)
    response = SipMessage(status=200, reason="OK", headers=[("via", request2.get("via")), ("cseq", request2.get("cseq"))])
    assert table.match(response)
    clock.pump([T1] * 70)
    assert [m.status for m in outcome] == [200] and len(sent) == 1


def _invite_rig(reliable: bool = False) -> tuple[Any, ClientTransactions, list[bytes], list[SipMessage], list[SipMessage]]:
    from twisted.internet.task import Clock

    clock = Clock()
    table = ClientTransactions(clock)
    sent: list[bytes] = []
    outcome: list[SipMessage] = []
    seen: list[SipMessage] = []
    request = parse_datagram(Phone("a", "b").request("INVITE", "sip:bob@example.com"))
    table.start(request, sent.append, reliable, on_response=seen.append).addCallback(outcome.append)
    return clock, table, sent, outcome, seen


def _reply(request: SipMessage, status: int, tag: str = "t1") -> SipMessage:
    from mizud.sip.responses import response_to

    response = response_to(request, status)
    response.set("To", request.get("to") + f";tag={tag}")
    return response


def test_invite_client_retransmits_until_provisional_and_times_out() -> None:
    """Timer A doubles without limit until a provisional; without any answer timer B reports 408."""
    clock, table, sent, outcome, _ = _invite_rig()
    clock.pump([T1] * 70)
    assert [m.status for m in outcome] == [408] and table.live == {}
    assert len(sent) == 7  # 0, .5, 1.5, 3.5, 7.5, 15.5, 31.5
    clock, table, sent, outcome, seen = _invite_rig()
    request = parse_datagram(sent[0])
    clock.advance(T1)
    table.match(_reply(request, 180))
    clock.pump([T1] * 10)
    assert len(sent) == 2 and [m.status for m in seen] == [180] and outcome == []


def test_invite_client_acks_errors_and_hands_2xx_to_the_dialog() -> None:
    """A 486 is ACKed by the transaction (again for each retransmission); a 2xx is passed on, not ACKed."""
    clock, table, sent, outcome, seen = _invite_rig()
    request = parse_datagram(sent[0])
    busy = _reply(request, 486)
    table.match(busy)
    table.match(busy)
    acks = [parse_datagram(d) for d in sent[1:]]
    assert [a.method for a in acks] == ["ACK", "ACK"] and [m.status for m in outcome] == [486]
    ack = acks[0]
    assert ack.uri == request.uri and ack.get("via") == request.get("via") and ack.get("to") == busy.get("to")
    assert ack.get("cseq") == f"{request.cseq()[0]} ACK"
    clock.advance(33)
    assert table.live == {}
    clock, table, sent, outcome, seen = _invite_rig()
    request = parse_datagram(sent[0])
    table.match(_reply(request, 200))
    table.match(_reply(request, 200))
    assert len(sent) == 1 and [m.status for m in outcome] == [200] and [m.status for m in seen] == [200]
    clock.advance(64 * T1)
    assert table.live == {}


def test_cancel_only_after_a_provisional() -> None:
    """CANCEL (same Request-URI, branch, Call-ID, From, To and CSeq number) only once a 1xx arrived."""
    clock, table, sent, outcome, seen = _invite_rig()
    request = parse_datagram(sent[0])
    transaction = table.find(request)
    assert transaction is not None and transaction.cancel_request() is None  # type: ignore[attr-defined]
    table.match(_reply(request, 183))
    cancel = transaction.cancel_request()  # type: ignore[attr-defined]
    assert cancel.method == "CANCEL" and cancel.uri == request.uri and cancel.get("via") == request.get("via")
    assert cancel.get("cseq") == f"{request.cseq()[0]} CANCEL" and cancel.get("to") == request.get("to")


@pytest_twisted.ensureDeferred
async def test_refused_reinvite_in_a_dialog_stays_stateful(tmp_path: Path) -> None:
    """A re-INVITE (To has a tag) refused with 481 keeps its transaction: the error is resent on timer G
    until the ACK, as RFC 3261 17.2.1 says; only out-of-dialog refusals are stateless."""
    rig = await make_rig(tmp_path)
    phone = Phone("alice", "alicepw")
    reinvite = phone.request("INVITE", "sip:bob@example.com").replace(
        b"To: <sip:alice@example.com>", b"To: <sip:bob@example.com>;tag=gone")
    mark = len(rig.sent)
    assert [m.status for m in await rig.exchange(reinvite)] == [481]
    assert len(rig.core.transactions.live) == 1
    rig.h.clock.advance(T1)
    assert statuses(rig, mark) == [481, 481]
    await rig.h.db.close()


@pytest_twisted.ensureDeferred
async def test_a_credential_that_works_again_is_challenged_again(tmp_path: Path) -> None:
    """After a success in a Call-ID, a later wrong credential there is challenged (401), not refused (403)."""
    rig = await make_rig(tmp_path)
    phone = Phone("alice", "wrong")
    assert (await rig.register(phone)).status == 401
    phone.password = "alicepw"
    assert (await rig.register(phone)).status == 200
    phone.password = "wrong-again"
    assert (await rig.register(phone)).status == 401
    await rig.h.db.close()
