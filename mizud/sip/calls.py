"""Calls mizud places itself: p2p and callback, by third-party call control (RFC 3725 flow IV).

mizud never touches media.  It calls leg A with an offer that has no
media lines; A answers and is ACKed at once (so A's 200 never waits for
B, the timeout problem of flow I).  Then it calls leg B without an offer;
B's 200 carries B's offer, which goes to A in a re-INVITE; A's answer goes
back to B in the ACK of B's 200.  From then on media flows between A and B.

A leg goes to a registered user's contacts (in turn) or out through the
routed gateways: the next route is tried after a timeout (no answer at
all within C{callsetuptimeout}), a 408, a 5xx or a route that cannot be
used; a busy, a refusal or a 6xx ends the leg.  A leg rings at most
C{callringtimeout} seconds and is then cancelled.  Gateways that challenge
(401/407) are answered once with their account.

Money: before dialling, both legs are rated for the calling user, the
longest call the credit allows is computed (at most C{maxcallduration}) and
its cost held.  The call is cut when its cost reaches the hold.  At the
end, one CDR per dialled leg (linked by C{callid}), the settlement of the
real cost and the removal of the live-call row happen in one transaction.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Callable, Protocol

from twisted.internet import defer
from twisted.logger import Logger

from ..billing.rating import Tariff, leg_cost, longest
from ..store.billing import HOLD_SETTLED
from ..store.calls import close_call, end_call, insert_call
from ..store.database import Txn
from ..store.money import HoldClosed
from ..store.money import format_money
from .backend import Backend
from .ports import Calling
from .responses import ALLOW, SERVER
from .dialog import Dialog, new_tag, peer_hosts
from .message import SipMessage
from .sdp import hold_offer, new_session, reorigin
from .routing import Route, Unreachable
from .transaction import T1, ClientTransactions, InviteClientTransaction, new_branch

log = Logger()

#: The largest SDP body accepted from a leg.
MAX_SDP = 16 * 1024
_SDP_LINE = re.compile(r"[a-z]=[^\r\n]*\Z")
#: Final responses after which the next route is tried (no answer, server trouble).
FAILOVER = frozenset({0, 408, 500, 502, 503, 504, 580})
#: How many times a call's settlement is tried before it is left to the operator (logged in full).
SETTLE_ATTEMPTS = 4
#: Seconds the daemon's shutdown waits for its live calls to be billed.
SHUTDOWN_WAIT = 10.0
#: Levels a caller can wait for: leg A answered, both legs connected, the call over.
ANSWERED, CONNECTED, ENDED = 1, 2, 3


def cancel_invite(clients: ClientTransactions, transaction: InviteClientTransaction, send: Callable[[bytes], None],
                  reliable: bool, peer: str) -> bool:
    """Send the CANCEL of a ringing INVITE; False when none may go yet (no provisional: RFC 3261 9.1)."""
    cancel = transaction.cancel_request()
    if cancel is None:
        return False
    clients.start(cancel, send, reliable, peer=peer).addErrback(lambda _: None)
    transaction.cancelled()
    return True


def end_fork(clients: ClientTransactions, invite: SipMessage, response: SipMessage, send: Callable[[bytes], None],
             reliable: bool, peer: str) -> None:
    """A second 2xx from another branch of a forked INVITE: ACK it and end that dialog at once."""
    fork = Dialog.from_2xx(invite, response)
    send(fork.ack().serialize())
    clients.start(fork.request("BYE"), send, reliable, peer=peer).addErrback(lambda _: None)


class LiveCall(Protocol):
    """What the node's live calls have in common (a placed call, a relayed call from a phone): what the API
    shows and ends, and what settlement and shutdown need."""

    id: int
    user: Any
    holdid: int
    cost: Decimal
    currency: str
    a: Any
    b: Any

    def stop(self, reason: str) -> None:
        """End the call (it is billed once down)."""

    def abandon(self) -> None:
        """Stop waiting for final responses (shutdown)."""

    async def wait(self, level: int) -> None:
        """Until the call reached C{level}."""

    def record(self) -> dict[str, Any]:
        """The call as an API record."""

    def rate(self) -> Decimal:
        """Its price per minute."""

    def charges(self) -> list[tuple[int, Decimal]]:
        """The holds to settle and what each is charged."""


class CallError(Exception):
    """The call cannot be placed; the message says why (no money was held)."""


def check_sdp(body: bytes, media: bool = True) -> str:
    """What is wrong with an SDP body, or "" when it is usable (with at least one m= line if C{media})."""
    if not body:
        return "no SDP"
    if len(body) > MAX_SDP:
        return "SDP too large"
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return "SDP is not UTF-8"
    lines = [line for line in text.replace("\r\n", "\n").split("\n") if line]
    if not lines or lines[0] != "v=0":
        return "SDP does not start with v=0"
    if any(not _SDP_LINE.match(line) for line in lines):
        return "SDP has a malformed line"
    if media and not any(line.startswith("m=") for line in lines):
        return "SDP has no media"
    return ""


@dataclass(eq=False)
class Leg:
    """One side of a call: who it calls, how, and what happened."""

    label: str  # "A" or "B"
    number: str
    caller: str  # the user part of our From
    tariff: Tariff | None
    routes: list[Route]
    call_id: str = field(default_factory=lambda: f"{os.urandom(12).hex()}@{SERVER}")
    tag: str = field(default_factory=new_tag)
    cseq: int = 0
    route: Route | None = None
    send: Callable[[bytes], None] | None = None
    reliable: bool = False
    #: The host the leg's requests go to (its responses must come from there).
    peer: str = ""
    transaction: InviteClientTransaction | None = None
    #: The latest INVITE sent on this leg (forked 2xx are matched against its dialog).
    invite: SipMessage | None = None
    dialog: Dialog | None = None
    #: The ACK of each answered INVITE (by CSeq), sent again when its 2xx is retransmitted.
    acks: dict[int, bytes] = field(default_factory=dict)
    cancel_sent: bool = False
    sdp: bytes = b""
    #: mizud's session towards this leg (RFC 3264's o= line) and our address on its route.
    session: int = field(default_factory=new_session)
    host: str = ""
    status: int = 0
    reason: str = ""
    #: Why we cancelled the ringing INVITE (no answer, the call was stopped): its reason then.
    cancelled: str = ""
    ringing: bool = False
    dialled: bool = False
    started: datetime | None = None
    answered: float | None = None
    answered_at: datetime | None = None

    def seconds(self, end: float) -> int:
        """Whole seconds this leg was connected until C{end} (a started second is not billed)."""
        return max(0, int(end - self.answered)) if self.answered is not None else 0


class Progress:
    """How far a call got (L{ANSWERED}, L{CONNECTED}, L{ENDED}), and who waits for a level."""

    def __init__(self) -> None:
        self.level = 0
        self._waiters: list[tuple[int, defer.Deferred[None]]] = []

    async def wait(self, level: int) -> None:
        """Until the call reached C{level} (or ended)."""
        if self.level >= level:
            return
        waiter: defer.Deferred[None] = defer.Deferred()
        self._waiters.append((level, waiter))
        await waiter

    def _reach(self, level: int) -> None:
        self.level = max(self.level, level)
        ready = [w for w in self._waiters if w[0] <= self.level]
        self._waiters = [w for w in self._waiters if w[0] > self.level]
        for _, waiter in ready:
            waiter.callback(None)


class PlacedCall(Progress):
    """One live call: dials its legs, joins them, cuts it at the credit limit, bills it."""

    def __init__(self, control: CallControl, callid: int, user: Any, kind: str, a: Leg, b: Leg,
                 holdid: int, held: Decimal, currency: str) -> None:
        super().__init__()
        self.control = control
        self.core = control.core
        self.clock = control.core.clock
        self.id = callid
        self.user = user
        self.kind = kind
        self.a, self.b = a, b
        self.holdid = holdid
        self.held = held
        self.currency = currency
        self.created = self.clock.seconds()
        #: The furthest the call really got (ANSWERED, CONNECTED; ending is not getting there).
        self.reached = 0
        self.stopping = ""
        self.ended_at: float | None = None
        self.limit_at: float | None = None
        self._limit: Any = None
        self._stopped: defer.Deferred[None] = defer.Deferred()
        #: Called once when the call is stopped (to stop waiting for a re-INVITE's answer).
        self._on_stop: list[Callable[[], None]] = []
        self.cdrs: list[int] = []
        self.cost = Decimal(0)

    # -- what callers see ---------------------------------------------------------

    @property
    def state(self) -> str:
        """A word for where the call is."""
        if self.level >= ENDED:
            return "ended"
        if self.stopping:
            return "ending"
        if self.level == CONNECTED:
            return "connected"
        leg = self.b if self.level == ANSWERED else self.a
        if self.level == ANSWERED and not leg.dialled:
            return "A answered"
        return f"{'ringing' if leg.ringing else 'calling'} {leg.label}"

    def outcome(self) -> str:
        """Why the call ended (or is ending), in words."""
        if self.stopping:
            return self.stopping
        return self._not_reached() if self.level >= ENDED else ""

    def _not_reached(self) -> str:
        for leg in (self.a, self.b):
            if leg.dialled and leg.answered is None:
                return f"{leg.label} not reached: {leg.reason or 'no route'}"
        return ""

    def record(self) -> dict[str, Any]:
        """The call as an API record."""
        now = self.clock.seconds()
        left = max(0, round(self.limit_at - now)) if self.limit_at is not None and self.level < ENDED else 0
        return {
            "callid": self.id, "username": self.user.username, "kind": self.kind, "anum": self.a.number,
            "bnum": self.b.number, "state": self.state, "duration": self.a.seconds(self.ended_at or now),
            "connected": self.b.seconds(self.ended_at or now), "maxduration": left,
            "held": format_money(self.held), "cost": format_money(self.cost), "currency": self.currency,
            "sipcallida": self.a.call_id, "sipcallidb": self.b.call_id, "reason": self.outcome(),
        }

    def charges(self) -> list[tuple[int, Decimal]]:
        """The holds to settle at the end and what each is charged."""
        return [(self.holdid, self.cost)] if self.holdid else []

    def rate(self) -> Decimal:
        """The price per minute of the two legs together."""
        return sum((leg.tariff.price for leg in (self.a, self.b) if leg.tariff is not None), Decimal(0))

    def _reach(self, level: int) -> None:
        if level < ENDED:
            self.reached = max(self.reached, level)
        super()._reach(level)

    # -- ending --------------------------------------------------------------------

    def stop(self, reason: str) -> None:
        """End the call: cancel what rings, hang up what is connected (from the reactor, not inside I/O)."""
        if self.stopping or self.level >= ENDED:
            return
        self.stopping = reason
        self.ended_at = self.clock.seconds()
        if self._limit is not None and self._limit.active():
            self._limit.cancel()
        for leg in (self.a, self.b):
            self._cancel(leg, reason)
        for hook in self._on_stop:
            hook()
        self._on_stop.clear()
        if not self._stopped.called:
            self._stopped.callback(None)

    def abandon(self) -> None:
        """Stop waiting for the final responses of INVITEs (shutdown): their legs count as not reached."""
        for leg in (self.a, self.b):
            if leg.transaction is not None and leg.transaction.final is None:
                leg.transaction.give_up()

    def _cancel(self, leg: Leg, reason: str) -> None:
        """CANCEL a leg's ringing INVITE (at once if it rang, else as soon as it does)."""
        transaction = leg.transaction
        if transaction is None or transaction.final is not None or leg.cancelled:
            return
        leg.cancelled = reason
        self._send_cancel(leg)

    def _send_cancel(self, leg: Leg) -> None:
        transaction = leg.transaction
        if transaction is None or leg.send is None or leg.cancel_sent:
            return
        # Without a provisional yet, it is sent when one comes.
        leg.cancel_sent = cancel_invite(self.core.clients, transaction, leg.send, leg.reliable, leg.peer)

    # -- the call --------------------------------------------------------------------

    async def run(self) -> None:
        """Place the call, keep it up until it ends, bill it."""
        try:
            await self._connect()
        except Exception:
            log.failure("call {id} failed", id=self.id)
            self.stop("internal error")
        finally:
            await self._finish()

    async def _connect(self) -> None:
        a, b = self.a, self.b
        if not await self._dial(a, hold=True):
            return
        self._arm_limit()
        self._reach(ANSWERED)
        if not await self._dial(b, hold=False):
            return
        self._arm_limit()  # B is up: from now on both legs cost
        problem = check_sdp(b.sdp)
        if problem:
            self._ack(b)
            self.stop(f"B sent no usable offer: {problem}")
            return
        # B's offer and A's answer, each rewritten to come from mizud's session in the other dialog.
        answer = await self._offer_to_a(reorigin(b.sdp, a.host, a.session, 2))
        if answer is None or self.stopping:
            self._ack(b)
            return
        self._ack(b, reorigin(answer, b.host, b.session, 1))
        self._arm_limit()
        self._reach(CONNECTED)
        await self.control.connected(self)
        await self._stopped

    async def _dial(self, leg: Leg, hold: bool) -> bool:
        """Try the leg's routes in turn (with flow IV's media-less offer if C{hold}); True once one answered."""
        leg.dialled = True
        leg.started = self.control.now()
        if not leg.routes:
            leg.reason = "no route"
            return False
        for route in leg.routes:
            if self.stopping:
                return False
            try:
                status = await self._attempt(leg, route, hold)
            except Unreachable as problem:
                leg.status, leg.reason = 0, str(problem)[:200]
                continue
            if 200 <= status < 300:
                return not self.stopping
            if status not in FAILOVER or leg.cancelled:
                return False
        return False

    async def _attempt(self, leg: Leg, route: Route, hold: bool) -> int:
        """One INVITE (and its authenticated retry) along one route; returns the final status."""
        core = self.core
        leg.send, local, leg.reliable, leg.peer = await core.destination(route)
        leg.route = route
        leg.host = local.rpartition(":")[0].strip("[]")
        offer = hold_offer(leg.host, leg.session) if hold else b""
        invite = self._invite(leg, route, local, offer)
        response = await self._transact(leg, invite)
        if response.status in (401, 407) and route.kind == "gateway" and not leg.cancelled:
            retry = core.authorised(invite, response, await self.control.account(route.name))
            if retry is not None:
                leg.cseq += 1
                invite = retry
                response = await self._transact(leg, invite)
        leg.status = response.status
        leg.reason = leg.cancelled or f"{response.status} {response.reason}".strip()[:200]
        if not 200 <= response.status < 300:
            return response.status
        dialog = Dialog.from_2xx(invite, response)
        dialog.on_request = lambda request, source: self._in_dialog(leg, request)
        dialog.peers = peer_hosts(leg.peer, dialog.remote_target)
        leg.dialog = dialog
        core.dialogs.add(dialog)
        leg.sdp = response.body
        leg.answered = self.clock.seconds()
        leg.answered_at = self.control.now()
        leg.reason = "answered"
        if leg is self.a or self.stopping:
            self._ack(leg)  # A: its 200 answered our offer.  Stopping: ACK, then BYE at the end.
        return response.status

    def _invite(self, leg: Leg, route: Route, local: str, offer: bytes) -> SipMessage:
        leg.cseq += 1
        # The domain the called phone registered under, unless siprealm names one ("mizud" resolves nowhere).
        realm = self.core.settings.current.siprealm or route.domain or SERVER
        transport = route.transport.upper()
        to = f"sip:{leg.number}@{realm}" if route.kind == "user" else route.target
        suffix = f";transport={route.transport}" if route.transport != "udp" else ""
        message = SipMessage(method="INVITE", uri=route.target)
        add = message.headers.append
        add(("via", f"SIP/2.0/{transport} {local};branch={new_branch()};rport"))
        add(("max-forwards", "70"))
        add(("from", f"<sip:{leg.caller}@{realm}>;tag={leg.tag}"))
        add(("to", f"<{to}>"))
        add(("call-id", leg.call_id))
        add(("cseq", f"{leg.cseq} INVITE"))
        add(("contact", f"<sip:{SERVER}@{local}{suffix}>"))
        add(("allow", ALLOW))
        add(("user-agent", SERVER))
        if offer:
            add(("content-type", "application/sdp"))
            message.body = offer
        return message

    async def _transact(self, leg: Leg, invite: SipMessage) -> SipMessage:
        """Run one INVITE transaction, cancelling it when it rings too long or the call stops."""
        assert leg.send is not None
        config = self.core.settings.current
        result = self.core.clients.start(
            invite, leg.send, leg.reliable, on_response=lambda r: self._progress(leg, r),
            timeout=float(config.callsetuptimeout), peer=leg.peer,
            proceeding=config.callringtimeout + 64 * T1)  # the ring timeout CANCELs it first
        found = self.core.clients.find(invite)
        leg.transaction = found if isinstance(found, InviteClientTransaction) else None
        leg.invite = invite
        leg.cancel_sent = False
        ring = self.clock.callLater(config.callringtimeout, self._cancel, leg, "no answer")
        try:
            return await result
        finally:
            if ring.active():
                ring.cancel()
            leg.transaction = None
            leg.ringing = False

    def _progress(self, leg: Leg, response: SipMessage) -> None:
        """A provisional response (ringing), or a retransmitted 2xx (ACKed again)."""
        if response.status < 200:
            leg.ringing = True
            if leg.cancelled:
                self._send_cancel(leg)  # we wanted to cancel before it rang
            return
        if not 200 <= response.status < 300 or leg.send is None:
            return
        dialog = leg.dialog
        if dialog is not None and response.address("to").tag != dialog.remote_tag and leg.invite is not None:
            end_fork(self.core.clients, leg.invite, response, leg.send, leg.reliable, leg.peer)
            return
        ack = leg.acks.get(response.cseq()[0])
        if ack:
            leg.send(ack)


    def _ack(self, leg: Leg, body: bytes = b"") -> None:
        """ACK the leg's latest answered INVITE (once)."""
        dialog = leg.dialog
        if dialog is None or leg.send is None or dialog.invite_cseq in leg.acks:
            return
        data = dialog.ack(body).serialize()
        leg.acks[dialog.invite_cseq] = data
        leg.send(data)

    async def _offer_to_a(self, offer: bytes) -> bytes | None:
        """Send B's offer to A in a re-INVITE; A's answer, or None (the call is then stopped)."""
        a = self.a
        assert a.dialog is not None and a.send is not None
        dialog = a.dialog
        request = dialog.request("INVITE", offer)
        request.add("Contact", f"<sip:{SERVER}@{request.top_via().sent_by}>")
        cseq = request.cseq()[0]

        def again(response: SipMessage) -> None:
            ack = a.acks.get(response.cseq()[0])
            if 200 <= response.status < 300 and ack and a.send is not None:
                a.send(ack)

        def acknowledge(response: SipMessage) -> SipMessage:
            # Whoever still waits for it, a 2xx is ACKed (even when the call stopped meanwhile).
            if 200 <= response.status < 300 and not dialog.ended:
                dialog.invite_cseq = cseq
                self._ack(a)
            return response

        result = self.core.clients.start(request, a.send, a.reliable, on_response=again, peer=a.peer,
                                         proceeding=64 * T1)
        result.addCallback(acknowledge)
        response = await self._unless_stopped(result)
        if response is None:
            return None
        if not 200 <= response.status < 300:
            self.stop(f"A refused B's media: {response.status} {response.reason}".strip())
            return None
        problem = check_sdp(response.body)
        if problem:
            self.stop(f"A sent no usable answer: {problem}")
            return None
        return response.body

    async def _unless_stopped(self, result: defer.Deferred[SipMessage]) -> SipMessage | None:
        """A transaction's response, or None as soon as the call is stopped."""
        race: defer.Deferred[SipMessage | None] = defer.Deferred()

        def settle(outcome: SipMessage | None) -> SipMessage | None:
            if not race.called:
                race.callback(outcome)
            return outcome

        if self.stopping:
            return None
        def stopped() -> None:
            settle(None)

        result.addCallback(settle)
        self._on_stop.append(stopped)
        return await race

    def _in_dialog(self, leg: Leg, request: SipMessage) -> int:
        """A request from a leg inside its dialog: BYE ends the call; re-INVITEs are refused (488)."""
        if request.method == "BYE":
            self.clock.callLater(0, self.stop, f"{leg.label} hung up")
            return 200
        if request.method == "INVITE" or (request.method == "UPDATE" and request.body):
            return 488  # the session stays as it is (RFC 3261 14.2, RFC 3311); mizud does not relay re-offers
        return 200

    # -- money -------------------------------------------------------------------------

    def _costs(self, end: float) -> tuple[Decimal, Decimal]:
        return leg_cost(self.a.tariff, self.a.seconds(end)), leg_cost(self.b.tariff, self.b.seconds(end))

    def _arm_limit(self) -> None:
        """(Re)start the timer that cuts the call when its cost would pass what is held."""
        if self._limit is not None and self._limit.active():
            self._limit.cancel()
        now = self.clock.seconds()
        a, b = self.a, self.b
        since_a = a.seconds(now)
        since_b = b.seconds(now)
        b_connected = b.answered is not None

        def cost(extra: int) -> Decimal:
            # Before B answers, leave room for B's first second (its connect fee, minimum interval).
            b_seconds = since_b + extra if b_connected else 1
            return leg_cost(a.tariff, since_a + extra) + leg_cost(b.tariff, b_seconds)

        most = max(0, round(self.created + self.control.settings.current.maxcallduration - now))
        left = longest(cost, self.held, most) if most else 0
        self.limit_at = now + left
        self._limit = self.clock.callLater(left, self.stop, "credit limit" if left < most else "maximum duration")

    async def _finish(self) -> None:
        if self._limit is not None and self._limit.active():
            self._limit.cancel()
        end = self.ended_at or self.clock.seconds()
        if not self.stopping:
            self.stopping = self._not_reached() or "ended"
        for leg in (self.a, self.b):
            self._hang_up(leg)
        cost_a, cost_b = self._costs(end)
        if cost_a + cost_b > self.held:
            # A late timer must not charge more than was held: the difference is the operator's.
            log.warn("call {id}: cost {cost} above the held {held}; charging what was held",
                     id=self.id, cost=cost_a + cost_b, held=self.held)
            cost_a = min(cost_a, self.held)
            cost_b = self.held - cost_a
        self.cost = cost_a + cost_b
        rows = []
        for leg, cost in ((self.a, cost_a), (self.b, cost_b)):
            if leg.dialled:
                rows.append(self._cdr(leg, cost, end))
        try:
            self.cdrs = await self.control.settle(self, rows)
        finally:
            self.control.live.pop(self.id, None)
            self._reach(ENDED)

    def _hang_up(self, leg: Leg) -> None:
        dialog = leg.dialog
        if dialog is None or dialog.ended or leg.send is None:
            return
        self._ack(leg)  # a 2xx not yet acknowledged (the call stopped meanwhile)
        bye = dialog.request("BYE")
        self.core.dialogs.remove(dialog)
        self.core.clients.start(bye, leg.send, leg.reliable, peer=leg.peer).addErrback(lambda _: None)

    def _cdr(self, leg: Leg, cost: Decimal, end: float) -> dict[str, Any]:
        caller = self.user.username if leg is self.a else self.a.number
        reason = self.stopping if leg.answered is not None else (leg.reason or "no route")
        return {
            "datum": leg.started or self.control.now(), "callerid": caller[:64], "callednumber": leg.number[:64],
            "userid": self.user.id, "duration": leg.seconds(end), "cost": cost, "sipcallid": leg.call_id,
            "disconnectreason": reason[:200], "gateway": (leg.route.name if leg.route else "")[:64],
            "callid": self.id, "leg": leg.label, "answered": leg.answered_at, "node": self.control.node(),
        }


class CallControl:
    """The calls this node placed and is keeping up."""

    def __init__(self, core: Calling) -> None:
        self.core = core
        self.settings = core.settings
        self.live: dict[int, LiveCall] = {}

    def backend(self) -> Backend:
        """The backend; raises L{CallError} while the server starts."""
        return self._backend()

    def _backend(self) -> Backend:
        backend = self.core.backend_of()
        if backend is None:
            raise CallError("the server is starting")
        return backend

    def now(self) -> datetime:
        """The store's clock (timestamps of CDRs)."""
        return self._backend().store.now()

    def node(self) -> str:
        """This node's name (for CDRs)."""
        backend = self.core.backend_of()
        return str(backend.node) if backend is not None else ""

    def find(self, callid: int) -> LiveCall | None:
        """A live call of this node by id."""
        return self.live.get(callid)

    async def account(self, gateway: str) -> tuple[str, str]:
        """A gateway's own account (addserver's u_username/u_password), to answer its challenges."""
        return await self._backend().store.routes.account(gateway)

    async def place(self, user: Any, kind: str, anum: str, bnum: str, cnum: str = "") -> PlacedCall:
        """Rate, hold the money, and start dialling; raises L{CallError} when the call cannot be placed."""
        from .routing import Router

        backend = self._backend()
        config = self.settings.current
        if sum(1 for c in self.live.values() if c.user.id == user.id) >= config.sipcallsperuser:
            raise CallError(f"too many calls at once (sipcallsperuser={config.sipcallsperuser})")
        router = Router(backend.store)
        plan = user.tariffid or config.defaulttariff
        legs = []
        for label, number, caller in (("A", anum, bnum), ("B", bnum, cnum or anum)):
            routes = await router.routes(number)
            tariff = None
            if not routes or routes[0].kind == "gateway":
                tariff = backend.rater.table.lookup(plan, number)
                if routes and tariff is None:
                    raise CallError(f"no tariff for {number} (leg {label})")
            if not routes:
                local = await backend.store.find_user(number) or await backend.store.find_user_by_number(number)
                raise CallError(f"{number} is not registered" if local is not None else f"no route to {number}")
            legs.append(Leg(label, number, caller, tariff, routes))
        a, b = legs
        credit = await backend.store.balance(user.id)
        available = credit - config.mincreditonroute + (user.creditlimit if user.postpaid else 0)
        most = config.maxcallduration

        def both(seconds: int) -> Decimal:
            return leg_cost(a.tariff, seconds) + leg_cost(b.tariff, seconds)

        longest_call = longest(both, max(available, Decimal(0)), most)
        if longest_call == 0:
            raise CallError(f"not enough credit to call {bnum} ({format_money(credit)} {user.currency})")
        held = both(longest_call)
        priced = a.tariff or b.tariff
        currency = priced.currency if priced is not None else user.currency
        now = backend.store.now()

        async def insert(txn: Txn, holdid: int) -> int:
            return await insert_call(txn, user.id, kind, anum, bnum, cnum, holdid, held, a.call_id, b.call_id, now,
                                     backend.node)

        if held > 0:
            from ..store.money import InsufficientCredit

            try:
                result = await backend.store.hold(user.id, held, reference=f"{kind} call to {bnum[:64]}", then=insert)
            except InsufficientCredit:
                raise CallError(f"not enough credit to call {bnum}") from None
            extra = dict(result.extra)
            holdid, callid = int(extra["holdid"]), int(extra["then"])
        else:
            holdid = 0
            callid = await backend.db.run_interaction("call_insert", lambda txn: insert(txn, 0))
        call = PlacedCall(self, callid, user, kind, a, b, holdid, held, currency)
        self.live[callid] = call
        defer.ensureDeferred(call.run()).addErrback(lambda failure: log.failure("call {id}", failure, id=callid))
        return call

    async def connected(self, call: LiveCall) -> None:
        """Both legs are up: say so in tb_calls (for every node's listings)."""
        try:
            await self._backend().store.calls.connected(call.id, self.now())
        except Exception:
            log.failure("call {id}: could not mark it connected", id=call.id)

    async def settle(self, call: LiveCall, rows: list[dict[str, Any]]) -> list[int]:
        """Write the CDRs, settle the hold and drop the live-call row in one transaction.

        Retried when it fails; the live-call row going away with the CDRs
        makes a retry after a commit whose answer was lost find the work done.
        """
        backend = self._backend()
        ids: list[int] = []

        async def write(txn: Txn, _: int = 0) -> None:
            ids[:] = await close_call(txn, call.id, rows)

        for attempt in range(1, SETTLE_ATTEMPTS + 1):
            try:
                charges = call.charges()
                if charges:
                    await backend.store.settle_many(charges, then=write)
                else:
                    await backend.db.run_interaction("call_cdrs", write)
                return list(ids)
            except HoldClosed:
                return await self._taken_over(call, rows)
            except Exception:
                if await self._settled(call):
                    return await self._cdr_ids(call)
                log.failure("call {id}: settlement attempt {n} failed", id=call.id, n=attempt)
                if attempt < SETTLE_ATTEMPTS:
                    from twisted.internet.task import deferLater

                    await deferLater(self.core.clock, 2.0 ** attempt, lambda: None)
        log.critical("call {id}: not settled; holds {holds} stay open; CDRs {rows!r}", id=call.id,
                     holds=[holdid for holdid, _ in call.charges()], rows=rows)
        return []

    async def _taken_over(self, call: LiveCall, rows: list[dict[str, Any]]) -> list[int]:
        """The hold was closed by someone else: our own earlier attempt (settled), or another node that
        took this node for dead (released). Then the call's real CDRs are still written, uncharged."""
        backend = self._backend()
        holds = [holdid for holdid, _ in call.charges()]
        if all([await backend.store.calls.hold_status(holdid) == HOLD_SETTLED for holdid in holds]):
            return await self._cdr_ids(call)
        log.critical("call {id}: holds {holds} were released by another node (this node looked dead); the call "
                     "is not charged: cost {cost}, CDRs {rows!r}", id=call.id, holds=holds, cost=call.cost,
                     rows=rows)
        uncharged = [{**row, "cost": Decimal(0),
                      "disconnectreason": (row["disconnectreason"] + "; not charged: hold released by another node")[:200]}
                     for row in rows]
        return await backend.db.run_interaction("call_cdrs_uncharged", end_call, call.id, uncharged)

    async def _settled(self, call: LiveCall) -> bool:
        """Whether the call's settlement committed already (its live-call row is gone)."""
        try:
            return not await self._backend().store.calls.is_live(call.id)
        except Exception:
            return False

    async def _cdr_ids(self, call: LiveCall) -> list[int]:
        return await self._backend().store.calls.cdr_ids(call.id)

    def shutdown(self) -> defer.Deferred[Any]:
        """The daemon stops: end every live call now (CANCEL, BYE) and bill it; fires when all are billed
        (or after L{SHUTDOWN_WAIT} seconds)."""
        calls = list(self.live.values())
        for call in calls:
            call.stop("the server is shutting down")
            call.abandon()
        if not calls:
            return defer.succeed(None)
        log.info("stopping {count} live calls", count=len(calls))
        done = defer.DeferredList([defer.ensureDeferred(call.wait(ENDED)) for call in calls], consumeErrors=True)
        return done.addTimeout(SHUTDOWN_WAIT, self.core.clock).addErrback(lambda _: None)

