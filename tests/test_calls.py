"""Calls placed by p2p and callback (RFC 3725 flow IV) on an in-memory rig: the SIP each leg sees, the
money held, cut and settled, and the CDRs of every outcome."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet import defer
from twisted.internet import reactor as global_reactor
from twisted.internet.task import deferLater

from mizud.billing.rating import Tariff
from mizud.billing.rating import longest
from mizud.sip.calls import check_sdp
from mizud.sip.sdp import hold_offer, reorigin
from mizud.sip.responses import response_to
from mizud.sip.message import SipMessage, parse_datagram
from sipkit import Phone, Rig, make_rig, settle

ALICE = "authkey=apikey123&authid=alice&authpwd=alicepw"
ADMIN = "127.0.0.1"
GW = ("192.0.2.50", 5070)
GW2 = ("192.0.2.51", 5060)
OFFER = (b"v=0\r\no=gw 1 1 IN IP4 192.0.2.80\r\ns=-\r\nc=IN IP4 192.0.2.80\r\nt=0 0\r\n"
         b"m=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")
ANSWER = OFFER.replace(b"192.0.2.80", b"192.0.2.90").replace(b"4000", b"5000")
HELD = b"v=0\r\no=gw 2 1 IN IP4 192.0.2.90\r\ns=-\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\n"


async def call_rig(tmp_path: Path, *sets: str, database: str | None = None, gateways: int = 1) -> Rig:
    """A rig with plan 1: numbers 36... at 0.60 a minute (0.01 a second), and gateways gw (and gw2)."""
    rig = await make_rig(tmp_path, "defaulttariff=1", *sets, database=database)
    h = rig.h
    await h.db.run_statement(
        "x", "INSERT INTO tb_tariffs (tariffid, prefix, name, price, connectfee, mininterval, interval, currency) "
             "VALUES (1, '36', 'Hungary', ?, 0, 0, 1, 'USD')", (Decimal("0.60"),))
    await h.api.rater.rebuild()
    assert (await h.call("apientry=addserver&u_username=gw&u_ip=192.0.2.50:5070&u_routingpriority=1", ADMIN)).ok
    if gateways > 1:
        assert (await h.call("apientry=addserver&u_username=gw2&u_ip=192.0.2.51&u_routingpriority=2", ADMIN)).ok
    assert (await h.call("apientry=cli&anum=3611111&targetuser=alice", ADMIN)).ok  # approved for alice
    return rig


class Peer:
    """The far end at one address: finds the requests mizud sent there and answers them."""

    def __init__(self, rig: Rig, address: tuple[str, int] = GW) -> None:
        self.rig = rig
        self.address = address
        self.seen = 0

    async def next(self, method: str = "") -> SipMessage:
        """The next request (of C{method}, skipping others) mizud sends to this peer."""
        for _ in range(400):
            requests = [parse_datagram(d) for a, d in self.rig.sent if a == self.address]
            requests = [m for m in requests if m.is_request]
            while self.seen < len(requests):
                message = requests[self.seen]
                self.seen += 1
                if not method or message.method == method:
                    return message
            self.rig.h.clock.advance(0)  # work mizud scheduled for "right away"
            await deferLater(global_reactor, 0.005, lambda: None)
        raise AssertionError(f"no {method or 'request'} sent to {self.address}")

    def reply(self, request: SipMessage, status: int, body: bytes = b"", **headers: str) -> None:
        """Answer a request (a 2xx to INVITE gets a Contact; a body is SDP)."""
        response = response_to(request, status)
        if request.method == "INVITE" and 200 <= status < 300:
            response.add("Contact", f"<sip:peer@{self.address[0]}:{self.address[1]}>")
        for name, value in headers.items():
            response.add(name.replace("_", "-"), value)
        if body:
            response.add("Content-Type", "application/sdp")
            response.body = body
        self.rig.core.datagram(response.serialize(), self.rig.source(*self.address))

    def send(self, request: bytes) -> None:
        """A request from the peer."""
        self.rig.core.datagram(request, self.rig.source(*self.address))

    def bye(self, invite: SipMessage, answered: SipMessage) -> bytes:
        """A BYE from the peer in the dialog of C{invite} (which it answered with C{answered})."""
        return (f"BYE sip:mizud@192.0.2.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {self.address[0]}:{self.address[1]};"
                f"branch=z9hG4bKbye{invite.cseq()[0]}{invite.call_id[:6]}\r\nMax-Forwards: 70\r\n"
                f"From: {response_to(invite, 200).get('to')}\r\nTo: {invite.get('from')}\r\n"
                f"Call-ID: {invite.call_id}\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n").encode()


def origin(sdp: bytes) -> list[str]:
    """The o= line's username, session id and version."""
    line = next(l for l in sdp.decode().splitlines() if l.startswith("o="))
    return line[2:].split()[:3]


def same_media(sdp: bytes, expected: bytes) -> bool:
    """The same description but for the o= line (mizud gives each dialog its own origin, RFC 3264 8)."""
    strip = lambda body: [l for l in body.decode().splitlines() if not l.startswith("o=")]  # noqa: E731
    return strip(sdp) == strip(expected) and origin(sdp)[0] == "mizud"


async def connect(rig: Rig, query: str, a: Peer, b: Peer) -> tuple[Any, SipMessage, SipMessage]:
    """Drive flow IV to the end: A answers the inactive hold offer, B offers, A answers in the re-INVITE.

    Returns the API's pending answer and the two initial INVITEs."""
    pending = defer.ensureDeferred(rig.h.call(query))
    invite_a = await a.next("INVITE")
    assert check_sdp(invite_a.body) == "" and b"a=inactive" in invite_a.body and b"c=IN IP4 0.0.0.0" in invite_a.body
    a.reply(invite_a, 180)
    a.reply(invite_a, 200, HELD)
    ack = await a.next("ACK")
    assert ack.body == b"" and ack.call_id == invite_a.call_id
    invite_b = await b.next("INVITE")
    assert invite_b.body == b"" and invite_b.call_id != invite_a.call_id
    b.reply(invite_b, 180)
    b.reply(invite_b, 200, OFFER)
    reinvite = await a.next("INVITE")
    assert reinvite.call_id == invite_a.call_id and same_media(reinvite.body, OFFER)
    assert origin(reinvite.body)[:2] == origin(invite_a.body)[:2] and origin(reinvite.body)[2] == "2"
    assert reinvite.address("to").tag == response_to(invite_a, 200).address("to").tag
    a.reply(reinvite, 200, ANSWER)
    ack_a = await a.next("ACK")
    assert ack_a.cseq() == (reinvite.cseq()[0], "ACK")
    ack_b = await b.next("ACK")
    assert same_media(ack_b.body, ANSWER) and ack_b.call_id == invite_b.call_id
    return pending, invite_a, invite_b


async def cdrs(rig: Rig) -> list[tuple[Any, ...]]:
    """(leg, callednumber, duration, cost, disconnectreason, gateway, sipcallid) of every CDR."""
    rows = (await rig.h.db.run_query(
        "x", "SELECT leg, callednumber, duration, cost, disconnectreason, gateway, sipcallid, callid FROM tb_cdrs "
             "ORDER BY id")).rows
    money = rig.h.db.engine.money
    return [(r[0], r[1], int(r[2]), money(r[3]), r[4], r[5], r[6], int(r[7])) for r in rows]


async def balance(rig: Rig) -> str:
    """alice's balance as the API says it."""
    return (await rig.h.call(f"apientry=balance&{ALICE}")).text


async def until_ended(rig: Rig) -> None:
    """Let the call's end (stop on the clock, settlement in the database) happen."""
    for _ in range(200):
        rig.h.clock.advance(0)
        if not rig.core.calls.live:
            return
        await deferLater(global_reactor, 0.005, lambda: None)
    raise AssertionError("the call did not end")


def test_sdp_checks_and_limits() -> None:
    """check_sdp wants v=0 first, well-formed lines and (for offers) a media line; longest() finds the
    longest call a budget pays for."""
    assert check_sdp(OFFER) == "" and check_sdp(HELD) == "SDP has no media" and check_sdp(HELD, media=False) == ""
    assert check_sdp(b"") == "no SDP" and check_sdp(b"x=0\r\n") == "SDP does not start with v=0"
    assert check_sdp(b"v=0\r\nm audio\r\n") == "SDP has a malformed line"
    assert check_sdp(b"v=0\r\n\xff") == "SDP is not UTF-8" and check_sdp(b"v=0\r\n" + b"a=x\r\n" * 5000)
    held = hold_offer("192.0.2.1", 77)
    assert b"IN IP6 ::" in hold_offer("2001:db8::1", 1) and b"c=IN IP4 0.0.0.0" in held
    assert b"m=audio 9 RTP/AVP 0 8 9 101" in held and b"a=inactive" in held and check_sdp(held) == ""
    moved = reorigin(OFFER, "192.0.2.1", 77, 2)
    assert b"o=mizud 77 2 IN IP4 192.0.2.1\r\n" in moved and b"o=gw" not in moved
    assert moved.replace(b"o=mizud 77 2 IN IP4 192.0.2.1", b"o=gw 1 1 IN IP4 192.0.2.80") == OFFER
    tariff = Tariff(1, "36", "", Decimal("0.60"), Decimal("0.10"), 60, 60, "USD")
    assert longest(tariff.cost, Decimal("0.09"), 3600) == 0
    assert longest(tariff.cost, Decimal("0.70"), 3600) == 60
    assert longest(tariff.cost, Decimal("1.30"), 3600) == 120 and longest(tariff.cost, Decimal("99"), 300) == 300


@pytest_twisted.ensureDeferred
async def test_p2p_connects_and_bills_both_legs(tmp_path: Path, database_option: str) -> None:
    """p2p waitfor=2: leg A gets a media-less offer, B's offer reaches A in a re-INVITE and A's answer
    reaches B in the ACK; B hangs up after 30 s: A is sent BYE, two linked CDRs, the ledger settles."""
    rig = await call_rig(tmp_path, database=database_option)
    a = b = Peer(rig)
    pending, invite_a, invite_b = await connect(rig, f"apientry=p2p&anum=3611111&bnum=3622222&waitfor=2&{ALICE}", a, b)
    answer = await pending
    # 5.00 pays 250 s of two legs at 0.01/s each: all of it is held.
    assert answer.text == "OK: call 1 connected (max 5.00 USD held)", answer.text
    assert await balance(rig) == "OK: 0.00 USD"
    listed = await rig.h.call(f"apientry=calls&{ALICE}")
    assert listed.text == "OK: 1 calls: 1 3611111->3622222 connected" and listed.records[0]["maxduration"] == 250
    rating = await rig.h.call(f"apientry=callrating&username=alice&callid=1&{ALICE}")
    assert rating.text == "OK: credit 0.00 USD, maxduration 250, rating 1.20 USD/min", rating.text
    rig.h.clock.advance(30)
    b.send(b.bye(invite_b, invite_b))
    bye_a = await a.next("BYE")
    assert bye_a.call_id == invite_a.call_id
    await until_ended(rig)
    # A was connected from its answer, B for 30 s: both legs 30 s here (A answered at the same instant).
    assert await cdrs(rig) == [
        ("A", "3611111", 30, Decimal("0.30"), "B hung up", "gw", invite_a.call_id, 1),
        ("B", "3622222", 30, Decimal("0.30"), "B hung up", "gw", invite_b.call_id, 1),
    ]
    assert await balance(rig) == "OK: 4.40 USD"
    assert await rig.h.store.audit() == []
    assert (await rig.h.db.run_query("x", "SELECT count(*) FROM tb_calls")).rows[0][0] == 0
    await rig.h.db.close()


@pytest_twisted.ensureDeferred
async def test_credit_limit_cuts_the_call(tmp_path: Path) -> None:
    """With 5.00 the call may last 250 s: at that moment both legs get BYE and all the hold is charged."""
    rig = await call_rig(tmp_path)
    a = b = Peer(rig)
    pending, invite_a, invite_b = await connect(rig, f"apientry=p2p&anum=3611111&bnum=3622222&{ALICE}", a, b)
    assert (await pending).text == "OK: call 1 placed (max 5.00 USD held)"
    rig.h.clock.advance(249)
    assert rig.core.calls.live
    rig.h.clock.advance(1)
    byes = {(await a.next("BYE")).call_id, (await b.next("BYE")).call_id}
    assert byes == {invite_a.call_id, invite_b.call_id}
    await until_ended(rig)
    rows = await cdrs(rig)
    assert [(r[0], r[2], r[3], r[4]) for r in rows] == [("A", 250, Decimal("2.50"), "credit limit"),
                                                       ("B", 250, Decimal("2.50"), "credit limit")]
    assert await balance(rig) == "OK: 0.00 USD" and await rig.h.store.audit() == []
    await rig.h.db.close()


@pytest_twisted.ensureDeferred
async def test_busy_b_costs_nothing_but_leaves_cdrs(tmp_path: Path, database_option: str) -> None:
    """B busy (486, no failover): A is hung up, both CDRs say so, nothing is charged; waitfor=2 answers
    the failure."""
    rig = await call_rig(tmp_path, database=database_option, gateways=2)
    a = b = Peer(rig)
    pending = defer.ensureDeferred(rig.h.call(f"apientry=p2p&anum=3611111&bnum=3622222&waitfor=2&{ALICE}"))
    invite_a = await a.next("INVITE")
    a.reply(invite_a, 200, HELD)
    await a.next("ACK")
    invite_b = await b.next("INVITE")
    b.reply(invite_b, 486)
    assert (await b.next("ACK")).cseq()[1] == "ACK"  # the transaction ACKs the error
    await a.next("BYE")
    answer = await pending
    assert answer.text == "ERROR: call 1 failed: B not reached: 486 Busy Here", answer.text
    rows = await cdrs(rig)
    assert [(r[0], r[2], r[3], r[4]) for r in rows] == [("A", 0, Decimal("0.00"), "B not reached: 486 Busy Here"),
                                                       ("B", 0, Decimal("0.00"), "486 Busy Here")]
    assert await balance(rig) == "OK: 5.00 USD" and await rig.h.store.audit() == []
    await rig.h.db.close()


@pytest_twisted.ensureDeferred
async def test_gateway_failover_and_digest(tmp_path: Path) -> None:
    """Leg A: the first gateway answers 503, the second challenges (407) and then answers; leg B's
    route list starts again at the first gateway."""
    rig = await call_rig(tmp_path, gateways=2)
    await rig.h.db.run_statement("x", "UPDATE tb_users SET password = 'gw2secret' WHERE username = 'gw2'")
    first, second = Peer(rig, GW), Peer(rig, GW2)
    pending = defer.ensureDeferred(rig.h.call(f"apientry=p2p&anum=3611111&bnum=3622222&waitfor=1&{ALICE}"))
    invite = await first.next("INVITE")
    first.reply(invite, 503)
    invite2 = await second.next("INVITE")
    assert invite2.call_id == invite.call_id and invite2.cseq()[0] == invite.cseq()[0] + 1
    second.reply(invite2, 407, Proxy_Authenticate='Digest realm="carrier", nonce="abc", qop="auth"')
    await second.next("ACK")
    invite3 = await second.next("INVITE")
    assert 'username="gw2"' in invite3.get("proxy-authorization")
    assert invite3.cseq()[0] == invite2.cseq()[0] + 1 and invite3.top_via().branch != invite2.top_via().branch
    second.reply(invite3, 200, HELD)
    answer = await pending
    assert answer.text == "OK: call 1 answered by A (max 5.00 USD held)", answer.text
    invite_b = await first.next("INVITE")
    assert invite_b.uri == "sip:3622222@192.0.2.50:5070"
    placed = rig.core.calls.find(1)
    assert placed is not None and placed.state == "calling B"
    first.reply(invite_b, 180)
    await settle()
    assert placed.state == "ringing B"
    discall = defer.ensureDeferred(rig.h.call(f"apientry=discall&dbcallid=1&{ALICE}"))
    cancel = await first.next("CANCEL")
    assert cancel.top_via().branch == invite_b.top_via().branch
    first.reply(cancel, 200)
    first.reply(invite_b, 487)
    await second.next("BYE")
    answer = await discall
    assert answer.text == "OK: call 1 ended (cost 0.00 USD)", answer.text
    rows = await cdrs(rig)
    assert [(r[0], r[4], r[5]) for r in rows] == [("A", "ended by alice (discall)", "gw2"),
                                                  ("B", "ended by alice (discall)", "gw")]
    assert await balance(rig) == "OK: 5.00 USD"
    await rig.h.db.close()


@pytest_twisted.ensureDeferred
async def test_bad_requests_hold_nothing(tmp_path: Path) -> None:
    """No route, no tariff, a number that is not the user's, no credit, an unregistered user, a gateway
    that never answers: a clear error and no hold left behind."""
    rig = await call_rig(tmp_path)
    h = rig.h
    cases = [
        (f"apientry=p2p&anum=3699999&bnum=3622222&{ALICE}", "ERROR: 3699999 is not one of your numbers"),
        (f"apientry=p2p&anum=3611111&bnum=4922222&{ALICE}", "ERROR: no tariff for 4922222 (leg B)"),
        (f"apientry=p2p&anum=3611111&bnum=root&{ALICE}", "ERROR: root is not registered"),
        (f"apientry=p2p&anum=3611111&bnum=36%3B22&{ALICE}", "ERROR: bnum is not a number or username"),
        (f"apientry=p2p&anum=3611111&{ALICE}", "ERROR: missing parameter: bnum"),
        (f"apientry=callback&num=3611111&{ALICE}", "ERROR: nothing to connect the callback to"),
        (f"apientry=p2p&anum=3611111&bnum=3622222&cnum=3655555&{ALICE}", "ERROR: cnum must be your username"),
        (f"apientry=discall&dbcallid=42&{ALICE}", "ERROR: no live call 42 on this node"),
    ]
    for query, expected in cases:
        answer = await h.call(query)
        assert answer.text.startswith(expected), (query, answer.text)
    assert (await h.call("apientry=addcredit&pin=alice&credit=-4.995", ADMIN)).ok
    answer = await h.call(f"apientry=p2p&anum=3611111&bnum=3622222&{ALICE}")
    assert answer.text == "ERROR: not enough credit to call 3622222 (0.005 USD)", answer.text
    await h.db.run_statement("x", "DELETE FROM tb_routing")
    assert (await h.call(f"apientry=p2p&anum=3611111&bnum=3622222&{ALICE}")).text == "ERROR: no route to 3611111"
    assert (await h.db.run_query("x", "SELECT count(*) FROM tb_holds")).rows[0][0] == 0
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_gateway_that_never_answers(tmp_path: Path) -> None:
    """No answer at all within callsetuptimeout: the leg fails as 408, the hold is released, a CDR remains."""
    rig = await call_rig(tmp_path, "callsetuptimeout=4")
    a = Peer(rig)
    pending = defer.ensureDeferred(rig.h.call(f"apientry=p2p&anum=3611111&bnum=3622222&waitfor=1&{ALICE}"))
    await a.next("INVITE")
    for _ in range(10):
        rig.h.clock.advance(0.5)
    answer = await pending
    assert answer.text == "ERROR: call 1 failed: A not reached: 408 Request Timeout", answer.text
    assert [(r[0], r[4]) for r in await cdrs(rig)] == [("A", "408 Request Timeout")]
    assert await balance(rig) == "OK: 5.00 USD" and await rig.h.store.audit() == []
    await rig.h.db.close()


@pytest_twisted.ensureDeferred
async def test_calls_to_registered_users_and_malformed_sdp(tmp_path: Path) -> None:
    """A callback to alice's own registered phone (free leg) connected to a gateway number; the gateway
    sends a malformed offer: B is ACKed and hung up, A too, nothing charged; re-INVITEs and BYEs outside
    a call get 481."""
    rig = await call_rig(tmp_path)
    phone = Phone("alice", "alicepw", host="192.0.2.10", port=5062)
    assert (await rig.register(phone)).status == 200
    a, b = Peer(rig, ("192.0.2.10", 5062)), Peer(rig, GW)
    pending = defer.ensureDeferred(rig.h.call(f"apientry=callback&num=alice&bnum=3622222&waitfor=2&{ALICE}"))
    invite_a = await a.next("INVITE")
    assert invite_a.uri == "sip:alice@192.0.2.10:5062"
    a.reply(invite_a, 200, HELD)
    await a.next("ACK")
    invite_b = await b.next("INVITE")
    b.reply(invite_b, 200, b"v=0\r\nthis is not sdp\r\n")
    assert (await b.next("ACK")).body == b""
    await b.next("BYE")
    await a.next("BYE")
    answer = await pending
    assert answer.text.startswith("ERROR: call 1 failed: B sent no usable offer: SDP has a malformed line"), answer.text
    for method in ("BYE", "INVITE"):
        stray = phone.request(method, "sip:mizud@192.0.2.1", to="sip:mizud@192.0.2.1")
        stray = stray.replace(b"To: <sip:mizud@192.0.2.1>", b"To: <sip:mizud@192.0.2.1>;tag=nope")
        assert (await rig.one(stray)).status == 481
    assert await balance(rig) == "OK: 5.00 USD"
    await rig.h.db.close()


@pytest_twisted.ensureDeferred
async def test_concurrent_calls_cannot_overspend(tmp_path: Path, database_option: str) -> None:
    """Five p2p requests at once, each wanting 2.00 of alice's 5.00: what is held never passes the
    balance (a request that read the balance before another's hold is refused or holds what is left);
    the ledger stays consistent."""
    rig = await call_rig(tmp_path, "maxcallduration=100", database=database_option)
    answers = await defer.gatherResults([
        defer.ensureDeferred(rig.h.call(f"apientry=p2p&anum=3611111&bnum=3622222&{ALICE}")) for _ in range(5)])
    placed = [a for a in answers if a.ok]
    refused = [a for a in answers if not a.ok]
    assert placed and refused and all("not enough credit" in a.text for a in refused), [a.text for a in answers]
    held = sum(Decimal(a.records[0]["held"]) for a in placed)
    assert held <= Decimal("5.00")
    assert await balance(rig) == f"OK: {Decimal('5.00') - held:.2f} USD"
    for call in list(rig.core.calls.live.values()):
        call.stop("test over")
    # Nothing rang yet, so nothing can be cancelled (RFC 3261 9.1): the INVITEs end at callsetuptimeout.
    for _ in range(20):
        rig.h.clock.advance(0.5)
    await until_ended(rig)
    assert await balance(rig) == "OK: 5.00 USD" and await rig.h.store.audit() == []
    await rig.h.db.close()


@pytest_twisted.ensureDeferred
async def test_callback_without_bnum_goes_to_the_callback_ivr(tmp_path: Path) -> None:
    """callback num=N with no bnum rings N, then connects it to defcallbackivr (here a number behind the
    gateway); ending the call with discall as an admin bills the seconds both legs were up."""
    rig = await call_rig(tmp_path, "defcallbackivr=3699999")
    a = b = Peer(rig)
    pending, invite_a, invite_b = await connect(rig, f"apientry=callback&num=3611111&waitfor=2&{ALICE}", a, b)
    assert (await pending).text == "OK: call 1 connected (max 5.00 USD held)"
    assert invite_a.uri == "sip:3611111@192.0.2.50:5070" and invite_b.uri == "sip:3699999@192.0.2.50:5070"
    assert invite_a.address("from").uri.user == "3699999"  # A sees whom it will be connected to
    rig.h.clock.advance(10)
    ending = defer.ensureDeferred(rig.h.call("apientry=discall&dbcallid=1", ADMIN))
    byes = {(await a.next("BYE")).call_id, (await b.next("BYE")).call_id}
    assert byes == {invite_a.call_id, invite_b.call_id}
    assert (await ending).text == "OK: call 1 ended (cost 0.20 USD)"
    assert [(r[0], r[2], r[4]) for r in await cdrs(rig)] == [("A", 10, "ended by the API (discall)"),
                                                            ("B", 10, "ended by the API (discall)")]
    await rig.h.db.close()


async def up_to_reinvite(rig: Rig, a: Peer, b: Peer, query: str) -> tuple[Any, SipMessage, SipMessage, SipMessage]:
    """Dial both legs; return the pending answer, both INVITEs and the re-INVITE of A (not yet answered)."""
    pending = defer.ensureDeferred(rig.h.call(query))
    invite_a = await a.next("INVITE")
    a.reply(invite_a, 200, HELD)
    await a.next("ACK")
    invite_b = await b.next("INVITE")
    b.reply(invite_b, 200, OFFER)
    reinvite = await a.next("INVITE")
    return pending, invite_a, invite_b, reinvite


@pytest_twisted.ensureDeferred
async def test_a_reinvite_that_never_completes(tmp_path: Path) -> None:
    """A answers the re-INVITE with 100 and then nothing: discall still ends the call at once (B is
    ACKed and both get BYE); the same silence without discall ends the call after 64*T1, billed for
    the time both legs were up."""
    rig = await call_rig(tmp_path)
    a = b = Peer(rig)
    pending, invite_a, invite_b, reinvite = await up_to_reinvite(
        rig, a, b, f"apientry=p2p&anum=3611111&bnum=3622222&waitfor=2&{ALICE}")
    a.reply(reinvite, 100)
    answer = await rig.h.call("apientry=discall&dbcallid=1", ADMIN)
    assert answer.text.startswith("OK: call 1 ended"), answer.text
    assert (await pending).text.startswith("ERROR: call 1 failed: ended by the API (discall)")
    ack_b = await b.next("ACK")
    assert ack_b.call_id == invite_b.call_id
    assert {(await a.next("BYE")).call_id, (await b.next("BYE")).call_id} == {invite_a.call_id, invite_b.call_id}
    # The second call: nobody intervenes, the re-INVITE times out.
    pending, invite_a, invite_b, reinvite = await up_to_reinvite(
        rig, a, b, f"apientry=p2p&anum=3611111&bnum=3622222&waitfor=2&{ALICE}")
    a.reply(reinvite, 100)
    for _ in range(70):
        rig.h.clock.advance(0.5)
    assert (await pending).text.startswith("ERROR: call 2 failed: A refused B's media: 408")
    await until_ended(rig)
    # B answered, so both legs were up (and billed) for the 32 s the re-INVITE was waited for.
    assert await rig.h.store.audit() == [] and await balance(rig) == "OK: 4.36 USD"
    assert not rig.core.dialogs.live
    await rig.h.db.close()


@pytest_twisted.ensureDeferred
async def test_responses_that_must_not_be_believed_or_repeated(tmp_path: Path) -> None:
    """A 200 for leg B from a host the INVITE did not go to is ignored; many 180s after a cancel bring
    one CANCEL; a retransmitted 200 of A's first INVITE is ACKed with that INVITE's CSeq; branches are
    random."""
    from mizud.sip.transaction import new_branch

    first, second = new_branch(), new_branch()
    assert len(first) == len(second) == 27 and first[:-4] != second[:-4]
    rig = await call_rig(tmp_path)
    a = b = Peer(rig)
    pending = defer.ensureDeferred(rig.h.call(f"apientry=p2p&anum=3611111&bnum=3622222&waitfor=2&{ALICE}"))
    invite_a = await a.next("INVITE")
    a.reply(invite_a, 200, HELD)
    await a.next("ACK")
    invite_b = await b.next("INVITE")
    Peer(rig, ("203.0.113.66", 5060)).reply(invite_b, 200, OFFER)  # forged
    await settle()
    placed = rig.core.calls.find(1)
    assert placed is not None and placed.state == "calling B"
    b.reply(invite_b, 180)
    placed.stop("test")
    for _ in range(20):
        b.reply(invite_b, 180)
    await b.next("CANCEL")
    a.reply(invite_a, 200, HELD)  # A's first 200 again (its ACK was lost)
    ack = await a.next("ACK")
    assert ack.cseq() == (invite_a.cseq()[0], "ACK")
    b.reply(invite_b, 487)
    await a.next("BYE")
    await pending
    await until_ended(rig)
    cancels = [m for m in (parse_datagram(d) for addr, d in rig.sent if addr == GW) if m.method == "CANCEL"]
    assert len(cancels) == 1
    assert not [c for c in rig.h.clock.getDelayedCalls() if c.active() and c.getTime() > rig.h.clock.seconds() + 40]
    await rig.h.db.close()


@pytest_twisted.ensureDeferred
async def test_forks_bad_contacts_shutdown_and_a_repeated_settlement(tmp_path: Path) -> None:
    """B's 2xx with a malformed Contact still connects; a second 2xx from another fork is ACKed and hung
    up; shutting down ends and bills the live call; settling it again changes nothing."""
    rig = await call_rig(tmp_path)
    a = b = Peer(rig)
    pending = defer.ensureDeferred(rig.h.call(f"apientry=p2p&anum=3611111&bnum=3622222&waitfor=2&{ALICE}"))
    invite_a = await a.next("INVITE")
    a.reply(invite_a, 200, HELD)
    await a.next("ACK")
    invite_b = await b.next("INVITE")
    response = response_to(invite_b, 200)
    response.add("Contact", "<garbage")
    response.add("Content-Type", "application/sdp")
    response.body = OFFER
    rig.core.datagram(response.serialize(), rig.source(*GW))
    reinvite = await a.next("INVITE")
    a.reply(reinvite, 200, ANSWER)
    await a.next("ACK")
    assert same_media((await b.next("ACK")).body, ANSWER)
    assert (await pending).text.startswith("OK: call 1 connected")
    fork = response_to(invite_b, 200)
    fork.headers = [(k, v.replace(response_to(invite_b, 200).address("to").tag, "forktag") if k == "to" else v)
                    for k, v in fork.headers]
    fork.add("Contact", "<sip:fork@192.0.2.50:5070>")
    rig.core.datagram(fork.serialize(), rig.source(*GW))
    fork_ack = await b.next("ACK")
    fork_bye = await b.next("BYE")
    assert fork_ack.get("to").endswith("tag=forktag") and fork_bye.get("to").endswith("tag=forktag")
    placed = rig.core.calls.find(1)
    assert placed is not None
    rig.h.clock.advance(7)
    await rig.core.calls.shutdown()
    assert {(await a.next("BYE")).call_id, (await b.next("BYE")).call_id} == {invite_a.call_id, invite_b.call_id}
    rows = await cdrs(rig)
    assert [(r[0], r[2], r[4]) for r in rows] == [("A", 7, "the server is shutting down"),
                                                 ("B", 7, "the server is shutting down")]
    assert await rig.core.calls.settle(placed, []) == [row_id for row_id, in (await rig.h.db.run_query(
        "x", "SELECT id FROM tb_cdrs ORDER BY id")).rows]
    assert len(await cdrs(rig)) == 2 and await balance(rig) == "OK: 4.86 USD" and await rig.h.store.audit() == []
    await rig.h.db.close()
