"""SIP messages (RFC 3261 sections 7, 20 and 25): parse, check, serialize.

The parser is strict where a wrong guess could be exploited (the start
line, Content-Length, CSeq, the headers a transaction is matched on) and
liberal where RFC 4475 says being liberal is safe (unknown headers are
kept as opaque text, whitespace around colons, folded lines).

A message that cannot be parsed raises L{ParseError}, which carries the
status code to answer with (or None: drop silently, as for a broken
response) and, when the headers were readable, the half-parsed message so
that the error response can still be addressed to its sender.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Sequence

#: RFC 3261 section 7.3.3 and later RFCs' compact header forms.
COMPACT = {
    "i": "call-id", "m": "contact", "e": "content-encoding", "l": "content-length",
    "c": "content-type", "f": "from", "s": "subject", "k": "supported", "t": "to",
    "v": "via", "o": "event", "r": "refer-to", "u": "allow-events", "x": "session-expires",
    "b": "referred-by", "a": "accept-contact", "j": "reject-contact", "d": "request-disposition",
    "y": "identity", "n": "identity-info",
}

#: How a header is written when we serialize it (lower-case name -> canonical form).
CANONICAL = {
    name.lower(): name
    for name in (
        "Via", "From", "To", "Call-ID", "CSeq", "Contact", "Max-Forwards", "Content-Length",
        "Content-Type", "Content-Encoding", "Expires", "Min-Expires", "Allow", "Supported",
        "Require", "Proxy-Require", "Unsupported", "Accept", "Accept-Encoding", "Accept-Language",
        "Authorization", "WWW-Authenticate", "Proxy-Authenticate", "Proxy-Authorization",
        "Authentication-Info", "Route", "Record-Route", "User-Agent", "Server", "Date", "Warning",
        "Retry-After", "Subject", "Event", "Allow-Events", "Timestamp", "Organization", "Path",
        "SIP-ETag", "SIP-If-Match",
    )
}
CANONICAL["call-id"] = "Call-ID"
CANONICAL["cseq"] = "CSeq"
CANONICAL["www-authenticate"] = "WWW-Authenticate"

#: Headers whose comma-separated values are separate header values (RFC 3261 7.3.1).
MULTI = frozenset({
    "via", "contact", "route", "record-route", "allow", "supported", "require", "proxy-require",
    "unsupported", "accept", "accept-encoding", "accept-language", "content-encoding",
    "allow-events", "path", "service-route", "warning", "in-reply-to", "call-info",
    "alert-info", "error-info",
})

#: Headers that must appear at most once in a request (RFC 3261 section 20; RFC 4475 3.3.8).
SINGLE = frozenset({"from", "to", "call-id", "cseq", "max-forwards", "content-length", "content-type", "expires"})

#: The most bytes of headers we read; beyond this a message is refused.
MAX_HEADERS = 16 * 1024
#: The largest body we accept.
MAX_BODY = 64 * 1024
#: The most header lines a message may have.
MAX_HEADER_LINES = 200

_TOKEN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+\Z")
_METHOD = _TOKEN
_DIGITS = re.compile(r"[0-9]+\Z")
_HOST = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?\.)*[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?\.?\Z")
_IPV4 = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}\Z")
_IPV6 = re.compile(r"\[[0-9A-Fa-f:.]+\]\Z")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*\Z")
#: Characters that may appear in the user part of a SIP URI (RFC 3261 25.1: unreserved, escaped, user-unreserved).
_USER = re.compile(r"(?:[A-Za-z0-9\-_.!~*'()&=+$,;?/]|%[0-9A-Fa-f]{2})+\Z")
_PASSWORD = re.compile(r"(?:[A-Za-z0-9\-_.!~*'()&=+$,]|%[0-9A-Fa-f]{2})*\Z")
_GENVALUE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~:\[\]]+\Z")
_PARAMCHARS = re.compile(r"(?:[A-Za-z0-9\-_.!~*'()\[\]/:&+$]|%[0-9A-Fa-f]{2})+\Z")
#: Characters no URI may contain (white space, controls, and what delimits a URI in a header).
_URI_FORBIDDEN = re.compile(r'[\x00-\x20<>"]')
_MAX_CSEQ = 2**32 - 1


class ParseError(Exception):
    """A message that cannot be processed; C{status} is the answer (None: drop)."""

    def __init__(self, reason: str, status: int | None = 400, message: SipMessage | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.message = message


def _canonical(name: str) -> str:
    lower = name.lower()
    return CANONICAL.get(lower) or name


def split_commas(value: str) -> list[str]:
    """Split a header value at commas outside quotes and angle brackets."""
    if "," not in value:
        return [value.strip()]
    parts: list[str] = []
    depth = 0
    quoted = False
    start = 0
    i = 0
    n = len(value)
    while i < n:
        ch = value[i]
        if quoted:
            if ch == "\\":
                i += 1
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch == "<":
            depth += 1
        elif ch == ">":
            depth = max(0, depth - 1)
        elif ch == "," and depth == 0:
            parts.append(value[start:i].strip())
            start = i + 1
        i += 1
    parts.append(value[start:].strip())
    return parts


@dataclass(slots=True)
class SipMessage:
    """A SIP request (C{method} set) or response (C{status} set)."""

    method: str = ""
    uri: str = ""
    status: int = 0
    reason: str = ""
    #: [lower-case name, value] in order; multi-value headers hold one value each.
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    #: Parsed header values, memoized (a message is parsed once however often it is asked).
    _parsed: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_request(self) -> bool:
        """Whether this is a request (else a response)."""
        return bool(self.method)

    def get(self, name: str, default: str = "") -> str:
        """The first value of a header (by lower-case name), or C{default}."""
        for key, value in self.headers:
            if key == name:
                return value
        return default

    def all(self, name: str) -> list[str]:
        """Every value of a header (by lower-case name), in order."""
        return [value for key, value in self.headers if key == name]

    def add(self, name: str, value: str) -> None:
        """Append a header value."""
        self.headers.append((name.lower(), value))
        self._parsed.clear()

    def set(self, name: str, value: str) -> None:
        """Replace every value of a header with one value (appended if absent)."""
        lower = name.lower()
        self._parsed.clear()
        for i, (key, _) in enumerate(self.headers):
            if key == lower:
                self.headers[i] = (lower, value)
                self.headers = [h for j, h in enumerate(self.headers) if j <= i or h[0] != lower]
                return
        self.headers.append((lower, value))

    def remove(self, name: str) -> None:
        """Remove every value of a header."""
        lower = name.lower()
        self._parsed.clear()
        self.headers = [h for h in self.headers if h[0] != lower]

    @property
    def call_id(self) -> str:
        """The Call-ID."""
        return self.get("call-id")

    def cseq(self) -> tuple[int, str]:
        """The CSeq number and method (checked by L{check_request})."""
        number, _, method = self.get("cseq").partition(" ")
        return int(number), method.strip()

    def top_via(self) -> Via:
        """The first Via, parsed (memoized)."""
        parsed = self._parsed.get("via")
        if parsed is None:
            parsed = self._parsed["via"] = parse_via(self.get("via"))
        return parsed

    def address(self, name: str) -> NameAddr:
        """A From or To header, parsed (memoized)."""
        parsed = self._parsed.get(name)
        if parsed is None:
            parsed = self._parsed[name] = parse_name_addr(self.get(name), _canonical(name))
        return parsed

    def request_uri(self) -> Uri:
        """The Request-URI, parsed (memoized)."""
        parsed = self._parsed.get("uri")
        if parsed is None:
            parsed = self._parsed["uri"] = parse_uri(self.uri)
        return parsed

    def serialize(self) -> bytes:
        """The message on the wire; Content-Length always matches the body."""
        if self.method:
            lines = [f"{self.method} {self.uri} SIP/2.0"]
        else:
            lines = [f"SIP/2.0 {self.status} {self.reason}"]
        canonical = CANONICAL
        for key, value in self.headers:  # names are kept in lower case
            if key != "content-length":
                lines.append(f"{canonical.get(key) or key}: {value}")
        lines.append(f"Content-Length: {len(self.body)}")
        lines.append("")
        lines.append("")
        return "\r\n".join(lines).encode("utf-8", "surrogateescape") + self.body


# -- reading ------------------------------------------------------------------------


def split_head(data: bytes) -> tuple[bytes, bytes] | None:
    """Split at the blank line after the headers: (head, rest), or None if not there yet."""
    crlf = data.find(b"\r\n\r\n")
    lf = data.find(b"\n\n")
    if lf >= 0 and (crlf < 0 or lf < crlf):
        return data[:lf], data[lf + 2:]
    if crlf >= 0:
        return data[:crlf], data[crlf + 4:]
    return None


def parse_head(head: bytes) -> SipMessage:
    """Parse the start line and headers (no body)."""
    if len(head) > MAX_HEADERS:
        raise ParseError("headers too large", 513)
    text = head.decode("utf-8", "surrogateescape")
    lines = text.replace("\r\n", "\n").split("\n")
    if len(lines) > MAX_HEADER_LINES:
        raise ParseError("too many header lines", 513)
    if "\n " in text or "\n\t" in text:
        lines = _unfold(lines)
    message, pending = _start_line(lines[0].rstrip("\r"))
    headers = message.headers
    names = _NAMES
    for line in lines[1:]:
        line = line.rstrip("\r")
        if not line:
            continue
        name, colon, value = line.partition(":")
        if not colon:
            raise ParseError(f"malformed header line {line[:40]!r}", 400, message)
        lower = names.get(name)
        if lower is None:
            lower = _header_name(name)
            if lower is None:
                raise ParseError(f"malformed header line {line[:40]!r}", 400, message)
        value = value.strip(" \t")
        if lower in MULTI:
            for part in split_commas(value):
                headers.append((lower, part))
        else:
            headers.append((lower, value))
    if pending is not None:
        pending.message = message
        raise pending
    return message


#: Header names as they came (before the colon) -> their lower-case long form: the few dozen names phones
#: send are checked and folded once.  Only valid names of at most L{_MAX_NAME} characters are kept, at most
#: L{_MAX_NAMES} of them (emptied when full), so whatever anyone sends pins at most about 100 KB.
_NAMES: dict[str, str] = {}
_MAX_NAMES = 1024
_MAX_NAME = 40


def _header_name(name: str) -> str | None:
    """The lower-case long form of a header name as it came (white space before the colon allowed), or
    None if it is not a token; remembered in L{_NAMES}."""
    stripped = name.rstrip(" \t")
    if not _TOKEN.match(stripped):
        return None
    lower = stripped.lower()
    lower = COMPACT.get(lower, lower)
    if len(name) <= _MAX_NAME:
        if len(_NAMES) >= _MAX_NAMES:
            _NAMES.clear()
        _NAMES[name] = lower
    return lower


def _unfold(lines: list[str]) -> list[str]:
    """Join continuation lines (starting with white space) to the line before, with one space."""
    unfolded: list[str] = []
    for line in lines:
        if line[:1] in (" ", "\t") and unfolded:
            unfolded[-1] = unfolded[-1].rstrip(" \t") + " " + line.lstrip(" \t")
        else:
            unfolded.append(line)
    return unfolded


def _start_line(line: str) -> tuple[SipMessage, ParseError | None]:
    """The message its start line begins, and the error to raise once the headers are read.

    Errors wait for the headers where the message can still be framed (and,
    for a request, answered): a bad version, extra white space in the
    request line, an impossible status code.
    """
    if line.startswith("SIP/"):
        version, _, rest = line.partition(" ")
        code, _, reason = rest.partition(" ")
        message = SipMessage(status=0, reason=reason)
        if version.upper() != "SIP/2.0":
            return message, ParseError("unsupported SIP version in a response", None)
        if len(code) != 3 or not _DIGITS.match(code):
            return message, ParseError(f"bad status code {code[:20]!r}", None)
        message.status = int(code)
        return message, None
    parts = line.split(" ")
    if len(parts) != 3 or not all(parts):
        words = line.split()
        if len(words) >= 3 and words[-1].upper() == "SIP/2.0" and _METHOD.match(words[0]):
            # Extra white space in the request line (RFC 4475 lwsruri, lwsstart, trws).
            return SipMessage(method=words[0], uri=" ".join(words[1:-1])), ParseError("malformed request line")
        raise ParseError("malformed request line", 400)
    method, uri, version = parts
    if not _METHOD.match(method):
        raise ParseError("malformed method", 400)
    if not version.upper().startswith("SIP/"):
        raise ParseError("malformed request line", 400)
    message = SipMessage(method=method, uri=uri)
    if version.upper() != "SIP/2.0":
        return message, ParseError("version not supported", 505)
    return message, None


def content_length(message: SipMessage) -> int | None:
    """The Content-Length, or None if absent; L{ParseError} if broken or repeated."""
    values = message.all("content-length")
    if not values:
        return None
    if len(values) > 1:
        raise ParseError("more than one Content-Length", 400, message)
    value = values[0]
    if not _DIGITS.match(value):
        raise ParseError(f"bad Content-Length {value[:20]!r}", 400, message)
    if len(value.lstrip("0")) > 9:
        raise ParseError("body too large", 413, message)
    length = int(value)
    if length > MAX_BODY:
        raise ParseError("body too large", 413, message)
    return length


def parse_datagram(data: bytes) -> SipMessage:
    """Parse one SIP message from a datagram (or WebSocket message).

    Bytes after Content-Length are ignored (RFC 3261 18.3); a body shorter
    than Content-Length is an error.
    """
    parts = split_head(data)
    if parts is None:
        head, rest = data.rstrip(b"\r\n"), b""
        complete = False
    else:
        head, rest = parts
        complete = True
    message = parse_head(head)
    length = content_length(message)
    if length is None:
        length = len(rest)
    if not complete and length:
        raise ParseError("headers not terminated", 400, message)
    if len(rest) < length:
        raise ParseError("body shorter than Content-Length", 400, message)
    message.body = rest[:length]
    return message


# -- structured values ---------------------------------------------------------------


Params = Sequence[tuple[str, "str | None"]]


class _HasParams:
    """The parameter lookup shared by URIs, name-addrs and Vias."""

    __slots__ = ()
    params: Params

    def param(self, name: str) -> str | None:
        """A parameter's value ('' for a flag), or None if absent."""
        for key, value in self.params:
            if key == name:
                return value if value is not None else ""
        return None


def _format_params(params: Params) -> str:
    return "".join(f";{key}" if value is None else f";{key}={value}" for key, value in params)


@dataclass(frozen=True, slots=True)
class Uri(_HasParams):
    """A URI; for sip/sips the parts are split out, others keep C{opaque}.  Immutable: one parsed URI is
    shared by every message that carries the same text (L{parse_uri})."""

    scheme: str
    user: str = ""
    password: str = ""
    host: str = ""
    port: int | None = None
    params: tuple[tuple[str, str | None], ...] = ()
    headers: str = ""
    opaque: str = ""

    @property
    def is_sip(self) -> bool:
        """Whether this is a sip: or sips: URI."""
        return self.scheme in ("sip", "sips")

    def __str__(self) -> str:
        if not self.is_sip:
            return f"{self.scheme}:{self.opaque}"
        text = f"{self.scheme}:"
        if self.user:
            text += self.user + (f":{self.password}" if self.password else "") + "@"
        text += self.host
        if self.port is not None:
            text += f":{self.port}"
        text += _format_params(self.params)
        if self.headers:
            text += "?" + self.headers
        return text


#: URIs parsed, by their text: a phone sends the same few in every request (the Request-URI, its address of
#: record in From and To, its Contact), so each is parsed once.  Only URIs that parsed and are at most
#: L{_MAX_URI} characters long are kept, at most L{_MAX_URIS} of them (emptied when full: a flood of
#: distinct URIs costs a parse each, as without the memo, and pins a few MB at most).
_URIS: dict[str, Uri] = {}
_MAX_URIS = 8192
_MAX_URI = 160


def parse_uri(text: str) -> Uri:
    """Parse a URI; raises L{ParseError} (400) if it is not one."""
    uri = _URIS.get(text)
    if uri is None:
        uri = _parse_uri(text)
        if len(text) <= _MAX_URI:
            if len(_URIS) >= _MAX_URIS:
                _URIS.clear()
            _URIS[text] = uri
    return uri


def _parse_uri(text: str) -> Uri:
    scheme, colon, rest = text.partition(":")
    if not colon or not _SCHEME.match(scheme) or not rest:
        raise ParseError(f"malformed URI {text[:60]!r}")
    scheme = scheme.lower()
    if _URI_FORBIDDEN.search(rest):
        raise ParseError(f"malformed URI {text[:60]!r}")
    if scheme not in ("sip", "sips"):
        return Uri(scheme, opaque=rest)
    user = password = ""
    at = rest.rfind("@")  # '@' may not appear unescaped in URI headers
    if at >= 0:
        userinfo, rest = rest[:at], rest[at + 1:]
        user, _, password = userinfo.partition(":")
        if not _USER.match(user) or not _PASSWORD.match(password):
            raise ParseError(f"malformed user part in {text[:60]!r}")
    rest, _, headers = rest.partition("?")
    hostport, *pieces = rest.split(";")
    if hostport.startswith("["):
        close = hostport.find("]")
        host, port = hostport[:close + 1], hostport[close + 1:]
        if port and not port.startswith(":"):
            raise ParseError(f"malformed host in {text[:60]!r}")
        port = port[1:]
    else:
        host, _, port = hostport.partition(":")
    if not (_HOST.match(host) or _IPV6.match(host)):
        raise ParseError(f"malformed host in {text[:60]!r}")
    number: int | None = None
    if port:
        if not _DIGITS.match(port) or len(port) > 5 or not 0 < int(port) < 65536:
            raise ParseError(f"malformed port in {text[:60]!r}")
        number = int(port)
    params: list[tuple[str, str | None]] = []
    for param in pieces:
        key, eq, value = param.partition("=")
        if not key or not _PARAMCHARS.match(key) or (eq and not _PARAMCHARS.match(value)):
            raise ParseError(f"malformed URI parameter in {text[:60]!r}")
        params.append((key.lower(), value if eq else None))
    return Uri(scheme, user, password, host.lower(), number, tuple(params), headers)


@dataclass(slots=True)
class NameAddr(_HasParams):
    """A From, To, Contact, Route or Record-Route value."""

    uri: Uri
    display: str = ""
    params: list[tuple[str, str | None]] = field(default_factory=list)
    bracketed: bool = True

    @property
    def tag(self) -> str:
        """The tag parameter ('' if none)."""
        return self.param("tag") or ""

    def __str__(self) -> str:
        text = f"<{self.uri}>"
        if self.display:
            text = f"{self.display} {text}"
        return text + _format_params(self.params)


def _header_params(text: str, what: str) -> list[tuple[str, str | None]]:
    params: list[tuple[str, str | None]] = []
    if not text.strip():
        return params
    text = text.strip()
    if not text.startswith(";"):
        raise ParseError(f"malformed {what}")
    for item in _split_params(text[1:]):
        key, eq, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not _TOKEN.match(key):
            raise ParseError(f"malformed {what} parameter")
        if eq:
            if value.startswith('"'):
                if len(value) < 2 or not value.endswith('"'):
                    raise ParseError(f"unbalanced quotes in {what}")
            elif not _GENVALUE.match(value):
                raise ParseError(f"malformed {what} parameter")
        params.append((key.lower(), value if eq else None))
    return params


def _split_params(text: str) -> list[str]:
    if '"' not in text:
        return text.split(";")
    items: list[str] = []
    quoted = False
    start = 0
    for i, ch in enumerate(text):
        if ch == '"' and (i == 0 or text[i - 1] != "\\"):
            quoted = not quoted
        elif ch == ";" and not quoted:
            items.append(text[start:i])
            start = i + 1
    if quoted:
        raise ParseError("unbalanced quotes")
    items.append(text[start:])
    return items


def parse_name_addr(text: str, what: str = "address") -> NameAddr:
    """Parse C{[display] <uri> *(;param)} or C{addr-spec *(;param)}."""
    text = text.strip()
    display = ""
    if text.startswith('"'):
        i = 1
        while i < len(text):
            if text[i] == "\\":
                i += 2
                continue
            if text[i] == '"':
                break
            i += 1
        else:
            raise ParseError(f"unbalanced quotes in {what}")
        display, text = text[: i + 1], text[i + 1:].lstrip()
        if not text.startswith("<"):
            raise ParseError(f"malformed {what}")
    lt = text.find("<")
    if lt >= 0:
        before = text[:lt].strip()
        if before:
            if display or not all(_TOKEN.match(word) for word in before.split()):
                raise ParseError(f"malformed display name in {what}")
            display = before
        gt = text.find(">", lt)
        if gt < 0:
            raise ParseError(f"malformed {what}")
        inner = text[lt + 1:gt]
        if inner != inner.strip():
            raise ParseError(f"whitespace inside <> in {what}")
        return NameAddr(parse_uri(inner), display, _header_params(text[gt + 1:], what))
    # addr-spec: the URI cannot carry parameters or headers; they belong to the header.
    uri_text, semi, params = text.partition(";")
    if "?" in uri_text or "," in uri_text:
        raise ParseError(f"a URI with '?' or ',' must be in <> in {what}")
    return NameAddr(parse_uri(uri_text.strip()), "", _header_params(semi + params, what), bracketed=False)


@dataclass(slots=True)
class Via(_HasParams):
    """One Via value."""

    transport: str
    host: str
    port: int | None
    params: list[tuple[str, str | None]]

    @property
    def branch(self) -> str:
        """The branch parameter ('' if none)."""
        return self.param("branch") or ""

    @property
    def sent_by(self) -> str:
        """host[:port] as sent."""
        return self.host if self.port is None else f"{self.host}:{self.port}"


def parse_via(text: str) -> Via:
    """Parse one Via value: C{SIP/2.0/TRANSPORT host[:port] *(;param)}."""
    protocol, _, rest = text.strip().partition(" ")
    pieces = [p.strip() for p in protocol.split("/")]
    if len(pieces) != 3 or pieces[0].upper() != "SIP" or not all(_TOKEN.match(p) for p in pieces):
        # Whitespace around the slashes is legal; rebuild and retry once.
        joined = re.match(r"\s*SIP\s*/\s*([0-9.]+)\s*/\s*([A-Za-z0-9\-.!%*_+`'~]+)\s+(.*)\Z", text, re.I)
        if not joined:
            raise ParseError("malformed Via")
        pieces = ["SIP", joined.group(1), joined.group(2)]
        rest = joined.group(3)
    if pieces[1] != "2.0":
        raise ParseError("Via version is not 2.0", 400)
    rest = rest.strip()
    hostport, semi, params = rest.partition(";")
    hostport = hostport.strip()
    if hostport.startswith("["):
        close = hostport.find("]")
        host, port = hostport[:close + 1], hostport[close + 1:].strip()
        port = port[1:].strip() if port.startswith(":") else port
    else:
        host, _, port = hostport.partition(":")
        host, port = host.strip(), port.strip()
    if not host or not (_HOST.match(host) or _IPV6.match(host)):
        raise ParseError("malformed Via host")
    number: int | None = None
    if port:
        if not _DIGITS.match(port) or len(port) > 5 or not 0 < int(port) < 65536:
            raise ParseError("malformed Via port")
        number = int(port)
    return Via(pieces[2].upper(), host.lower(), number, _header_params(semi + params, "Via"))


def parse_cseq(text: str) -> tuple[int, str]:
    """Parse C{number method}; the number must fit 32 bits."""
    parts = text.split()
    if len(parts) != 2 or not _DIGITS.match(parts[0]) or not _METHOD.match(parts[1]):
        raise ParseError("malformed CSeq")
    if len(parts[0].lstrip("0")) > 10:
        raise ParseError("CSeq number too large")
    number = int(parts[0])
    if number > _MAX_CSEQ:
        raise ParseError("CSeq number too large")
    return number, parts[1]


def check_request(message: SipMessage, known: frozenset[str] = frozenset()) -> None:
    """The checks every request must pass before any method handles it (400s).

    Structure only: the mandatory headers, each present once where it must
    be, CSeq, Via, From, To, Max-Forwards and the Request-URI well-formed.
    """
    try:
        first: dict[str, str] = {}  # the first value of each header that may appear once, and the top Via
        repeated = ""
        for key, value in message.headers:
            if key in SINGLE or key == "via":
                if key not in first:
                    first[key] = value
                elif key != "via" and not repeated:
                    repeated = key
        for name in ("via", "from", "to", "call-id", "cseq"):  # a missing header is told before a repeated one
            if not first.get(name):
                raise ParseError(f"missing {_canonical(name)}")
        if repeated:
            raise ParseError(f"more than one {_canonical(repeated)}")
        _, method = parse_cseq(first["cseq"])
        if method != message.method:
            if known and message.method not in known:
                raise ParseError(f"method {message.method[:30]} not implemented", 501)
            raise ParseError("CSeq method does not match the request")
        message.top_via()
        for value in message.all("via")[1:]:
            parse_via(value)
        message.address("from")
        message.address("to")
        forwards = first.get("max-forwards")
        if forwards and (not _DIGITS.match(forwards) or len(forwards) > 5 or int(forwards) > 255):
            raise ParseError("malformed Max-Forwards")
        if message.uri.startswith("<"):
            raise ParseError("Request-URI in angle brackets")
        parsed = message.request_uri()
        if parsed.is_sip and parsed.headers:
            raise ParseError("headers are not allowed in a Request-URI")
    except ParseError as error:
        error.message = message
        raise


def check_response(message: SipMessage) -> None:
    """The checks a response must pass to be matched to a transaction (else dropped)."""
    try:
        for name in ("via", "from", "to", "call-id", "cseq"):
            if not message.get(name):
                raise ParseError(f"missing {_canonical(name)}")
        parse_cseq(message.get("cseq"))
        message.top_via()
    except ParseError as error:
        error.status = None
        error.message = message
        raise
