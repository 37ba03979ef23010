"""The REGISTER path's lean parsing (issue 19): what is parsed once and remembered, and that remembering
never makes the parser accept what it would refuse."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from decimal import Decimal
from email.utils import formatdate

import pytest

from mizud.sip import message
from mizud.sip.digest import parse_credentials
from mizud.sip.message import ParseError, check_request, parse_datagram, parse_head, parse_uri
from mizud.sip.registrar import http_date
from mizud.store.registrations import Binding, _expiring

REGISTER = (
    "REGISTER sip:example.net SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 192.0.2.1:5070;branch=z9hG4bK1;rport\r\n"
    "Max-Forwards: 70\r\n"
    "From: <sip:alice@example.net>;tag=a1\r\n"
    "To: <sip:alice@example.net>\r\n"
    "Call-ID: c1@192.0.2.1\r\n"
    "CSeq: 1 REGISTER\r\n"
    "Contact: <sip:alice@192.0.2.1:5070>\r\n"
    "Content-Length: 0\r\n\r\n"
)


def test_a_uri_is_parsed_once_and_shared_immutable() -> None:
    """The same text gives the same parsed URI (From's and To's address of record are one object), which
    nobody can change under another message's feet."""
    register = parse_datagram(REGISTER.encode())
    check_request(register)
    assert register.address("from").uri is register.address("to").uri
    assert parse_uri("sip:alice@example.net") is register.address("to").uri
    uri = register.request_uri()
    assert uri is parse_uri("sip:example.net")
    with pytest.raises(dataclasses.FrozenInstanceError):
        uri.host = "attacker.example"  # type: ignore[misc]
    assert str(parse_uri("sip:bob@Example.NET:5080;transport=TCP;lr")) == "sip:bob@example.net:5080;transport=TCP;lr"
    assert parse_uri("sip:bob@example.net;transport=tcp").param("transport") == "tcp"


def test_a_refused_uri_is_refused_every_time_and_the_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A URI that does not parse is not remembered (it fails again), and a flood of distinct URIs never
    keeps more than the bound."""
    for _ in range(2):
        with pytest.raises(ParseError):
            parse_uri("sip:bad host@example.net")
    assert "sip:bad host@example.net" not in message._URIS
    monkeypatch.setattr(message, "_MAX_URIS", 50)
    for n in range(500):
        assert parse_uri(f"sip:u{n}@example.net").user == f"u{n}"
        assert len(message._URIS) <= 50
    assert parse_uri("sip:u499@example.net") is parse_uri("sip:u499@example.net")


def test_remembered_header_names_do_not_admit_a_line_without_a_colon(monkeypatch: pytest.MonkeyPatch) -> None:
    """Once 'Via' is a known name, a line that is only 'Via' is still malformed, and a refused name is
    refused every time; names with white space before the colon and compact forms are folded to their long
    form, as before; the memory of names is bounded in count and in the length of what it keeps."""
    parse_head(b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\r\nVia : SIP/2.0/UDP g\r\nv: SIP/2.0/UDP f")
    for _ in range(2):
        with pytest.raises(ParseError, match="malformed header line"):
            parse_head(b"OPTIONS sip:x SIP/2.0\r\nVia\r\nTo: <sip:x>")
        with pytest.raises(ParseError, match="malformed header line"):
            parse_head(b"OPTIONS sip:x SIP/2.0\r\nVi a: x")
    assert "Vi a" not in message._NAMES
    parsed = parse_head(b"OPTIONS sip:x SIP/2.0\r\nVia : SIP/2.0/UDP g\r\nv: SIP/2.0/UDP f\r\nX-Odd\t: 1")
    assert parsed.all("via") == ["SIP/2.0/UDP g", "SIP/2.0/UDP f"] and parsed.get("x-odd") == "1"
    monkeypatch.setattr(message, "_MAX_NAMES", 20)
    for n in range(200):
        assert parse_head(f"OPTIONS sip:x SIP/2.0\r\nX-N{n}: {n}".encode()).get(f"x-n{n}") == str(n)
        assert len(message._NAMES) <= 20
    long_name = "X-" + "a" * 500
    assert parse_head(f"OPTIONS sip:x SIP/2.0\r\n{long_name}: 1".encode()).get(long_name.lower()) == "1"
    assert long_name not in message._NAMES


def test_uri_fields_are_as_parsed_and_long_uris_are_not_kept() -> None:
    """Every part of a URI as the parser always gave it (parameter names lower-cased, the host too, the
    user, password and headers as sent, other schemes opaque); a very long URI is parsed but not kept."""
    def parts(text: str) -> tuple[object, ...]:
        uri = parse_uri(text)
        return (uri.scheme, uri.user, uri.password, uri.host, uri.port, uri.params, uri.headers, uri.opaque)

    assert parts("SIP:Al%41ce:Secret@Example.NET:5080;Transport=TCP;lr?Subject=hi") == (
        "sip", "Al%41ce", "Secret", "example.net", 5080, (("transport", "TCP"), ("lr", None)), "Subject=hi", "")
    assert parts("sips:[2001:DB8::1]:5061") == ("sips", "", "", "[2001:db8::1]", 5061, (), "", "")
    assert parts("tel:+36-1-234;phone-context=x") == ("tel", "", "", "", None, (), "", "+36-1-234;phone-context=x")
    for bad in ("sip:alice@example.net:0", "sip:alice@exa mple.net", "sip:alice@example.net;=x", "nocolon"):
        with pytest.raises(ParseError):
            parse_uri(bad)
    long_uri = "sip:" + "a" * 400 + "@example.net"
    assert parse_uri(long_uri).user == "a" * 400 and long_uri not in message._URIS


def test_one_pass_checks_still_refuse_what_they_refused() -> None:
    """check_request's single pass over the headers: a repeated single header, a missing or empty
    mandatory one, a CSeq of another method and a broken Max-Forwards are each refused."""
    def refused(text: str) -> str:
        with pytest.raises(ParseError) as raised:
            check_request(parse_datagram(text.encode()))
        return raised.value.reason

    assert refused(REGISTER.replace("To: <sip:alice@example.net>\r\n", "")) == "missing To"
    assert refused(REGISTER.replace("Call-ID: c1@192.0.2.1", "Call-ID: ")) == "missing Call-ID"
    assert refused(REGISTER.replace("CSeq: 1 REGISTER\r\n", "CSeq: 1 REGISTER\r\nCSeq: 2 REGISTER\r\n")) \
        == "more than one CSeq"
    assert refused(REGISTER.replace("CSeq: 1 REGISTER", "CSeq: 1 OPTIONS")) == "CSeq method does not match the request"
    assert refused(REGISTER.replace("Max-Forwards: 70", "Max-Forwards: 256")) == "malformed Max-Forwards"
    assert refused(REGISTER.replace("Via: SIP/2.0/UDP 192.0.2.1:5070;branch=z9hG4bK1;rport\r\n", "")) == "missing Via"
    # Two faults: the missing header is told first, as it always was; an empty first To is a missing To.
    no_via_two_froms = REGISTER.replace("Via: SIP/2.0/UDP 192.0.2.1:5070;branch=z9hG4bK1;rport\r\n", "") \
        .replace("From: <sip:alice@example.net>;tag=a1\r\n", "From: <sip:alice@example.net>;tag=a1\r\nFrom: <sip:b@x>\r\n")
    assert refused(no_via_two_froms) == "missing Via"
    assert refused(REGISTER.replace("To: <sip:alice@example.net>", "To: \r\nTo: <sip:alice@example.net>")) == "missing To"
    two_vias = REGISTER.replace("Via: SIP", "Via: SIP/2.0/UDP 192.0.2.9;branch=z9hG4bK9\r\nVia: SIP")
    check_request(parse_datagram(two_vias.encode()))  # Via may repeat


def test_quoted_digest_values_are_unescaped_only_when_escaped() -> None:
    """A quoted-pair in a digest parameter still stands for its character; plain values come as sent."""
    params = parse_credentials('Digest username="al\\"ice", realm="r", nonce="n\\\\1", uri="sip:x", response="0"')
    assert params is not None
    assert params["username"] == 'al"ice' and params["nonce"] == "n\\1" and params["realm"] == "r"


def test_a_refresh_keeps_every_field_of_its_binding() -> None:
    """_expiring changes the expiry only: the same as dataclasses.replace, for every field Binding has."""
    binding = Binding(7, "alice", "sip:alice@192.0.2.1", "192.0.2.1:5070", "udp", "phone/1", Decimal("0.5"),
                      datetime(2026, 1, 1, 12), datetime(2026, 1, 1), "example.net")
    later = datetime(2026, 1, 1, 13)
    assert _expiring(binding, later) == dataclasses.replace(binding, expires=later)
    assert [f.name for f in dataclasses.fields(Binding)] == [
        "userid", "username", "contact", "address", "transport", "useragent", "q", "expires", "created", "domain"]


def test_the_date_header_is_made_once_a_second() -> None:
    """http_date gives RFC 1123 GMT text, the same for every moment of one second."""
    assert http_date(0.0) == "Thu, 01 Jan 1970 00:00:00 GMT"
    assert http_date(1_700_000_000.9) == http_date(1_700_000_000.1) == "Tue, 14 Nov 2023 22:13:20 GMT"
    assert http_date(1_700_000_001.0) == "Tue, 14 Nov 2023 22:13:21 GMT"
    assert http_date(1_700_000_000.9999996) == formatdate(1_700_000_000.9999996, usegmt=True)
    assert http_date(-0.5) == formatdate(-0.5, usegmt=True)
