"""The shared service port: decide the protocol from the first bytes, then hand over.

L{DemuxProtocol} buffers what a new connection sends until the bytes are
conclusive -- never deciding on a partial read -- and then builds the chosen
protocol, gives it the real transport and replays everything received:

  - C{0x16 0x03 ..}: a TLS ClientHello (handed to the TLS factory, if any);
  - STUN: the magic cookie at bytes 4..8 (binding requests answered);
  - a first line ending in C{HTTP/1.x}: HTTP (the twisted.web site);
  - a first line ending in C{SIP/2.0}, or a status line starting with it:
    SIP (handed to the SIP layer's entry point);
  - a first line starting with C{/mvapireq} or C{mvapireq}: raw API lines;
  - anything else: closed, and logged with its source.

At most L{FIRST_BYTES_CAP} bytes are buffered and a connection that has not
decided within L{FIRST_BYTES_TIMEOUT} seconds is closed.

L{ApiLineProtocol} answers one line per request line, in order (requests
may be pipelined).  L{ApiDatagramProtocol} does the same for UDP: an API
request datagram gets one answer datagram; STUN is answered; SIP goes to
the SIP layer.  Over lines and datagrams a text answer is its one
C{OK: ...}/C{ERROR: ...} line; records come with format=json or xml.
"""

from __future__ import annotations

import re

from typing import Any, Callable, Protocol as TypingProtocol

from twisted.internet import defer
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.protocols.policies import TimeoutMixin

from ..api.answer import ApiAnswer, encode, error
from ..api.request import RequestError, decode
from ..config import Settings
from ..rejections import RejectionLog
from . import stun
from .limits import Backpressure

log = Logger()

FIRST_BYTES_CAP = 8192
FIRST_BYTES_TIMEOUT = 10.0
MAX_LINE = 8192
MAX_DATAGRAM = 1490

HTTP_METHODS = frozenset(b"GET POST HEAD PUT DELETE OPTIONS PATCH CONNECT TRACE".split())
#: An HTTP request line's start (decided before the whole line came: a long URL may exceed the buffer).
_HTTP_START = re.compile(rb"(?:GET|POST|HEAD|PUT|DELETE|OPTIONS|PATCH|TRACE) /")


def _printable(data: bytes) -> bool:
    return all(32 <= b < 127 or b in (9, 13) for b in data)


def classify(data: bytes) -> str | None:
    """The protocol the first bytes show, or None while they are not yet conclusive."""
    if not data:
        return None
    first = data[0]
    if first == 0x16:
        if len(data) < 3:
            return None
        return "tls" if data[1] == 0x03 and data[2] <= 0x04 else "unknown"
    if first < 0x20:
        verdict = stun.looks_like_stun(data)
        if verdict is None:
            return None
        return "stun" if verdict else "unknown"
    if data.startswith((b"/mvapireq", b"mvapireq")):
        return "line"  # no other protocol we serve starts so
    if _HTTP_START.match(data):
        return "http"  # a method then an absolute path: SIP request-URIs never start with "/"
    end = data.find(b"\n")
    if end < 0:
        # Keep waiting only while what has come could still start a line we serve.
        plausible = (data[:1].isupper() or data[:1] in (b"/", b"m")) and _printable(data)
        return None if plausible else "unknown"
    line = data[:end].rstrip(b"\r")
    if line.startswith((b"/mvapireq", b"mvapireq")):
        return "line"
    if line.startswith(b"SIP/2.0 "):
        return "sip"
    parts = line.split(b" ")
    if len(parts) == 3:
        method, _, version = parts
        if version.startswith(b"HTTP/1.") and method in HTTP_METHODS:
            return "http"
        if version == b"SIP/2.0" and method.isalpha() and method.isupper():
            return "sip"
    return "unknown"


class SipEntry(TypingProtocol):
    """What the shared ports need of the SIP layer."""

    def stream_protocol(self, address: IAddress) -> Protocol | None:
        """A protocol for a SIP connection (TCP or TLS), or None to refuse it."""

    def datagram(self, data: bytes, address: tuple[str, int], transport: Any) -> None:
        """Handle one SIP datagram; C{transport} is the UDP socket it came on (write(data, addr))."""

    def websocket_message(self, data: bytes, address: IAddress, send: Callable[[bytes], None],
                          local: IAddress | None = None, secure: bool = False) -> bool:
        """Handle one SIP message from a WebSocket (RFC 7118; C{local}: our end); False closes the WebSocket."""

    def websocket_closed(self, address: IAddress) -> None:
        """A SIP WebSocket closed."""


class NoSip:
    """The SIP entry point until the SIP layer exists: refuse and log."""

    def stream_protocol(self, address: IAddress) -> Protocol | None:
        """Refuse SIP connections."""
        log.info("SIP connection from {address} refused: SIP is not served yet", address=address)
        return None

    def datagram(self, data: bytes, address: tuple[str, int], transport: Any) -> None:
        """Drop SIP datagrams."""
        log.info("SIP datagram from {address} dropped: SIP is not served yet", address=address)

    def websocket_message(self, data: bytes, address: IAddress, send: Callable[[bytes], None],
                          local: IAddress | None = None, secure: bool = False) -> bool:
        """Refuse SIP over WebSocket."""
        log.info("SIP WebSocket from {address} closed: SIP is not served yet", address=address)
        return False

    def websocket_closed(self, address: IAddress) -> None:
        """Nothing to forget."""


def line_answer(answered: ApiAnswer, fmt: str) -> bytes:
    """An answer as one line for line and datagram transports."""
    if fmt in ("text", "cleartext", "html"):
        text = answered.message if fmt == "cleartext" and answered.ok else answered.text
        return text.replace("\r", " ").replace("\n", " ").encode("utf-8")
    body, _ = encode(answered, fmt, None)
    return body.replace(b"\r", b" ").replace(b"\n", b" ")


async def answer_line(dispatcher_of: Callable[[], Any], settings: Settings, text: str, source: str, transport: str,
                      cross_site: bool = False) -> bytes:
    """Decode one request line, dispatch it, and encode the answer as one line.

    C{cross_site}: the line came over a WebSocket a page of another site opened (no trust by address).
    """
    fmt = "text"
    try:
        request = decode(
            query=text.split("?", 1)[1] if "?" in text else text.split("mvapireq", 1)[-1],
            source=source, transport=transport, encrypt_key=settings.current.httpapiencryptkey,
            forgeable_source=transport == "udp", cross_site=cross_site,
        )
        fmt = request.answer_format
        if fmt == "jsonp":
            fmt = "json"
    except RequestError as problem:
        return line_answer(error(problem.message, problem.status), fmt)
    api = dispatcher_of()
    if api is None:
        return line_answer(error("starting, try again"), fmt)
    return line_answer(await api.dispatch(request), fmt)


class ApiLineProtocol(LineReceiver, TimeoutMixin):
    """Raw API requests, one per line; answers in request order.

    Limits: a line that has begun must end within C{requesttimeout}; a
    connection that sends nothing (and waits for no answer) for
    C{connectionidletimeout} is closed; with L{MAX_PENDING} requests in
    flight, or while the peer reads no answers, nothing more is read
    (L{Backpressure}).
    """

    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE
    transport: Any

    def __init__(self, dispatcher_of: Callable[[], Any], settings: Settings, clock: Any, rejections: RejectionLog,
                 transport_name: str = "tcp") -> None:
        self.dispatcher_of = dispatcher_of
        self.settings = settings
        self.transport_name = transport_name
        self._queue: defer.Deferred[None] = defer.succeed(None)
        self.clock = clock
        self.rejections = rejections
        self.callLater = clock.callLater  # type: ignore[method-assign]  # TimeoutMixin's timer, on the clock
        self._deadline: Any = None
        self.pressure: Backpressure | None = None

    def connectionMade(self) -> None:
        """Start the idle timer and the back-pressure."""
        self.setTimeout(self.settings.current.connectionidletimeout)
        self.pressure = Backpressure(self.transport, self.pauseProducing, self.resumeProducing)

    def dataReceived(self, data: bytes) -> None:
        """Split lines (see LineReceiver); a line left unfinished must be finished within requesttimeout."""
        if data:
            self.resetTimeout()
        super().dataReceived(data)
        if not data or self.transport.disconnecting:
            return
        if not data.endswith(b"\n") and self._deadline is None:
            self._deadline = self.clock.callLater(self.settings.current.requesttimeout, self._too_slow)

    def _too_slow(self) -> None:
        self._deadline = None
        if self.paused:
            # Not the client's slowness: we stopped reading while our answers are owed.
            self._deadline = self.clock.callLater(self.settings.current.requesttimeout, self._too_slow)
            return
        source = str(getattr(self.transport.getPeer(), "host", ""))
        self.rejections(source, "closing an API connection from {source}: a request line took over {seconds} s",
                        seconds=self.settings.current.requesttimeout)
        self.transport.write(b"ERROR: request line not finished in time\r\n")
        self.transport.loseConnection()

    def _stop_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def timeoutConnection(self) -> None:
        """Idle for connectionidletimeout: close (unless answers are still owed or on their way out)."""
        if self.pressure is not None and (self.pressure.pending or self.pressure.blocked):
            self.setTimeout(self.settings.current.connectionidletimeout)
            return
        self.transport.loseConnection()

    def lineReceived(self, line: bytes) -> None:
        """Queue the request so answers go out in order."""
        self._stop_deadline()  # the line the deadline was for is complete
        text = line.rstrip(b"\r")
        if not text.strip():
            return
        if self.pressure is not None:
            self.pressure.started()
        self.setTimeout(None)  # waiting for our own answer is not idleness
        self._queue.addCallback(lambda _: defer.ensureDeferred(self._answer(text)))

    async def _answer(self, line: bytes) -> None:
        source = getattr(self.transport.getPeer(), "host", "")
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            self.sendLine(b"ERROR: invalid UTF-8 in the request")
            return
        try:
            self.sendLine(await answer_line(self.dispatcher_of, self.settings, text, source, self.transport_name))
        except Exception:
            log.failure("answering an API line from {source}", source=source)
            self.sendLine(b"ERROR: internal error")

    def sendLine(self, line: bytes) -> None:
        """Answers end with CR LF; each answer written frees a place in the back-pressure."""
        self.transport.write(line + b"\r\n")
        if self.pressure is not None:
            self.pressure.finished()
            if not self.pressure.pending:
                self.setTimeout(self.settings.current.connectionidletimeout)

    def lineLengthExceeded(self, line: bytes) -> None:
        """An over-long line is refused and the connection closed."""
        self.rejections(str(getattr(self.transport.getPeer(), "host", "")),
                        "API line over {limit} bytes from {source}; closing", limit=MAX_LINE)
        self.transport.write(f"ERROR: request line over {MAX_LINE} bytes\r\n".encode())
        self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        """Stop the timers."""
        self._stop_deadline()
        self.setTimeout(None)


class StunStreamProtocol(Protocol):
    """STUN over a stream (RFC 5389 framing by length): binding requests answered."""

    transport: Any

    def __init__(self) -> None:
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        """Answer every complete binding request; close on anything malformed."""
        self.buffer += data
        while len(self.buffer) >= stun.HEADER:
            if not stun.looks_like_stun(self.buffer):
                self.transport.loseConnection()
                return
            size = stun.message_length(self.buffer)
            if len(self.buffer) < size:
                return
            message, self.buffer = self.buffer[:size], self.buffer[size:]
            peer = self.transport.getPeer()
            response = stun.binding_response(message, peer.host, peer.port)
            if response is not None:
                self.transport.write(response)


def _host(address: Any) -> str:
    return str(getattr(address, "host", address))


class DemuxProtocol(Protocol):
    """Decide from the first bytes (see the module doc), then pass everything through."""

    transport: Any

    def __init__(self, factory: DemuxFactory, address: IAddress) -> None:
        self.factory = factory
        self.address = address
        self.buffer = b""
        self.inner: Protocol | None = None
        self._timeout: Any = None

    def connectionMade(self) -> None:
        """Start the first-bytes timer."""
        self._timeout = self.factory.clock.callLater(self.factory.timeout, self._too_slow)

    def _too_slow(self) -> None:
        self._timeout = None
        self.factory.rejections(_host(self.address), "closing {peer}: no conclusive first bytes within {timeout}s",
                                peer=self.address, timeout=self.factory.timeout)
        self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        """Buffer until conclusive, then hand over; afterwards pass data through."""
        if self.inner is not None:
            self.inner.dataReceived(data)
            return
        self.buffer += data
        kind = classify(self.buffer[:FIRST_BYTES_CAP])
        if kind is None:
            if len(self.buffer) >= FIRST_BYTES_CAP:
                kind = "unknown"
            else:
                return
        if self._timeout is not None and self._timeout.active():
            self._timeout.cancel()
        self._timeout = None
        inner = self.factory.protocol_for(kind, self.address)
        if inner is None:
            self.factory.rejections(_host(self.address), "closing {peer}: unrecognised first bytes {head!r}",
                                    peer=self.address, head=self.buffer[:32])
            self.transport.loseConnection()
            return
        self.inner = inner
        buffered, self.buffer = self.buffer, b""
        inner.makeConnection(self.transport)
        inner.dataReceived(buffered)

    def connectionLost(self, reason: Any = None) -> None:
        """Cancel the timer; tell the chosen protocol."""
        if self._timeout is not None and self._timeout.active():
            self._timeout.cancel()
        if self.inner is not None:
            self.inner.connectionLost(reason)


class DemuxFactory(Factory):
    """Builds L{DemuxProtocol}s and the protocols they hand over to."""

    noisy = False

    def __init__(
        self,
        http: Any,
        dispatcher_of: Callable[[], Any],
        settings: Settings,
        clock: Any,
        sip: SipEntry | None = None,
        tls: Any = None,
        timeout: float = FIRST_BYTES_TIMEOUT,
    ) -> None:
        self.http = http
        self.dispatcher_of = dispatcher_of
        self.settings = settings
        self.clock = clock
        self.sip = sip or NoSip()
        self.tls = tls
        self.timeout = timeout
        #: Log lines about connections refused or closed for their input (limited).
        self.rejections = RejectionLog(clock, "rejected API and unrecognised connections")

    def buildProtocol(self, addr: IAddress) -> Protocol:  # type: ignore[override]
        """A demultiplexer for a new connection."""
        return DemuxProtocol(self, addr)

    def protocol_for(self, kind: str, address: IAddress) -> Protocol | None:
        """The protocol to hand a connection of this kind to (None closes it)."""
        if kind == "http":
            protocol: Protocol | None = self.http.buildProtocol(address)
            return protocol
        if kind == "line":
            return ApiLineProtocol(self.dispatcher_of, self.settings, self.clock, self.rejections)
        if kind == "stun":
            return StunStreamProtocol()
        if kind == "sip":
            return self.sip.stream_protocol(address)
        if kind == "tls" and self.tls is not None:
            tls: Protocol | None = self.tls.buildProtocol(address)
            return tls
        return None


class ApiDatagramProtocol(DatagramProtocol):
    """UDP on the shared port: API requests, STUN and SIP, one datagram each."""

    noisy = False
    transport: Any

    def __init__(self, dispatcher_of: Callable[[], Any], settings: Settings, sip: SipEntry | None = None,
                 clock: Any = None) -> None:
        self.dispatcher_of = dispatcher_of
        self.settings = settings
        self.sip = sip or NoSip()
        if clock is None:
            from twisted.internet import reactor as clock
        #: Log lines about datagrams dropped (limited: junk floods must not flood the log).
        self.rejections = RejectionLog(clock, "dropped datagrams")

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        """Classify and answer one datagram; anything unrecognised is dropped and logged."""
        kind = classify(data) if data else "unknown"
        if kind == "stun":
            response = stun.binding_response(data, addr[0], addr[1])
            if response is not None:
                self.transport.write(response, addr)
            return
        if kind == "sip":
            self.sip.datagram(data, addr, self.transport)
            return
        if data[:1] == b"/" or data[:8] == b"mvapireq":
            if len(data) > MAX_DATAGRAM:
                self.transport.write(f"ERROR: datagram over {MAX_DATAGRAM} bytes".encode(), addr)
                self.rejections(addr[0], "refused an API datagram of {size} bytes from {source}", size=len(data))
                return
            defer.ensureDeferred(self._answer(data, addr))
            return
        self.rejections(addr[0], "dropped an unrecognised datagram of {size} bytes from {source}", size=len(data))

    async def _answer(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            text = data.decode("utf-8").strip()
        except UnicodeDecodeError:
            self.transport.write(b"ERROR: invalid UTF-8 in the request", addr)
            return
        try:
            answer = await answer_line(self.dispatcher_of, self.settings, text, addr[0], "udp")
        except Exception:
            log.failure("answering an API datagram from {source}", source=addr[0])
            answer = b"ERROR: internal error"
        if len(answer) > MAX_DATAGRAM:
            # Never send more than a datagram can carry (nor amplify a small request).
            answer = b"ERROR: answer too large for UDP; use TCP or HTTP"
        self.transport.write(answer, addr)
