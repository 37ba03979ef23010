"""Answers in every format, with fixed shapes."""

from __future__ import annotations

import json
from xml.etree import ElementTree

from mizud.api.answer import encode, error, ok

RECORDS = [{"id": 1, "name": "a<b", "note": "tab\there"}, {"id": 2, "name": None, "note": "x"}]


def test_text_and_cleartext() -> None:
    """Text answers start with OK:/ERROR:; cleartext drops OK: only; records are TSV."""
    assert encode(ok("12.34"), "text") == (b"OK: 12.34", "text/plain; charset=utf-8")
    assert encode(ok("12.34"), "cleartext")[0] == b"12.34"
    assert encode(error("wrong authentication"), "cleartext")[0] == b"ERROR: wrong authentication"
    body = encode(ok("2 rows", RECORDS), "text")[0].decode()
    assert body.splitlines() == ["OK: 2 rows", "id\tname\tnote", "1\ta<b\ttab here", "2\t\tx"]


def test_json_and_jsonp() -> None:
    """JSON carries code, status, message and data; JSONP wraps it in a safe callback."""
    body, kind = encode(ok("done", RECORDS), "json")
    data = json.loads(body)
    assert kind.startswith("application/json")
    assert data == {"code": 200, "status": "OK", "message": "done",
                    "data": [{"id": "1", "name": "a<b", "note": "tab\there"}, {"id": "2", "name": None, "note": "x"}]}
    assert json.loads(encode(error("no"), "json")[0]) == {"code": 499, "status": "ERROR", "message": "no"}
    assert encode(ok("x"), "jsonp", "cb_1")[0].startswith(b"cb_1({")
    assert encode(ok("x"), "jsonp", "alert(1)//")[0].startswith(b"callback({")


def test_xml_and_soap() -> None:
    """XML and SOAP carry the same response element, escaped."""
    root = ElementTree.fromstring(encode(ok("a&b", RECORDS), "xml")[0])
    assert (root.findtext("code"), root.findtext("status"), root.findtext("message")) == ("200", "OK", "a&b")
    assert [r.findtext("name") for r in root.iter("record")] == ["a<b", ""]
    envelope = ElementTree.fromstring(encode(error("bad"), "soap")[0])
    response = envelope.find("{http://schemas.xmlsoap.org/soap/envelope/}Body/response")
    assert response is not None and response.findtext("code") == "499"


def test_html_escapes() -> None:
    """HTML answers escape the message and the records."""
    page = encode(ok("<script>", RECORDS), "html")[0].decode()
    assert "&lt;script&gt;" in page and "<script>" not in page
    assert "<td>a&lt;b</td>" in page
