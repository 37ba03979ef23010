"""Calls from phones relayed by mizud (mizud/sip/b2bua.py) on an in-memory rig: what each side sees, the
money held, cut and settled, the CDR, and the live state the API reports."""

from __future__ import annotations

import os
from decimal import Decimal
from pathlib import Path

import pytest_twisted

from mizud.sip.message import SipMessage, parse_datagram
from mizud.sip.responses import response_to
from sipkit import Phone, Rig, digest_header, make_rig, settle
from test_calls import Peer

ADMIN = "127.0.0.1"
ALICE_AT = ("192.0.2.10", 5062)
BOB_AT = ("192.0.2.20", 5080)
GW = ("192.0.2.50", 5070)
OFFER = (b"v=0\r\no=alice 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n"
         b"m=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")
ANSWER = OFFER.replace(b"alice", b"bob").replace(b"192.0.2.10", b"192.0.2.20").replace(b"4000", b"5000")


class Caller:
    """Alice's phone: one dialog's requests (one Call-ID and From tag, rising CSeq), answered by the rig."""

    def __init__(self, rig: Rig, target: str, username: str = "alice", password: str = "alicepw") -> None:
        self.rig = rig
        self.username, self.password = username, password
        self.uri = f"sip:{target}@example.com"
        self.call_id = os.urandom(6).hex() + "@alice"
        self.tag = os.urandom(3).hex()
        self.cseq = 0
        self.to = f"<{self.uri}>"
        self.invite_branch = ""

    def request(self, method: str, *headers: tuple[str, str], body: bytes = b"", cseq: int = 0,
                branch: str = "") -> bytes:
        """A request of this dialog (a fresh branch and the next CSeq unless given)."""
        if not cseq:
            self.cseq += 1
        branch = branch or "z9hG4bK" + os.urandom(5).hex()
        if method == "INVITE":
            self.invite_branch = branch
        lines = [f"{method} {self.uri} SIP/2.0", f"Via: SIP/2.0/UDP {ALICE_AT[0]}:{ALICE_AT[1]};branch={branch};rport",
                 "Max-Forwards: 70", f"From: <sip:{self.username}@example.com>;tag={self.tag}", f"To: {self.to}",
                 f"Call-ID: {self.call_id}", f"CSeq: {cseq or self.cseq} {method}",
                 f"Contact: <sip:{self.username}@{ALICE_AT[0]}:{ALICE_AT[1]}>",
                 *(f"{name}: {value}" for name, value in headers)]
        if body:
            lines.append("Content-Type: application/sdp")
        lines += [f"Content-Length: {len(body)}", "", ""]
        return "\r\n".join(lines).encode() + body

    async def invite(self, body: bytes = OFFER) -> list[SipMessage]:
        """INVITE, answer the 407 with credentials; the responses to the authenticated INVITE so far."""
        first = await self.rig.one(self.request("INVITE", body=body), self.rig.source(*ALICE_AT))
        assert first.status == 407, (first.status, first.reason)
        credentials = digest_header(first.get("proxy-authenticate"), "INVITE", self.uri, self.username,
                                    self.password, header="Proxy-Authorization")
        self.last_invite = self.request("INVITE", credentials, body=body)
        return await self.rig.exchange(self.last_invite, self.rig.source(*ALICE_AT))

    def answered(self, response: SipMessage) -> None:
        """Take the dialog's To (with mizud's tag) from a response."""
        self.to = response.get("to")

    def received(self) -> list[SipMessage]:
        """Everything mizud sent to alice."""
        return [parse_datagram(d) for a, d in self.rig.sent if a == ALICE_AT]


async def rig_with_bob(tmp_path: Path, *sets: str, database: str | None = None) -> tuple[Rig, Peer]:
    """A rig with bob registered at BOB_AT, plan 1 (36... at 0.60 a minute) and a gateway gw for 36."""
    rig = await make_rig(tmp_path, "defaulttariff=1", *sets, database=database)
    h = rig.h
    await h.store.create_user("bob", "bobpw")
    bob = Phone("bob", "bobpw", host=BOB_AT[0], port=BOB_AT[1])
    assert (await rig.register(bob, source=rig.source(*BOB_AT))).status == 200
    await h.db.run_statement(
        "x", "INSERT INTO tb_tariffs (tariffid, prefix, name, price, connectfee, mininterval, interval, currency) "
             "VALUES (1, '36', 'Hungary', ?, 0, 0, 1, 'USD')", (Decimal("0.60"),))
    await h.api.rater.rebuild()
    assert (await h.call("apientry=addserver&u_username=gw&u_ip=192.0.2.50:5070&u_routingpriority=1", ADMIN)).ok
    return rig, Peer(rig, BOB_AT)


async def wait_for(rig: Rig, caller: Caller, status: int) -> SipMessage:
    """The first response with C{status} mizud sends to alice (waiting for it)."""
    for _ in range(200):
        found = [m for m in caller.received() if not m.is_request and m.status == status]
        if found:
            return found[-1]
        rig.h.clock.advance(0)
        await settle()
    raise AssertionError(f"no {status} for alice: {[m.status for m in caller.received()]}")


async def answered(rig: Rig, alice: Caller, callee: Peer, invite: SipMessage, *, ack: bool = True) -> SipMessage:
    """C{callee} answers C{invite} with 200: the 200 mizud relays to alice, alice's dialog set from it and,
    with C{ack}, her ACK sent."""
    callee.reply(invite, 200, ANSWER)
    ok = await wait_for(rig, alice, 200)
    alice.answered(ok)
    if ack:
        rig.core.datagram(alice.request("ACK", cseq=alice.cseq), rig.source(*ALICE_AT))
    return ok


async def tick(rig: Rig) -> None:
    """Run what mizud scheduled for now on its clock, and let the database work finish."""
    rig.h.clock.advance(0)
    await settle()


async def status_of(rig: Rig, name: str) -> str:
    """The API's status of a user (3 calling, 4 speaking)."""
    return (await rig.h.call(f"apientry=verifyuser&username={name}", ADMIN)).text


@pytest_twisted.ensureDeferred
async def test_a_call_between_two_registered_phones(tmp_path: Path) -> None:
    """alice calls bob by username: challenged with 407, then bob's phone gets an INVITE with alice's SDP
    unchanged; bob's 180 and 200 (with his SDP) reach alice, her ACK reaches bob, her BYE ends both sides;
    status says 3 while ringing and 4 while connected, calls lists it, and one free CDR (no tariff for a
    username) carries alice's Call-ID."""
    rig, bob = await rig_with_bob(tmp_path)
    alice = Caller(rig, "bob")
    early = await alice.invite()
    assert [m.status for m in early if not m.is_request] == [100]
    invite = await bob.next("INVITE")
    assert invite.body == OFFER and invite.call_id != alice.call_id
    assert invite.uri.startswith("sip:bob@192.0.2.20:5080")
    assert invite.address("from").uri.user == "alice"
    bob.reply(invite, 180)
    ringing = await wait_for(rig, alice, 180)
    assert ringing.address("to").tag
    assert await status_of(rig, "alice") == "OK: 3" and await status_of(rig, "bob") == "OK: 3"
    bob.reply(invite, 200, ANSWER)
    ok = await wait_for(rig, alice, 200)
    assert ok.body == ANSWER and ok.get("contact") and ok.get("to") == ringing.get("to")
    alice.answered(ok)
    rig.core.datagram(alice.last_invite, rig.source(*ALICE_AT))  # a retransmission: no second call
    await tick(rig)
    assert len([m for m in (parse_datagram(d) for a, d in rig.sent if a == BOB_AT) if m.method == "INVITE"]) == 1
    await settle()  # the connected state is written in the background
    assert await status_of(rig, "bob") == "OK: 4"
    listed = await rig.h.call("apientry=calls", ADMIN)
    assert listed.records and listed.records[0]["state"] == "connected" and listed.records[0]["bnum"] == "bob"
    rig.core.datagram(alice.request("ACK", cseq=alice.cseq), rig.source(*ALICE_AT))
    ack = await bob.next("ACK")
    assert ack.call_id == invite.call_id
    rig.h.clock.advance(30)
    rig.core.datagram(alice.request("BYE"), rig.source(*ALICE_AT))
    bye = await bob.next("BYE")
    bob.reply(bye, 200)
    assert (await wait_for(rig, alice, 200)).cseq()[1] in ("INVITE", "BYE")
    await settle()
    rows = (await rig.h.db.run_query("x", "SELECT callerid, callednumber, duration, cost, sipcallid, "
                                          "disconnectreason, direction, gateway FROM tb_cdrs")).rows
    assert len(rows) == 1
    callerid, called, duration, cost, sipcallid, reason, direction, gateway = rows[0]
    assert (callerid, called, duration, sipcallid, reason, direction, gateway) == (
        "alice", "bob", 30, alice.call_id, "A hung up", "out", "bob")
    assert rig.h.db.engine.money(cost) == 0
    assert await status_of(rig, "bob") == "OK: 2"
    assert not (await rig.h.db.run_query("x", "SELECT id FROM tb_calls")).rows
    await rig.h.db.close()


@pytest_twisted.ensureDeferred
async def test_a_gateway_call_is_held_cut_at_the_credit_limit_and_billed(tmp_path: Path, database_option: str) -> None:
    """alice (0.20 USD) calls 3612345 through gw at 0.60 a minute: 0.20 is held, the call is cut with BYE on
    both sides after 20 seconds, and the CDR's cost and her balance agree to the cent (on both engines)."""
    rig, _ = await rig_with_bob(tmp_path, database=database_option)
    h = rig.h
    await h.db.run_statement("x", "UPDATE tb_users SET credit = ? WHERE username = 'alice'", (Decimal("0.20"),))
    gateway = Peer(rig, GW)
    alice = Caller(rig, "3612345")
    await alice.invite()
    invite = await gateway.next("INVITE")
    assert invite.body == OFFER and invite.uri.startswith("sip:3612345@192.0.2.50:5070")
    await answered(rig, alice, gateway, invite)
    await gateway.next("ACK")
    assert (await h.call("apientry=callrating&authkey=apikey123&authid=alice&authpwd=alicepw")).ok
    rig.h.clock.advance(20)
    bye = await gateway.next("BYE")
    gateway.reply(bye, 200)
    to_alice = [m for m in alice.received() if m.is_request and m.method == "BYE"]
    assert to_alice, "alice got no BYE"
    await settle()
    rows = (await h.db.run_query("x", "SELECT duration, cost, disconnectreason, gateway FROM tb_cdrs")).rows
    assert len(rows) == 1 and rows[0][0] == 20 and h.db.engine.money(rows[0][1]) == Decimal("0.20")
    assert rows[0][2:] == ("credit limit", "gw")
    user = await h.store.find_user("alice")
    assert user is not None and user.credit == Decimal("0.00")
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_refusals_before_anything_is_dialled(tmp_path: Path) -> None:
    """No credit: 402; a name that is no user and no number: 404; a user who is not registered: 480; a
    number without a tariff: 403; nothing goes to the gateway and no money is held."""
    rig, _ = await rig_with_bob(tmp_path)
    h = rig.h
    await h.store.create_user("carol", "carolpw")
    await h.db.run_statement("x", "UPDATE tb_users SET credit = 0 WHERE username = 'alice'")
    for target, status in (("3612345", 402), ("carol", 480), ("nosuchuser", 404)):
        alice = Caller(rig, target)
        answers = await alice.invite()
        assert [m.status for m in answers if not m.is_request] == [100, status], target
    await h.db.run_statement("x", "UPDATE tb_users SET credit = 5 WHERE username = 'alice'")
    answers = await Caller(rig, "4412345").invite()  # gw is the default route, but plan 1 has no 44
    assert [(m.status, m.reason) for m in answers if not m.is_request][-1] == (403, "No tariff for this destination")
    assert not [a for a, _ in rig.sent if a == GW]
    assert not (await h.db.run_query("x", "SELECT id FROM tb_holds")).rows
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_cancel_while_ringing_reaches_the_callee(tmp_path: Path) -> None:
    """alice CANCELs while bob rings: bob gets a CANCEL, his 487 makes alice's INVITE end with 487, the
    CDR says so and nothing is charged."""
    rig, bob = await rig_with_bob(tmp_path)
    alice = Caller(rig, "bob")
    await alice.invite()
    invite = await bob.next("INVITE")
    bob.reply(invite, 180)
    await wait_for(rig, alice, 180)
    cancel = alice.request("CANCEL", cseq=alice.cseq, branch=alice.invite_branch).replace(
        b"To: <sip:bob@example.com>\r\n", b"To: <sip:bob@example.com>\r\n")
    rig.core.datagram(cancel, rig.source(*ALICE_AT))
    cancelled = await bob.next("CANCEL")
    bob.reply(cancelled, 200)
    bob.reply(invite, 487)
    assert (await wait_for(rig, alice, 487)).cseq()[1] == "INVITE"
    await settle()
    rows = (await rig.h.db.run_query("x", "SELECT duration, disconnectreason FROM tb_cdrs")).rows
    assert rows == [(0, "A cancelled")]
    await rig.h.db.close()


@pytest_twisted.ensureDeferred
async def test_in_dialog_requests_are_relayed_both_ways(tmp_path: Path) -> None:
    """bob puts the call on hold with a re-INVITE: alice gets it in her dialog (her Call-ID, mizud's tag as
    From) with bob's SDP, her 200 goes back to bob, his ACK comes on to her; alice's INFO (DTMF) reaches bob;
    bob's BYE ends both sides."""
    rig, bob = await rig_with_bob(tmp_path)
    alice = Caller(rig, "bob")
    await alice.invite()
    invite = await bob.next("INVITE")
    ok = await answered(rig, alice, bob, invite)
    await bob.next("ACK")
    ours = invite.address("from").tag
    theirs = "bobtag"
    hold = ANSWER + b"a=sendonly\r\n"
    reinvite = (f"INVITE sip:mizud@192.0.2.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.20:5080;branch=z9hG4bKre1\r\n"
                f"Max-Forwards: 70\r\nFrom: {invite.get('to')};tag={theirs}\r\nTo: {invite.get('from')}\r\n"
                f"Call-ID: {invite.call_id}\r\nCSeq: 2 INVITE\r\nContact: <sip:bob@192.0.2.20:5080>\r\n"
                f"Content-Type: application/sdp\r\nContent-Length: {len(hold)}\r\n\r\n").encode() + hold
    assert ours
    # The peer's 2xx carried a To tag of its own: use the one mizud keeps in its dialog.
    dialog = next(d for d in rig.core.dialogs.live.values() if d.call_id == invite.call_id)
    reinvite = reinvite.replace(f";tag={theirs}".encode(), f";tag={dialog.remote_tag}".encode())
    before = len(alice.received())
    rig.core.datagram(reinvite, rig.source(*BOB_AT))
    for _ in range(100):
        relayed = [m for m in alice.received()[before:] if m.is_request and m.method == "INVITE"]
        if relayed:
            break
        await tick(rig)
    assert relayed and relayed[0].call_id == alice.call_id and relayed[0].body == hold
    assert relayed[0].address("from").tag == ok.address("to").tag
    answer = SipMessage(status=200, reason="OK", headers=[(k, v) for k, v in relayed[0].headers
                                                             if k in ("via", "from", "to", "call-id", "cseq")])
    answer.add("Contact", f"<sip:alice@{ALICE_AT[0]}:{ALICE_AT[1]}>")
    answer.add("Content-Type", "application/sdp")
    answer.body = OFFER + b"a=recvonly\r\n"
    rig.core.datagram(answer.serialize(), rig.source(*ALICE_AT))
    for _ in range(100):
        back = [parse_datagram(d) for a, d in rig.sent if a == BOB_AT]
        back = [m for m in back if not m.is_request and m.cseq() == (2, "INVITE")]
        if back:
            break
        await tick(rig)
    assert back and back[0].status == 200 and back[0].body == OFFER + b"a=recvonly\r\n"
    ack = reinvite.replace(b"INVITE sip", b"ACK sip").replace(b"CSeq: 2 INVITE", b"CSeq: 2 ACK").replace(
        b"z9hG4bKre1", b"z9hG4bKre1ack")
    rig.core.datagram(ack.split(b"Content-Type")[0] + b"Content-Length: 0\r\n\r\n", rig.source(*BOB_AT))
    for _ in range(100):
        acks = [m for m in alice.received() if m.is_request and m.method == "ACK"]
        if acks:
            break
        await tick(rig)
    assert acks and acks[0].cseq()[0] == relayed[0].cseq()[0]
    info = alice.request("INFO", ("Content-Type", "application/dtmf-relay"), body=b"Signal=5\r\nDuration=160\r\n")
    info = info.replace(b"Content-Type: application/sdp\r\n", b"")
    rig.core.datagram(info, rig.source(*ALICE_AT))
    relayed_info = await bob.next("INFO")
    assert relayed_info.body == b"Signal=5\r\nDuration=160\r\n"
    assert relayed_info.get("content-type") == "application/dtmf-relay"
    bob.reply(relayed_info, 200)
    info_ok = await wait_for(rig, alice, 200)
    assert info_ok.status == 200
    bye = reinvite.replace(b"INVITE sip", b"BYE sip").replace(b"CSeq: 2 INVITE", b"CSeq: 3 BYE").replace(
        b"z9hG4bKre1", b"z9hG4bKbye")
    rig.core.datagram(bye.split(b"Content-Type")[0] + b"Content-Length: 0\r\n\r\n", rig.source(*BOB_AT))
    for _ in range(100):
        byes = [m for m in alice.received() if m.is_request and m.method == "BYE"]
        if byes:
            break
        await tick(rig)
    assert byes and byes[0].call_id == alice.call_id
    await settle()
    rows = (await rig.h.db.run_query("x", "SELECT disconnectreason FROM tb_cdrs")).rows
    assert rows == [("B hung up",)]
    await rig.h.db.close()


@pytest_twisted.ensureDeferred
async def test_a_caller_that_never_acks_gets_the_2xx_again_then_the_call_ends(tmp_path: Path) -> None:
    """Over UDP mizud sends its 2xx again (T1, 2*T1, ... up to T2) until the caller ACKs; after 64*T1 without
    an ACK the call is ended with BYE on both sides and billed as such."""
    rig, bob = await rig_with_bob(tmp_path)
    alice = Caller(rig, "bob")
    await alice.invite()
    invite = await bob.next("INVITE")
    bob.reply(invite, 200, ANSWER)
    await wait_for(rig, alice, 200)
    for _ in range(80):  # 40 s
        rig.h.clock.advance(0.5)
    await tick(rig)
    oks = [m for m in alice.received() if not m.is_request and m.status == 200 and m.cseq()[1] == "INVITE"]
    assert 6 <= len(oks) <= 12, len(oks)
    assert await bob.next("BYE")
    await settle()
    rows = (await rig.h.db.run_query("x", "SELECT disconnectreason FROM tb_cdrs")).rows
    assert rows == [("A did not acknowledge the answer",)]
    await rig.h.db.close()


def sender_invite(number: str, call_id: str = "gwcall1@gw", branch: str = "z9hG4bKgw1") -> bytes:
    """An INVITE a gateway at 192.0.2.60 sends for a caller 3620000000 to C{number}."""
    return (f"INVITE sip:{number}@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.60:5060;branch={branch}\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:3620000000@192.0.2.60>;tag=gwtag\r\nTo: <sip:{number}@192.0.2.1>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:gw@192.0.2.60:5060>\r\n"
            f"Content-Type: application/sdp\r\nContent-Length: {len(OFFER)}\r\n\r\n").encode() + OFFER


@pytest_twisted.ensureDeferred
async def test_an_incoming_call_from_a_gateway_rings_the_did_owner(tmp_path: Path) -> None:
    """A traffic sender authenticated by its address (u_auth=1) calls a DID assigned to bob: no challenge,
    bob's phone rings with the gateway's caller id, the call is free, and its CDR says direction in, on bob's
    account, through the sender; to a number that is not ours it gets 404 and nothing is dialled (no relay),
    and the same INVITE from another address is challenged."""
    rig, bob = await rig_with_bob(tmp_path)
    h = rig.h
    assert (await h.call("apientry=addserver&u_username=carrier&u_ip=192.0.2.60&u_type=5&u_auth=1", ADMIN)).ok
    bobid = (await h.store.find_user("bob")).id  # type: ignore[union-attr]
    await h.db.run_statement("x", "INSERT INTO tb_phonenumbers (number, userid, status, created) VALUES "
                                  "('3612340000', ?, 1, ?)", (bobid, h.store.now()))
    gateway = rig.source("192.0.2.60", 5060)
    first = await rig.exchange(sender_invite("3612340000"), gateway)
    assert [m.status for m in first if not m.is_request] == [100]
    invite = await bob.next("INVITE")
    assert invite.address("from").uri.user == "3620000000" and invite.body == OFFER
    bob.reply(invite, 200, ANSWER)
    for _ in range(100):
        oks = [m for m in (parse_datagram(d) for a, d in rig.sent if a == ("192.0.2.60", 5060))
               if not m.is_request and m.status == 200]
        if oks:
            break
        await tick(rig)
    assert oks and oks[0].body == ANSWER
    to = oks[0].get("to")
    ack = (f"ACK sip:mizud@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.60:5060;branch=z9hG4bKgwack\r\n"
           f"Max-Forwards: 70\r\nFrom: <sip:3620000000@192.0.2.60>;tag=gwtag\r\nTo: {to}\r\n"
           f"Call-ID: gwcall1@gw\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n").encode()
    rig.core.datagram(ack, gateway)
    await bob.next("ACK")
    forged = ack.replace(b"ACK sip", b"BYE sip").replace(b"CSeq: 1 ACK", b"CSeq: 2 BYE").replace(
        b"z9hG4bKgwack", b"z9hG4bKgwbye")
    assert [m.status for m in await rig.exchange(forged, rig.source("192.0.2.99", 5060))] == [403]
    assert not [m for m in (parse_datagram(d) for a, d in rig.sent if a == BOB_AT) if m.method == "BYE"]
    h.clock.advance(12)
    real = forged.replace(b"z9hG4bKgwbye", b"z9hG4bKgwbye2")
    assert [m.status for m in await rig.exchange(real, gateway) if not m.is_request] == [200]
    bye = await bob.next("BYE")
    bob.reply(bye, 200)
    await settle()
    rows = (await h.db.run_query("x", "SELECT userid, callerid, callednumber, duration, cost, direction, gateway, "
                                      "disconnectreason FROM tb_cdrs")).rows
    assert len(rows) == 1
    userid, callerid, called, duration, cost, direction, gateway_name, reason = rows[0]
    assert (userid, callerid, called, duration, direction, gateway_name, reason) == (
        bobid, "3620000000", "3612340000", 12, "in", "carrier", "A hung up")
    assert h.db.engine.money(cost) == 0
    relay = await rig.exchange(sender_invite("3699999999", "gwcall2@gw", "z9hG4bKgw2"), gateway)
    assert [(m.status, m.reason) for m in relay if not m.is_request][-1] == (404, "No such number here")
    assert not [a for a, _ in rig.sent if a == GW]
    other = await rig.exchange(sender_invite("3612340000", "gwcall3@gw", "z9hG4bKgw3"), rig.source("192.0.2.61", 5060))
    assert [m.status for m in other if not m.is_request] == [407]
    await h.db.close()


CAROL_AT = ("192.0.2.30", 5090)


async def with_carol(rig: Rig) -> Peer:
    """carol registered at CAROL_AT; bob given 1.00 USD to pay for forwarded legs."""
    h = rig.h
    await h.store.create_user("carol", "carolpw")
    carol = Phone("carol", "carolpw", host=CAROL_AT[0], port=CAROL_AT[1])
    assert (await rig.register(carol, source=rig.source(*CAROL_AT))).status == 200
    await h.db.run_statement("x", "UPDATE tb_users SET credit = ? WHERE username = 'bob'", (Decimal("1"),))
    return Peer(rig, CAROL_AT)


async def forwarding(rig: Rig, user: str, **fields: object) -> None:
    """Set forwarding fields of a user."""
    for name, value in fields.items():
        await rig.h.db.run_statement("x", f"UPDATE tb_users SET {name} = ? WHERE username = ?", (value, user))


@pytest_twisted.ensureDeferred
async def test_forward_always_to_a_gateway_is_billed_to_the_forwarding_user(tmp_path: Path,
                                                                           database_option: str) -> None:
    """bob forwards every call to 3612345: alice's call to bob goes to the gateway (bob's phone never rings),
    alice gets 181 then the answer; after 10 s the forwarded leg costs bob 0.10 (his CDR, leg B) and alice's
    own CDR for calling bob is free (on both engines: bob's hold settled with both CDRs in one transaction)."""
    rig, bob = await rig_with_bob(tmp_path, database=database_option)
    await with_carol(rig)
    await forwarding(rig, "bob", forwardalways="3612345")
    gateway = Peer(rig, GW)
    alice = Caller(rig, "bob")
    await alice.invite()
    invite = await gateway.next("INVITE")
    assert invite.body == OFFER and invite.uri.startswith("sip:3612345@")
    await wait_for(rig, alice, 181)
    await answered(rig, alice, gateway, invite)
    await gateway.next("ACK")
    rig.h.clock.advance(10)
    rig.core.datagram(alice.request("BYE"), rig.source(*ALICE_AT))
    gateway.reply(await gateway.next("BYE"), 200)
    await settle()
    rows = (await rig.h.db.run_query("x", "SELECT u.username, c.callednumber, c.cost, c.leg, c.gateway, c.duration "
                                          "FROM tb_cdrs c JOIN tb_users u ON u.id = c.userid ORDER BY c.leg")).rows
    money = rig.h.db.engine.money
    assert [(r[0], r[1], money(r[2]), r[3], r[4], r[5]) for r in rows] == [
        ("alice", "bob", Decimal("0"), "A", "bob", 10), ("bob", "3612345", Decimal("0.10"), "B", "gw", 10)]
    bob_user = await rig.h.store.find_user("bob")
    assert bob_user is not None and bob_user.credit == Decimal("0.90")
    assert not [a for a, _ in rig.sent if a == BOB_AT and b"INVITE sip" in _]
    await rig.h.db.close()


@pytest_twisted.ensureDeferred
async def test_forward_on_busy_and_on_no_answer(tmp_path: Path) -> None:
    """bob busy (486) forwards to carol (forwardonbusy); bob not answering within noanswertimeout (3 s) is
    cancelled and the call goes to carol (forwardonnoanswer); carol answers both times."""
    rig, bob = await rig_with_bob(tmp_path)
    carol = await with_carol(rig)
    await forwarding(rig, "bob", forwardonbusy="carol", forwardonnoanswer="carol", noanswertimeout=3)
    alice = Caller(rig, "bob")
    await alice.invite()
    bob.reply(await bob.next("INVITE"), 486)
    invite = await carol.next("INVITE")
    assert invite.body == OFFER
    carol.reply(invite, 200, ANSWER)
    assert (await wait_for(rig, alice, 200)).body == ANSWER
    alice.answered((await wait_for(rig, alice, 200)))
    rig.core.datagram(alice.request("ACK", cseq=alice.cseq), rig.source(*ALICE_AT))
    rig.core.datagram(alice.request("BYE"), rig.source(*ALICE_AT))
    carol.reply(await carol.next("BYE"), 200)
    await settle()
    second = Caller(rig, "bob")
    await second.invite()
    ringing = await bob.next("INVITE")
    bob.reply(ringing, 180)
    await wait_for(rig, second, 180)
    rig.h.clock.advance(3)
    cancel = await bob.next("CANCEL")
    bob.reply(cancel, 200)
    bob.reply(ringing, 487)
    invite = await carol.next("INVITE")
    carol.reply(invite, 486)
    final = await wait_for(rig, second, 486)
    assert final.cseq()[1] == "INVITE"
    await settle()
    reasons = [r[0] for r in (await rig.h.db.run_query("x", "SELECT disconnectreason FROM tb_cdrs WHERE leg = 'A' "
                                                            "ORDER BY id")).rows]
    assert reasons == ["A hung up", "486 Busy Here"]
    await rig.h.db.close()


@pytest_twisted.ensureDeferred
async def test_a_forwarding_loop_is_refused(tmp_path: Path) -> None:
    """bob forwards to carol and carol back to bob: the caller gets 482 and nothing rings."""
    rig, bob = await rig_with_bob(tmp_path)
    await with_carol(rig)
    await forwarding(rig, "bob", forwardalways="carol")
    await forwarding(rig, "carol", forwardalways="bob")
    alice = Caller(rig, "bob")
    answers = await alice.invite()
    statuses = [m.status for m in answers if not m.is_request]
    if 482 not in statuses:
        statuses.append((await wait_for(rig, alice, 482)).status)
    assert 482 in statuses
    assert not [d for a, d in rig.sent if a in (BOB_AT, CAROL_AT) and d.startswith(b"INVITE")]
    await settle()
    assert not (await rig.h.db.run_query("x", "SELECT id FROM tb_calls")).rows
    await rig.h.db.close()


@pytest_twisted.ensureDeferred
async def test_a_cancel_that_comes_while_the_call_is_rated_still_ends_it(tmp_path: Path) -> None:
    """A CANCEL that arrives while mizud still reads the routes and holds the money (before it dials) is
    not lost: the callee never rings and the caller gets 487."""
    rig, bob = await rig_with_bob(tmp_path)
    alice = Caller(rig, "bob")
    first = await rig.one(alice.request("INVITE", body=OFFER), rig.source(*ALICE_AT))
    credentials = digest_header(first.get("proxy-authenticate"), "INVITE", alice.uri, "alice", "alicepw",
                                header="Proxy-Authorization")
    invite = alice.request("INVITE", credentials, body=OFFER)
    rig.core.datagram(invite, rig.source(*ALICE_AT))  # served in the background; the CANCEL comes at once
    cancel = alice.request("CANCEL", cseq=alice.cseq, branch=alice.invite_branch)
    rig.core.datagram(cancel, rig.source(*ALICE_AT))
    final = await wait_for(rig, alice, 487)
    assert final.cseq()[1] == "INVITE"
    assert not [d for a, d in rig.sent if a == BOB_AT and d.startswith(b"INVITE")]
    await settle()
    assert not (await rig.h.db.run_query("x", "SELECT id FROM tb_calls")).rows
    await rig.h.db.close()


@pytest_twisted.ensureDeferred
async def test_a_free_call_of_a_node_that_stopped_is_ended_at_its_next_start(tmp_path: Path) -> None:
    """A call between two users holds no money; if the node stops with it live, its tb_calls row goes at the
    next start (release_own) with CDRs saying so, so status no longer says 3 or 4."""
    from datetime import timedelta

    from mizud.store.nodes import release_own

    rig, bob = await rig_with_bob(tmp_path)
    alice = Caller(rig, "bob")
    await alice.invite()
    bob.reply(await bob.next("INVITE"), 180)
    await wait_for(rig, alice, 180)
    assert await status_of(rig, "bob") == "OK: 3"
    ended = await release_own(rig.h.store, "", rig.h.store.now() + timedelta(seconds=1))
    assert ended == 1
    assert await status_of(rig, "bob") == "OK: 2"
    reasons = [r[0] for r in (await rig.h.db.run_query("x", "SELECT disconnectreason FROM tb_cdrs")).rows]
    assert reasons and all("died" in r for r in reasons)
    await rig.h.db.close()


@pytest_twisted.ensureDeferred
async def test_invite_floods_glare_and_answers_from_elsewhere(tmp_path: Path) -> None:
    """More new INVITEs from one address than sipinviterate allows get 503 with Retry-After before any work;
    a 200 to bob's INVITE from another host is ignored; a second re-INVITE while one is relayed gets 491;
    a WebRTC offer towards a plain gateway is refused with 488 and nothing is dialled."""
    rig, bob = await rig_with_bob(tmp_path, "sipinviterate=1")
    alice = Caller(rig, "bob")
    await alice.invite()
    invite = await bob.next("INVITE")
    forged = Peer(rig, ("192.0.2.66", 5060))
    forged.reply(invite, 200, ANSWER)
    await tick(rig)
    assert not [m for m in alice.received() if not m.is_request and m.status == 200]
    await answered(rig, alice, bob, invite)
    await bob.next("ACK")
    first = alice.request("INVITE", body=OFFER + b"a=sendonly\r\n")
    second = alice.request("INVITE", body=OFFER + b"a=inactive\r\n")
    rig.core.datagram(first, rig.source(*ALICE_AT))
    await bob.next("INVITE")
    answers = await rig.exchange(second, rig.source(*ALICE_AT))
    assert 491 in [m.status for m in answers if not m.is_request]
    statuses = []
    for _ in range(4):
        answers = await rig.exchange(Caller(rig, "3612345").request("INVITE", body=OFFER), rig.source(*ALICE_AT))
        statuses += [m.status for m in answers if not m.is_request]
    assert 503 in statuses
    rig.h.clock.advance(10)
    webrtc = (b"v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n"
              b"m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=fingerprint:sha-256 AB:CD\r\na=rtpmap:111 opus/48000/2\r\n")
    refused = await Caller(rig, "3612345").invite(body=webrtc)
    assert [(m.status, m.reason) for m in refused if not m.is_request][-1][0] == 488
    assert not [a for a, _ in rig.sent if a == GW]
    await rig.h.db.close()


@pytest_twisted.ensureDeferred
async def test_a_second_2xx_of_a_forked_invite_is_acked_and_ended(tmp_path: Path) -> None:
    """bob's INVITE forked downstream: a 200 from a second branch (another To tag) after the first is ACKed
    and sent a BYE at once; the call goes on with the first."""
    rig, bob = await rig_with_bob(tmp_path)
    alice = Caller(rig, "bob")
    await alice.invite()
    invite = await bob.next("INVITE")
    await answered(rig, alice, bob, invite, ack=False)
    other = response_to(invite, 200)
    other.set("to", invite.get("to") + ";tag=secondbranch")
    other.add("Contact", f"<sip:fork@{BOB_AT[0]}:{BOB_AT[1]}>")
    other.add("Content-Type", "application/sdp")
    other.body = ANSWER
    rig.core.datagram(other.serialize(), rig.source(*BOB_AT))
    acks = [await bob.next("ACK"), await bob.next("ACK")]
    assert {a.address("to").tag for a in acks} >= {"secondbranch"}
    bye = await bob.next("BYE")
    assert bye.address("to").tag == "secondbranch"
    assert [c["state"] for c in (await rig.h.call("apientry=calls", ADMIN)).records or []] == ["connected"]
    await rig.h.db.close()


@pytest_twisted.ensureDeferred
async def test_postpaid_users_call_down_to_their_credit_limit(tmp_path: Path) -> None:
    """A postpaid user with 0.00 and a credit limit of 0.30 may call 3612345: 0.30 (30 s at 0.60 a minute)
    is held, the call is cut after 30 s and the balance ends at -0.30."""
    rig, _ = await rig_with_bob(tmp_path)
    h = rig.h
    await h.db.run_statement("x", "UPDATE tb_users SET credit = 0, postpaid = 1, creditlimit = ? "
                                  "WHERE username = 'alice'", (Decimal("0.30"),))
    gateway = Peer(rig, GW)
    alice = Caller(rig, "3612345")
    await alice.invite()
    invite = await gateway.next("INVITE")
    gateway.reply(invite, 200, ANSWER)
    alice.answered(await wait_for(rig, alice, 200))
    rig.core.datagram(alice.request("ACK", cseq=alice.cseq), rig.source(*ALICE_AT))
    await gateway.next("ACK")
    h.clock.advance(30)
    gateway.reply(await gateway.next("BYE"), 200)
    await settle()
    user = await h.store.find_user("alice")
    assert user is not None and user.credit == Decimal("-0.30")
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_a_traffic_sender_proven_by_digest_calls_a_user(tmp_path: Path) -> None:
    """A traffic sender added with u_auth=0 is challenged like a phone; with its account's credentials its
    call to bob's username rings bob (direction in, free)."""
    rig, bob = await rig_with_bob(tmp_path)
    h = rig.h
    assert (await h.call("apientry=addserver&u_username=trunk&u_password=trunkpw&u_ip=192.0.2.70&u_type=5"
                         "&u_auth=0", ADMIN)).ok
    trunk = Caller(rig, "bob", username="trunk", password="trunkpw")
    answers = await trunk.invite()
    assert [m.status for m in answers if not m.is_request] == [100]
    invite = await bob.next("INVITE")
    assert invite.address("from").uri.user == "trunk"
    bob.reply(invite, 486)
    assert (await wait_for(rig, trunk, 486)).cseq()[1] == "INVITE"
    await settle()
    rows = (await h.db.run_query("x", "SELECT direction, gateway, cost FROM tb_cdrs")).rows
    assert [(r[0], r[1], h.db.engine.money(r[2])) for r in rows] == [("in", "trunk", Decimal("0"))]
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_a_cancel_from_elsewhere_and_a_callee_that_never_answers(tmp_path: Path) -> None:
    """A CANCEL for alice's INVITE sent from another address gets 481 and cancels nothing; bob ringing
    past callringtimeout is cancelled and alice gets 480 No answer."""
    rig, bob = await rig_with_bob(tmp_path, "callringtimeout=5")
    alice = Caller(rig, "bob")
    await alice.invite()
    invite = await bob.next("INVITE")
    bob.reply(invite, 180)
    await wait_for(rig, alice, 180)
    cancel = alice.request("CANCEL", cseq=alice.cseq, branch=alice.invite_branch)
    answers = await rig.exchange(cancel, rig.source("192.0.2.99", 5062))
    assert [m.status for m in answers] == [481]
    assert not [d for a, d in rig.sent if a == BOB_AT and d.startswith(b"CANCEL")]
    rig.h.clock.advance(5)
    bob.reply(await bob.next("CANCEL"), 200)
    bob.reply(invite, 487)
    final = await wait_for(rig, alice, 480)
    assert final.reason == "No answer"
    await rig.h.db.close()


@pytest_twisted.ensureDeferred
async def test_a_trunk_known_by_address_is_not_forwarded_out_at_a_users_expense(tmp_path: Path) -> None:
    """A call from a trunk trusted by its (forgeable) address to bob, who forwards always to 3612345, is not
    sent to the gateway: bob would pay for a call anyone could forge. The caller gets a neutral 480 and bob
    nothing is held."""
    rig, bob = await rig_with_bob(tmp_path)
    h = rig.h
    assert (await h.call("apientry=addserver&u_username=carrier&u_ip=192.0.2.60&u_type=5&u_auth=1", ADMIN)).ok
    await h.db.run_statement("x", "UPDATE tb_users SET credit = 1, forwardalways = '3612345' WHERE username = 'bob'")
    answers = await rig.exchange(sender_invite("bob"), rig.source("192.0.2.60", 5060))
    final = [m for m in answers if not m.is_request and m.status >= 200]
    if not final:
        for _ in range(100):
            final = [m for m in (parse_datagram(d) for a, d in rig.sent if a == ("192.0.2.60", 5060))
                     if not m.is_request and m.status >= 200]
            if final:
                break
            await tick(rig)
    assert (final[0].status, final[0].reason) == (480, "Temporarily unavailable")
    assert not [a for a, _ in rig.sent if a == GW]
    assert not (await h.db.run_query("x", "SELECT id FROM tb_holds")).rows
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_routingtest_shows_the_route_a_real_call_takes(tmp_path: Path) -> None:
    """routingtest for bob lists his phone; with forwardalways=3612345 it lists the gateway the real call goes
    to (as test_forward_always_... shows it does), and names forwarding on busy and on no answer."""
    rig, _ = await rig_with_bob(tmp_path)
    h = rig.h
    direct = await h.call("apientry=routingtest&called=bob", ADMIN)
    assert direct.records and direct.records[0]["kind"] == "user", direct.text
    await forwarding(rig, "bob", forwardalways="3612345")
    forwarded = await h.call("apientry=routingtest&called=bob", ADMIN)
    assert forwarded.records and forwarded.records[0]["name"] == "gw", forwarded.text
    assert "bob forwards always to 3612345" in forwarded.text
    await forwarding(rig, "bob", forwardalways="", forwardonbusy="carol")
    named = await h.call("apientry=routingtest&called=bob", ADMIN)
    assert "bob forwards on busy to carol" in named.text and named.records[0]["kind"] == "user"  # type: ignore[index]
    await h.db.close()
