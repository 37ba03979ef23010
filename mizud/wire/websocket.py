"""WebSocket on the shared port: each text message on /mvstwebsock is one API request.

A message carries the rest of a request line, as over TCP (for example
C{/mvapireq/?apientry=balance&authid=...} or just C{apientry=balance&...});
each gets one text message back, in the order the requests came.  Binary
messages are refused (close code 4003: autobahn lets an application use
1000 or 3000..4999 only); messages over 64 KiB are refused by
autobahn (close code 1009).
"""

from __future__ import annotations

from typing import Any, Callable

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import defer
from twisted.internet.interfaces import ISSLTransport
from twisted.logger import Logger

from ..config import Settings
from .demux import answer_line
from .http import foreign_browser, own_origin

log = Logger()

MAX_MESSAGE = 65536


class ApiWebSocketProtocol(WebSocketServerProtocol):
    """One API request per text message, answered in order.

    A WebSocket that a page of another site opened (its handshake's Origin
    is not this server's) earns no trust by address for any of its
    requests; credentials work as anywhere.
    """

    cross_site = False

    def onConnect(self, request: Any) -> None:
        """Note whether a page of another site opened this WebSocket."""
        factory: ApiWebSocketFactory = self.factory  # type: ignore[assignment]
        headers = request.headers
        secure = ISSLTransport.providedBy(self.transport)
        self.cross_site = foreign_browser(headers.get, own_origin(headers.get("host", ""), secure),
                                          factory.settings.current.browseraddresstrust)

    def onOpen(self) -> None:
        """Start an empty queue of answers."""
        self._queue: defer.Deferred[None] = defer.succeed(None)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """Queue the request (text only)."""
        if isBinary:
            self.sendClose(4003, "API requests are text messages")
            return
        text = payload.decode("utf-8")  # autobahn has validated text frames as UTF-8
        self._queue.addCallback(lambda _: defer.ensureDeferred(self._answer(text)))

    async def _answer(self, text: str) -> None:
        factory: ApiWebSocketFactory = self.factory  # type: ignore[assignment]
        transport: Any = self.transport
        source = getattr(transport.getPeer(), "host", "")
        try:
            answer = await answer_line(factory.api_of, factory.settings, text.strip(), source, "ws", self.cross_site)
        except Exception:
            log.failure("answering a WebSocket API request from {source}", source=source)
            answer = b"ERROR: internal error"
        self.sendMessage(answer, isBinary=False)


class ApiWebSocketFactory(WebSocketServerFactory):
    """Builds API WebSocket protocols; knows the dispatcher and the settings."""

    protocol = ApiWebSocketProtocol

    def __init__(self, api_of: Callable[[], Any], settings: Settings) -> None:
        super().__init__()
        self.api_of = api_of
        self.settings = settings
        self.setProtocolOptions(maxMessagePayloadSize=MAX_MESSAGE, maxFramePayloadSize=MAX_MESSAGE)


def api_websocket_resource(api_of: Callable[[], Any], settings: Settings) -> WebSocketResource:
    """The twisted.web resource that upgrades /mvstwebsock to the API WebSocket."""
    return WebSocketResource(ApiWebSocketFactory(api_of, settings))


class SipWebSocketProtocol(WebSocketServerProtocol):
    """SIP over WebSocket (RFC 7118): the "sip" subprotocol, each message handed to the SIP layer."""

    def onConnect(self, request: Any) -> str | None:
        """Accept the "sip" subprotocol when offered (RFC 7118 requires it)."""
        return "sip" if "sip" in request.protocols else None

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """Hand the SIP message to the SIP layer; close if it refuses."""
        factory: SipWebSocketFactory = self.factory  # type: ignore[assignment]
        transport: Any = self.transport
        keep = factory.sip.websocket_message(payload, transport.getPeer(), lambda data: self.sendMessage(data))
        if not keep:
            self.sendClose(4000, "SIP is not served")

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        """Tell the SIP layer the connection is gone."""
        factory: SipWebSocketFactory = self.factory  # type: ignore[assignment]
        transport: Any = self.transport
        if transport is not None:
            factory.sip.websocket_closed(transport.getPeer())


class SipWebSocketFactory(WebSocketServerFactory):
    """Builds SIP WebSocket protocols bound to the SIP entry point."""

    protocol = SipWebSocketProtocol

    def __init__(self, sip: Any) -> None:
        super().__init__()
        self.sip = sip
        self.setProtocolOptions(maxMessagePayloadSize=MAX_MESSAGE, maxFramePayloadSize=MAX_MESSAGE)


def sip_websocket_resource(sip: Any) -> WebSocketResource:
    """The twisted.web resource that upgrades /mfstwebsock to SIP over WebSocket."""
    return WebSocketResource(SipWebSocketFactory(sip))
