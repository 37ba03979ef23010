"""The RFC 4475 SIP torture messages: parsed right, answered as the RFC says, never a crash.

The files in the shared test data are checked byte for byte against the
manifest's sha256 first, so a changed file cannot make a test pass.
"""

from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor as global_reactor
from twisted.internet.task import Clock
from twisted.internet.threads import blockingCallFromThread, deferToThread
from twisted.internet.testing import StringTransport

from mizud.sip.message import ParseError, check_request, check_response, parse_datagram, parse_name_addr, parse_uri, parse_via
from mizud.sip.responses import KNOWN
from mizud.sip.transport import SipDatagramProtocol, SipStreamFactory, SipStreamProtocol
from sipkit import make_rig

#: A copy of the RFC 4475 archive's messages with their manifest (sha256 of each file).
DATA = Path(__file__).resolve().parent / "data" / "rfc4475"
MANIFEST = json.loads((DATA / "manifest.json").read_text())
MESSAGES = {m["name"]: m for m in MANIFEST["messages"]}

#: The final status mizud answers each message with over UDP (None: silently dropped).
#: mizud is a registrar, a user agent server and, for calls, a back-to-back user
#: agent; REGISTERs without credentials are challenged (401) before anything is
#: stored, INVITEs as a proxy challenges them (407) before anything is dialled.  wsinv carries a
#: To tag: a request inside a dialog mizud does not have (481, RFC 3261 12.2.2).
EXPECTED = {
    "wsinv": 481, "intmeth": 501, "esc01": 407, "escnull": 401, "esc02": 501, "lwsdisp": 200,
    "longreq": 407, "dblreq": 401, "semiuri": 200, "transports": 200, "mpart01": 415,
    "unreason": None, "noreason": None,
    "badinv01": 400, "clerr": 400, "ncl": 400, "scalar02": 400, "scalarlg": None, "quotbal": 400,
    "ltgtruri": 400, "lwsruri": 400, "lwsstart": 400, "trws": 400, "escruri": 400, "baddate": 407,
    "regbadct": 400, "badaspec": 400, "baddn": 400, "badvers": 505, "mismatch01": 400, "mismatch02": 501,
    "bigcode": None,
    "badbranch": 200,
    "insuf": 400, "unkscm": 416, "novelsc": 416, "unksm2": 400, "bext01": 420, "invut": 415,
    "regaut01": 401, "multi01": 400, "mcl01": 400, "bcast": None, "zeromf": 200, "cparam01": 401,
    "cparam02": 401, "regescrt": 401, "sdp01": 406, "inv2543": 407,
}

#: Messages a stream cannot frame (no blank line after the headers, or a body
#: shorter than Content-Length): the connection waits for more (RFC 4475 3.1.2.2).
STREAM_WAITS = {"clerr", "baddn"}
#: Messages whose framing is broken on a stream: a 400 and the connection closed.
STREAM_CLOSES = {"ncl", "mcl01"}


def raw(name: str) -> bytes:
    """The bytes of one torture message."""
    return (DATA / MESSAGES[name]["file"]).read_bytes()


def test_files_match_the_manifest() -> None:
    """Every message file is byte for byte the one the manifest describes (sha256 and size)."""
    assert len(MESSAGES) == 49 and set(MESSAGES) == set(EXPECTED)
    for message in MESSAGES.values():
        data = (DATA / message["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == message["sha256"], message["name"]
        assert len(data) == message["bytes"], message["name"]


def parsed(name: str) -> Any:
    """Parse and check a message as the core does; the message or the ParseError."""
    try:
        message = parse_datagram(raw(name))
        (check_request(message, KNOWN) if message.is_request else check_response(message))
        return message
    except ParseError as error:
        return error


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_parser_verdict(name: str) -> None:
    """Valid messages parse; invalid ones fail with the status RFC 4475 asks for (None: drop)."""
    outcome = parsed(name)
    group = MESSAGES[name]["parser"]
    if group == "reject":
        assert isinstance(outcome, ParseError), name
        expected = EXPECTED[name]
        if name == "mismatch02":
            expected = 501
        assert outcome.status == expected, (name, outcome.reason)
    elif group.startswith("accept") and name not in ("insuf", "multi01"):
        assert not isinstance(outcome, ParseError), (name, getattr(outcome, "reason", ""))


def test_valid_messages_have_the_right_values() -> None:
    """Field values of the valid messages, where the torture is in the values."""
    wsinv = parsed("wsinv")
    assert wsinv.get("newfangledheader") == "newfangled value continued newfangled value"
    assert wsinv.get("unknownheaderwithunusualvalue") == ";;,,;;,;"
    assert wsinv.cseq() == (9, "INVITE") and wsinv.get("max-forwards") == "0068"
    vias = [parse_via(v) for v in wsinv.all("via")]
    assert [(v.transport, v.host) for v in vias] == [
        ("UDP", "192.0.2.2"), ("TCP", "spindle.example.com"), ("UDP", "192.168.255.111")]
    assert vias[1].branch == "z9hG4bK9ikj8"
    contact = parse_name_addr(wsinv.get("contact"))
    assert contact.param("q") == "0.33" and contact.param("newparam") == "newvalue"
    assert parse_name_addr(wsinv.get("from")).tag == "98asjd8"
    assert parse_name_addr(wsinv.get("to")).tag == "1918181833n"

    assert parsed("intmeth").method == "!interesting-Method0123456789_*+`.%indeed'~"
    assert parse_uri(parsed("intmeth").uri).user.startswith("1_unusual.URI~(to-be!sure)")
    esc01 = parsed("esc01")
    assert parse_uri(esc01.uri).user == "sips%3Auser%40example.com"
    escnull = [parse_name_addr(c).uri.user for c in parsed("escnull").all("contact")]
    assert escnull == ["%00", "%00%00"]
    assert parsed("esc02").method == "RE%47IST%45R" and len(parsed("esc02").all("contact")) == 2
    assert parse_name_addr(parsed("lwsdisp").get("from")).display == "caller"
    assert len(parsed("longreq").all("via")) == 34
    dblreq = parsed("dblreq")
    assert dblreq.method == "REGISTER" and dblreq.body == b""
    assert parse_uri(parsed("semiuri").uri).user == "user;par=u%40example.net"
    assert [parse_via(v).transport for v in parsed("transports").all("via")] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]
    mpart = parsed("mpart01")
    assert len(mpart.body) == 553 and mpart.body.count(b"\x00") == 2
    assert parsed("unreason").reason.startswith("= 2**3 * 5**2 ") and not parsed("unreason").reason.isascii()
    assert (parsed("noreason").status, parsed("noreason").reason) == (100, "")
    cparam01 = parse_name_addr(parsed("cparam01").get("contact"))
    assert cparam01.param("unknownparam") == "" and cparam01.uri.param("unknownparam") is None
    cparam02 = parse_name_addr(parsed("cparam02").get("contact"))
    assert cparam02.param("unknownparam") is None and cparam02.uri.param("unknownparam") == ""
    assert parse_name_addr(parsed("regescrt").get("contact")).uri.headers == "Route=%3Csip:sip.example.com%3E"


@pytest_twisted.ensureDeferred
async def test_every_message_is_answered_as_the_rfc_says(tmp_path: Path) -> None:
    """Each message fed to the SIP element over UDP gets the expected final answer (or none)."""
    rig = await make_rig(tmp_path)
    for name in sorted(MESSAGES):
        # Many of the messages share a branch: let each transaction end (timer J) before the next.
        rig.h.clock.advance(40)
        answers = await rig.exchange(raw(name), rig.source(port=6000 + len(rig.sent) % 1000))
        statuses = [a.status for a in answers]
        expected = EXPECTED[name]
        assert statuses == ([] if expected is None else [expected]), name
    rig.h.clock.advance(40)
    bext01 = await rig.exchange(raw("bext01"), rig.source(port=7001))
    assert bext01[0].all("unsupported") == ["nothingSupportsThis", "nothingSupportsThisEither"]
    rig.h.clock.advance(40)
    intmeth = await rig.exchange(raw("intmeth"), rig.source(port=7002))
    assert "REGISTER" in intmeth[0].all("allow")
    rig.h.clock.advance(40)
    assert (await rig.exchange(raw("sdp01"), rig.source(port=7003)))[0].get("warning").startswith("399 ")
    await rig.h.db.close()


def _stream(rig: Any, clock: Clock) -> tuple[SipStreamProtocol, StringTransport]:
    protocol = SipStreamProtocol(rig.core, clock)
    transport = StringTransport(peerAddress=_Address("192.0.2.77", 40000))
    protocol.makeConnection(transport)
    return protocol, transport


class _Address:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port


@pytest_twisted.ensureDeferred
async def test_stream_fed_one_byte_at_a_time(tmp_path: Path) -> None:
    """Over a stream, each message fed byte by byte is framed by Content-Length and answered like UDP."""
    from twisted.internet.task import deferLater

    rig = await make_rig(tmp_path)
    clock = Clock()
    for name in sorted(MESSAGES):
        rig.h.clock.advance(40)  # end the previous transaction (many messages share a branch)
        protocol, transport = _stream(rig, clock)
        data = raw(name)
        if name == "dblreq":
            data = data[: data.index(b"INVITE ")]  # the trailing INVITE is a second (broken) message on a stream
        for i in range(len(data)):
            protocol.dataReceived(data[i:i + 1])
        for _ in range(100):
            if transport.value() or name in STREAM_WAITS or EXPECTED[name] is None:
                break
            await deferLater(global_reactor, 0.005, lambda: None)
        await deferLater(global_reactor, 0.01, lambda: None)
        out = transport.value()
        if name in STREAM_WAITS:
            assert out == b"" and not transport.disconnecting, name
            clock.advance(rig.core.settings.current.sipidletimeout + 1)
            assert transport.disconnecting, name  # the idle timer closes it
            continue
        expected = EXPECTED[name]
        if expected is None:
            assert out == b"", name
        else:
            assert out.startswith(f"SIP/2.0 {expected} ".encode()), (name, out[:60])
        assert transport.disconnecting == (name in STREAM_CLOSES), name
        protocol.connectionLost(None)
    await rig.h.db.close()


@pytest_twisted.ensureDeferred
async def test_real_sockets_survive_the_torture(tmp_path: Path) -> None:
    """Over real UDP and TCP sockets (TCP written one byte per send) every message gets its answer,
    and a well-formed OPTIONS is still answered afterwards."""
    rig = await make_rig(tmp_path)
    udp = global_reactor.listenUDP(0, SipDatagramProtocol(rig.core), interface="127.0.0.1")
    tcp = global_reactor.listenTCP(0, SipStreamFactory(rig.core, global_reactor), interface="127.0.0.1")
    udp_port, tcp_port = udp.getHost().port, tcp.getHost().port

    def torture() -> dict[str, tuple[bytes, bytes]]:
        seen: dict[str, tuple[bytes, bytes]] = {}
        for name in sorted(MESSAGES):
            data = raw(name)
            blockingCallFromThread(global_reactor, rig.h.clock.advance, 40)  # many share a branch
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(0.3)
                s.sendto(data, ("127.0.0.1", udp_port))
                try:
                    udp_answer = s.recv(65535)
                except socket.timeout:
                    udp_answer = b""
            if name == "dblreq":
                data = data[: data.index(b"INVITE ")]
            blockingCallFromThread(global_reactor, rig.h.clock.advance, 40)
            with socket.create_connection(("127.0.0.1", tcp_port), timeout=5) as c:
                c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                try:
                    for i in range(len(data)):
                        c.send(data[i:i + 1])
                except (BrokenPipeError, ConnectionResetError):
                    pass  # closed by the server: broken framing (ncl, mcl01)
                c.settimeout(0.3)
                try:
                    tcp_answer = c.recv(65535)
                except (socket.timeout, ConnectionResetError):
                    tcp_answer = b""
            seen[name] = (udp_answer, tcp_answer)
        return seen

    try:
        seen = await deferToThread(torture)
        for name, (udp_answer, tcp_answer) in seen.items():
            expected = EXPECTED[name]
            want = b"" if expected is None else f"SIP/2.0 {expected} ".encode()
            assert udp_answer.startswith(want) and (bool(udp_answer) == bool(want)), (name, udp_answer[:40])
            if name in STREAM_WAITS:
                assert tcp_answer == b"", name
            else:
                assert tcp_answer.startswith(want) and (bool(tcp_answer) == bool(want)), (name, tcp_answer[:40])
        rig.core.limiter.rate = 0  # the torture above was one address sending fast; the next must get through
        from sipkit import Phone

        options = Phone("alice", "alicepw").request("OPTIONS", "sip:alice@127.0.0.1")

        def ping() -> bytes:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(2)
                s.sendto(options, ("127.0.0.1", udp_port))
                return s.recv(65535)

        assert (await deferToThread(ping)).startswith(b"SIP/2.0 200 OK")
    finally:
        await udp.stopListening()
        await tcp.stopListening()
        await rig.h.db.close()
