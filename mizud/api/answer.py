"""API answers and their encodings: text, cleartext, html, xml, soap, json, jsonp.

Every answer is OK or ERROR with a message and, for functions that return
records, a list of records (ordered field -> value).  The shape of each
encoding is fixed here and documented in docs/api.md:

  text       C{OK: message} / C{ERROR: message}; records follow, one per
             line, as tab-separated values under a header line of names
  cleartext  as text, but a successful answer carries only the message
             (no C{OK: } prefix); errors keep C{ERROR: }
  html       a small HTML page: the text line in a <p>, records in a <table>
  xml        <response><code/><status/><message/><data><record>...</record></data></response>
  soap       the same <response> inside a SOAP 1.1 Envelope/Body
  json       {"code": 200|499, "status": "OK"|"ERROR", "message": ..., "data": [...]}
  jsonp      CALLBACK(json);
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass, field
from typing import Any, Sequence
from xml.sax.saxutils import escape as xml_escape

FORMATS = ("text", "cleartext", "html", "xml", "soap", "json", "jsonp")

#: HTTP status per error kind when httpstrictrtspose is on (DESIGN.md).
AUTH_FAILED = 403
NOT_FOUND = 404
BAD_FUNCTION = 406
FAILED = 412
BAD_PIN = 420
MISSING_PARAMETER = 421
RATE_LIMITED = 429
OTHER = 499

_CALLBACK = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$.]{0,63}$")


@dataclass(frozen=True)
class ApiAnswer:
    """The result of one API request, independent of its encoding."""

    ok: bool
    message: str
    status: int = 200
    records: Sequence[dict[str, Any]] | None = None
    #: Extra HTTP headers some functions need (never used for auth data).
    headers: tuple[tuple[str, str], ...] = field(default=())
    #: A body already encoded, with its content type, sent as it is in every format (the JSONP forwarder's).
    raw: tuple[bytes, str] | None = None

    @property
    def code(self) -> int:
        """The API's own code: 200 success, 499 failure."""
        return 200 if self.ok else 499

    @property
    def text(self) -> str:
        """The answer line: C{OK: message} or C{ERROR: message}."""
        label = "OK" if self.ok else "ERROR"
        return f"{label}: {self.message}" if self.message else label


def ok(message: str = "", records: Sequence[dict[str, Any]] | None = None) -> ApiAnswer:
    """A successful answer."""
    return ApiAnswer(True, message, 200, records)


def error(message: str, status: int = OTHER) -> ApiAnswer:
    """A failed answer with the HTTP status strict mode uses."""
    return ApiAnswer(False, message, status)


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return text.replace("\t", " ").replace("\r", " ").replace("\n", " ")


def _records_text(records: Sequence[dict[str, Any]]) -> str:
    if not records:
        return ""
    names = list(records[0])
    lines = ["\t".join(names)]
    lines.extend("\t".join(_cell(r.get(n)) for n in names) for r in records)
    return "\n" + "\n".join(lines)


def _records_xml(records: Sequence[dict[str, Any]] | None) -> str:
    if records is None:
        return ""
    rows = []
    for record in records:
        cells = "".join(f"<{_xml_name(k)}>{xml_escape(_cell(v))}</{_xml_name(k)}>" for k, v in record.items())
        rows.append(f"<record>{cells}</record>")
    return f"<data>{''.join(rows)}</data>"


def _xml_name(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    return cleaned if cleaned and (cleaned[0].isalpha() or cleaned[0] == "_") else f"_{cleaned}"


def _response_xml(answer: ApiAnswer) -> str:
    return (
        f"<response><code>{answer.code}</code><status>{'OK' if answer.ok else 'ERROR'}</status>"
        f"<message>{xml_escape(answer.message)}</message>{_records_xml(answer.records)}</response>"
    )


def _json_value(answer: ApiAnswer) -> str:
    body: dict[str, Any] = {"code": answer.code, "status": "OK" if answer.ok else "ERROR", "message": answer.message}
    if answer.records is not None:
        body["data"] = [{k: (None if v is None else str(v)) for k, v in r.items()} for r in answer.records]
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


def encode(answer: ApiAnswer, fmt: str, callback: str | None = None) -> tuple[bytes, str]:
    """Encode an answer; returns (body, content type).  Unknown formats fall back to text."""
    if answer.raw is not None:
        return answer.raw
    if fmt == "json":
        return _json_value(answer).encode(), "application/json; charset=utf-8"
    if fmt == "jsonp":
        name = callback if callback and _CALLBACK.match(callback) else "callback"
        return f"{name}({_json_value(answer)});".encode(), "application/javascript; charset=utf-8"
    if fmt == "xml":
        return ('<?xml version="1.0" encoding="UTF-8"?>' + _response_xml(answer)).encode(), "text/xml; charset=utf-8"
    if fmt == "soap":
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>'
            '<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>'
            f"{_response_xml(answer)}</soap:Body></soap:Envelope>"
        )
        return body.encode(), "text/xml; charset=utf-8"
    if fmt == "html":
        table = ""
        if answer.records:
            names = list(answer.records[0])
            head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
            rows = "".join(
                "<tr>" + "".join(f"<td>{html.escape(_cell(r.get(n)))}</td>" for n in names) + "</tr>"
                for r in answer.records
            )
            table = f"<table><tr>{head}</tr>{rows}</table>"
        page = (
            "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>mizud</title></head>"
            f"<body><p>{html.escape(answer.text)}</p>{table}</body></html>"
        )
        return page.encode(), "text/html; charset=utf-8"
    line = answer.message if fmt == "cleartext" and answer.ok else answer.text
    return (line + _records_text(answer.records or ())).encode(), "text/plain; charset=utf-8"
