"""Calls from phones: mizud as a back-to-back user agent for signalling only.

A registered user's INVITE is challenged like a proxy challenges (407,
the same nonces, lockout and limits as REGISTER).  Once proven, the
called number is routed (L{mizud.sip.routing.Router}: the user a
username or DID names, else the gateways by prefix and priority), rated
for the caller, and the longest call the credit allows is held.  Then
mizud opens a second dialog towards the target with the caller's session
description unchanged: media flows between the endpoints, never through
mizud.  Provisional responses (180, 183 with early media) go back to the
caller, then the 2xx; both ACKs, BYE from either side, CANCEL, and every
in-dialog request (re-INVITE and UPDATE for hold or a codec change, INFO
for DTMF) are relayed to the other dialog and their answers back.

Each dialog keeps its own identifiers (Call-ID, tags, CSeq): the caller's
dialog is the caller's, the callee's is mizud's (RFC 7092's
signalling-only B2BUA).  The call is cut with BYE on both sides when the
held funds run out or the maximum duration passes; at the end one CDR
(the caller's Call-ID) and the settlement of the hold are written in one
transaction (L{mizud.sip.calls.CallControl.settle}).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Callable

from twisted.internet import defer
from twisted.logger import Logger

from ..billing.rating import Tariff, leg_cost, longest
from ..ratelimit import LeakyBucket
from ..store.billing import USER_SIPSERVER, USER_TRAFFICSENDER, User
from ..store.calls import insert_call
from ..store.database import Txn
from ..store.money import InsufficientCredit, format_money
from .backend import Backend
from .calls import CONNECTED, ENDED, FAILOVER, CallControl, Progress, cancel_invite, end_fork
from .dialog import Dialog, Outcome, new_tag, peer_hosts
from .message import ParseError, SipMessage
from .ports import Bridging
from .responses import ALLOW, SERVER, response_to
from ..store.routes import Forwards
from .routing import Route, Router, Unreachable
from .transaction import T1, T2, InviteClientTransaction, Source, new_branch

log = Logger()

#: Final responses of a registered contact after which its other contacts are tried.
NEXT_CONTACT = frozenset({0, 408, 480, 500, 503, 504})
#: Headers of an in-dialog request or response that travel to the other dialog with the body.
RELAYED = ("content-type", "content-disposition", "event", "info-package", "recv-info")


#: The most forwards one call follows (a forward to a user who forwards too counts again).
MAX_FORWARDS = 5


@dataclass(eq=False)
class Payment:
    """Who pays for a stretch of the call: the caller for the number dialled, and each user who forwards
    the call for the forwarded leg; each with its own tariff and hold."""

    user: User
    tariff: Tariff | None
    holdid: int
    held: Decimal
    #: The number this payment is for, and who is shown calling it (the CDR's callednumber and callerid).
    number: str
    callerid: str
    #: The gateway (or user) the leg went to, once known.
    gateway: str = ""

    def cost(self, seconds: int) -> Decimal:
        """What this payment owes for C{seconds} connected (never more than held)."""
        return min(leg_cost(self.tariff, seconds), self.held)


class Refused(Exception):
    """The call is not placed: the status and reason phrase the caller gets (nothing was held)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(eq=False)
class Side:
    """One dialog of a relayed call: the caller's (mizud its server) or the callee's (mizud its client)."""

    label: str  # "A" (the caller) or "B" (the callee)
    call_id: str
    send: Callable[[bytes], None] | None = None
    reliable: bool = False
    #: The host this side's responses must come from.
    peer: str = ""
    #: Our host:port as this side reaches us (for Contact), and the transport.
    local: str = ""
    transport: str = "udp"
    dialog: Dialog | None = None
    #: The ACK sent for each answered INVITE on this side (by CSeq), sent again if its 2xx comes again.
    acks: dict[int, bytes] = field(default_factory=dict)

    def contact(self) -> str:
        """Our Contact towards this side."""
        suffix = f";transport={self.transport}" if self.transport != "udp" else ""
        return f"<sip:{SERVER}@{self.local}{suffix}>"


class Bridge(Progress):
    """One call from a phone, relayed to its target: dials, relays, cuts at the credit limit, bills."""

    kind = "sip"

    def __init__(self, relay: Relay, callid: int, user: User, invite: SipMessage, source: Source, number: str,
                 routes: list[Route], tariff: Tariff | None, holdid: int, held: Decimal, currency: str,
                 callee: str, caller_id: str = "", sender: str = "") -> None:
        super().__init__()
        self.relay = relay
        #: Who the callee sees calling, and the CDR's callerid: the user, or the number a gateway sent.
        self.caller_id = caller_id or user.username
        #: The traffic sender an incoming call came from ("": a call from one of our users).
        self.sender = sender
        #: Whether that sender was trusted by its source address alone (no digest).
        self.trusted_by_address = False
        self.core = relay.core
        self.clock = relay.core.clock
        self.id = callid
        self.user = user
        self.invite = invite
        self.source = source
        self.number = number
        self.routes = routes
        self.tariff = tariff
        self.holdid = holdid
        self.held = held
        self.currency = currency
        self.callee = callee
        self.payments = [Payment(user, tariff, holdid, held, number, self.caller_id)]
        #: The forwarding of the user being called (None: not a user of ours).
        self.forwards: Forwards | None = None
        #: The users this call was forwarded from, to stop a loop.
        self.visited: set[str] = {name for name in (callee, "" if sender else user.username) if name}
        self.a = Side("A", invite.call_id, source.send, source.reliable, source.host,
                      self.core.reachable(source.local, source.host), source.transport)
        self.b = Side("B", f"{os.urandom(12).hex()}@{SERVER}")
        self.tag = new_tag()
        self.route: Route | None = None
        self.created = self.clock.seconds()
        self.started: datetime = relay.now()
        self.answered: float | None = None
        self.answered_at: datetime | None = None
        self.ringing = False
        self.stopping = ""
        self.cancelled = False
        self.ended_at: float | None = None
        self.limit_at: float | None = None
        self.cost = Decimal(0)
        self.cdrs: list[int] = []
        self._limit: Any = None
        self._transaction: InviteClientTransaction | None = None
        self._cancel_sent = False
        self._a_acked = False
        self._rang_out = False
        #: The latest INVITE sent to B (a forked 2xx's dialog is built from it).
        self._b_invite: SipMessage | None = None
        #: A relayed re-INVITE or UPDATE waits for its answer.
        self._offering = False
        #: CSeq of an INVITE relayed to the other side whose 2xx waits for this side's ACK -> the other side.
        self._pending_acks: dict[tuple[str, int], tuple[Side, int]] = {}

    # -- what the API sees (as of a placed call, L{mizud.sip.calls.PlacedCall}) ----------

    @property
    def state(self) -> str:
        """A word for where the call is."""
        if self.level >= ENDED:
            return "ended"
        if self.stopping:
            return "ending"
        if self.level == CONNECTED:
            return "connected"
        return "ringing B" if self.ringing else "calling B"

    def outcome(self) -> str:
        """Why the call ended (or is ending)."""
        return self.stopping

    def seconds(self, end: float) -> int:
        """Whole seconds the call was connected until C{end}."""
        return max(0, int(end - self.answered)) if self.answered is not None else 0

    def record(self) -> dict[str, Any]:
        """The call as an API record."""
        now = self.clock.seconds()
        left = max(0, round(self.limit_at - now)) if self.limit_at is not None and self.level < ENDED else 0
        end = self.ended_at or now
        return {
            "callid": self.id, "username": self.user.username, "kind": self.kind, "anum": self.caller_id,
            "bnum": self.number, "state": self.state, "duration": self.seconds(end), "connected": self.seconds(end),
            "maxduration": left, "held": format_money(self.held), "cost": format_money(self.cost),
            "currency": self.currency, "sipcallida": self.a.call_id, "sipcallidb": self.b.call_id,
            "reason": self.outcome(), "callee": self.callee, "gateway": self.route.name if self.route else "",
        }

    def rate(self) -> Decimal:
        """The caller's price per minute."""
        return self.tariff.price if self.tariff is not None else Decimal(0)

    def charges(self) -> list[tuple[int, Decimal]]:
        """The holds to settle at the end and what each is charged."""
        return [(p.holdid, p.cost(self.seconds(self.ended_at or self.clock.seconds()))) for p in self.payments
                if p.holdid]

    # -- setting up ------------------------------------------------------------------------

    async def run(self) -> SipMessage:
        """Dial the routes in turn; the final response for the caller's INVITE (relayed or ours)."""
        self.core.on_cancel(self.invite, self._caller_cancelled)  # at once if A cancelled already
        final: SipMessage | None = None
        try:
            final = await self._dial()
        except Exception:
            log.failure("call {id} failed", id=self.id)
            self.stopping = self.stopping or "internal error"
        if final is None or final.status >= 300:
            if final is None:
                final = response_to(self.invite, 500, source=self.source)
            if not self.stopping:
                self.stopping = f"{final.status} {final.reason}".strip()
            defer.ensureDeferred(self._finish())
            return final
        self.core.after_response(self.invite, self._answered_caller)
        return final

    async def _dial(self) -> SipMessage:
        """Ring the target, following its forwarding (always, on busy, on no answer); the final response."""
        routes, hops = self.routes, 0
        while True:
            forwards = self.forwards
            if forwards is not None and forwards.always:
                outcome, last = "always", None
            else:
                ring = self.relay.settings.current.callringtimeout
                timeout = min(max(forwards.timeout, 1), ring) if (
                    forwards is not None and forwards.noanswer and forwards.timeout) else 0
                outcome, last = await self._ring(routes, timeout)
                if outcome == "answered" and last is not None:
                    return await self._connected(last)
            if self.cancelled or self.stopping:
                self.stopping = self.stopping or "A cancelled"
                return response_to(self.invite, 487, source=self.source)
            target = ""
            if forwards is not None:
                target = {"always": forwards.always, "busy": forwards.busy, "noanswer": forwards.noanswer,
                          "unreachable": forwards.noanswer}.get(outcome, "")
            if not target:
                return self._final(routes, last, outcome)
            hops += 1
            if hops > MAX_FORWARDS:
                return response_to(self.invite, 482, "Too many forwards", source=self.source)
            try:
                routes = await self.relay.forward(self, target)
            except Refused as refused:
                # The caller learns nothing of the forwarding user's credit or target: the callee's own outcome.
                log.info("call {id}: forward to {target} refused: {reason}", id=self.id, target=target,
                         reason=refused.reason)
                if refused.status == 482:
                    return response_to(self.invite, 482, "Forwarding loop", source=self.source)
                if outcome == "always":
                    return response_to(self.invite, 480, "Temporarily unavailable", source=self.source)
                return self._final(routes, last, outcome)
            self.core.progress(self.invite, response_to(self.invite, 181, source=self.source))

    async def _ring(self, routes: list[Route], timeout: int) -> tuple[str, SipMessage | None]:
        """Try C{routes} in turn (each ringing at most C{timeout} seconds, 0: callringtimeout): answered,
        busy, noanswer, unreachable or failed, with the last final response."""
        last: SipMessage | None = None
        outcome = "unreachable"
        for route in routes:
            if self.cancelled or self.stopping:
                break
            self._rang_out = False
            try:
                response = await self._attempt(route, timeout)
            except Unreachable as problem:
                log.info("call {id}: {route} unreachable: {problem}", id=self.id, route=route.name, problem=problem)
                continue
            if 200 <= response.status < 300:
                return "answered", response
            last = response
            if route.kind == "user":
                if response.status in (486, 600):
                    return "busy", response
                if self._rang_out:
                    return "noanswer", response  # the ring time covers the whole hunt, not each contact
                if response.status not in NEXT_CONTACT:
                    return "failed", response
            elif self._rang_out:
                return "noanswer", response
            elif response.status not in FAILOVER:
                return "failed", response
        if last is not None and outcome == "unreachable" and routes and routes[0].kind == "gateway":
            outcome = "failed"
        return outcome, last

    def _final(self, routes: list[Route], last: SipMessage | None, outcome: str) -> SipMessage:
        """What A gets when no route answered."""
        if last is not None and last.status in (401, 407):
            return response_to(self.invite, 403, "The callee demands authentication", source=self.source)
        if outcome == "noanswer":
            return response_to(self.invite, 480, "No answer", source=self.source)
        if outcome == "unreachable" and routes and routes[0].kind == "user":
            return response_to(self.invite, 480, "Unreachable", source=self.source)
        if last is not None and last.status:
            return self._mirror(last)
        if routes and routes[0].kind == "user":
            return response_to(self.invite, 480, "Unreachable", source=self.source)
        return response_to(self.invite, 503, "No gateway answered", source=self.source)

    def _mirror(self, response: SipMessage) -> SipMessage:
        """The callee's final or provisional response as the caller gets it (our To tag, our Contact)."""
        answer = response_to(self.invite, response.status, response.reason, source=self.source)
        for name in ("content-type", "warning", "retry-after"):
            for value in response.all(name):
                answer.add(name, value)
        if 100 < response.status < 300:
            # The caller's dialog keeps the route set its INVITE came with (RFC 3261 12.1.1).
            for value in self.invite.all("record-route"):
                answer.add("Record-Route", value)
            answer.add("Contact", self.a.contact())
            answer.add("Allow", ALLOW)
        if response.body and 100 < response.status < 300:
            answer.body = response.body
        return answer

    async def _attempt(self, route: Route, timeout: int = 0) -> SipMessage:
        """One INVITE (and its authenticated retry, towards a gateway) along one route, ringing at most
        C{timeout} seconds (0: callringtimeout)."""
        b = self.b
        b.send, b.local, b.reliable, b.peer = await self.core.destination(route)
        if self.cancelled or self.stopping:
            raise Unreachable("the call was stopped")
        b.transport = route.transport
        self.route = route
        self.payments[-1].gateway = route.name
        invite = self._invite_b(route)
        response = await self._transact(invite, timeout)
        if response.status in (401, 407) and route.kind == "gateway" and not self.cancelled:
            retry = self.core.authorised(invite, response, await self.relay.calls.account(route.name))
            if retry is not None:
                invite = retry
                response = await self._transact(invite, timeout)
        if 200 <= response.status < 300:
            dialog = Dialog.from_2xx(invite, response)
            dialog.on_request = lambda request, source: self._from_side(self.b, request, source)
            dialog.on_ack = lambda ack: self._acked(self.b, ack)
            dialog.peers = peer_hosts(b.peer, dialog.remote_target)
            b.dialog = dialog
            self.core.dialogs.add(dialog)
        return response

    def _invite_b(self, route: Route) -> SipMessage:
        b, invite = self.b, self.invite
        realm = self.core.settings.current.siprealm or route.domain or SERVER
        to = f"sip:{self.number}@{realm}" if route.kind == "user" else route.target
        forwards = int(invite.get("max-forwards", "70").strip() or 70) - 1
        message = SipMessage(method="INVITE", uri=route.target)
        add = message.headers.append
        add(("via", f"SIP/2.0/{route.transport.upper()} {b.local};branch={new_branch()};rport"))
        add(("max-forwards", str(forwards)))
        add(("from", f"<sip:{self.caller_id}@{realm}>;tag={self.tag}"))
        add(("to", f"<{to}>"))
        add(("call-id", b.call_id))
        add(("cseq", f"{invite.cseq()[0]} INVITE"))
        add(("contact", b.contact()))
        add(("allow", ALLOW))
        add(("user-agent", SERVER))
        # The body's own headers only: no Supported, Require or session timers (mizud offers none of them).
        for name in ("content-type", "content-disposition"):
            for value in invite.all(name):
                add((name, value))
        message.body = invite.body
        return message

    async def _transact(self, invite: SipMessage, timeout: int = 0) -> SipMessage:
        """Run one INVITE transaction towards B, cancelling it when it rings too long (C{timeout} seconds,
        0: callringtimeout) or the caller cancels."""
        b = self.b
        assert b.send is not None
        config = self.core.settings.current
        result = self.core.clients.start(
            invite, b.send, b.reliable, on_response=self._progress, timeout=float(config.callsetuptimeout),
            peer=b.peer, proceeding=config.callringtimeout + 64 * T1)
        found = self.core.clients.find(invite)
        self._transaction = found if isinstance(found, InviteClientTransaction) else None
        self._b_invite = invite
        self._cancel_sent = False
        ring = self.clock.callLater(timeout or config.callringtimeout, self._ring_out)
        try:
            return await result
        finally:
            if ring.active():
                ring.cancel()
            self._transaction = None
            self.ringing = False

    def _progress(self, response: SipMessage) -> None:
        """A provisional response from B (relayed to A), or a retransmitted 2xx (ACKed again)."""
        if response.status < 200:
            if response.status > 100:
                self.ringing = True
                if not self.cancelled and not self.stopping:
                    self.core.progress(self.invite, self._mirror(response))
            if self.cancelled or self.stopping:
                self._send_cancel()
            return
        if not 200 <= response.status < 300 or self.b.send is None:
            return
        dialog = self.b.dialog
        if dialog is not None and response.address("to").tag != dialog.remote_tag:
            if self._b_invite is not None:
                end_fork(self.core.clients, self._b_invite, response, self.b.send, self.b.reliable, self.b.peer)
            return
        ack = self.b.acks.get(response.cseq()[0])
        if ack:
            self.b.send(ack)


    def _ring_out(self) -> None:
        """The callee rang too long: cancel its INVITE (no answer)."""
        self._rang_out = True
        self._cancel_b()

    def _caller_cancelled(self) -> None:
        """A CANCELs its INVITE: cancel B's ringing INVITE, answer A 487 once B's INVITE ends."""
        self.cancelled = True
        self._cancel_b()

    def _cancel_b(self) -> None:
        transaction = self._transaction
        if transaction is None or transaction.final is not None:
            return
        self._send_cancel()

    def _send_cancel(self) -> None:
        transaction, b = self._transaction, self.b
        if transaction is None or b.send is None or self._cancel_sent:
            return
        # Without a provisional yet, it is sent when one comes.
        self._cancel_sent = cancel_invite(self.core.clients, transaction, b.send, b.reliable, b.peer)

    async def _connected(self, response: SipMessage) -> SipMessage:
        """B answered: ACK it (the offer was in A's INVITE), answer A with B's answer, start the clock."""
        b = self.b
        assert b.dialog is not None
        if self.cancelled or self.stopping:
            self._ack(b)
            self.stopping = self.stopping or "A cancelled"
            return response_to(self.invite, 487, source=self.source)
        if self.invite.body:
            self._ack(b)
        self.answered = self.clock.seconds()
        self.answered_at = self.relay.now()
        answer = self._mirror(response)
        dialog = Dialog.as_server(self.invite, answer, self.a.local, self.a.transport)
        dialog.on_request = lambda request, source: self._from_side(self.a, request, source)
        dialog.on_ack = lambda ack: self._acked(self.a, ack)
        dialog.peers = (self.a.peer,)
        self.a.dialog = dialog
        self.core.dialogs.add(dialog)
        self._answer = answer.serialize()
        self._arm_limit()
        self._reach(CONNECTED)
        defer.ensureDeferred(self.relay.calls.connected(self))
        return answer

    def _ack(self, side: Side, body: bytes = b"", content_type: str = "application/sdp") -> None:
        """ACK the latest answered INVITE on C{side} (once)."""
        dialog = side.dialog
        if dialog is None or side.send is None or dialog.invite_cseq in side.acks:
            return
        data = dialog.ack(body, content_type).serialize()
        side.acks[dialog.invite_cseq] = data
        self._send(side, data)

    def _send(self, side: Side, data: bytes) -> None:
        """Send to a side; a connection gone meanwhile is logged, never raised into the call's logic."""
        if side.send is None:
            return
        try:
            side.send(data)
        except Exception as problem:
            log.info("call {id}: could not send to {side}: {problem}", id=self.id, side=side.label, problem=problem)

    def _answered_caller(self) -> None:
        """Our 2xx went to A: over UDP, send it again until A ACKs; on any transport, end the call if no ACK
        comes within 64*T1 (RFC 3261 13.3.1.4)."""
        since = self.clock.seconds()
        if not self.a.reliable:
            self.clock.callLater(T1, self._retransmit_answer, T1, since)
        self.clock.callLater(64 * T1, self._unacknowledged)

    def _unacknowledged(self) -> None:
        if self._a_acked or self.stopping:
            return
        self.answered = None  # a call A never confirmed is not charged
        self.stop("A did not acknowledge the answer")

    def _retransmit_answer(self, interval: float, since: float) -> None:
        if self._a_acked or self.stopping or self.a.send is None or self.clock.seconds() - since >= 64 * T1:
            return
        self._send(self.a, self._answer)
        interval = min(interval * 2, T2)
        self.clock.callLater(interval, self._retransmit_answer, interval, since)

    def _acked(self, side: Side, ack: SipMessage) -> None:
        """An ACK from one side: of a relayed re-INVITE's 2xx (on to the other side), or A's of our first
        2xx (with the SDP answer when A's INVITE had no offer)."""
        number = ack.cseq()[0]
        pending = self._pending_acks.pop((side.label, number), None)
        if pending is not None:
            self._relay_ack(ack, *pending)
            return
        if side is self.a and not self._a_acked and self.a.dialog is not None and number == self.a.dialog.invite_cseq:
            self._a_acked = True
            if not self.invite.body:
                self._ack(self.b, ack.body, ack.get("content-type", "application/sdp"))

    def _relay_ack(self, ack: SipMessage, other: Side, cseq: int) -> None:
        """The ACK of a relayed re-INVITE's 2xx goes on to the side that answered it (with its body)."""
        if other.dialog is None:
            return
        other.dialog.invite_cseq = cseq
        self._ack(other, ack.body, ack.get("content-type", "application/sdp"))

    # -- in the call ----------------------------------------------------------------------

    def _from_side(self, side: Side, request: SipMessage, source: Source) -> Outcome:
        """A request from one side inside its dialog: BYE ends the call, the rest goes to the other side."""
        if request.method == "BYE":
            if side.dialog is not None:
                side.dialog.ended = True
            self.clock.callLater(0, self.stop, f"{side.label} hung up")
            return 200
        if self.stopping:
            return 481
        other = self.b if side is self.a else self.a
        if other.dialog is None or other.dialog.ended or other.send is None:
            return 491 if request.method == "INVITE" else 481
        if request.method in ("INVITE", "UPDATE") and self._offering:
            return 491  # one offer at a time across the call (RFC 3261 14.1, RFC 3311 5.2): glare, or a flood
        return self._relay(side, other, request, source)

    async def _relay(self, side: Side, other: Side, request: SipMessage, source: Source) -> SipMessage:
        """Send C{request} (re-INVITE, UPDATE, INFO) into the other side's dialog; its answer back."""
        offer = request.method in ("INVITE", "UPDATE")
        if offer:
            self._offering = True
        try:
            return await self._relay_once(side, other, request, source)
        finally:
            if offer:
                self._offering = False

    async def _relay_once(self, side: Side, other: Side, request: SipMessage, source: Source) -> SipMessage:
        assert other.dialog is not None and other.send is not None
        out = other.dialog.request(request.method)
        for name in RELAYED:
            for value in request.all(name):
                out.add(name, value)
        out.body = request.body
        if request.method in ("INVITE", "UPDATE"):
            out.add("Contact", other.contact())
        result = self.core.clients.start(out, other.send, other.reliable, peer=other.peer,
                                         on_response=lambda r: self._again(other, r), proceeding=64 * T1)
        response = await result
        answer = response_to(request, response.status or 500, response.reason, source=source)
        for name in RELAYED:
            for value in response.all(name):
                answer.add(name, value)
        answer.body = response.body
        if request.method in ("INVITE", "UPDATE") and 200 <= response.status < 300:
            answer.add("Contact", side.contact())
        if request.method == "INVITE" and 200 <= response.status < 300:
            # The ACK of this 2xx is the caller's to send: it goes on to the other side when it comes.
            self._pending_acks[(side.label, request.cseq()[0])] = (other, out.cseq()[0])
        return answer

    def _again(self, other: Side, response: SipMessage) -> None:
        """A retransmitted 2xx of a relayed re-INVITE: ACK it again if we did."""
        ack = other.acks.get(response.cseq()[0])
        if 200 <= response.status < 300 and ack and other.send is not None:
            other.send(ack)

    def _arm_limit(self) -> None:
        """The timer that cuts the call when its cost would pass what is held (or at maxcallduration)."""
        if self._limit is not None and self._limit.active():
            self._limit.cancel()
        now = self.clock.seconds()
        most = max(0, round(self.created + self.relay.settings.current.maxcallduration - now))
        left = min(_affordable(payment, most) for payment in self.payments) if most else 0
        self.limit_at = now + left
        self._limit = self.clock.callLater(left, self.stop, "credit limit" if left < most else "maximum duration")

    # -- ending ---------------------------------------------------------------------------

    def abandon(self) -> None:
        """Stop waiting for the callee's final response (shutdown): the INVITE counts as not answered."""
        if self._transaction is not None and self._transaction.final is None:
            self._transaction.give_up()

    def stop(self, reason: str) -> None:
        """End the call: cancel what rings, BYE both dialogs, then bill."""
        if self.stopping or self.level >= ENDED:
            return
        self.stopping = reason
        self.ended_at = self.clock.seconds()
        if self.level < CONNECTED:
            self.cancelled = True
            self._cancel_b()
            return  # the dialling loop answers A and bills
        defer.ensureDeferred(self._finish())

    async def _finish(self) -> None:
        try:
            await self._bill()
        finally:
            self.relay.calls.live.pop(self.id, None)
            self._reach(ENDED)

    async def _bill(self) -> None:
        if self._limit is not None and self._limit.active():
            self._limit.cancel()
        end = self.ended_at = self.ended_at or self.clock.seconds()
        for side in (self.a, self.b):
            try:
                self._hang_up(side)
            except Exception:
                log.failure("call {id}: hanging up {side} failed", id=self.id, side=side.label)
        seconds = self.seconds(end)
        if any(leg_cost(p.tariff, seconds) > p.held for p in self.payments):
            log.warn("call {id}: cost above what was held; charging what was held", id=self.id)
        # The call's cost is the caller's; what a forwarding user pays is in that user's own CDR.
        self.cost = self.payments[0].cost(seconds)
        rows = []
        for index, payment in enumerate(self.payments):
            rows.append({
                "datum": self.started, "callerid": payment.callerid[:64], "callednumber": payment.number[:64],
                "userid": payment.user.id, "duration": seconds, "cost": payment.cost(seconds),
                "sipcallid": (self.a.call_id if index == 0 else self.b.call_id)[:200],
                "disconnectreason": self.stopping[:200], "direction": "in" if self.sender and index == 0 else "out",
                "gateway": (self.sender if index == 0 and self.sender else payment.gateway)[:64], "callid": self.id,
                "leg": "A" if index == 0 else "B", "answered": self.answered_at, "node": self.relay.calls.node(),
            })
        self.cdrs = await self.relay.calls.settle(self, rows)

    def _hang_up(self, side: Side) -> None:
        dialog = side.dialog
        if dialog is None or side.send is None:
            return
        if not dialog.ended:
            if side is self.b:
                self._ack(side)  # a 2xx still waiting for A's ACK (A offered nothing, then hung up)
            bye = dialog.request("BYE")
            self.core.clients.start(bye, side.send, side.reliable, peer=side.peer).addErrback(lambda _: None)
        self.core.dialogs.remove(dialog)


def is_webrtc(offer: bytes) -> bool:
    """Whether an SDP offer is a WebRTC one: media over DTLS-SRTP (UDP/TLS/RTP/SAVPF and a fingerprint)."""
    text = offer.decode("utf-8", "replace")
    return "UDP/TLS/RTP/SAVP" in text or ("a=fingerprint:" in text and "RTP/SAVP" in text)


def _affordable(payment: Payment, most: int) -> int:
    """The longest a payment's hold lasts, up to C{most} seconds."""
    return longest(lambda seconds: leg_cost(payment.tariff, seconds), payment.held, most)


class Relay:
    """The INVITE handler of the SIP core: calls from registered users, relayed as L{Bridge}s."""

    def __init__(self, core: Bridging, calls: CallControl) -> None:
        self.core = core
        self.settings = core.settings
        self.calls = calls
        #: Calls of each user being set up (rated, held) and not yet live.
        self._starting: Counter[int] = Counter()
        rate = max(0.0, float(self.settings.current.sipinviterate))
        #: New INVITEs per source address.
        self.invites = LeakyBucket(core.clock, rate, max(1.0, rate * 3))

    def now(self) -> datetime:
        """The store's clock (CDR times)."""
        return self.calls.now()

    async def invite(self, request: SipMessage, source: Source, backend: Backend) -> SipMessage:
        """A new INVITE: authenticate the caller, route, rate and hold, then relay (the final response)."""
        forwards = request.get("max-forwards", "70").strip()
        if not forwards.isdigit() or int(forwards) > 255:
            return response_to(request, 400, "Bad Max-Forwards", source=source)
        if int(forwards) == 0:
            return response_to(request, 483, source=source)
        store = backend.store
        by_address = await store.routes.sender_by_address(source.host)
        found = await store.get_user(by_address) if by_address is not None else None
        if found is None and not self._admitted(source):
            response = response_to(request, 503, "Too many calls from this address", source=source)
            response.add("Retry-After", "5")
            return response
        if found is not None:
            user = found
        else:
            proven = await self.core.authenticate(request, source, backend, proxy=True)
            if isinstance(proven, SipMessage):
                return proven
            user = proven
        # Proven: from here on the INVITE has state (RFC 3261 17.2.1: a 100 before the database work).
        self.core.progress(request, response_to(request, 100, source=source))
        try:
            number = request.request_uri().user
        except ParseError:
            number = ""
        if not number or len(number) > 64 or not number.isprintable():
            return response_to(request, 404, "No such number", source=source)
        try:
            if user.type in (USER_TRAFFICSENDER, USER_SIPSERVER):
                bridge = await self._incoming(user, request, source, backend, number, trusted=found is not None)
            else:
                # The slot is taken before the database work: concurrent INVITEs cannot all pass.
                live = sum(1 for c in self.calls.live.values()
                           if c.user.id == user.id and not (isinstance(c, Bridge) and c.sender))
                if live + self._starting[user.id] >= self.settings.current.sipcallsperuser:
                    raise Refused(486, "Too many calls at once")
                self._starting[user.id] += 1
                try:
                    bridge = await self._place(user, request, source, backend, number)
                finally:
                    self._starting[user.id] -= 1
                    if not self._starting[user.id]:
                        del self._starting[user.id]
        except Refused as refused:
            log.info("call from {user} to {number} refused: {status} {reason}", user=user.username,
                     number=number, status=refused.status, reason=refused.reason)
            return response_to(request, refused.status, refused.reason, source=source)
        return await bridge.run()

    def _admitted(self, source: Source) -> bool:
        """Whether a new INVITE from this address is within C{sipinviterate} (a trunk known by its address
        is not limited: it sends many calls)."""
        rate = max(0.0, float(self.settings.current.sipinviterate))
        self.invites.rate, self.invites.burst = rate, max(1.0, rate * 3)
        return self.invites.allow(source.host)

    def _media_capable(self, routes: list[Route], offer: bytes) -> list[Route]:
        """The routes that can take the caller's media: a WebRTC offer (DTLS-SRTP) only reaches our users'
        phones and the gateways of C{webrtcgateways}, since mizud has no media path to convert it; raises
        L{Refused} (488) when none is left."""
        if not is_webrtc(offer):
            return routes
        capable = {name.strip() for name in self.settings.current.webrtcgateways.split(",") if name.strip()}
        kept = [route for route in routes if route.kind == "user" or route.name in capable]
        if not kept:
            raise Refused(488, "WebRTC media cannot reach this gateway (mizud carries no media)")
        return kept

    async def forward(self, bridge: Bridge, target: str) -> list[Route]:
        """The call goes on from the user being called (who forwards it) to C{target}: its routes, with the
        forwarded leg rated for and held on the forwarding user (raises L{Refused})."""
        backend = self.calls.backend()
        store, config = backend.store, self.settings.current
        forwarder = await store.find_user(bridge.callee)
        if forwarder is None or not forwarder.enabled or forwarder.temporarydisabled:
            raise Refused(480, "The forwarding user may not forward")
        if bridge.cancelled or bridge.stopping:
            raise Refused(487, "Cancelled")
        named, routes = await Router(store).resolve(target)
        if named is not None:
            if named[1] in bridge.visited:
                raise Refused(482, "Forwarding loop")
            forwards = await store.routes.forwards(named[0])
            if not routes and not (forwards.always or forwards.noanswer):
                raise Refused(480, f"{named[1]} is not registered")
        elif not routes:
            raise Refused(404, "No route to the forwarding number")
        elif bridge.sender and bridge.trusted_by_address:
            # A call trusted by its source address alone (forgeable over UDP) never goes out through a
            # gateway at a user's expense.
            raise Refused(403, "A trunk's call is forwarded to our users only")
        if sum(1 for call in self.calls.live.values() for payment in getattr(call, "payments", ())
               if payment.user.id == forwarder.id) >= config.sipcallsperuser:
            raise Refused(486, "The forwarding user has too many calls")
        routes = self._media_capable(routes, bridge.invite.body)
        tariff = None if named is not None else backend.rater.table.lookup(
            forwarder.tariffid or config.defaulttariff, target)
        if tariff is None and named is None:
            raise Refused(403, "No tariff for the forwarding number")
        held = Decimal(0)
        holdid = 0
        if tariff is not None:
            credit = await store.balance(forwarder.id)
            available = credit - config.mincreditonroute + (forwarder.creditlimit if forwarder.postpaid else 0)
            seconds = longest(lambda s: leg_cost(tariff, s), max(available, Decimal(0)), config.maxcallduration)
            if seconds == 0:
                raise Refused(402, "The forwarding user has insufficient credit")
            held = leg_cost(tariff, seconds)
            if held > 0:
                try:
                    result = await store.hold(forwarder.id, held,
                                              reference=f"forwarded call {bridge.id} to {target[:40]}")
                except InsufficientCredit:
                    raise Refused(402, "The forwarding user has insufficient credit") from None
                holdid = int(dict(result.extra)["holdid"])
        bridge.payments[-1].gateway = bridge.payments[-1].gateway or forwarder.username
        bridge.payments.append(Payment(forwarder, tariff, holdid, held, target, forwarder.username))
        bridge.forwards = forwards if named is not None else None
        if named is not None:
            bridge.visited.add(named[1])
            bridge.callee = named[1]
        return routes

    async def _incoming(self, sender: User, request: SipMessage, source: Source, backend: Backend,
                        number: str, trusted: bool = False) -> Bridge:
        """A call from a gateway or traffic sender to one of our users (a username or DID), free, on the
        callee's account; on to a gateway only by the callee's forwarding, at the callee's expense, and
        never for a sender trusted by its address alone (C{trusted}). Raises L{Refused}."""
        store = backend.store
        if not await store.routes.may_send(sender.id):
            raise Refused(403, "This server may not send calls")
        named, routes = await Router(store).resolve(number)
        if named is None:
            raise Refused(404, "No such number here")
        callee = await store.get_user(named[0])
        if callee is None or not callee.enabled or callee.temporarydisabled:
            raise Refused(480, "Temporarily unavailable")
        forwards = await store.routes.forwards(callee.id)
        if not routes and not (forwards.always or forwards.noanswer):
            raise Refused(480, f"{named[1]} is not registered")
        try:
            presented = request.address("from").uri.user
        except ParseError:
            presented = ""
        caller_id = "".join(c for c in presented if c.isalnum() or c in "+-_.")[:32] or "anonymous"
        b_call_id = f"{os.urandom(12).hex()}@{SERVER}"

        async def insert(txn: Txn) -> int:
            return await insert_call(txn, callee.id, "sip", caller_id, number, named[1], 0, Decimal(0),
                                     request.call_id[:200], b_call_id, store.now(), backend.node)

        callid = await backend.db.run_interaction("call_insert", insert)
        bridge = Bridge(self, callid, callee, request, source, number, routes, None, 0, Decimal(0), callee.currency,
                        named[1], caller_id=caller_id, sender=sender.username)
        bridge.b.call_id = b_call_id
        bridge.forwards = forwards
        bridge.trusted_by_address = trusted
        self.calls.live[callid] = bridge
        return bridge

    async def _place(self, user: User, request: SipMessage, source: Source, backend: Backend,
                     number: str) -> Bridge:
        """Route, rate and hold; the call, registered as live (raises L{Refused})."""
        store, config = backend.store, self.settings.current
        named, routes = await Router(store).resolve(number)
        callee = named[1] if named is not None else ""
        forwards = await store.routes.forwards(named[0]) if named is not None else None
        if named is not None and not routes and not (forwards is not None and (forwards.always or forwards.noanswer)):
            raise Refused(480, f"{callee} is not registered")
        if not routes and named is None:
            raise Refused(404, "No route to this number")
        if named is not None:
            callee_user = await store.get_user(named[0])
            if callee_user is None or not callee_user.enabled or callee_user.temporarydisabled:
                raise Refused(480, "Temporarily unavailable")
        if named is not None and named[0] == user.id:
            raise Refused(482, "A call to oneself")
        plan = user.tariffid or config.defaulttariff
        # A call to one of our users is free (as p2p's legs to users): a numeric username or a DID is no
        # PSTN destination.
        on_net = named is not None
        tariff = None if on_net else backend.rater.table.lookup(plan, number)
        if tariff is None and not on_net:
            raise Refused(403, "No tariff for this destination")
        routes = self._media_capable(routes, request.body)
        credit = await store.balance(user.id)
        available = credit - config.mincreditonroute + (user.creditlimit if user.postpaid else 0)
        if available <= 0 and tariff is not None:
            raise Refused(402, "Insufficient credit")
        seconds = longest(lambda s: leg_cost(tariff, s), max(available, Decimal(0)), config.maxcallduration)
        if seconds == 0:
            raise Refused(402, "Insufficient credit")
        held = leg_cost(tariff, seconds)
        currency = tariff.currency if tariff is not None else user.currency
        b_call_id = f"{os.urandom(12).hex()}@{SERVER}"

        async def insert(txn: Txn, holdid: int) -> int:
            return await insert_call(txn, user.id, "sip", user.username, number, callee, holdid, held,
                                     request.call_id[:200], b_call_id, store.now(), backend.node)

        if held > 0:
            try:
                result = await store.hold(user.id, held, reference=f"call to {number[:64]}", then=insert)
            except InsufficientCredit:
                raise Refused(402, "Insufficient credit") from None
            extra = dict(result.extra)
            holdid, callid = int(extra["holdid"]), int(extra["then"])
        else:
            holdid = 0
            callid = await backend.db.run_interaction("call_insert", lambda txn: insert(txn, 0))
        bridge = Bridge(self, callid, user, request, source, number, routes, tariff, holdid, held, currency, callee)
        bridge.b.call_id = b_call_id
        bridge.forwards = forwards
        self.calls.live[callid] = bridge
        return bridge
