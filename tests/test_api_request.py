"""Request decoding: every format, aliases, encryption, limits, hostile input."""

from __future__ import annotations

import base64

import pytest

from mizud.api.request import (
    MAX_PARAMS,
    RequestError,
    decode,
    parse_body,
    xor_decrypt,
    xor_encrypt,
)


def req(**kwargs: object):  # type: ignore[no-untyped-def]
    """Decode with a fixed source address."""
    return decode(source="10.0.0.1", **kwargs)  # type: ignore[arg-type]


def test_query_string_and_aliases() -> None:
    """apientry names the function; the spec's aliases map onto anum/bnum/txt/authsalt1."""
    r = req(query="apientry=SMS&authid=u&phone1=111&to=222&message=hi%20there&authsalt=77&now=555")
    assert r.function == "sms"
    assert r.params["anum"] == "111" and r.params["bnum"] == "222"
    assert r.params["txt"] == "hi there"
    assert r.params["authsalt1"] == "77"
    assert r.fmt == "text" and r.answer_format == "text"


def test_explicit_name_wins_over_alias() -> None:
    """An alias never overwrites the parameter's own name."""
    assert req(query="anum=1&from=2").params["anum"] == "1"


def test_form_body_and_query_together() -> None:
    """POST form parameters join the query's; the query wins where both are given."""
    r = req(query="apientry=balance&authid=q", body=b"authid=b&authpwd=p", content_type="application/x-www-form-urlencoded")
    assert (r.function, r.params["authid"], r.params["authpwd"]) == ("balance", "q", "p")


def test_json_body_mirrors_json() -> None:
    """A JSON object is decoded exactly and answers mirror JSON."""
    r = req(body=b'{"apientry": "charge", "credit": 1.10, "flag": true, "none": null}')
    assert r.function == "charge"
    assert r.params["credit"] == "1.10"
    assert (r.params["flag"], r.params["none"]) == ("true", "")
    assert r.answer_format == "json"


def test_xml_and_soap() -> None:
    """XML children are parameters; a SOAP Body element names the function."""
    r = req(body=b"<mvapireq><apientry>balance</apientry><authid>u</authid></mvapireq>", content_type="text/xml")
    assert (r.function, r.params["authid"], r.answer_format) == ("balance", "u", "xml")
    soap = (
        b'<?xml version="1.0"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">'
        b"<soap:Body><rating><bnum>3630</bnum></rating></soap:Body></soap:Envelope>"
    )
    r = req(body=soap)
    assert (r.function, r.params["bnum"], r.answer_format) == ("rating", "3630", "soap")


def test_ini_and_plain_text() -> None:
    """key=value lines and a raw /mvapireq/?... line are both understood."""
    r = req(body=b"[x]\napientry=apitest\n; comment\nauthid = u\n", content_type="text/plain")
    assert (r.function, r.params["authid"]) == ("apitest", "u")
    r = req(body=b"/mvapireq/?apientry=apitest1&now=1")
    assert r.function == "apitest1"


def test_multipart_form() -> None:
    """multipart/form-data fields are parameters; files are refused."""
    body = (
        b"--XX\r\nContent-Disposition: form-data; name=\"apientry\"\r\n\r\nbalance\r\n"
        b"--XX\r\nContent-Disposition: form-data; name=\"authid\"\r\n\r\n\xc3\xa9va\r\n--XX--\r\n"
    )
    r = req(body=body, content_type="multipart/form-data; boundary=XX")
    assert (r.function, r.params["authid"]) == ("balance", "\u00e9va")
    upload = b"--XX\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a.txt\"\r\n\r\nx\r\n--XX--\r\n"
    with pytest.raises(RequestError, match="file uploads"):
        req(body=upload, content_type="multipart/form-data; boundary=XX")


def test_format_parameter_wins() -> None:
    """format= picks the answer format whatever the request's."""
    assert req(body=b'{"format": "xml"}').answer_format == "xml"
    assert req(query="format=JSONP").answer_format == "jsonp"
    assert req(query="format=bogus").answer_format == "text"


def test_xor_round_trip_and_spec_substitutions() -> None:
    """Encryption is XOR then Base64 with = + / replaced by - _ ."""
    secret = xor_encrypt("apientry=balance&authid=u", "k3y")
    assert not set("=+/") & set(secret)
    raw = base64.b64decode(secret.replace("-", "=").replace("_", "+").replace(".", "/"))
    assert bytes(b ^ b"k3y"[i % 3] for i, b in enumerate(raw)) == b"apientry=balance&authid=u"
    assert xor_decrypt(secret, "k3y") == "apientry=balance&authid=u"


def test_mcrfs_and_oenc1() -> None:
    """A whole encrypted request (mcrfs) and single encrypted values (oenc1_) decode."""
    key = "s3cret"
    r = req(query="mcrfs=" + xor_encrypt("apientry=balance&authid=alice", key), encrypt_key=key)
    assert (r.function, r.params["authid"]) == ("balance", "alice")
    r = req(query="apientry=apitest&authpwd=oenc1_" + xor_encrypt("pässword", key), encrypt_key=key)
    assert r.params["authpwd"] == "pässword"
    # Without a configured key, the key built into Mizu's clients (the webphone's) is used.
    r = req(query="mcrfs=" + xor_encrypt("apientry=balance&authid=bob", "aJ6aqK4Nah3hnP7aht"))
    assert (r.function, r.params["authid"]) == ("balance", "bob")
    assert req(query="mcrfs=" + xor_encrypt("apientry=balance&authid=bob", "another key")).function != "balance"
    with pytest.raises(RequestError):
        req(query="authpwd=oenc1_%%%%", encrypt_key=key)


@pytest.mark.parametrize(
    "body, content_type, message",
    [
        (b'{"apientry": ', "application/json", "malformed JSON"),
        (b"[1, 2]", "application/json", "must be an object"),
        (b'{"a": {"b": 1}}', "application/json", "JSON values"),
        (b'{"a": NaN}', "application/json", "malformed JSON"),
        (b"<a><b>", "text/xml", "malformed XML"),
        (b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "y">]><a><b>&x;</b></a>', "text/xml", "DTD"),
        (b"<a><b><c>1</c></b></a>", "text/xml", "simple elements"),
        (b"apientry=\xff\xfe", "", "invalid UTF-8"),
        (b"line one\nline two", "text/plain", "expected key=value"),
    ],
)
def test_malformed_bodies(body: bytes, content_type: str, message: str) -> None:
    """Malformed or hostile bodies are refused with a clear message."""
    with pytest.raises(RequestError, match=message):
        parse_body(body, content_type)


def test_limits() -> None:
    """Too many parameters, too long values, too long URLs, too large bodies are refused."""
    with pytest.raises(RequestError, match="too many parameters"):
        req(query="&".join(f"p{i}=1" for i in range(MAX_PARAMS + 5)))
    with pytest.raises(RequestError, match="longer than"):
        req(body=b'{"a": "' + b"x" * 70000 + b'"}')
    with pytest.raises(RequestError, match="URL over"):
        req(query="a=" + "x" * 9000)
    with pytest.raises(RequestError, match="body over"):
        parse_body(b"a=" + b"x" * (1024 * 1024), "")
    with pytest.raises(RequestError, match="invalid UTF-8"):
        req(query="a=%ff")


def test_a_request_has_one_origin() -> None:
    """An Origin naming two front ends is refused where it is made (a programming error, not a request)."""
    from mizud.api.request import Origin
    from mizud.store.billing import User

    from decimal import Decimal

    user = User(1, 1, "alice", "pw", "USD", Decimal(0), False, Decimal(0), 0, True, False, None)
    assert Origin(legacy=True).legacy and Origin(sip_user=user).sip_user is user
    with pytest.raises(ValueError, match="one origin"):
        Origin(legacy=True, sip_user=user)


def test_the_fast_query_parser_agrees_with_parse_qsl() -> None:
    """parse_query skips decoding plain text; on random and hostile queries it answers exactly what
    urllib.parse.parse_qsl(keep_blank_values=True, errors='strict') does, or refuses what it refuses."""
    import random
    import urllib.parse

    from mizud.api.request import MAX_PARAMS, RequestError, parse_query

    rng = random.Random(19)
    alphabet = ["a", "b", "=", "&", "+", "%", "%2", "%20", "%41", "%e2%82%ac", "%ff", "%zz", "é", " ", ";", "?"]
    samples = ["", "&", "&&a=1&&", "a", "a=", "=b", "a=b=c", "a+b=c+d", "%61=%62", "x=%ff", "€=%E2%82%AC"]
    samples += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30))) for _ in range(3000)]
    for query in samples:
        text = query.split("?", 1)[1] if "?" in query else query
        try:
            expected: object = urllib.parse.parse_qsl(text.strip(), keep_blank_values=True, encoding="utf-8",
                                                      errors="strict", max_num_fields=MAX_PARAMS)
        except (UnicodeDecodeError, ValueError):
            expected = RequestError
        try:
            got: object = parse_query(query)
        except RequestError:
            got = RequestError
        assert got == expected, query
    for count in (MAX_PARAMS, MAX_PARAMS + 1):
        query = "&".join(f"p{i}=1" for i in range(count))
        try:
            urllib.parse.parse_qsl(query, max_num_fields=MAX_PARAMS)
            refused = False
        except ValueError:
            refused = True
        try:
            parse_query(query)
            assert not refused
        except RequestError:
            assert refused
