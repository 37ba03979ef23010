"""The SIP element: takes messages from every transport, answers requests.

mizud is a registrar, a user agent server and, for calls, a back-to-back
user agent (signalling only), not a proxy: it answers REGISTER
(L{mizud.sip.registrar}), OPTIONS (keep-alive, and API requests when
C{sipapi} is on), MESSAGE (stored and forwarded to the target user's
contacts, or an API request), PUBLISH of presence (L{mizud.sip.publish}),
and relays the INVITEs of registered users (L{mizud.sip.b2bua}) after the
checks RFC 3261 8.2 puts first; the calls the API places (p2p, callback)
are L{mizud.sip.calls}.  BYE, re-INVITE, UPDATE and INFO inside the
dialogs of those calls, and the ACKs of their 2xx, go to the dialog's
owner; a CANCEL to the INVITE it cancels.

Requests pass, in order: the per-address rate limit and bans (dropped),
parsing (400/505/413/513), the structural checks (400), the server
transaction layer (retransmissions absorbed), then method inspection
(501/405), URI scheme (416), Require (420), content (415/406).  Then the
handler registered for the method (L{SipCore.handle}) answers, once the
backend is there (503 while the store opens or a restore runs); each
handler sees the core only through its interface in L{mizud.sip.ports}.
"""

from __future__ import annotations

import ipaddress
import os
import random
import socket
from collections import Counter, OrderedDict
from typing import Any, Awaitable, Callable

from twisted.internet import defer
from twisted.logger import Logger

from ..ratelimit import LeakyBucket
from ..config import Settings
from ..rejections import RejectionLog
from ..store.billing import User
from .backend import Backend
from .dialog import Dialogs
from .digest import DigestAuth, answer_challenge, parse_credentials
from .message import (
    ParseError,
    SipMessage,
    check_request,
    check_response,
    parse_datagram,
    parse_uri,
    parse_via,
)
from .publish import publish
from .responses import ALLOW, ALLOWED, KNOWN, SERVER, response_to
from .routing import Route, Unreachable
from .transaction import ClientTransactions, ServerTransactions, Source, new_branch

log = Logger()

#: A method's handler: (the request, where it came from, the backend) -> the final response.
Handler = Callable[[SipMessage, Source, Backend], Awaitable[SipMessage]]

#: Option tags we support (a Require naming another gets 420).
SUPPORTED: frozenset[str] = frozenset()
API_HEADER = "x-mizuapi"
API_ANSWER_HEADER = "X-MizuAPI-Answer"
#: Answers up to this long also travel in the X-MizuAPI-Answer header.
SHORT_ANSWER = 200
#: Registered peers whose socket or connection we remember to send them requests (NAT pinholes).
MAX_ROUTES = 200_000
#: The longest instant message (characters), as through the API's sendim.
MAX_IM = 4000
#: Dialogs (Call-IDs) with a rejected credential remembered at once (to answer a retry 403).
MAX_FAILED_CALLS = 100_000
#: How long a rejected credential in a Call-ID is remembered (seconds).
FAILED_CALL_MEMORY = 3600.0
#: Seconds between the event loop's lateness samples (admission control).
LAG_EVERY = 0.05
#: Methods that open new work, refused with 503 under overload (outside a dialog).
SHEDDABLE = frozenset({"REGISTER", "INVITE", "MESSAGE", "PUBLISH", "SUBSCRIBE", "OPTIONS"})
#: Methods whose handling is this node's own work (no far end to wait for): counted by sipmaxserving.
LOCAL_WORK = frozenset({"REGISTER", "PUBLISH", "SUBSCRIBE", "OPTIONS"})
#: The longest receive-queue wait believed (seconds); a stamp further off is the clock's, not the queue's.
MAX_SOJOURN = 60.0


class SipCore:
    """One node's SIP element."""

    def __init__(self, settings: Settings, backend_of: Callable[[], Backend | None], clock: Any) -> None:
        self.settings = settings
        self.backend_of = backend_of
        self.clock = clock
        config = settings.current
        self.transactions = ServerTransactions(clock)
        self.dialogs = Dialogs()
        self.clients = ClientTransactions(clock)
        self.digest = DigestAuth(clock, config.sipnoncettl)
        self.limiter = LeakyBucket(clock, float(config.sipratelimitip), float(config.sipratelimitip) * 2)
        #: (transport, host, port) -> how to send to that peer (UDP: the socket it last used).
        self.routes: OrderedDict[tuple[str, str, int], Source] = OrderedDict()
        #: UDP sockets we can send requests from: (write(data, addr), our host:port).
        self.udp_sockets: list[tuple[Callable[[bytes, tuple[str, int]], None], str]] = []
        #: Open stream connections by (transport, host, port): their protocols (to close them).
        self.connections: dict[tuple[str, str, int], Any] = {}
        self.stats: Counter[str] = Counter()
        self.started = clock.seconds()
        #: Log lines about rejected messages (limited: a flood of junk must not flood the log).
        self.rejections = RejectionLog(clock, "rejected SIP messages")
        #: Our local address towards each peer host, when listening on a wildcard address.
        self._local_ips: dict[str, str] = {}
        #: Work to start once a request's response has been sent (by id of the request).
        self._after: dict[int, Callable[[], Any]] = {}
        #: Requests (by id, while they are served) and the stateless challenge made for each: see L{_serve}.
        self._challenged: dict[int, SipMessage] = {}
        #: (Call-ID, username) of recent requests whose credentials were rejected.
        self._failed_calls: OrderedDict[tuple[str, str], float] = OrderedDict()
        #: Requests being worked on now (admission control, sipmaxserving).
        self.serving = 0
        #: How late the event loop's last lateness sample ran (seconds; admission control, sipoverloadlag).
        self.lag = 0.0
        self._lag_due = 0.0
        #: How long the last sampled datagram waited in the kernel's receive queue (seconds).
        self.sojourn = 0.0
        #: Whether the next datagram should tell how long it waited (L{queued_for}).
        self.wants_sojourn = False
        from .calls import CallControl
        from .messaging import Messenger
        from .registrar import Registrar
        from .sms import SmsSender

        self.registrar = Registrar(self)
        self.messenger = Messenger(self)
        self.sms = SmsSender(self)
        #: The handler of each method that needs the backend (the rest: OPTIONS, keep-alives and API requests).
        self.handlers: dict[str, Handler] = {}
        self.handle("REGISTER", self.registrar.register)
        self.handle("MESSAGE", self._message)
        self.handle("PUBLISH", lambda request, source, backend: publish(self, request, source, backend))
        self.handle("OPTIONS", self._options)
        self.calls = CallControl(self)
        from .b2bua import Relay

        #: Calls from registered phones, relayed (the INVITE handler).
        self.relay = Relay(self, self.calls)
        self.handle("INVITE", self.relay.invite)

    def reconfigure(self) -> None:
        """Apply live options (rate limit, nonce lifetime)."""
        config = self.settings.current
        self.digest.ttl = config.sipnoncettl
        self.limiter.rate = float(config.sipratelimitip)
        self.limiter.burst = float(config.sipratelimitip) * 2

    # -- input ----------------------------------------------------------------

    def admit(self, source: Source) -> bool:
        """Whether to look at a message from this source at all (bans, rate limit)."""
        backend = self.backend_of()
        if backend is not None and backend.lockout.address_banned(source.host):
            self.stats["dropped_banned"] += 1
            return False
        if not self.limiter.allow(source.host):
            self.stats["dropped_rate"] += 1
            self.rejections(source.host, "SIP: {source} is over sipratelimitip; dropping its messages")
            return False
        return True

    def datagram(self, data: bytes, source: Source) -> None:
        """One message from a datagram or a WebSocket frame."""
        if not self.admit(source):
            return
        if not data.strip(b"\r\n"):
            return  # a keep-alive
        try:
            message = parse_datagram(data)
        except ParseError as error:
            self.refuse(error, source)
            return
        except Exception:
            self.stats["bad_messages"] += 1
            log.failure("SIP: unparseable message from {source}", source=source.address)
            return
        self.received(message, source)

    def refuse(self, error: ParseError, source: Source) -> None:
        """Answer (or drop) a message that failed to parse or check; log it with its source."""
        self.stats["bad_messages"] += 1
        self.rejections(source.host, "SIP: bad message from {address} ({transport}): {reason}",
                        address=source.address, transport=source.transport, reason=error.reason)
        partial = error.message
        if error.status is None or partial is None or not partial.is_request or partial.method == "ACK":
            return
        if not partial.get("via"):
            return  # cannot address an answer
        response = response_to(partial, error.status, source=source)
        if error.status == 501:
            response.add("Allow", ALLOW)
        response.add("Warning", f'399 {SERVER} "{_quoted(error.reason)}"')
        self._send(source, response.serialize())

    def received(self, message: SipMessage, source: Source) -> None:
        """A parsed message from C{source}; whatever it holds, nothing escapes from here."""
        try:
            self._received_message(message, source)
        except Exception:
            self.stats["bad_messages"] += 1
            log.failure("SIP: message from {source} not handled", source=source.address)

    def _received_message(self, message: SipMessage, source: Source) -> None:
        if not message.is_request:
            try:
                check_response(message)
            except ParseError as error:
                self.refuse(error, source)
                return
            if not self.clients.match(message, source.host):
                self.stats["stray_responses"] += 1
            return
        try:
            check_request(message, KNOWN)
        except ParseError as error:
            self.refuse(error, source)
            return
        self.stats["requests"] += 1
        self.stats["requests_" + message.method.lower() if message.method in KNOWN else "requests_other"] += 1
        existing = self.transactions.find(message)
        if existing is not None:
            if existing.source.host == source.host and existing.source.port == source.port:
                existing.retransmitted(message)
                if message.method == "ACK" and existing.accepted:
                    # An ACK of our 2xx that reuses the INVITE's branch (or an RFC 2543 peer's): the dialog's.
                    self.dialogs.acknowledged(message, source)
            # A copy from elsewhere never makes us resend to the first sender (reflection).
            return
        if message.method == "ACK":
            # The ACK of a 2xx goes to its dialog's owner (a relayed call); one for a transaction long gone
            # needs nothing.
            if message.address("to").tag:
                self.dialogs.acknowledged(message, source)
            return
        if message.method == "CANCEL":
            invite = self.transactions.find_invite(message)
            same_peer = invite is not None and invite.source.host == source.host
            status = 200 if same_peer else 481
            self._send(source, response_to(message, status, source=source).serialize())
            if same_peer and invite is not None and not invite.final:
                if invite.on_cancel is None:
                    invite.cancelled = True  # the INVITE's handler is still at work: it hears of it when it asks
                else:
                    hook, invite.on_cancel = invite.on_cancel, None
                    hook()
            return
        if message.method in SHEDDABLE and self._shed(message, source):
            self.stats["shed"] += 1
            response = response_to(message, 503, "Overloaded", source=source)
            response.add("Retry-After", str(random.randint(1, 3)))  # spread the retries (RFC 6357)
            self._send(source, response.serialize())
            return
        transaction = self.transactions.create(message, source)
        if transaction is None:
            response = response_to(message, 503, source=source)
            response.add("Retry-After", "5")
            self._send(source, response.serialize())
            return
        defer.ensureDeferred(self._serve(message, source, transaction))

    def _shed(self, request: SipMessage, source: Source) -> bool:
        """Whether admission control refuses this new request: only ever new work (a REGISTER or PUBLISH,
        or another method outside a dialog this node knows), and work already half done -- the answer to
        a challenge this node issued to this address -- only past twice the lag bound, so that under
        overload the node sheds new exchanges first and completes those it started."""
        if not self.overloaded():
            return False  # the common case: nothing more to look at
        if request.method not in ("REGISTER", "PUBLISH") and request.address("to").tag \
                and self.dialogs.find(request) is not None:
            return False
        return self.overloaded(begun=True) or not self._answers_challenge(request, source)

    def _answers_challenge(self, request: SipMessage, source: Source) -> bool:
        """Whether the request carries credentials for a nonce this node issued to its address."""
        header = request.get("authorization") or request.get("proxy-authorization")
        if not header:
            return False
        credentials = parse_credentials(header)
        return bool(credentials is not None and self.digest.issued(credentials.get("nonce", ""), source.host) is not None)

    def overloaded(self, begun: bool = False) -> bool:
        """Admission control: too many requests in the works (sipmaxserving), or requests waiting too long
        before mizud starts on them (sipoverloadlag): in the receive queue, or for a late event loop;
        C{begun} (the request finishes an exchange already begun): only past twice the lag bound."""
        config = self.settings.current
        most, lag = config.sipmaxserving, config.sipoverloadlag
        if most and self.serving >= most:
            return True
        if not lag:
            return False
        return bool(max(self.lag, self.sojourn) > (2 * lag if begun else lag))

    def sample_lag(self) -> None:
        """Called every L{LAG_EVERY} seconds (L{watch_lag}): how late this call came; and ask the next
        datagram how long it waited in the receive queue (L{queued_for})."""
        now = self.clock.seconds()
        self.lag = max(0.0, now - self._lag_due) if self._lag_due else 0.0
        self._lag_due = now + LAG_EVERY
        if self.wants_sojourn:
            self.sojourn = 0.0  # no datagram since the last sample: nothing is queued
        self.wants_sojourn = True

    def queued_for(self, waited: float) -> None:
        """A datagram read now had waited C{waited} seconds in its socket's receive queue."""
        self.sojourn = waited if 0.0 <= waited <= MAX_SOJOURN else 0.0
        self.wants_sojourn = False

    def watch_lag(self) -> Any:
        """Start sampling the event loop's lateness; the LoopingCall (stop it when stopping)."""
        from twisted.internet.task import LoopingCall

        loop = LoopingCall(self.sample_lag)
        loop.clock = self.clock
        loop.start(LAG_EVERY, now=True)
        return loop

    async def _serve(self, request: SipMessage, source: Source, transaction: Any) -> None:
        # Only work done here counts towards sipmaxserving: a call (or a request inside one) waits for
        # the far end, for as long as it rings, and must not make the node refuse everything else.
        local = request.method in LOCAL_WORK
        self.serving += local
        try:
            response = await self.respond(request, source)
        except Exception:
            log.failure("SIP {method} from {source} failed", method=request.method, source=source.address)
            response = response_to(request, 500, source=source)
        finally:
            self.serving -= local
            challenge = self._challenged.pop(id(request), None)
        # An INVITE outside a dialog refused here created no state: answer statelessly (once per INVITE received),
        # so a forged INVITE gets one response, not eleven over 32 s (RFC 3261 timer G).
        # (Once a provisional went out the INVITE has state: its final response is retransmitted until ACKed.)
        stateless = (request.method == "INVITE" and response.status >= 300 and not request.address("to").tag
                     and not transaction.proceeding)
        # Our challenge to a request that brought no credentials to weigh is stateless too (RFC 3261 8.2.7: the
        # stateless UAS role is for exactly this), so unauthenticated floods keep no state for 32 s (timer J):
        # a retransmission is challenged again, with a fresh nonce, and would be whenever it came.
        stateless = stateless or (response is challenge and not transaction.proceeding)
        transaction.respond(response, stateless=stateless)
        after = self._after.pop(id(request), None)
        if after is not None:
            after()

    def after_response(self, request: SipMessage, work: Callable[[], Any]) -> None:
        """Run C{work} right after the response to C{request} has gone out."""
        self._after[id(request)] = work

    # -- requests ----------------------------------------------------------------

    async def respond(self, request: SipMessage, source: Source) -> SipMessage:
        """The final response to a request (RFC 3261 8.2 checks, then the method)."""
        method = request.method
        if method not in KNOWN:
            response = response_to(request, 501, source=source)
            response.add("Allow", ALLOW)
            return response
        if method not in ALLOWED:
            response = response_to(request, 405, source=source)
            response.add("Allow", ALLOW)
            return response
        uri = request.request_uri()
        if not uri.is_sip:
            return response_to(request, 416, source=source)
        unsupported = [tag for tag in request.all("require") if tag.lower() not in SUPPORTED]
        if unsupported:
            response = response_to(request, 420, source=source)
            for tag in unsupported:
                response.add("Unsupported", tag)
            return response
        if method == "INVITE":
            return await self._invite(request, source)
        if method in ("BYE", "UPDATE", "INFO"):
            return await self._in_dialog(request, source)
        backend = self.backend_of()
        if backend is None or backend.paused():
            # Starting, or the database is being restored: come back soon (RFC 3261 21.5.4).
            response = response_to(request, 503, "Starting" if backend is None else "Restoring", source=source)
            response.add("Retry-After", "5" if backend is None else "60")
            return response
        return await self.handlers.get(method, self._options)(request, source, backend)

    def handle(self, method: str, handler: Handler) -> None:
        """Answer requests of C{method} (one of L{ALLOWED}) with C{handler}, once the backend is there."""
        if method not in ALLOWED:
            raise ValueError(f"{method} is not a method this element serves")
        self.handlers[method] = handler

    def progress(self, request: SipMessage, response: SipMessage) -> None:
        """Send a provisional response to a request still being served (an INVITE being relayed)."""
        transaction = self.transactions.find(request)
        if transaction is not None and not transaction.final and response.status < 200:
            transaction.respond(response)

    def on_cancel(self, request: SipMessage, hook: Callable[[], None]) -> None:
        """Call C{hook} when the peer CANCELs C{request}, an INVITE being served."""
        transaction = self.transactions.find(request)
        if transaction is None:
            return
        if transaction.cancelled:
            hook()
        else:
            transaction.on_cancel = hook

    async def _in_dialog(self, request: SipMessage, source: Source) -> SipMessage:
        """A request inside one of our dialogs: what its owner answers (481 outside any)."""
        _, outcome = self.dialogs.incoming(request, source)
        if isinstance(outcome, int):
            return response_to(request, outcome, source=source)
        return await outcome

    async def _invite(self, request: SipMessage, source: Source) -> SipMessage:
        if request.address("to").tag:
            # A re-INVITE in one of our calls' dialogs (its owner answers), else 481.
            return await self._in_dialog(request, source)
        kind = request.get("content-type").split(";")[0].strip().lower()
        if request.body and kind != "application/sdp":
            response = response_to(request, 415, source=source)
            response.add("Accept", "application/sdp")
            return response
        accepts = [a.split(";")[0].strip().lower() for a in request.all("accept")]
        if accepts and not {"application/sdp", "application/*", "*/*"} & set(accepts):
            response = response_to(request, 406, source=source)
            response.add("Warning", f'399 {SERVER} "only application/sdp can be offered"')
            return response
        handler = self.handlers.get("INVITE")
        if handler is None:
            return response_to(request, 403, "Calls are placed through the API (p2p, callback)", source=source)
        backend = self.backend_of()
        if backend is None or backend.paused():
            response = response_to(request, 503, "Starting" if backend is None else "Restoring", source=source)
            response.add("Retry-After", "5" if backend is None else "60")
            return response
        return await handler(request, source, backend)

    async def _options(self, request: SipMessage, source: Source, backend: Backend) -> SipMessage:
        if request.get(API_HEADER):
            return await self._api(request, source, backend)
        response = response_to(request, 200, source=source)
        response.add("Allow", ALLOW)
        response.add("Accept", "text/plain")
        return response

    async def _message(self, request: SipMessage, source: Source, backend: Backend) -> SipMessage:
        if request.get(API_HEADER):
            return await self._api(request, source, backend)
        kind = request.get("content-type", "text/plain").split(";")[0].strip().lower()
        if not kind.startswith("text/"):
            response = response_to(request, 415, source=source)
            response.add("Accept", "text/plain")
            return response
        user = await self.authenticate(request, source, backend)
        if isinstance(user, SipMessage):
            return user
        target = request.request_uri().user or request.address("to").uri.user
        recipient = await backend.store.find_user(target) if target else None
        if recipient is None:
            return response_to(request, 404, source=source)
        try:
            text = request.body.decode("utf-8")
        except UnicodeDecodeError:
            return response_to(request, 400, "Body is not UTF-8", source=source)
        if len(text) > MAX_IM or "\x00" in text:
            return response_to(request, 413 if len(text) > MAX_IM else 400,
                               "Messages are at most 4000 characters of text", source=source)
        await self.messenger.send(user.username, [recipient], text)
        return response_to(request, 202, source=source)

    async def _api(self, request: SipMessage, source: Source, backend: Backend) -> SipMessage:
        if not self.settings.current.sipapi:
            return response_to(request, 403, "API requests over SIP are disabled", source=source)
        user = await self.authenticate(request, source, backend)
        if isinstance(user, SipMessage):
            return user
        text = await backend.api(request.get(API_HEADER), user, source.host)
        response = response_to(request, 200, source=source)
        single = text.replace("\r", " ").replace("\n", " ")
        if len(single) <= SHORT_ANSWER:
            response.add(API_ANSWER_HEADER, single)
        response.add("Content-Type", "text/plain;charset=utf-8")
        response.body = text.encode("utf-8")
        self.stats["api_requests"] += 1
        return response

    # -- authentication ------------------------------------------------------------

    def realm(self, request: SipMessage) -> str:
        """The digest realm: the siprealm option, else the Request-URI's host."""
        configured: str = self.settings.current.siprealm
        if configured:
            return configured
        try:
            return request.request_uri().host or SERVER
        except ParseError:
            return SERVER

    def challenge(self, request: SipMessage, source: Source, stale: bool = False, proxy: bool = False,
                  stateless: bool = False) -> SipMessage:
        """401 with a fresh digest challenge (its nonce valid from this source only); with C{proxy}, 407 with
        Proxy-Authenticate, as a proxy challenges an INVITE (RFC 3261 22.3).  C{stateless}: the request's
        credentials were not weighed (none, or a nonce not ours), so any copy of it gets the same kind of
        answer, and the challenge is sent without keeping a transaction (L{_serve})."""
        response = response_to(request, 407 if proxy else 401, source=source)
        response.add("Proxy-Authenticate" if proxy else "WWW-Authenticate",
                     self.digest.challenge(self.realm(request), stale, source.host))
        self.stats["challenges"] += 1
        if stateless:
            self._challenged[id(request)] = response
        return response

    async def authenticate(self, request: SipMessage, source: Source, backend: Backend,
                           proxy: bool = False) -> User | SipMessage:
        """The user a request's digest credentials prove, or the response to send instead (a challenge:
        401, or 407 with C{proxy}).

        Credentials are only weighed when their nonce was issued by this
        process to this source address: anything else (a nonce from another
        node, from before a restart, forged, or sent from a spoofed address)
        is challenged again with stale=true and counts as nothing.
        """
        realm = self.realm(request)
        credentials = None
        for header in ("authorization", "proxy-authorization"):
            for value in request.all(header):
                params = parse_credentials(value)
                if params is not None and params.get("realm") == realm:
                    credentials = params
                    break
            if credentials is not None:
                break
        if credentials is None:
            return self.challenge(request, source, proxy=proxy, stateless=True)
        if self.digest.issued(credentials.get("nonce", ""), source.host) is None:
            return self.challenge(request, source, stale=True, proxy=proxy, stateless=True)
        if credentials.get("uri", "") != request.uri:
            return response_to(request, 400, "Digest uri does not match the Request-URI", source=source)
        username = credentials.get("username", "")
        user = await backend.store.find_user(username) if _sane(username) else None
        # Checked after the lookup, with nothing waiting between it and the password check and the count
        # of a failure: parallel guesses cannot all pass before the lockout.
        if backend.lockout.account_banned(username):
            return response_to(request, 403, "Too many failed authentications", source=source)
        password = user.password if user is not None else os.urandom(12).hex()
        verdict = self.digest.check(credentials, request.method, password, source.host)
        if user is None or verdict.wrong_password:
            self.stats["auth_failures"] += 1
            reason = "unknown user" if user is None else verdict.reason
            await backend.failed_login(source.host, f"sip {request.method}", "SIP digest: " + reason,
                                       username if _sane(username) else "?")
            if self._failed_again(request.call_id, username):
                # Credentials rejected twice in one dialog: the client must stop retrying them
                # (RFC 3261 22.1), or one phone with a wrong password floods the lockout.
                return response_to(request, 403, "Wrong credentials", source=source)
            return self.challenge(request, source, proxy=proxy)
        if verdict.stale:
            return self.challenge(request, source, stale=True, proxy=proxy)
        if not verdict.ok:
            self.rejections(source.host, "SIP: bad credentials from {address}: {reason}", address=source.address,
                            reason=verdict.reason)
            return response_to(request, 400, "Malformed credentials", source=source)
        if not user.enabled or user.temporarydisabled:
            return response_to(request, 403, "Account disabled", source=source)
        self._failed_calls.pop((request.call_id, username), None)
        await backend.lockout.succeeded(user.username, source.host)
        return user

    def _failed_again(self, call_id: str, username: str) -> bool:
        """Note a rejected credential in this Call-ID; True if one was rejected there in the last hour."""
        key = (call_id, username)
        failed = self._failed_calls
        now = self.clock.seconds()
        before = failed.pop(key, None)
        failed[key] = now
        if len(failed) > MAX_FAILED_CALLS:
            failed.popitem(last=False)
        return before is not None and now - before < FAILED_CALL_MEMORY

    # -- output -------------------------------------------------------------------

    def remember(self, source: Source) -> None:
        """Remember how to reach a peer (the socket or connection it used)."""
        key = (source.transport, source.host, source.port)
        routes = self.routes
        if key in routes:
            routes.move_to_end(key)
        routes[key] = source
        if len(routes) > MAX_ROUTES:
            routes.popitem(last=False)

    def forget(self, transport: str, host: str, port: int) -> None:
        """A connection closed: it is no route any more."""
        self.routes.pop((transport, host, port), None)
        self.connections.pop((transport, host, port), None)

    def _send(self, source: Source, data: bytes) -> None:
        try:
            source.send(data)
        except Exception as error:
            log.info("SIP: could not answer {source}: {error}", source=source.address, error=error)

    def route(self, transport: str, address: str, contact: str) -> tuple[Callable[[bytes], None], str, bool] | None:
        """How to send a request to a binding: (send, our host:port, reliable), or None if unreachable.

        Stream bindings are reached through their connection.  UDP bindings
        through the socket their REGISTER came on: to the Contact's address
        when it names the very host the REGISTER came from (a phone that
        receives on another port), else to the source (a phone behind NAT).
        """
        host, _, port_text = address.rpartition(":")
        host = host.strip("[]")
        try:
            port = int(port_text)
        except ValueError:
            return None
        known = self.routes.get((transport, host, port))
        if transport != "udp":
            return (known.send, known.local, True) if known else None
        if known is not None and known.write_to is not None:
            write, local = known.write_to, known.local
        elif self.udp_sockets:
            write, local = self.udp_sockets[0]
        else:
            return None
        try:
            uri = parse_uri(contact)
        except ParseError:
            uri = None
        if uri is not None and uri.is_sip and uri.host.strip("[]") == host and uri.port:
            port = uri.port
        destination = (host, port)
        return (lambda data: write(data, destination)), self.reachable(local, host), False

    def reachable(self, local: str, peer: str) -> str:
        """Our host:port as the peer can reach it: a wildcard listen address becomes the local
        address the system routes to that peer from (asked of the kernel, no packet sent)."""
        host, _, port = local.rpartition(":")
        if host not in ("0.0.0.0", "[::]"):
            return local
        found = self._local_ips.get(peer)
        if found is None:
            family = socket.AF_INET6 if ":" in peer else socket.AF_INET
            try:
                with socket.socket(family, socket.SOCK_DGRAM) as probe:
                    probe.connect((peer, 9))
                    found = probe.getsockname()[0]
            except OSError:
                found = host.strip("[]")
            if len(self._local_ips) > 10_000:
                self._local_ips.clear()
            self._local_ips[peer] = found
        return f"[{found}]:{port}" if ":" in found else f"{found}:{port}"

    async def destination(self, route: Route) -> tuple[Callable[[bytes], None], str, bool, str]:
        """How to send a request along a route: (send, our host:port as the peer sees it, reliable,
        the peer's host: its responses must come from there).

        A registered contact is reached the way its REGISTER came (L{route});
        a gateway at its proxy if it has one, else at its Request-URI's host,
        over UDP (a name is resolved first).  Raises L{Unreachable}.
        """
        if route.kind == "user":
            found = self.route(route.transport, route.address, route.target)
            if found is None:
                raise Unreachable(f"{route.name}'s {route.transport} connection is gone")
            return (*found, route.address.rpartition(":")[0].strip("[]"))
        if route.transport != "udp":
            raise Unreachable(f"{route.transport} towards gateways is not supported (udp only)")
        try:
            uri = parse_uri(f"sip:{route.proxy}" if route.proxy else route.target)
        except ParseError:
            raise Unreachable(f"{route.name} has no usable address") from None
        host = uri.host.strip("[]")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            try:
                host = await self.clock.resolve(host)
            except Exception as problem:
                raise Unreachable(f"{route.name}: cannot resolve {host[:60]}: {type(problem).__name__}") from None
        if not self.udp_sockets:
            raise Unreachable("no UDP socket to send from")
        write, local = self.udp_sockets[0]
        destination = (host, uri.port or 5060)
        return (lambda data: write(data, destination)), self.reachable(local, host), False, host

    def authorised(self, request: SipMessage, response: SipMessage, account: tuple[str, str]) -> SipMessage | None:
        """The request again with credentials for a 401/407 challenge (RFC 3261 22.2), or None if we cannot
        answer it: same Call-ID and From, the next CSeq, a new branch."""
        header = "www-authenticate" if response.status == 401 else "proxy-authenticate"
        credentials = answer_challenge(response.get(header), request.method, request.uri, *account)
        if credentials is None:
            return None
        retry = SipMessage(method=request.method, uri=request.uri, body=request.body)
        number = request.cseq()[0] + 1
        for name, value in request.headers:
            if name == "via":
                value = value.replace(parse_via(value).branch, new_branch())
            elif name == "cseq":
                value = f"{number} {request.method}"
            elif name in ("authorization", "proxy-authorization"):
                continue
            retry.headers.append((name, value))
        retry.add("Authorization" if response.status == 401 else "Proxy-Authorization", credentials)
        return retry

    def add_udp_socket(self, write: Callable[[bytes, tuple[str, int]], None], local: str) -> None:
        """A UDP socket we can send requests from."""
        self.udp_sockets.append((write, local))

    def remove_udp_socket(self, write: Callable[[bytes, tuple[str, int]], None]) -> None:
        """A UDP socket that closed (sipreset, stop): nothing is sent through it any more, not even to the
        phones whose last datagram came through it (their next one names the new socket)."""
        self.udp_sockets = [(w, local) for w, local in self.udp_sockets if w != write]
        for key in [key for key, source in self.routes.items() if source.write_to == write]:
            del self.routes[key]

    def request(self, method: str, uri: str, from_uri: str, to_uri: str, local: str, transport: str) -> SipMessage:
        """A new out-of-dialog request from mizud."""
        message = SipMessage(method=method, uri=uri)
        add = message.headers.append
        add(("via", f"SIP/2.0/{transport.upper()} {local};branch={new_branch()};rport"))
        add(("max-forwards", "70"))
        add(("from", f"<{from_uri}>;tag={os.urandom(6).hex()}"))
        add(("to", f"<{to_uri}>"))
        add(("call-id", f"{os.urandom(12).hex()}@{SERVER}"))
        add(("cseq", f"1 {method}"))
        add(("user-agent", SERVER))
        return message


def _sane(username: str) -> bool:
    """Whether a username can be looked up at all (printable, valid UTF-8, not absurdly long)."""
    if not username or len(username) > 128 or not username.isprintable():
        return False
    try:
        username.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes kept from the message
        return False
    return True


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', "'")[:100]
