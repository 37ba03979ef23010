"""API requests: one typed object, decoded from any of the spec's formats.

Every front end (HTTP, TCP lines, UDP, WebSocket, SIP, console) builds an
L{ApiRequest} with L{decode} and hands it to the dispatcher.  Decoding
covers URL query strings, form bodies (urlencoded and multipart), JSON
objects, XML and SOAP envelopes, ini (C{key=value} lines) and plain text;
URL-encoded values; the spec's parameter aliases; and XOR+Base64 encrypted
requests (C{mcrfs} for the whole request, C{oenc1_} for single values).

Limits (documented in docs/api.md): at most L{MAX_PARAMS} parameters, each
value at most L{MAX_VALUE} characters, XML without DTDs or entities.
"""

from __future__ import annotations

import base64
import binascii
import email.parser
import email.policy
import json
import re
import urllib.parse
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Iterable
from xml.etree import ElementTree

from . import answer
from ..store.billing import User

if TYPE_CHECKING:  # pragma: no cover
    from .credentials import Caller


MAX_PARAMS = 256
MAX_VALUE = 65536
MAX_BODY = 1024 * 1024
MAX_URL = 8192

#: The spec's alternative names, mapped to the name handlers read.
ALIASES = {
    "phone1": "anum",
    "from": "anum",
    "phone2": "bnum",
    "to": "bnum",
    "bnun": "bnum",  # spelled so in the old HTTP interface's examples
    "message": "txt",
    "authsalt": "authsalt1",
}

#: Request formats whose answers mirror them when no format= is given.
MIRRORED = {"json": "json", "xml": "xml", "soap": "soap"}


class RequestError(Exception):
    """The request cannot be decoded; the message is safe to show the client."""

    def __init__(self, message: str, status: int = answer.OTHER) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True)
class Origin:
    """Who vouched for a request before the dispatcher saw it; set only by the code that made it.

    At most one is set (a second one is a programming error, refused here).  C{caller}: an inner request
    that runs as the caller of the function that made it (C{oop}, an admin function reachable from the
    console and every other front end; SMS commands).  C{console}: the user logged in on the telnet console
    and the C{apitrustfromconsole} mode.  C{legacy}: the old HTTP interface (its parameter names,
    md5auth).  C{sip_user}: the user a SIP request's digest proved (the X-MizuAPI bridge).  None of them:
    the request proves itself (authkey, authmd5, a trusted address).
    """

    caller: Caller | None = None
    console: tuple[User, int] | None = None
    legacy: bool = False
    sip_user: User | None = None

    def __post_init__(self) -> None:
        """Refuse an origin that names two front ends."""
        if sum((self.caller is not None, self.console is not None, self.legacy, self.sip_user is not None)) > 1:
            raise ValueError("an API request has one origin")


@dataclass
class ApiRequest:
    """One decoded API request, whatever transport it came on."""

    function: str
    params: dict[str, str]
    source: str
    transport: str = "http"
    fmt: str = "text"
    secure: bool = False
    #: The source address may be forged (a UDP datagram): it earns no trust and gets no address banned.
    forgeable_source: bool = False
    #: A browser made it for a page of another site (or it asks for JSONP): no trust by address.
    cross_site: bool = False
    #: Who vouched for it, when a front end did (the console, SIP, the old interface, an inner request).
    origin: Origin = Origin()

    def get(self, *names: str, default: str = "") -> str:
        """The first non-empty value among C{names}, else C{default}."""
        for name in names:
            value = self.params.get(name)
            if value:
                return value
        return default

    @property
    def answer_format(self) -> str:
        """The format to answer in: format=, else a mirror of the request's."""
        wanted = self.params.get("format", "").strip().lower()
        if wanted in answer.FORMATS:
            return wanted
        return MIRRORED.get(self.fmt, "text")


# -- XOR + Base64 -----------------------------------------------------------------


def xor_encrypt(text: str, key: str) -> str:
    """Encrypt as the spec describes: XOR with the key, Base64, then '='->'-', '+'->'_', '/'->'.'."""
    data = text.encode("utf-8")
    keyed = bytes(b ^ key.encode("utf-8")[i % len(key.encode("utf-8"))] for i, b in enumerate(data))
    encoded = base64.b64encode(keyed).decode("ascii")
    return encoded.replace("=", "-").replace("+", "_").replace("/", ".")


#: The key built into Mizu's clients (the webphone, the mobile apps) for encrypted requests: used when the
#: operator configured no httpapiencryptkey, so unmodified clients work.  It is public: it obfuscates, it
#: does not protect (the spec says so too; use TLS).
CLIENT_KEY = "aJ6aqK4Nah3hnP7aht"


def xor_decrypt(text: str, key: str) -> str:
    """Reverse L{xor_encrypt} (with L{CLIENT_KEY} when C{key} is empty); raises L{RequestError} on anything
    malformed."""
    key = key or CLIENT_KEY
    raw = text.strip().replace("-", "=").replace("_", "+").replace(".", "/").replace(" ", "+")
    try:
        data = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError("malformed encrypted value") from None
    keybytes = key.encode("utf-8")
    plain = bytes(b ^ keybytes[i % len(keybytes)] for i, b in enumerate(data))
    try:
        return plain.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError("encrypted value does not decrypt to UTF-8 (wrong key?)") from None


# -- parsers for each format ------------------------------------------------------------


def parse_query(text: str) -> list[tuple[str, str]]:
    """Pairs of a URL query string (values URL-decoded, blank values kept)."""
    if "?" in text:
        text = text.split("?", 1)[1]
    text = text.strip()
    if text.count("&") >= MAX_PARAMS:
        raise RequestError(f"too many parameters (at most {MAX_PARAMS})")
    # urllib.parse.parse_qsl(keep_blank_values=True, errors="strict"), with the decoding skipped for the
    # plain names and values most requests are made of (a hot path; tests compare the two).
    pairs = []
    unquote = urllib.parse.unquote
    try:
        for field in text.split("&"):
            if not field:
                continue
            name, _, value = field.partition("=")
            if "+" in name:
                name = name.replace("+", " ")
            if "%" in name:
                name = unquote(name, "utf-8", "strict")
            if "+" in value:
                value = value.replace("+", " ")
            if "%" in value:
                value = unquote(value, "utf-8", "strict")
            pairs.append((name, value))
    except UnicodeDecodeError:
        raise RequestError("invalid UTF-8 in the request") from None
    return pairs


def _scalar(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, Decimal)):
        return str(value)
    raise RequestError("JSON values must be strings, numbers, booleans or null")


def parse_json(text: str) -> list[tuple[str, str]]:
    """Pairs of a JSON object with scalar values (numbers kept exact)."""
    try:
        data = json.loads(text, parse_float=Decimal, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise RequestError("malformed JSON") from None
    if not isinstance(data, dict):
        raise RequestError("a JSON request must be an object")
    return [(str(k), _scalar(v)) for k, v in data.items()]


def _no_constant(name: str) -> Any:
    raise ValueError(name)


_DTD = re.compile(r"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1].lower()


def parse_xml(text: str) -> tuple[list[tuple[str, str]], str, str | None]:
    """Pairs of an XML or SOAP request; returns (pairs, format, function or None).

    A SOAP envelope names the function by the element inside its Body;
    plain XML carries parameters as the root's child elements.  Documents
    with a DTD or entity declarations are refused (no entity expansion).
    """
    if _DTD.search(text):
        raise RequestError("XML with DTDs or entities is not accepted")
    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError:
        raise RequestError("malformed XML") from None
    function = None
    fmt = "xml"
    holder = root
    if _local(root.tag) == "envelope":
        fmt = "soap"
        body = next((c for c in root if _local(c.tag) == "body"), None)
        if body is None or not len(body):
            raise RequestError("SOAP envelope without a Body element")
        holder = body[0]
        if _local(holder.tag) not in ("mvapireq", "request"):
            function = _local(holder.tag)
    pairs = []
    for child in holder:
        if len(child):
            raise RequestError("XML parameters must be simple elements")
        pairs.append((_local(child.tag), (child.text or "").strip()))
    return pairs, fmt, function


def parse_ini(text: str) -> list[tuple[str, str]]:
    """Pairs of C{key=value} lines (comments and section headers ignored)."""
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in ";#[":
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise RequestError(f"expected key=value, got {line[:40]!r}")
        pairs.append((key.strip(), value.strip()))
    return pairs


def parse_multipart(body: bytes, content_type: str) -> list[tuple[str, str]]:
    """Pairs of a multipart/form-data body (file parts are refused)."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    if not message.is_multipart():
        raise RequestError("malformed multipart body")
    pairs = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not name:
            continue
        if part.get_filename():
            raise RequestError("file uploads are not accepted")
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            payload = b""
        try:
            pairs.append((str(name), payload.decode("utf-8")))
        except UnicodeDecodeError:
            raise RequestError("invalid UTF-8 in the request") from None
    return pairs


def parse_body(body: bytes, content_type: str = "") -> tuple[list[tuple[str, str]], str, str | None]:
    """Decode a request body by its content type, or by sniffing when vague.

    Returns (pairs, request format, function named by the body or None).
    """
    if len(body) > MAX_BODY:
        raise RequestError(f"request body over {MAX_BODY} bytes", answer.OTHER)
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind == "multipart/form-data":
        return parse_multipart(body, content_type), "text", None
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError("invalid UTF-8 in the request") from None
    stripped = text.strip()
    if not stripped:
        return [], "text", None
    if kind in ("application/json", "text/json") or (kind not in _FORM and stripped[0] == "{"):
        return parse_json(stripped), "json", None
    if kind in ("text/xml", "application/xml", "application/soap+xml") or (
        kind not in _FORM and stripped[0] == "<"
    ):
        return parse_xml(stripped)
    if kind not in _FORM and "\n" in stripped and "&" not in stripped:
        return parse_ini(stripped), "text", None
    return parse_query(stripped), "text", None


_FORM = ("application/x-www-form-urlencoded",)


# -- assembling a request ------------------------------------------------------------------------


def normalise(pairs: Iterable[tuple[str, str]], encrypt_key: str) -> dict[str, str]:
    """Lower-case names, decrypt C{oenc1_} values, apply aliases; first value wins."""
    params: dict[str, str] = {}
    for key, value in pairs:
        name = key.strip().lower()
        if not name:
            continue
        if len(value) > MAX_VALUE:
            raise RequestError(f"parameter {name[:40]} is longer than {MAX_VALUE} characters")
        if value.startswith("oenc1_"):
            value = xor_decrypt(value[len("oenc1_"):], encrypt_key)
        params.setdefault(name, value)
    if len(params) > MAX_PARAMS:
        raise RequestError(f"too many parameters (at most {MAX_PARAMS})")
    for alias, target in ALIASES.items():
        if alias in params:
            value = params.pop(alias)
            if not params.get(target):
                params[target] = value
    return params


#: What param2..param4 are when param1 names the function (the spec's positional form).
POSITIONAL_HEAD = ("authkey", "authid", "authpwd")


def positional(params: dict[str, str]) -> str:
    """The spec's positional form without apientry: "functionname, apikey, username, password, function
    parameters".  Takes param1 as the function, param2..param4 as authkey, authid and authpwd (unless given by
    name), and renumbers param5.. as the function's param1..; returns the function name."""
    name = params.pop("param1")
    for index, key in enumerate(POSITIONAL_HEAD, start=2):
        value = params.pop(f"param{index}", "")
        if value and not params.get(key):
            params[key] = value
    rest = sorted((int(k[5:]), k) for k in params if k.startswith("param") and k[5:].isascii() and k[5:].isdigit())
    for number, key in rest:
        params[f"param{number - 4}"] = params.pop(key)
    return name


def decode(
    *,
    query: str = "",
    body: bytes = b"",
    content_type: str = "",
    source: str,
    transport: str = "http",
    secure: bool = False,
    encrypt_key: str = "",
    function: str | None = None,
    forgeable_source: bool = False,
    cross_site: bool = False,
) -> ApiRequest:
    """Build an L{ApiRequest} from a query string and/or a body.

    Body parameters come after the query's, so the query wins where both
    name a value.  C{mcrfs} (the whole request encrypted) is decrypted and
    its parameters win over the rest.  C{function} (from a path such as the
    old interface's C{/xmapi/COMMAND}) is used when C{apientry} is absent.
    """
    if len(query) > MAX_URL:
        raise RequestError(f"request URL over {MAX_URL} characters")
    pairs = parse_query(query) if query else []
    fmt = "text"
    named = None
    if body:
        body_pairs, fmt, named = parse_body(body, content_type)
        pairs.extend(body_pairs)
    for key, value in list(pairs):
        if key.strip().lower() == "mcrfs":
            pairs = parse_query(xor_decrypt(value, encrypt_key)) + pairs
            break
    params = normalise(pairs, encrypt_key)
    params.pop("mcrfs", None)
    name = params.pop("apientry", "") or named or function or ""
    if not name and params.get("param1"):
        name = positional(params)
    return ApiRequest(
        function=name.strip().lower(), params=params, source=source, transport=transport, fmt=fmt, secure=secure,
        forgeable_source=forgeable_source, cross_site=cross_site,
    )


# -- command lines (the console, and the old interface's oop) ----------------------------------------

#: Parameters every function takes by name on a command line (the rest go by position).
GENERAL = frozenset({"authkey", "authid", "authpwd", "authmd5", "authsalt", "authsalt1", "authsalt2", "nonce",
                     "format", "targetuser", "txid", "username"})


def command_words(text: str) -> list[str]:
    """A command line split as a shell would (quotes group words), backslashes kept (C:\\x stays C:\\x);
    raises L{RequestError} on an unfinished quote."""
    import shlex

    try:
        lexer = shlex.shlex(text, posix=True)
        lexer.whitespace_split = True
        lexer.escape = ""
        return list(lexer)
    except ValueError as problem:
        raise RequestError(str(problem)) from None


def command_request(name: str, words: list[str], params_of: tuple[str, ...] | None, source: str, transport: str,
                    encrypt_key: str) -> ApiRequest:
    """An API request from a command's words: C{key=value} by name when the function (whose parameters are
    C{params_of}; None for an unknown one) has a parameter C{key} or it is a general one, the rest by position."""
    known = set(params_of or ())
    pairs = []
    position = 0
    for word in words:
        key, equals, value = word.partition("=")
        key = key.lower()
        if equals and (key in known or key in GENERAL or (params_of is None and key.isidentifier())):
            pairs.append((key, value))
        else:
            position += 1
            pairs.append((f"param{position}", word))
    return ApiRequest(name, normalise(pairs, encrypt_key), source, transport=transport, fmt="text")
