"""SIP on every transport through real sockets: the shared port (TCP, UDP, WebSocket), TLS on
localtsport; requests mizud sends go back over the connection a phone registered on; hostile
input (oversized headers, absurd Content-Length, a flood) disturbs nobody else."""

from __future__ import annotations

import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import pytest_twisted
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol, connectWS
from twisted.internet import defer
from twisted.internet import reactor as global_reactor
from twisted.internet.threads import deferToThread
from twisted.logger import formatEvent, globalLogPublisher

from mizud.sip.message import SipMessage, parse_datagram, parse_head
from mizud.sip.transport import SipEntry, SipStreamFactory
from mizud.wire.demux import ApiDatagramProtocol, DemuxFactory
from mizud.app import make_site
from mizud.wire.tls import TlsHandOff, TlsPortFactory, TlsProvider, generate_self_signed
from sipkit import Phone, Rig, settle
from test_api_dispatch import make_harness

USER = "authkey=apikey123&authid=alice&authpwd=alicepw"


@dataclass
class Ports:
    """The listening ports of one rig."""

    rig: Rig
    tcp: int
    udp: int
    tls: int


@pytest_twisted.async_yield_fixture
async def ports(tmp_path: Path) -> AsyncIterator[Ports]:
    """A SIP rig behind a real shared port (TCP, UDP) and a TLS SIP port, on loopback."""
    h = await make_harness(tmp_path, "sipratelimitip=20")
    rig = Rig(h)
    rig.core.clock = global_reactor  # real timers for connections and transactions
    rig.core.transactions.clock = global_reactor
    rig.core.clients.clock = global_reactor
    entry = SipEntry(rig.core, global_reactor)
    settings = h.api.settings
    site = make_site(settings, lambda: h.api, sip=entry, reactor=global_reactor)
    pem = str(tmp_path / "tls.pem")
    generate_self_signed(pem)
    tls = TlsProvider(pem, pem)
    tls.options()
    # TLS on the shared port is demultiplexed again after the handshake, SIP included.
    hand_off = TlsHandOff(tls, DemuxFactory(site, lambda: h.api, settings, global_reactor, sip=entry))
    listening = [
        global_reactor.listenTCP(0, DemuxFactory(site, lambda: h.api, settings, global_reactor, sip=entry,
                                                 tls=hand_off), interface="127.0.0.1"),
        global_reactor.listenUDP(0, ApiDatagramProtocol(lambda: h.api, settings, entry), interface="127.0.0.1"),
    ]
    listening.append(global_reactor.listenTCP(
        0, TlsPortFactory(TlsHandOff(tls, SipStreamFactory(rig.core, global_reactor, "tls"))), interface="127.0.0.1"))
    yield Ports(rig, *(p.getHost().port for p in listening))
    for port in listening:
        await port.stopListening()
    await h.db.close()


def stream_register(connect: Callable[[], socket.socket], phone: Phone, wait_for_message: bool = False) -> list[bytes]:
    """REGISTER over a stream (answering the challenge); optionally wait for a MESSAGE, answer it 200."""
    with connect() as conn:
        conn.settimeout(10)
        seen = []
        conn.sendall(phone.register())
        challenge = parse_datagram(read_message(conn))
        conn.sendall(phone.register(phone.answer(challenge, "REGISTER")))
        seen.append(read_message(conn))
        if wait_for_message:
            incoming = read_message(conn)
            seen.append(incoming)
            request = parse_datagram(incoming)
            from mizud.sip.responses import response_to

            conn.sendall(response_to(request, 200).serialize())
        return seen


def read_message(conn: socket.socket) -> bytes:
    """One SIP message from a stream (headers, then Content-Length bytes)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(parse_head(head).get("content-length") or 0)
    while len(body) < length:
        body += conn.recv(4096)
    return head + b"\r\n\r\n" + body[:length]


async def contacts(rig: Rig) -> list[tuple[str, str]]:
    """(username, transport) of every binding."""
    rows = (await rig.h.db.run_query("x", "SELECT username, transport FROM tb_registrations ORDER BY id")).rows
    return [(r[0], r[1]) for r in rows]


@pytest_twisted.ensureDeferred
async def test_register_over_shared_tcp_and_udp(ports: Ports) -> None:
    """REGISTER with digest over the shared port's TCP and UDP sides."""
    phone = Phone("alice", "alicepw", transport="TCP", host="127.0.0.1")
    tcp = await deferToThread(stream_register, lambda: socket.create_connection(("127.0.0.1", ports.tcp)), phone)
    assert parse_datagram(tcp[0]).status == 200

    def udp() -> int:
        phone = Phone("root", "rootpw", host="127.0.0.1")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(5)
            s.sendto(phone.register(), ("127.0.0.1", ports.udp))
            challenge = parse_datagram(s.recv(65535))
            s.sendto(phone.register(phone.answer(challenge, "REGISTER")), ("127.0.0.1", ports.udp))
            return parse_datagram(s.recv(65535)).status

    assert await deferToThread(udp) == 200
    assert await contacts(ports.rig) == [("alice", "tcp"), ("root", "udp")]


def tls_connect(port: int) -> Callable[[], socket.socket]:
    """A TLS client connection factory (the test certificate is self-signed)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return lambda: context.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="localhost")


@pytest_twisted.ensureDeferred
async def test_tls_on_the_shared_port_carries_sip(ports: Ports) -> None:
    """A TLS ClientHello on the shared port, then SIP inside: the REGISTER is served as transport tls."""
    phone = Phone("root", "rootpw", transport="TLS", host="127.0.0.1")
    seen = await deferToThread(stream_register, tls_connect(ports.tcp), phone)
    assert parse_datagram(seen[0]).status == 200
    assert await contacts(ports.rig) == [("root", "tls")]


@pytest_twisted.ensureDeferred
async def test_tls_registration_receives_messages_on_its_connection(ports: Ports) -> None:
    """A phone registered over TLS (localtsport) gets sendim's MESSAGE over that same TLS connection."""
    connect = tls_connect(ports.tls)

    phone = Phone("alice", "alicepw", transport="TLS", host="127.0.0.1")
    done = deferToThread(stream_register, connect, phone, True)
    for _ in range(200):
        if await contacts(ports.rig):
            break
        await settle()
    assert await contacts(ports.rig) == [("alice", "tls")]
    answer = await ports.rig.h.call(f"apientry=sendim&bnum=alice&txt=over%20tls&{USER}")
    assert answer.text == "OK: message for 1 users: 1 sent to registered devices, 0 stored until online"
    seen = await done
    assert parse_datagram(seen[0]).status == 200 and parse_datagram(seen[1]).body == b"over tls"
    for _ in range(100):
        rows = (await ports.rig.h.db.run_query("x", "SELECT delivered FROM tb_messages")).rows
        if rows and rows[0][0] is not None:
            break
        await settle()
    assert rows[0][0] is not None


class SipWsClient(WebSocketClientProtocol):
    """Registers over SIP/WebSocket, then answers one MESSAGE."""

    def onOpen(self) -> None:
        factory: Any = self.factory
        self.sendMessage(factory.phone.register())

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        factory: Any = self.factory
        message = parse_datagram(payload)
        factory.seen.append(message)
        if message.status == 401:
            self.sendMessage(factory.phone.register(factory.phone.answer(message, "REGISTER")))
        elif message.status == 200:
            factory.registered.callback(None)
        elif message.method == "MESSAGE":
            from mizud.sip.responses import response_to

            self.sendMessage(response_to(message, 200).serialize())
            factory.got.callback(message)

    def onClose(self, wasClean: bool, code: int, reason: str) -> None:
        pass


@pytest_twisted.ensureDeferred
async def test_websocket_registration_receives_messages(ports: Ports) -> None:
    """SIP over WebSocket (/mfstwebsock, subprotocol sip): REGISTER, then a MESSAGE comes down the socket."""
    factory = WebSocketClientFactory(f"ws://127.0.0.1:{ports.tcp}/mfstwebsock", protocols=["sip"])
    factory.protocol = SipWsClient
    factory.phone = Phone("alice", "alicepw", transport="WS", host="df7jal23ls0d.invalid")  # type: ignore[attr-defined]
    factory.seen = []  # type: ignore[attr-defined]
    factory.registered = defer.Deferred()  # type: ignore[attr-defined]
    factory.got = defer.Deferred()  # type: ignore[attr-defined]
    connector = connectWS(factory)
    await factory.registered  # type: ignore[attr-defined]
    assert await contacts(ports.rig) == [("alice", "ws")]
    await ports.rig.h.call(f"apientry=sendim&bnum=alice&txt=over%20ws&{USER}")
    message: SipMessage = await factory.got  # type: ignore[attr-defined]
    assert message.body == b"over ws" and message.get("via").startswith("SIP/2.0/WS ")
    connector.disconnect()


@pytest_twisted.ensureDeferred
async def test_hostile_streams_and_floods(ports: Ports) -> None:
    """Oversized headers and an absurd Content-Length close their connection; a flood from one address is
    dropped past sipratelimitip while another address is still answered."""

    def attack() -> tuple[bytes, bytes, int, int]:
        with socket.create_connection(("127.0.0.1", ports.tcp), timeout=5) as c:
            c.sendall(b"OPTIONS sip:x SIP/2.0\r\n" + b"X-Long: " + b"a" * 20000)
            c.settimeout(5)
            big = c.recv(100)
        with socket.create_connection(("127.0.0.1", ports.tcp), timeout=5) as c:
            c.sendall(Phone("a", "b").request("OPTIONS", "sip:x@example.com").replace(
                b"Content-Length: 0", b"Content-Length: 99999999999999999999"))
            c.settimeout(5)
            absurd = c.recv(1000)
            closed = c.recv(1000)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.5)
            flood = Phone("a", "b", host="127.0.0.1")
            answered = 0
            for _ in range(200):
                s.sendto(flood.request("OPTIONS", "sip:x@example.com"), ("127.0.0.1", ports.udp))
            try:
                while True:
                    s.recv(65535)
                    answered += 1
            except socket.timeout:
                pass
        return big, absurd + closed, answered, 0

    events: list[dict[str, Any]] = []
    observer = events.append
    globalLogPublisher.addObserver(observer)
    try:
        big, absurd, answered, _ = await deferToThread(attack)
    finally:
        globalLogPublisher.removeObserver(observer)
    bad = [formatEvent(e) for e in events if "bad message" in e.get("log_format", "")]
    assert bad and all("127.0.0.1:" in line for line in bad)  # logged with the source
    assert big == b""  # closed without an answer: nothing to address it to
    assert absurd.startswith(b"SIP/2.0 413 ")
    assert 30 <= answered <= 60  # the bucket: a burst of 40 and 20 per second
    assert ports.rig.core.stats["dropped_rate"] >= 100
    # Another address is served as usual.
    other = await ports.rig.exchange(Phone("alice", "alicepw").request("OPTIONS", "sip:x@example.com"),
                                     ports.rig.source("192.0.2.200"))
    assert [m.status for m in other] == [200]


@pytest_twisted.ensureDeferred
async def test_an_https_api_answer_with_connection_close_closes_at_once(ports: Ports) -> None:
    """Over TLS on the shared port, a lean API answer to a request with Connection: close is followed by
    the end of the connection at once (the channel unregisters itself as producer before closing, without
    which TLS never shuts down), and nothing sent after it is read."""
    from test_api_dispatch import KEY

    def exchange() -> tuple[bytes, float]:
        sock = tls_connect(ports.tcp)()
        sock.settimeout(5)
        started = time.monotonic()
        sock.sendall(f"GET /mvapireq/?apientry=balance&authkey={KEY}&authid=alice&authpwd=alicepw HTTP/1.1\r\n"
                     "Host: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
                if b"\r\n\r\n" in data:
                    try:
                        sock.sendall(b"GET /mvapireq/?apientry=balance HTTP/1.1\r\nHost: x\r\n\r\n" * 10)
                    except OSError:
                        pass
        except (OSError, ssl.SSLError):
            pass
        finally:
            sock.close()
        return data, time.monotonic() - started

    data, seconds = await deferToThread(exchange)
    assert data.startswith(b"HTTP/1.1 200") and b"OK: 5.00" in data and data.count(b"HTTP/1.1") == 1, data
    assert seconds < 2, seconds
