"""The lean HTTP path: the common API request, read and answered without twisted.web's Request machinery.

Most API traffic is one shape: C{GET /mvapireq/?...} on a keep-alive
HTTP/1.1 connection, no body, a handful of headers.  For such a request
L{parse_head} gives the little the API needs (the target and the headers
by name); the channel (L{mizud.wire.http}) decodes, dispatches and writes
the answer (L{response}) itself, in order, one request at a time
(pipelined requests wait in the buffer).  Anything else -- another
method, HTTP/1.0, a body, Transfer-Encoding, Expect, Upgrade, a
duplicated or folded header, an unusual Connection value, a head over
L{MAX_HEAD} bytes, a path the API does not serve -- is handed to
twisted.web, with everything still unread, and the connection stays with
twisted.web from then on.  The lean path refuses to guess: a request it
answers is one twisted.web would have answered the same way (its answers
differ only in having no Server header).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from twisted.web.http import datetimeToString

#: The longest request head (request line and headers) the lean path reads; longer ones go to twisted.web.
MAX_HEAD = 8192
#: The most header lines the lean path takes (twisted.web's own limit); more go to twisted.web.
MAX_HEADERS = 500
#: Headers that mean a body, a negotiation or a protocol switch: twisted.web decides those requests.
_NOT_LEAN = frozenset({"content-length", "transfer-encoding", "expect", "upgrade", "te", "trailer",
                       "http2-settings"})
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_TARGET = re.compile(rb"/[\x21-\x7e]*\Z")
#: Control characters (a bare CR or LF among them): twisted.web decides a head that has any.
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class Head:
    """A lean request: its target (path and query), path, headers (lower-case names) and whether the
    client asked to close the connection after the answer."""

    target: str
    path: str
    headers: dict[str, str]
    close: bool

    def header(self, name: str) -> str | None:
        """A header's value by lower-case name, or None."""
        return self.headers.get(name)


def head_end(buffer: bytes, start: int = 0) -> int:
    """Where the head of the request buffered from C{start} ends (the index of its blank line), -1 if it
    has not yet arrived, or -2 if a bare LF comes first (twisted.web, which splits lines at CRLF only,
    then decides what the request is)."""
    end = buffer.find(b"\r\n\r\n", start)
    stop = len(buffer) if end < 0 else end + 4
    if buffer.count(b"\n", start, stop) != buffer.count(b"\r\n", start, stop):
        return -2
    return end


def parse_head(head: bytes) -> Head | None:
    """The head of a request (without its blank line) the lean path may answer; None to leave it to
    twisted.web (see the module doc)."""
    lines = head.split(b"\r\n")
    if any(_CONTROL.search(line) for line in lines):
        return None
    first = lines[0]
    if not first.startswith(b"GET /") or not first.endswith(b" HTTP/1.1"):
        return None
    target = first[4:-9]
    if not _TARGET.match(target):
        return None
    if len(lines) > MAX_HEADERS:
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.match(name):
            return None  # a folded line, a malformed header
        key = name.decode("ascii").lower()
        if key in _NOT_LEAN or key in headers:
            return None
        if not value.isascii():
            return None  # twisted.web decodes values its own way: let it decide
        headers[key] = value.strip(b" \t").decode("ascii")
    if "host" not in headers:
        return None
    connection = headers.get("connection", "").strip().lower()
    if connection not in ("", "keep-alive", "close"):
        return None
    text = target.decode("latin-1")
    return Head(text, text.partition("?")[0], headers, connection == "close")


class _Date:
    """The Date header's value, made once per second."""

    second = -1
    value = b""

    def now(self) -> bytes:
        """The current value."""
        second = int(time.time())
        if second != self.second:
            self.second, self.value = second, datetimeToString(second)
        return self.value


_DATE = _Date()


def _canonical(name: bytes) -> bytes:
    """A header name as twisted.web writes it (Content-Type), for clients that match names by case."""
    return b"-".join(part[:1].upper() + part[1:].lower() for part in name.split(b"-"))


def response(status: int, reason: bytes, headers: list[tuple[bytes, bytes]], body: bytes, close: bool) -> bytes:
    """An HTTP/1.1 response: status line, C{headers}, Date, Content-Length, Connection: close if asked."""
    parts = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
    parts += [b"%s: %s\r\n" % (_canonical(name), value) for name, value in headers]
    parts.append(b"Date: " + _DATE.now() + b"\r\n")
    if close:
        parts.append(b"Connection: close\r\n")
    parts.append(b"Content-Length: %d\r\n\r\n" % len(body))
    parts.append(body)
    return b"".join(parts)


__all__ = ["Head", "MAX_HEAD", "head_end", "parse_head", "response"]
