"""SIP transactions (RFC 3261 section 17) on an injected clock.

Server transactions absorb retransmitted requests and retransmit the last
response; INVITE server transactions retransmit a final error response
(timer G) until the ACK arrives or timer H gives up, except refusals sent
statelessly (an INVITE refused before any state exists is answered once
per INVITE received, as Kamailio's sl module does: no amplification).  Client non-INVITE
transactions (the MESSAGEs mizud sends) retransmit with timer E over
unreliable transports and time out with timer F, answering 408.

A transaction is keyed by the top Via's branch when it carries the RFC
3261 magic cookie; otherwise (RFC 2543 peers, RFC 4475 "badbranch") by
Call-ID, CSeq, From tag and the top Via as RFC 3261 17.2.3 allows.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable

from twisted.internet import defer
from twisted.logger import Logger

from .message import SipMessage, parse_via

log = Logger()

T1 = 0.5
T2 = 4.0
T4 = 5.0
MAGIC = "z9hG4bK"
#: The most server transactions alive at once (beyond it new requests get 503 until old ones end).
MAX_TRANSACTIONS = 100_000
#: The most bytes of responses kept for retransmission at once (same: 503 beyond it).
MAX_KEPT_BYTES = 128 * 1024 * 1024


@dataclass(slots=True)
class Source:
    """Where a message came from, and how to answer it."""

    transport: str  # udp, tcp, tls, ws, wss
    host: str
    port: int
    send: Callable[[bytes], None]
    #: Our own host:port the message arrived on (for the Via of requests we send back).
    local: str = ""
    #: For UDP: the socket's write(data, (host, port)), to reach other addresses from it.
    write_to: Callable[[bytes, tuple[str, int]], None] | None = None

    @property
    def reliable(self) -> bool:
        """Whether the transport retransmits for us (everything but UDP)."""
        return self.transport != "udp"

    @property
    def address(self) -> str:
        """host:port (IPv6 in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def server_key(request: SipMessage) -> tuple[str, ...]:
    """The key a request's server transaction is found by (ACK and CANCEL map as RFC 3261 17.2.3 says)."""
    method = "INVITE" if request.method == "ACK" else request.method
    via = request.top_via()
    branch = via.branch
    if branch.startswith(MAGIC) and len(branch) > len(MAGIC):
        return ("3261", branch, via.sent_by, method)
    tag = request.address("from").tag
    number = request.get("cseq").split()[0]
    return ("2543", request.call_id, number, tag, request.get("via"), method)


def new_branch() -> str:
    """A fresh RFC 3261 branch, unguessable: a response is matched to its request by it."""
    return MAGIC + os.urandom(10).hex()


@dataclass(eq=False, slots=True)
class ServerTransaction:
    """One server transaction: its last response and its timers."""

    key: tuple[str, ...]
    method: str
    source: Source
    table: ServerTransactions
    response: bytes = b""
    final: bool = False
    confirmed: bool = False
    timers: list[Any] = field(default_factory=list)
    interval: float = T1
    #: For an INVITE: called when the peer CANCELs it before the final response.
    on_cancel: Callable[[], None] | None = None
    #: For an INVITE: CANCELed before anyone asked to hear of it (L{on_cancel} is then called at once).
    cancelled: bool = False
    #: For an INVITE: answered with a 2xx (an ACK matching it still belongs to the dialog).
    accepted: bool = False

    @property
    def proceeding(self) -> bool:
        """Whether a provisional response went out (the transaction then answers with state)."""
        return bool(self.response) and not self.final

    def respond(self, response: SipMessage, stateless: bool = False) -> None:
        """Send a response and move to the state it implies.

        C{stateless}: a final response sent once and forgotten (RFC 3261
        8.2.7), as a refusal before any state: a retransmitted request is
        answered again, once per request received, and never resent on a
        timer, so a forged request cannot make mizud send more than it got.
        """
        if self.final:
            return  # one final response per transaction
        data = response.serialize()
        if stateless and response.status >= 200:
            self.final = True
            self._send(data)
            self.end()
            return
        self.table.kept += len(data) - len(self.response)
        self.response = data
        self._send(data)
        if response.status < 200:
            return
        self.final = True
        clock = self.table.clock
        if self.method == "INVITE":
            if response.status >= 300:
                if not self.source.reliable:
                    self.timers.append(clock.callLater(T1, self._timer_g))
                self.timers.append(clock.callLater(64 * T1, self._timer_h))
            else:
                # 2xx retransmission belongs to the dialog's owner (RFC 3261 13.3.1.4); RFC 6026's Accepted state
                # absorbs retransmissions of the INVITE meanwhile, so that one never starts a second call.
                self.accepted = True
                self.timers.append(clock.callLater(64 * T1, self.end))
        else:
            # Timer J: absorb retransmissions for 64*T1 over UDP, at once otherwise.
            self.timers.append(clock.callLater(64 * T1 if not self.source.reliable else 0, self.end))

    def _send(self, data: bytes) -> None:
        try:
            self.source.send(data)
        except Exception as error:  # a closed connection: the transaction just ends
            log.info("SIP response to {source} not sent: {error}", source=self.source.address, error=error)

    def retransmitted(self, request: SipMessage) -> None:
        """The same request again: answer with the last response (or wait)."""
        if request.method == "ACK":
            if self.method == "INVITE" and self.final and not self.confirmed:
                self.confirmed = True
                self._cancel_timers()
                # Timer I: absorb ACK retransmissions for T4 over UDP.
                self.timers.append(self.table.clock.callLater(T4 if not self.source.reliable else 0, self.end))
            return
        if self.response:
            self._send(self.response)

    def _timer_g(self) -> None:
        if self.confirmed or self.key not in self.table.live:
            return
        self._send(self.response)
        self.interval = min(self.interval * 2, T2)
        self.timers.append(self.table.clock.callLater(self.interval, self._timer_g))

    def _timer_h(self) -> None:
        log.info("SIP: no ACK from {source} for a final response", source=self.source.address)
        self.end()

    def _cancel_timers(self) -> None:
        for timer in self.timers:
            if timer.active():
                timer.cancel()
        self.timers.clear()

    def end(self) -> None:
        """Forget the transaction."""
        self._cancel_timers()
        if self.table.live.get(self.key) is self:
            del self.table.live[self.key]
            self.table.kept -= len(self.response)


class ServerTransactions:
    """The live server transactions."""

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.live: dict[tuple[str, ...], ServerTransaction] = {}
        #: Bytes of responses the live transactions keep.
        self.kept = 0

    def find(self, request: SipMessage) -> ServerTransaction | None:
        """The transaction a request belongs to, if it is a retransmission (or an ACK/CANCEL target)."""
        return self.live.get(server_key(request))

    def find_invite(self, cancel: SipMessage) -> ServerTransaction | None:
        """The INVITE transaction a CANCEL refers to."""
        key = server_key(cancel)
        return self.live.get((*key[:-1], "INVITE"))

    def create(self, request: SipMessage, source: Source) -> ServerTransaction | None:
        """A new transaction for a request (None when too many are alive)."""
        if len(self.live) >= MAX_TRANSACTIONS or self.kept >= MAX_KEPT_BYTES:
            return None
        key = server_key(request)
        transaction = ServerTransaction(key, request.method, source, self)
        self.live[key] = transaction
        return transaction


@dataclass(eq=False)
class ClientTransaction:
    """A non-INVITE client transaction; C{result} fires with the final response (408 on timeout)."""

    request: SipMessage
    send: Callable[[bytes], None]
    reliable: bool
    table: ClientTransactions
    result: defer.Deferred[SipMessage] = field(default_factory=defer.Deferred)
    timers: list[Any] = field(default_factory=list)
    interval: float = T1
    key: tuple[str, str] = ("", "")
    #: Timer B/F: how long to wait for any response (RFC 3261's 64*T1; a caller may shorten it).
    timeout: float = 64 * T1
    #: The host the request went to: responses from elsewhere are not believed ("": any).
    peer: str = ""

    def start(self) -> None:
        """Send the request and start timers E and F."""
        self.data = self.request.serialize()
        self._send()
        clock = self.table.clock
        if not self.reliable:
            self.timers.append(clock.callLater(T1, self._timer_e))
        self.timers.append(clock.callLater(self.timeout, self._timer_f))

    def _send(self) -> None:
        try:
            self.send(self.data)
        except Exception as error:
            log.info("SIP request not sent: {error}", error=error)
            self._finish(timeout_response(self.request, 503, "Service Unavailable"))

    def _timer_e(self) -> None:
        if self.result.called:
            return
        self._send()
        self.interval = min(self.interval * 2, T2)
        self.timers.append(self.table.clock.callLater(self.interval, self._timer_e))

    def _timer_f(self) -> None:
        self._finish(timeout_response(self.request, 408, "Request Timeout"))

    def give_up(self) -> None:
        """Stop waiting now (shutdown): the result fires with a local 408."""
        self._timer_f()

    def received(self, response: SipMessage) -> None:
        """A response for this transaction (after a provisional one, timer E runs at T2)."""
        if response.status >= 200:
            self._finish(response)
        else:
            self.interval = T2

    def _finish(self, response: SipMessage) -> None:
        for timer in self.timers:
            if timer.active():
                timer.cancel()
        self.timers.clear()
        self.table.live.pop(self.key, None)
        if not self.result.called:
            self.result.callback(response)


@dataclass(eq=False)
class InviteClientTransaction(ClientTransaction):
    """An INVITE client transaction (RFC 3261 17.1.1, with RFC 6026's Accepted state).

    Timer A retransmits over UDP until a provisional arrives, timer B gives
    up (408).  A final error is ACKed here, and its retransmissions are ACKed
    again until timer D.  A 2xx is the dialog's business: it goes to the
    caller (C{result}, then C{on_response} for retransmitted 2xx, which the
    caller must ACK again) and the transaction absorbs them for 64*T1.
    C{on_response} also sees every provisional response.
    """

    on_response: Callable[[SipMessage], None] | None = None
    provisional: bool = False
    final: SipMessage | None = None
    #: After a provisional: how long to wait for the final response before giving up (408),
    #: like a proxy's timer C; the transaction's user normally CANCELs long before.
    proceeding: float = 180.0
    _timer_b: Any = None

    def start(self) -> None:
        """Send the INVITE and start timers A and B."""
        self.data = self.request.serialize()
        self._send()
        clock = self.table.clock
        if not self.reliable:
            self.timers.append(clock.callLater(T1, self._timer_a))
        self._timer_b = clock.callLater(self.timeout, self._timer_f)
        self.timers.append(self._timer_b)

    def _timer_a(self) -> None:
        if self.result.called or self.provisional:
            return
        self._send()
        self.interval *= 2
        self.timers.append(self.table.clock.callLater(self.interval, self._timer_a))

    def received(self, response: SipMessage) -> None:
        """A response: provisional, error (ACKed here) or 2xx (for the dialog)."""
        if response.status < 200:
            if self.final is None:
                if not self.provisional:
                    self.provisional = True
                    if self._timer_b is not None and self._timer_b.active():
                        # Proceeding: the final response may take long (ringing), but not forever.
                        self._timer_b.cancel()
                        self._timer_b = self.table.clock.callLater(self.proceeding, self._timer_f)
                        self.timers.append(self._timer_b)
                self._tell(response)
            return
        if self.final is not None:
            # A retransmitted final response.
            if response.status >= 300:
                self._send_ack(response)
            else:
                self._tell(response)
            return
        self.final = response
        for timer in self.timers:
            if timer.active():
                timer.cancel()
        self.timers.clear()
        if response.status >= 300:
            self._send_ack(response)
            linger = 0.0 if self.reliable else 32.0  # timer D
        else:
            linger = 64 * T1  # RFC 6026 Accepted: absorb retransmitted 2xx
        self.timers.append(self.table.clock.callLater(linger, self._end))
        if not self.result.called:
            self.result.callback(response)

    def _tell(self, response: SipMessage) -> None:
        if self.on_response is not None:
            try:
                self.on_response(response)
            except Exception:
                log.failure("SIP: handling a response to INVITE failed")

    def _send_ack(self, response: SipMessage) -> None:
        ack = ack_for(self.request, response)
        try:
            self.send(ack.serialize())
        except Exception as error:
            log.info("SIP ACK not sent: {error}", error=error)

    def _end(self) -> None:
        self.table.live.pop(self.key, None)

    def cancelled(self) -> None:
        """A CANCEL was sent: without a final response within 64*T1 the INVITE counts as ended (RFC 3261 9.1)."""
        if self.final is None:
            self.timers.append(self.table.clock.callLater(64 * T1, self._timer_f))

    def cancel_request(self) -> SipMessage | None:
        """The CANCEL for this INVITE, once a provisional arrived and no final (RFC 3261 9.1); else None."""
        if not self.provisional or self.final is not None:
            return None
        invite = self.request
        cancel = SipMessage(method="CANCEL", uri=invite.uri)
        cancel.headers = [("via", invite.get("via"))]
        cancel.headers += [(k, v) for k, v in invite.headers if k == "route"]
        cancel.headers += [("max-forwards", "70"), ("from", invite.get("from")), ("to", invite.get("to")),
                           ("call-id", invite.call_id), ("cseq", f"{invite.cseq()[0]} CANCEL")]
        return cancel


def ack_for(invite: SipMessage, response: SipMessage) -> SipMessage:
    """The ACK of a non-2xx final response (RFC 3261 17.1.1.3): same branch, the response's To."""
    ack = SipMessage(method="ACK", uri=invite.uri)
    ack.headers = [("via", invite.get("via"))]
    ack.headers += [(k, v) for k, v in invite.headers if k == "route"]
    ack.headers += [("max-forwards", "70"), ("from", invite.get("from")), ("to", response.get("to")),
                    ("call-id", invite.call_id), ("cseq", f"{invite.cseq()[0]} ACK")]
    return ack


def timeout_response(request: SipMessage, status: int, reason: str) -> SipMessage:
    """The response a client transaction reports when none came."""
    return SipMessage(status=status, reason=reason, headers=[("cseq", request.get("cseq"))])


class ClientTransactions:
    """The live client transactions, found by branch and CSeq method."""

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.live: dict[tuple[str, str], ClientTransaction] = {}

    def find(self, request: SipMessage) -> ClientTransaction | None:
        """The live client transaction of a request we sent (to CANCEL it, say)."""
        return self.live.get((parse_via(request.get("via")).branch, request.method))

    def start(
        self, request: SipMessage, send: Callable[[bytes], None], reliable: bool,
        on_response: Callable[[SipMessage], None] | None = None, timeout: float = 64 * T1,
        peer: str = "", proceeding: float = 180.0,
    ) -> defer.Deferred[SipMessage]:
        """Send a request in a new transaction; the Deferred fires with the final response.

        For an INVITE, C{on_response} sees provisional and retransmitted 2xx
        responses (see L{InviteClientTransaction}); C{proceeding} bounds the
        wait for its final response after a provisional one.  With C{peer},
        responses from any other host are dropped.
        """
        branch = parse_via(request.get("via")).branch
        transaction: ClientTransaction
        if request.method == "INVITE":
            transaction = InviteClientTransaction(request, send, reliable, self, on_response=on_response,
                                                  proceeding=proceeding)
        else:
            transaction = ClientTransaction(request, send, reliable, self)
        transaction.timeout = timeout
        transaction.peer = peer.strip("[]")
        transaction.key = (branch, request.method)
        self.live[transaction.key] = transaction
        transaction.start()
        return transaction.result

    def match(self, response: SipMessage, source: str = "") -> bool:
        """Hand a response (from host C{source}) to its transaction; False if it has none, or if the
        response comes from a host the request was not sent to (then it is dropped)."""
        branch = response.top_via().branch
        method = response.get("cseq").split()[-1]
        transaction = self.live.get((branch, method))
        if transaction is None or (transaction.peer and source and source != transaction.peer):
            return False
        transaction.received(response)
        return True
