"""SIP over UDP, TCP, TLS and WebSocket: framing, and the shared ports' entry point.

Streams are framed by Content-Length (RFC 3261 18.3), with caps on header
and body size; a stream whose framing is broken (no or negative or
repeated Content-Length, oversized headers) gets a 400 when it can be
addressed and is closed, since nothing after it can be trusted to start a
message.  CRLF keep-alives (RFC 5626 3.5.1) are answered with a CRLF.
Datagrams and WebSocket messages carry one message each (RFC 7118).
"""

from __future__ import annotations

import errno
import time
from typing import Any, Callable

from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.logger import Logger

from .core import SipCore
from .message import MAX_HEADERS, ParseError, SipMessage, content_length, parse_head
from .transaction import Source

log = Logger()


def _host_port(address: Any) -> tuple[str, int]:
    return getattr(address, "host", "?"), int(getattr(address, "port", 0) or 0)


def _local(transport: Any) -> str:
    try:
        host = transport.getHost()
    except Exception:
        return ""
    name = f"[{host.host}]" if ":" in host.host else host.host
    return f"{name}:{host.port}"


class SipStreamProtocol(Protocol):
    """One SIP connection (TCP, or TLS once decrypted)."""

    transport: Any

    def __init__(self, core: SipCore, clock: Any, transport_name: str = "tcp") -> None:
        self.core = core
        self.clock = clock
        self.transport_name = transport_name
        self.buffer = bytearray()
        #: Where the search for the end of the headers resumes.
        self.scan_from = 0
        #: A message whose headers are read, waiting for its body: (message, length, refusal).
        self.pending: tuple[SipMessage, int, ParseError | None] | None = None
        self.source: Source | None = None
        self.idle: Any = None
        self.deadline: Any = None

    def connectionMade(self) -> None:
        """Remember the connection and start its idle timer."""
        if self.transport_name == "tcp" and _is_tls(self.transport):
            self.transport_name = "tls"
        host, port = _host_port(self.transport.getPeer())
        self.source = Source(self.transport_name, host, port, self.transport.write, _local(self.transport))
        self.core.connections[(self.transport_name, host, port)] = self
        self._touch()

    def _touch(self) -> None:
        timeout = self.core.settings.current.sipidletimeout
        if self.idle is not None and self.idle.active():
            self.idle.reset(timeout)
        else:
            self.idle = self.clock.callLater(timeout, self._idle)

    def _idle(self) -> None:
        self.core.rejections(self.source.host if self.source else "?", "SIP: closing idle connection from {address}",
                             address=self.source.address if self.source else "?")
        self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        """Frame and hand over every complete message; one left unfinished must be finished within
        C{requesttimeout} (a message sent a byte a minute does not hold the connection for ever)."""
        self._touch()
        self._frame(data)
        if self.buffer.strip(b"\r\n") and not self.transport.disconnecting:  # (a lone CRLF is a keep-alive)
            if self.deadline is None:
                self.deadline = self.clock.callLater(self.core.settings.current.requesttimeout, self._too_slow)
        else:
            self._stop_deadline()

    def _too_slow(self) -> None:
        self.deadline = None
        source = self.source.host if self.source else "?"
        self.core.rejections(source, "SIP: closing {source}: a message took over {seconds} s",
                             seconds=self.core.settings.current.requesttimeout)
        self.transport.loseConnection()

    def _stop_deadline(self) -> None:
        if self.deadline is not None and self.deadline.active():
            self.deadline.cancel()
        self.deadline = None

    def _frame(self, data: bytes) -> None:
        """Frame and hand over every complete message.

        Work is linear in the bytes received: the end of the headers is
        searched for only in what is new, headers are parsed once, and a
        body is then simply waited for.
        """
        buffer = self.buffer
        buffer.extend(data)
        source = self.source
        assert source is not None
        while buffer:
            if self.pending is None:
                if buffer[0] in b"\r\n":
                    if bytes(buffer) in (b"\r", b"\r\n", b"\r\n\r"):
                        return  # perhaps a keep-alive split across segments: wait for the rest
                    blank = len(buffer) - len(buffer.lstrip(b"\r\n"))
                    if buffer[:4] == b"\r\n\r\n":
                        self.transport.write(b"\r\n")  # RFC 5626 keep-alive pong
                    del buffer[:blank]
                    self.scan_from = 0
                    continue
                start = max(0, self.scan_from - 3)
                crlf = buffer.find(b"\r\n\r\n", start)
                lf = buffer.find(b"\n\n", start)
                if crlf < 0 and lf < 0:
                    self.scan_from = len(buffer)
                    if len(buffer) > MAX_HEADERS:
                        self._broken(ParseError("headers too large", None))
                    return
                if lf >= 0 and (crlf < 0 or lf < crlf):
                    end, skip = lf, 2
                else:
                    end, skip = crlf, 4
                head = bytes(buffer[:end])
                del buffer[:end + skip]
                self.scan_from = 0
                refused: ParseError | None = None
                try:
                    message = parse_head(head)
                except ParseError as error:
                    if error.message is None:
                        self._broken(error)  # not even a start line: nothing after it can be framed
                        return
                    message, refused = error.message, error
                try:
                    length = content_length(message) or 0
                except ParseError as error:
                    self._broken(error)
                    return
                if not self.core.admit(source):
                    self.transport.loseConnection()  # banned, or flooding
                    return
                self.pending = (message, length, refused)
            message, length, refused = self.pending
            if len(buffer) < length:
                return  # wait for the body
            message.body = bytes(buffer[:length])
            del buffer[:length]
            self.pending = None
            self._stop_deadline()  # this message is complete: the deadline is for the next one
            if refused is not None:
                self.core.refuse(refused, source)  # answered; the stream stays framed
            else:
                self.core.received(message, source)

    def _broken(self, error: ParseError) -> None:
        assert self.source is not None
        self.core.refuse(error, self.source)
        self.buffer.clear()
        self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        """Forget the connection."""
        self._stop_deadline()
        if self.idle is not None and self.idle.active():
            self.idle.cancel()
        if self.source is not None:
            self.core.forget(self.source.transport, self.source.host, self.source.port)


def _is_tls(transport: Any) -> bool:
    from twisted.internet.interfaces import ISSLTransport

    return bool(ISSLTransport.providedBy(transport) or ISSLTransport.providedBy(getattr(transport, "transport", None)))


class SipStreamFactory(Factory):
    """Builds SIP stream protocols (the dedicated sipport's TCP side, and localtsport)."""

    noisy = False

    def __init__(self, core: SipCore, clock: Any, transport_name: str = "tcp") -> None:
        self.core = core
        self.clock = clock
        self.transport_name = transport_name

    def buildProtocol(self, addr: IAddress) -> Protocol:  # type: ignore[override]
        """A protocol for one connection."""
        return SipStreamProtocol(self.core, self.clock, self.transport_name)


class SipDatagramProtocol(DatagramProtocol):
    """The dedicated sipport's UDP side: every datagram is SIP (or a keep-alive)."""

    noisy = False
    transport: Any

    def __init__(self, core: SipCore) -> None:
        self.core = core
        #: The kernel's arrival time of the datagram just read (None: not available here).
        self.arrival: Callable[[], float] | None = None

    def startProtocol(self) -> None:
        """Offer this socket for requests mizud sends."""
        self.local = _local(self.transport)
        self.arrival = arrival_probe(self.transport)
        self.write = self.transport.write
        self.core.add_udp_socket(self.write, self.local)

    def stopProtocol(self) -> None:
        """The socket closed: mizud no longer sends through it."""
        self.core.remove_udp_socket(self.write)

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        """Hand one datagram to the SIP core (telling it, when it asks, how long the datagram waited)."""
        if self.core.wants_sojourn and self.arrival is not None:
            arrived = self.arrival()
            if arrived:
                self.core.queued_for(time.time() - arrived)
        entry_datagram(self.core, data, addr, self.transport, self.local)


#: ioctl SIOCGSTAMP (Linux): the kernel's arrival time of the datagram last read from a socket.
SIOCGSTAMP = 0x8906


def arrival_probe(transport: Any) -> Callable[[], float] | None:
    """A function giving the arrival time (epoch seconds) of the datagram just read from C{transport}'s
    socket, from the kernel's timestamp; None where the system has no such ioctl."""
    import fcntl
    import struct

    size = struct.calcsize("@ll")  # struct timeval
    try:
        fd = transport.getHandle().fileno()
        fcntl.ioctl(fd, SIOCGSTAMP, bytes(size))
    except OSError as error:
        if error.errno != errno.ENOENT:  # ENOENT: nothing received yet, which is fine
            return None
    except Exception:
        return None

    def arrival() -> float:
        try:
            seconds, micros = struct.unpack("@ll", fcntl.ioctl(fd, SIOCGSTAMP, bytes(size)))
        except Exception:
            return 0.0
        return float(seconds + micros / 1e6)

    return arrival


def entry_datagram(core: SipCore, data: bytes, addr: tuple[str, int], transport: Any, local: str) -> None:
    """A SIP datagram from one of our UDP sockets (C{local}: its host:port)."""
    write = transport.write
    source = Source("udp", addr[0], addr[1], lambda reply: write(reply, addr), local, write)
    core.datagram(data, source)


class SipEntry:
    """The SIP layer as the shared ports see it (L{mizud.wire.demux.SipEntry})."""

    def __init__(self, core: SipCore, clock: Any) -> None:
        self.core = core
        self.clock = clock
        #: Our shared UDP sockets (by id) and their host:port.
        self._sockets: dict[int, str] = {}

    def stream_protocol(self, address: IAddress) -> Protocol | None:
        """A SIP connection on the shared port (TCP, or TLS after the hand-off)."""
        return SipStreamProtocol(self.core, self.clock, "tcp")

    def datagram(self, data: bytes, address: tuple[str, int], transport: Any) -> None:
        """A SIP datagram on the shared UDP port."""
        local = self._sockets.get(id(transport))
        if local is None:
            local = self._sockets[id(transport)] = _local(transport)
            self.core.add_udp_socket(transport.write, local)
        entry_datagram(self.core, data, address, transport, local)

    def websocket_message(self, data: bytes, address: IAddress, send: Callable[[bytes], None],
                          local: IAddress | None = None, secure: bool = False) -> bool:
        """One SIP message from a WebSocket (RFC 7118: WS, or WSS inside TLS); the connection stays open.
        C{local} (our end of the connection) is the sent-by of the requests mizud sends back on it."""
        host, port = _host_port(address)
        here = ""
        if local is not None:
            ours, number = _host_port(local)
            here = f"[{ours}]:{number}" if ":" in ours else f"{ours}:{number}"
        self.core.datagram(data, Source("wss" if secure else "ws", host, port, send, here))
        return True

    def websocket_closed(self, address: IAddress) -> None:
        """A SIP WebSocket closed: its bindings can no longer be reached through it."""
        host, port = _host_port(address)
        self.core.forget("ws", host, port)
        self.core.forget("wss", host, port)
