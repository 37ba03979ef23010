"""Connection limits: request and idle timeouts, the per-address cap, back-pressure, limited rejection logs.

Each reproduces an attack from the security review: a raw TCP API
connection that sent half a request was never timed out; 1,100 idle
connections stopped the service; 60 MB of pipelined requests sent without
reading an answer grew the daemon by 116 MB; 845,000 junk datagrams wrote
136,637 log lines.  Unit tests drive the protocols on Twisted's fakes; the
rest runs against the real daemon.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher

from mizud.config import Settings
from mizud.rejections import RejectionLog
from mizud.wire.demux import ApiDatagramProtocol, ApiLineProtocol
from mizud.wire.limits import MAX_PENDING, BudgetedFactory, ConnectionBudget
from test_twistd import free_port, start_daemon


class Pending:
    """A dispatcher whose answers wait until released."""

    def __init__(self) -> None:
        from twisted.internet import defer

        self.waiting: list[defer.Deferred[Any]] = []
        self.defer = defer

    async def dispatch(self, request: Any) -> Any:
        """Wait for L{release}."""
        from mizud.api.answer import ok

        waiter: Any = self.defer.Deferred()
        self.waiting.append(waiter)
        await waiter
        return ok("done")

    def release(self) -> None:
        """Answer everything waiting."""
        waiting, self.waiting = self.waiting, []
        for waiter in waiting:
            waiter.callback(None)


def line_protocol(*sets: str, api: Any = None) -> tuple[ApiLineProtocol, StringTransport, Clock]:
    """An API line protocol on a fake transport and clock."""
    clock = Clock()
    settings = Settings(None, sets)
    protocol = ApiLineProtocol(lambda: api, settings, clock, RejectionLog(clock, "test"))
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport, clock


def test_a_request_line_must_be_finished_in_time() -> None:
    """'/mvapireq' and then a byte now and then (slowloris) is closed after requesttimeout, however often
    bytes come; a complete line clears the deadline."""
    protocol, transport, clock = line_protocol("requesttimeout=30s")
    protocol.dataReceived(b"/mvapireq")
    for _ in range(29):
        clock.advance(1)
        protocol.dataReceived(b"?")
    assert not transport.disconnecting
    clock.advance(1.1)
    assert transport.disconnecting and transport.value() == b"ERROR: request line not finished in time\r\n"


def test_idle_connections_are_closed_but_not_while_an_answer_is_awaited() -> None:
    """Nothing sent for connectionidletimeout closes the connection; waiting for our own answer is not idle."""
    protocol, transport, clock = line_protocol("connectionidletimeout=2m")
    clock.advance(119)
    assert not transport.disconnecting
    clock.advance(2)
    assert transport.disconnecting
    pending = Pending()
    protocol, transport, clock = line_protocol("connectionidletimeout=2m", api=pending)
    protocol.dataReceived(b"/mvapireq/?apientry=apitest1\r\n")
    clock.advance(600)
    assert not transport.disconnecting
    pending.release()
    assert transport.value() == b"OK: done\r\n"
    clock.advance(121)
    assert transport.disconnecting


def test_reading_stops_while_answers_are_owed_and_resumes() -> None:
    """With MAX_PENDING requests in flight the protocol stops reading (and holds buffered lines), then goes
    on once answers are written: nothing is lost, the order is kept."""
    pending = Pending()
    protocol, transport, clock = line_protocol(api=pending)
    lines = b"".join(b"/mvapireq/?apientry=apitest1&n=%d\r\n" % n for n in range(MAX_PENDING * 3))
    protocol.dataReceived(lines)
    assert transport.producerState == "paused" and len(pending.waiting) == 1  # answered one at a time, in order
    answered = 0
    while answered < MAX_PENDING * 3:
        assert len(pending.waiting) == 1
        pending.release()
        answered += 1
    assert transport.value().count(b"OK: done\r\n") == MAX_PENDING * 3
    assert transport.producerState == "producing"


def test_a_peer_that_reads_nothing_is_not_read_either() -> None:
    """When the transport's write buffer is full (the peer reads no answers) reading stops until it drains."""
    protocol, transport, clock = line_protocol()
    assert protocol.pressure is not None and transport.producer is protocol.pressure
    transport.producer.pauseProducing()  # what a full write buffer makes the transport do
    assert transport.producerState == "paused" and protocol.paused
    transport.producer.resumeProducing()
    assert transport.producerState == "producing" and not protocol.paused


def test_the_connection_cap_is_per_address_over_every_listener() -> None:
    """maxconnectionsperip connections from one address, then refusals (one log line); other addresses are
    unaffected; a closed connection frees its place."""
    from twisted.internet.address import IPv4Address
    from twisted.internet.protocol import Factory, Protocol

    clock = Clock()
    budget = ConnectionBudget(Settings(None, ("maxconnectionsperip=3",)), clock)
    first, second = BudgetedFactory(Factory.forProtocol(Protocol), budget), BudgetedFactory(
        Factory.forProtocol(Protocol), budget)
    here = IPv4Address("TCP", "10.0.0.1", 1000)
    built = [first.buildProtocol(here), second.buildProtocol(here), first.buildProtocol(here)]
    assert all(p is not None for p in built)
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        assert second.buildProtocol(here) is None and first.buildProtocol(here) is None
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert len([e for e in events if "maxconnectionsperip" in e.get("log_format", "")]) == 1
    assert first.buildProtocol(IPv4Address("TCP", "10.0.0.2", 1000)) is not None
    built[0].makeConnection(StringTransport())
    built[0].connectionLost(None)
    assert first.buildProtocol(here) is not None


def test_junk_floods_write_a_bounded_number_of_log_lines() -> None:
    """100,000 junk datagrams from 50,000 (forged) sources: at most 50 lines, then one summary a minute."""
    clock = Clock()
    protocol = ApiDatagramProtocol(lambda: None, Settings(None, ()), clock=clock)
    protocol.transport = StringTransport()
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        for number in range(100_000):
            protocol.datagramReceived(b"\x7fjunk", (f"10.{number % 250}.{(number // 250) % 200}.1", 4000))
        lines = len(events)
        clock.advance(60)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert lines <= 50
    summaries = [e for e in events if "suppressed" in e.get("log_format", "")]
    assert len(summaries) == 1 and summaries[0]["count"] == 100_000 - lines


class Daemon:
    """A daemon on 127.0.0.1 with short timeouts and a small connection cap."""

    def __init__(self, folder: Path, *sets: str) -> None:
        self.port = free_port()
        self.process, self.lines = start_daemon(
            folder, "listenaddress=127.0.0.1", f"mainaport={self.port}", "mainaportudp=0", "httpserver=0",
            "sslportmain=0", "sipport=0", "localtsport=0", "ratelimitip=0", "ratelimitglobal=0", *sets)
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    def connect(self, source: str = "127.0.0.1") -> socket.socket:
        """A TCP connection from C{source} (a loopback address)."""
        connection = socket.create_connection(("127.0.0.1", self.port), timeout=10, source_address=(source, 0))
        return connection

    def rss(self) -> int:
        """The daemon's resident memory in bytes."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def stop(self) -> str:
        """Stop it; its output."""
        import signal

        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=30)
        time.sleep(0.1)
        return "".join(self.lines)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    """The daemon for the tests below."""
    running = Daemon(tmp_path, "maxconnectionsperip=50", "requesttimeout=2s", "connectionidletimeout=20s")
    try:
        yield running
    finally:
        output = running.stop()
        assert "Traceback" not in output, output


def closed(connection: socket.socket, within: float) -> bytes | None:
    """What the peer sent before closing, if it closed within C{within} seconds; None if still open."""
    connection.settimeout(within)
    received = b""
    try:
        while True:
            chunk = connection.recv(4096)
            if not chunk:
                return received
            received += chunk
    except (socket.timeout, TimeoutError):
        return None
    except ConnectionResetError:
        return received


def test_slowloris_on_the_real_daemon(daemon: Daemon) -> None:
    """A raw API line and an HTTP request sent a few bytes a second are cut at requesttimeout (2 s);
    many idle connections from one address stop at the cap while another address is served."""
    line = daemon.connect()
    line.sendall(b"/mvapireq/?apientry=")
    http = daemon.connect()
    http.sendall(b"GET /mvapireq/?apientry=apitest1 HTTP/1.1\r\nHost: x\r\n")
    started = time.monotonic()
    for _ in range(4):
        time.sleep(0.4)
        line.sendall(b"a")
        http.sendall(b"X")
    assert closed(line, 3) == b"ERROR: request line not finished in time\r\n"
    assert (closed(http, 3) or b"").startswith(b"HTTP/1.1 408 ")
    assert time.monotonic() - started < 5
    # The cap: 50 connections from 127.0.0.1 stay, the next ones are closed at once.
    held = [daemon.connect() for _ in range(50)]
    for connection in held:
        connection.sendall(b"/mvapireq")
    time.sleep(0.3)
    extra = [daemon.connect() for _ in range(5)]
    assert all(closed(connection, 2) == b"" for connection in extra)
    # Another address is served.
    other = daemon.connect("127.0.0.2")
    other.sendall(b"/mvapireq/?apientry=apitest1\r\n")
    assert other.recv(100) == b"OK: API test passed\r\n"
    for connection in held + extra + [other, line, http]:
        connection.close()
    time.sleep(0.2)
    assert sum("(maxconnectionsperip)" in entry for entry in daemon.lines) == 1, daemon.lines[-5:]


HELP = b"/mvapireq/?apientry=help&format=json\r\n"


def send_without_reading(connection: socket.socket, unit: bytes, seconds: float, most: int = 10**9) -> int:
    """Send C{unit} again and again (at most C{most} times) for C{seconds} without reading; then finish the
    unit cut in the middle (from a thread: the daemon reads again only once we read).  How many were sent."""
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    batch = unit * 500
    connection.setblocking(False)
    sent = 0
    rest = memoryview(batch)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and sent < most * len(unit):
        try:
            count = connection.send(rest[:most * len(unit) - sent])
        except BlockingIOError:
            time.sleep(0.01)
            continue
        sent += count
        rest = rest[count:] or memoryview(batch)
    connection.setblocking(True)
    if sent % len(unit):
        tail = bytes(rest[:len(unit) - sent % len(unit)])
        threading.Thread(target=connection.sendall, args=(tail,), daemon=True).start()
        sent += len(tail)
    return sent // len(unit)


def read_lines(connection: socket.socket, count: int) -> list[bytes]:
    """C{count} answer lines."""
    connection.settimeout(30)
    received = bytearray()
    while received.count(b"\r\n") < count:
        chunk = connection.recv(1 << 20)
        assert chunk, f"closed after {received.count(bytes([13, 10]))} of {count} answers"
        received += chunk
    return bytes(received).split(b"\r\n")[:-1]


def test_pipelined_requests_without_reading_do_not_grow_memory(daemon: Daemon) -> None:
    """Requests whose answers are 500 times their size (help in JSON), sent for 4 s without reading an
    answer: TCP pushes back and the daemon grows by a few MB at most (it used to keep every answer).
    Fewer of them, read afterwards, all arrive in order."""
    connection = daemon.connect()
    before = daemon.rss()
    lines = send_without_reading(connection, HELP, 4)
    grown = daemon.rss() - before
    assert grown < 20 * 1024 * 1024, f"grew by {grown} bytes for {lines} requests"
    connection.close()
    connection = daemon.connect()
    lines = send_without_reading(connection, HELP, 2, most=2000)
    answers = read_lines(connection, lines)
    assert len(answers) == lines == 2000 and len(set(answers)) == 1 and answers[0].startswith(b'{"code":200')
    connection.close()


def websocket(daemon: Daemon) -> socket.socket:
    """A raw client WebSocket to /mvstwebsock (the handshake done by hand)."""
    import base64
    import os

    connection = daemon.connect()
    key = base64.b64encode(os.urandom(16)).decode()
    connection.sendall(f"GET /mvstwebsock HTTP/1.1\r\nHost: 127.0.0.1:{daemon.port}\r\nUpgrade: websocket\r\n"
                       f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += connection.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return connection


def frame(text: bytes) -> bytes:
    """One masked client text frame (payloads under 64 KiB)."""
    import os

    mask = os.urandom(4)
    size = len(text)
    header = bytes([0x81, 0x80 | size]) if size < 126 else bytes([0x81, 0x80 | 126]) + size.to_bytes(2, "big")
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(text))


def test_websocket_requests_without_reading_do_not_grow_memory(daemon: Daemon) -> None:
    """API requests over a WebSocket (help in JSON, a large answer) sent for 3 s without reading an answer:
    the daemon stops reading and stays within a few MB; fewer of them, read afterwards, all arrive."""
    connection = websocket(daemon)
    before = daemon.rss()
    frames = send_without_reading(connection, frame(b"/mvapireq/?apientry=help&format=json"), 3)
    grown = daemon.rss() - before
    assert grown < 20 * 1024 * 1024, f"grew by {grown} bytes for {frames} requests"
    connection.close()
    connection = websocket(daemon)
    frames = send_without_reading(connection, frame(b"/mvapireq/?apientry=help&format=json"), 2, most=1000)
    connection.settimeout(30)
    first = b""
    while len(first) < 4:
        first += connection.recv(4 - len(first))
    assert first[:2] == b"\x81\x7e"  # a text frame with a 16-bit length
    size = 4 + int.from_bytes(first[2:4], "big")
    received = bytearray(first)
    while len(received) < frames * size:
        chunk = connection.recv(1 << 20)
        assert chunk, f"closed after {len(received) // size} of {frames} answers"
        received += chunk
    assert frames == 1000 and len(received) == frames * size and bytes(received[4:14]) == b'{"code":20'
    connection.close()


def test_the_open_files_limit_is_raised_within_the_hard_limit() -> None:
    """At start mizud raises its soft limit of open files (each connection needs one) as far as allowed."""
    import resource

    from mizud.service import WANTED_FILES, raise_file_limit

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
        raised = raise_file_limit()
        expected = WANTED_FILES if hard == resource.RLIM_INFINITY else min(WANTED_FILES, hard)
        assert raised == expected == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_busy_sip_stream_is_not_cut_by_the_request_deadline() -> None:
    """Segments cut across message boundaries, one a second for 60 s: every message completes and the
    connection stays; a message left half-sent past requesttimeout closes it."""
    from mizud.sip.transport import SipStreamProtocol

    clock = Clock()

    class Core:
        """Just what a SIP stream needs of the SIP core."""

        settings = Settings(None, ("requesttimeout=30s",))
        rejections = RejectionLog(clock, "test")

        def __init__(self) -> None:
            self.connections: dict[Any, Any] = {}
            self.got: list[Any] = []

        def admit(self, source: Any) -> bool:
            return True

        def received(self, message: Any, source: Any) -> None:
            self.got.append(message)

        def forget(self, *args: Any) -> None:
            pass

    core = Core()
    protocol = SipStreamProtocol(core, clock)  # type: ignore[arg-type]
    transport = StringTransport()
    protocol.makeConnection(transport)
    message = (b"OPTIONS sip:x@example.com SIP/2.0\r\nVia: SIP/2.0/TCP 192.0.2.1;branch=z9hG4bK1\r\n"
               b"From: <sip:a@example.com>;tag=1\r\nTo: <sip:x@example.com>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n"
               b"Content-Length: 0\r\n\r\n")
    stream = message * 70
    size = len(message) + 7  # misaligned with the messages
    for second in range(60):
        protocol.dataReceived(stream[second * size:(second + 1) * size])
        clock.advance(1)
    assert not transport.disconnecting and len(core.got) >= 55
    clock.advance(31)
    assert transport.disconnecting  # the part of a message left over was never finished
