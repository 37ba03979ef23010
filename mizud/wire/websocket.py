"""WebSocket on the shared port: each text message on /mvstwebsock is one API request.

A message carries the rest of a request line, as over TCP (for example
C{/mvapireq/?apientry=balance&authid=...} or just C{apientry=balance&...});
each gets one text message back, in the order the requests came.  Binary
messages are refused (close code 4003: autobahn lets an application use
1000 or 3000..4999 only); messages over 64 KiB are refused by
autobahn (close code 1009).

Limits: the opening handshake must finish within L{HANDSHAKE_TIMEOUT}; an
API WebSocket that sends nothing for C{websocketidletimeout}, and a SIP one
for C{sipidletimeout}, is closed; an API WebSocket with L{MAX_PENDING}
requests in flight, or whose peer reads no answers, is not read until they
drain (L{Backpressure}).
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import defer
from twisted.internet.interfaces import ISSLTransport
from twisted.logger import Logger

from ..config import Settings
from .demux import answer_line
from .http import foreign_browser, known_host, own_origin
from .limits import Backpressure

log = Logger()

MAX_MESSAGE = 65536
#: Seconds the opening handshake may take (after the HTTP upgrade request).
HANDSHAKE_TIMEOUT = 10
#: The Mizu webphone's keep-alive on its SIP WebSocket, and the answer it expects.
KEEPALIVE = b"mrtcping"
KEEPALIVE_ANSWER = b"mrtcpong"


class IdleTimer:
    """Calls C{expired} when L{touch} was not called for C{seconds()}."""

    def __init__(self, clock: Any, seconds: Callable[[], float], expired: Callable[[], None]) -> None:
        self.clock = clock
        self.seconds = seconds
        self.expired = expired
        self._call: Any = None

    def touch(self) -> None:
        """Something arrived: start the wait again."""
        if self._call is not None and self._call.active():
            self._call.reset(self.seconds())
        else:
            self._call = self.clock.callLater(self.seconds(), self._fire)

    def _fire(self) -> None:
        self._call = None
        self.expired()

    def stop(self) -> None:
        """The connection is gone."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None


def _close_idle(protocol: WebSocketServerProtocol) -> None:
    """Close a WebSocket that stayed silent too long."""
    protocol.sendClose(4008, "idle")
    transport: Any = protocol.transport
    if transport is not None:
        transport.loseConnection()


class ApiWebSocketProtocol(WebSocketServerProtocol):
    """One API request per text message, answered in order.

    A WebSocket that a page of another site opened (its handshake's Origin
    is not this server's) earns no trust by address for any of its
    requests; credentials work as anywhere.
    """

    cross_site = False
    idle: IdleTimer | None = None

    def onConnect(self, request: Any) -> str | None:
        """Note whether a page of another site opened this WebSocket; accept the Mizu clients'
        C{api} subprotocol when offered (the webphone asks for it, and a browser drops a handshake that
        ignores the subprotocol it asked for)."""
        factory: ApiWebSocketFactory = self.factory
        headers = request.headers
        config = factory.settings.current
        own = own_origin(headers.get("host", ""), ISSLTransport.providedBy(self.transport))
        self.cross_site = foreign_browser(headers.get, own, config.browseraddresstrust,
                                          known_host(own, config.httphostnames))
        return "api" if "api" in request.protocols else None

    def onOpen(self) -> None:
        """Start an empty inbox, the idle timer and the back-pressure."""
        factory: ApiWebSocketFactory = self.factory
        transport: Any = self.transport
        #: Requests received and not yet answered, answered one at a time in order.
        self.inbox: deque[str] = deque()
        self.busy = False
        self.pressure = Backpressure(transport, transport.pauseProducing, transport.resumeProducing,
                                     drained=self._pump)
        self.idle = IdleTimer(factory.clock, lambda: float(factory.settings.current.websocketidletimeout),
                              self._idle_out)
        self.idle.touch()

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """Queue the request (text only)."""
        if self.idle is not None:
            self.idle.touch()
        if isBinary:
            self.sendClose(4003, "API requests are text messages")
            return
        self.inbox.append(payload.decode("utf-8"))  # autobahn has validated text frames as UTF-8
        self.pressure.started()
        self._pump()

    def _pump(self) -> None:
        """Answer the next request, unless one is being answered or the peer is not reading the answers
        (then autobahn may have more frames of one read buffered: they wait in the inbox)."""
        if self.busy or self.pressure.blocked or not self.inbox:
            return
        self.busy = True
        d = defer.ensureDeferred(self._answer(self.inbox.popleft()))
        d.addBoth(self._answered)

    def _answered(self, _: Any) -> None:
        self.busy = False
        self.pressure.finished()
        self._pump()

    def _idle_out(self) -> None:
        if self.inbox or self.busy or self.pressure.blocked:
            if self.idle is not None:
                self.idle.touch()  # answers are owed or on their way out: not idle
            return
        _close_idle(self)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        """Stop the idle timer; forget unanswered requests."""
        if self.idle is not None:
            self.idle.stop()
        if hasattr(self, "inbox"):
            self.inbox.clear()

    async def _answer(self, text: str) -> None:
        factory: ApiWebSocketFactory = self.factory
        transport: Any = self.transport
        source = getattr(transport.getPeer(), "host", "")
        try:
            answer = await answer_line(factory.dispatcher_of, factory.settings, text.strip(), source, "ws", self.cross_site)
        except Exception:
            log.failure("answering a WebSocket API request from {source}", source=source)
            answer = b"ERROR: internal error"
        if self.transport is not None:
            self.sendMessage(answer, isBinary=False)


class ApiWebSocketFactory(WebSocketServerFactory):
    """Builds API WebSocket protocols; knows the dispatcher and the settings."""

    protocol = ApiWebSocketProtocol

    def __init__(self, dispatcher_of: Callable[[], Any], settings: Settings, clock: Any = None) -> None:
        super().__init__()
        self.dispatcher_of = dispatcher_of
        self.settings = settings
        self.clock = clock or self.reactor
        self.setProtocolOptions(maxMessagePayloadSize=MAX_MESSAGE, maxFramePayloadSize=MAX_MESSAGE,
                                openHandshakeTimeout=HANDSHAKE_TIMEOUT)


def api_websocket_resource(dispatcher_of: Callable[[], Any], settings: Settings, clock: Any = None) -> WebSocketResource:
    """The twisted.web resource that upgrades /mvstwebsock to the API WebSocket."""
    return WebSocketResource(ApiWebSocketFactory(dispatcher_of, settings, clock))


class SipWebSocketProtocol(WebSocketServerProtocol):
    """SIP over WebSocket (RFC 7118): the "sip" subprotocol, each message handed to the SIP layer."""

    def onConnect(self, request: Any) -> str | None:
        """Accept the "sip" subprotocol when offered (RFC 7118 requires it)."""
        return "sip" if "sip" in request.protocols else None

    idle: IdleTimer | None = None

    def onOpen(self) -> None:
        """Start the idle timer."""
        factory: SipWebSocketFactory = self.factory
        self.idle = IdleTimer(factory.clock, factory.idle, lambda: _close_idle(self))
        self.idle.touch()

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """Hand the SIP message to the SIP layer; close if it refuses.  The Mizu webphone's keep-alive
        text C{mrtcping} is answered C{mrtcpong}."""
        factory: SipWebSocketFactory = self.factory
        if self.idle is not None:
            self.idle.touch()
        if payload.strip() == KEEPALIVE:
            self.sendMessage(KEEPALIVE_ANSWER, isBinary=False)
            return
        transport: Any = self.transport
        keep = factory.sip.websocket_message(payload, transport.getPeer(), lambda data: self.sendMessage(data),
                                             transport.getHost(), ISSLTransport.providedBy(transport))
        if not keep:
            self.sendClose(4000, "SIP is not served")

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        """Tell the SIP layer the connection is gone."""
        if self.idle is not None:
            self.idle.stop()
        factory: SipWebSocketFactory = self.factory
        transport: Any = self.transport
        if transport is not None:
            factory.sip.websocket_closed(transport.getPeer())


class SipWebSocketFactory(WebSocketServerFactory):
    """Builds SIP WebSocket protocols bound to the SIP entry point."""

    protocol = SipWebSocketProtocol

    def __init__(self, sip: Any, settings: Settings | None = None, clock: Any = None) -> None:
        super().__init__()
        self.sip = sip
        self.settings = settings
        self.clock = clock or self.reactor
        self.setProtocolOptions(maxMessagePayloadSize=MAX_MESSAGE, maxFramePayloadSize=MAX_MESSAGE,
                                openHandshakeTimeout=HANDSHAKE_TIMEOUT)

    def idle(self) -> float:
        """How long a SIP WebSocket may stay silent (sipidletimeout)."""
        return float(self.settings.current.sipidletimeout) if self.settings is not None else 900.0


def sip_websocket_resource(sip: Any, settings: Settings | None = None, clock: Any = None) -> WebSocketResource:
    """The twisted.web resource that upgrades /mfstwebsock to SIP over WebSocket."""
    return WebSocketResource(SipWebSocketFactory(sip, settings, clock))
