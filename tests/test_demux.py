"""The shared port: first-bytes classification at every split point, and real clients on real sockets."""

from __future__ import annotations

import os
import socket
import struct
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
import pytest_twisted
from twisted.internet import defer, protocol
from twisted.internet import reactor as global_reactor
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.internet.utils import getProcessOutputAndValue

from mizud.wire import stun
from mizud.wire.demux import ApiDatagramProtocol, DemuxFactory, classify
from test_api_dispatch import Harness, make_harness

HTTP = b"GET /mvapireq/?apientry=apitest1 HTTP/1.1\r\nHost: x\r\n\r\n"
SIP_REQUEST = b"OPTIONS sip:mizud@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP x\r\n\r\n"
SIP_STATUS = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/TCP x\r\n\r\n"
LINE = b"/mvapireq/?apientry=apitest1\r\n"
BARE_LINE = b"mvapireq?apientry=apitest1\n"
STUN_REQUEST = struct.pack("!HHI", 1, 0, stun.MAGIC_COOKIE) + os.urandom(12)
TLS_HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 32

CASES = [(HTTP, "http"), (SIP_REQUEST, "sip"), (SIP_STATUS, "sip"), (LINE, "line"), (BARE_LINE, "line"),
         (STUN_REQUEST, "stun"), (TLS_HELLO, "tls")]


@pytest.mark.parametrize("data, kind", CASES)
def test_classify_needs_conclusive_bytes(data: bytes, kind: str) -> None:
    """Every proper prefix is undecided or already right; the whole is the kind."""
    assert classify(data) == kind
    for end in range(1, len(data)):
        assert classify(data[:end]) in (None, kind), data[:end]


@pytest.mark.parametrize("data", [b"\xff\xfe garbage", b"hello world\r\n", b"GET * FTP/1.0\r\n", b"\x00\x01\x00\x00abcd",
                                  b"\x16\x02\x00", b"get / HTTP/1.1\r\n"])
def test_classify_refuses_garbage(data: bytes) -> None:
    """Unrecognisable first bytes are refused as soon as they are conclusive."""
    assert classify(data) == "unknown"


class Recorder(protocol.Protocol):
    """A stand-in protocol that records what it receives."""

    def __init__(self) -> None:
        self.received = b""
        self.made = False

    def connectionMade(self) -> None:
        self.made = True

    def dataReceived(self, data: bytes) -> None:
        self.received += data


class FakeSip:
    """A SIP entry point that records hand-offs."""

    def __init__(self) -> None:
        self.streams: list[Recorder] = []
        self.datagrams: list[bytes] = []

    def stream_protocol(self, address: Any) -> Recorder:
        self.streams.append(Recorder())
        return self.streams[-1]

    def datagram(self, data: bytes, address: tuple[str, int], transport: Any) -> None:
        self.datagrams.append(data)
        transport.write(b"SIP/2.0 200 OK\r\n\r\n", address)


def recording_factory(clock: Clock) -> tuple[DemuxFactory, dict[str, list[Recorder]]]:
    """A demux whose every hand-off goes to a Recorder."""
    seen: dict[str, list[Recorder]] = {}
    factory = DemuxFactory(http=None, dispatcher_of=lambda: None, settings=None, clock=clock)  # type: ignore[arg-type]

    def protocol_for(kind: str, address: Any) -> Recorder | None:
        if kind == "unknown":
            return None
        seen.setdefault(kind, []).append(Recorder())
        return seen[kind][-1]

    factory.protocol_for = protocol_for  # type: ignore[method-assign]
    return factory, seen


@pytest.mark.parametrize("data, kind", CASES)
def test_every_split_point_hands_over_everything(data: bytes, kind: str) -> None:
    """Byte by byte, and in every two-piece split, the chosen protocol gets every byte once."""
    splits = [[data[i:i + 1] for i in range(len(data))]] + [[data[:i], data[i:]] for i in range(1, len(data))]
    for pieces in splits:
        clock = Clock()
        factory, seen = recording_factory(clock)
        demux = factory.buildProtocol(None)  # type: ignore[arg-type]
        transport = StringTransport()
        demux.makeConnection(transport)
        for piece in pieces:
            demux.dataReceived(piece)
        assert [r.received for r in seen[kind]] == [data]
        assert seen[kind][0].made and not transport.disconnecting


def test_slow_and_garbage_connections_are_closed() -> None:
    """No conclusive bytes within the timeout, or garbage, closes the connection."""
    clock = Clock()
    factory, _ = recording_factory(clock)
    slow = factory.buildProtocol(None)  # type: ignore[arg-type]
    transport = StringTransport()
    slow.makeConnection(transport)
    slow.dataReceived(b"REGISTER sip:")
    clock.advance(9.9)
    assert not transport.disconnecting
    clock.advance(0.2)
    assert transport.disconnecting
    garbage = factory.buildProtocol(None)  # type: ignore[arg-type]
    other = StringTransport()
    garbage.makeConnection(other)
    garbage.dataReceived(b"\xde\xad\xbe\xef")
    assert other.disconnecting
    # Only the log's summary of rejections is left pending: no connection's timer.
    pending = [c for c in clock.getDelayedCalls() if c.active()]
    assert [c.func.__name__ for c in pending] == ["_summarise"]


def test_first_bytes_cap() -> None:
    """A never-ending plausible first line (not yet conclusive) is cut off at the cap."""
    factory, _ = recording_factory(Clock())
    demux = factory.buildProtocol(None)  # type: ignore[arg-type]
    transport = StringTransport()
    demux.makeConnection(transport)
    demux.dataReceived(b"REGISTER " + b"a" * 9000)
    assert transport.disconnecting


def test_stun_binding_response_round_trip() -> None:
    """A binding response carries the client's address and port, XOR-ed (IPv4 and IPv6)."""
    for host in ("192.0.2.7", "2001:db8::7"):
        response = stun.binding_response(STUN_REQUEST, host, 40000)
        assert response is not None and response[8:20] == STUN_REQUEST[8:20]
        assert stun.parse_xor_mapped_address(response) == (host, 40000)
    assert stun.binding_response(b"\x01\x01" + STUN_REQUEST[2:], "1.1.1.1", 1) is None


# -- real sockets -------------------------------------------------------------------------------


class Shared:
    """The shared port on 127.0.0.1 (TCP and UDP) in front of a harness API."""

    def __init__(self, h: Harness, tcp: Any, udp: Any, sip: FakeSip) -> None:
        self.h = h
        self.tcp = tcp
        self.udp = udp
        self.sip = sip
        self.port = tcp.getHost().port
        self.udp_port = udp.getHost().port


@pytest_twisted.async_yield_fixture
async def shared(tmp_path: Path) -> AsyncIterator[Shared]:
    """A running shared port."""
    from mizud.app import make_site

    h = await make_harness(tmp_path)
    sip = FakeSip()
    settings = h.api.settings
    factory = DemuxFactory(make_site(settings, lambda: h.api), lambda: h.api, settings, global_reactor, sip=sip, timeout=1.0)
    tcp = global_reactor.listenTCP(0, factory, interface="127.0.0.1")
    udp = global_reactor.listenUDP(0, ApiDatagramProtocol(lambda: h.api, settings, sip), interface="127.0.0.1")
    yield Shared(h, tcp, udp, sip)
    await tcp.stopListening()
    await udp.stopListening()
    await h.db.close()


async def run(*argv: str, stdin: bytes | None = None) -> bytes:
    """Run a client program; its standard output."""
    if stdin is not None:
        from twisted.internet import utils

        out, err, code = await utils.getProcessOutputAndValue(
            "/bin/sh", ["-c", f"printf '%s' \"$0\" | {' '.join(argv)}", stdin.decode()], env={"PATH": "/usr/bin:/bin"}
        )
    else:
        out, err, code = await getProcessOutputAndValue(argv[0], list(argv[1:]), env={"PATH": "/usr/bin:/bin"})
    return out


@pytest_twisted.ensureDeferred
async def test_http_on_the_shared_port(shared: Shared) -> None:
    """curl reaches the API through the demux."""
    out = await run("/usr/bin/curl", "-s", f"http://127.0.0.1:{shared.port}/mvapireq/?apientry=apitest1")
    assert out == b"OK: API test passed"


@pytest_twisted.ensureDeferred
async def test_tcp_lines_with_nc(shared: Shared) -> None:
    """nc sends two pipelined request lines and gets two answer lines, in order."""
    lines = "/mvapireq/?apientry=apitest1\r\nmvapireq?apientry=nosuch&format=json\r\n"
    out = await run("nc", "-w", "1", "127.0.0.1", str(shared.port), stdin=lines.encode())
    assert out.split(b"\r\n")[:2] == [b"OK: API test passed",
                                      b'{"code":499,"status":"ERROR","message":"unknown function: nosuch"}']


@pytest_twisted.ensureDeferred
async def test_udp_datagrams_with_nc(shared: Shared) -> None:
    """nc -u sends a request datagram and gets one answer datagram."""
    out = await run("nc", "-u", "-w", "1", "127.0.0.1", str(shared.udp_port), stdin=b"/mvapireq/?apientry=apitest1")
    assert out == b"OK: API test passed"


@pytest_twisted.ensureDeferred
async def test_stun_over_udp_and_tcp(shared: Shared) -> None:
    """Binding requests over UDP and TCP get the client's address back."""
    received: defer.Deferred[bytes] = defer.Deferred()

    class Client(protocol.DatagramProtocol):
        def datagramReceived(self, data: bytes, addr: Any) -> None:
            if not received.called:
                received.callback(data)

    client = global_reactor.listenUDP(0, Client(), interface="127.0.0.1")
    client.write(STUN_REQUEST, ("127.0.0.1", shared.udp_port))
    answer = await received
    assert stun.parse_xor_mapped_address(answer) == ("127.0.0.1", client.getHost().port)
    await client.stopListening()
    tcp_answer = await deferToThreadSocket(shared.port, STUN_REQUEST)
    assert stun.parse_xor_mapped_address(tcp_answer)[0] == "127.0.0.1"  # type: ignore[index]


async def deferToThreadSocket(port: int, data: bytes) -> bytes:
    """Send bytes over a blocking socket in a thread and read one answer."""
    from twisted.internet.threads import deferToThread

    def exchange() -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(data)
            return conn.recv(4096)

    return await deferToThread(exchange)


@pytest_twisted.ensureDeferred
async def test_sip_is_handed_over_with_every_byte(shared: Shared) -> None:
    """A SIP request over TCP reaches the SIP entry point with all its bytes; SIP datagrams too."""
    from twisted.internet.threads import deferToThread

    def send() -> None:
        with socket.create_connection(("127.0.0.1", shared.port), timeout=5) as conn:
            conn.sendall(SIP_REQUEST[:5])
            conn.sendall(SIP_REQUEST[5:])

    await deferToThread(send)
    for _ in range(100):
        if shared.sip.streams and shared.sip.streams[0].received == SIP_REQUEST:
            break
        await deferLater(global_reactor, 0.02, lambda: None)
    assert shared.sip.streams[0].received == SIP_REQUEST
    out = await run("nc", "-u", "-w", "1", "127.0.0.1", str(shared.udp_port), stdin=SIP_REQUEST)
    assert out == b"SIP/2.0 200 OK\r\n\r\n" and shared.sip.datagrams == [SIP_REQUEST]


@pytest_twisted.ensureDeferred
async def test_idle_connections_do_not_block_others(shared: Shared) -> None:
    """1,000 idle connections that never speak: others are served; the idle ones are closed at the timeout."""
    from twisted.internet.threads import deferToThread

    def open_idle() -> list[socket.socket]:
        return [socket.create_connection(("127.0.0.1", shared.port), timeout=5) for _ in range(1000)]

    idle = await deferToThread(open_idle)
    try:
        out = await run("/usr/bin/curl", "-s", f"http://127.0.0.1:{shared.port}/mvapireq/?apientry=apitest1")
        assert out == b"OK: API test passed"
        await deferLater(global_reactor, 1.5, lambda: None)

        def closed() -> int:
            count = 0
            for conn in idle:
                conn.settimeout(2)
                try:
                    count += conn.recv(1) == b""
                except OSError:
                    count += 1
            return count

        assert await deferToThread(closed) == 1000
    finally:
        for conn in idle:
            conn.close()


@pytest_twisted.ensureDeferred
async def test_bad_input_leaves_the_port_serving(shared: Shared) -> None:
    """Garbage, an over-long line and an oversized datagram are refused; the port keeps answering."""
    garbage = await deferToThreadSocket(shared.port, b"\xff\xfe\xfd\r\n")
    assert garbage == b""
    long_line = await deferToThreadSocket(shared.port, b"/mvapireq/?a=" + b"x" * 9000 + b"\r\n")
    assert long_line.startswith(b"ERROR: request line over 8192 bytes")
    big = await run("nc", "-u", "-w", "1", "127.0.0.1", str(shared.udp_port), stdin=b"/mvapireq/?a=" + b"y" * 1500)
    assert big == b"ERROR: datagram over 1490 bytes"
    out = await run("nc", "-w", "1", "127.0.0.1", str(shared.port), stdin=LINE)
    assert out == b"OK: API test passed\r\n"


def test_http_decided_before_a_long_request_line_ends() -> None:
    """A method and an absolute path are HTTP at once (SIP request-URIs never start with "/"), so a very
    long URL reaches the HTTP layer, which answers 414, instead of overflowing the demux buffer."""
    from mizud.wire.demux import classify

    assert classify(b"GET /mvapireq/addserver?u_name=" + b"a" * 100_000) == "http"
    assert classify(b"OPTIONS sip:x@y SIP/2.0\r\n") == "sip"
    assert classify(b"OPTIONS /x HTTP/1.1\r\n") == "http"
