"""HTTP front end: any path containing /mvapireq is an API request.

The resource decodes the request (query string and body) into an
L{ApiRequest}, hands it to the dispatcher and writes the answer in the
requested format.  HTTP/1.0 and 1.1 with keep-alive come from twisted.web.
The status is 200 for every answered request unless C{httpstrictrtspose} is
on; then a failure carries its specific status (403, 404, 406, 412, 420,
421, 429, 499).

The client address is the TCP peer, or, when the peer is listed in
C{trustedproxies}, the nearest address in X-Forwarded-For that is not
itself a trusted proxy.

A request a browser made for a page of another site is marked
L{ApiRequest.cross_site}, so that it earns no trust by address (see
L{cross_site}); answers carry C{Access-Control-Allow-Origin: *}, so pages
of any site may read what their own credentials entitle them to.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from typing import Any, Callable

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from ..api import answer, legacy
from ..api.answer import ApiAnswer, encode, error
from ..api.auth import in_networks
from ..api.request import MAX_BODY, MAX_URL, ApiRequest, RequestError, decode
from ..config import Settings
from ..rejections import RejectionLog
from ..text import ascii_digits
from .lean import MAX_HEAD, Head, head_end, parse_head, response
from .static import NOT_FOUND, NotFound

log = Logger()

#: Fetch-metadata values that show the browser's user, not another site, asked (same page, or typed).
_OWN_SITE = frozenset({"same-origin", "none"})
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def _origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of a URL or an Origin value; None if it is none."""
    try:
        parts = urllib.parse.urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    if not parts.scheme or not parts.hostname:
        return None
    scheme = parts.scheme.lower()
    return scheme, parts.hostname.lower(), port or _DEFAULT_PORTS.get(scheme, 0)


def own_origin(host: str, secure: bool) -> tuple[str, str, int] | None:
    """The origin a request was addressed to, from its Host header."""
    return _origin(("https://" if secure else "http://") + host) if host else None


def known_host(own: tuple[str, str, int] | None, names: str) -> bool:
    """Whether the Host a request was sent to is one of this server's: an IP address, localhost, or a
    name listed in C{httphostnames}."""
    if own is None:
        return False
    host = own[1].strip("[]")
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    listed = {name.strip().lower().rstrip(".") for name in names.split(",") if name.strip()}
    return host.rstrip(".") in listed | {"localhost"}


def foreign_browser(headers: Any, own: tuple[str, str, int] | None, browser_trust: bool,
                    host_known: bool = True) -> bool:
    """Whether a browser sent this for a page of another site (C{headers}: a name -> value getter).

    Browsers set C{Sec-Fetch-Site} (to potentially trustworthy URLs),
    C{Origin} and C{Referer} themselves; a page cannot forge them.  A
    browser's request addressed to a host name that is not this server's
    (C{host_known} false: see L{known_host}) is foreign whatever it says:
    after DNS rebinding, an attacker's page is "same origin" with its own
    name pointed at this address.  Otherwise the first present decides:
    fetch metadata other than C{same-origin} or C{none} (typed,
    bookmarked), an Origin or a Referer of another origin (scheme, host and
    port) or C{null}.  A request that shows none of them but calls itself
    a browser (C{User-Agent: Mozilla/...}) cannot prove it acts for itself
    -- a page of any site can send one, with its referrer hidden, to a
    plain-HTTP address -- and counts as foreign unless
    C{browseraddresstrust} is on.
    """
    browser = any(headers(name) for name in ("sec-fetch-site", "origin", "referer")) or (
        headers("user-agent") or "").startswith("Mozilla/")
    if browser and not host_known:
        return True
    site = (headers("sec-fetch-site") or "").strip().lower()
    if site:
        return site not in _OWN_SITE
    for name in ("origin", "referer"):
        value = (headers(name) or "").strip()
        if value:
            return value.lower() == "null" or own is None or _origin(value) != own
    agent = headers("user-agent") or ""
    return agent.startswith("Mozilla/") and not browser_trust


def cross_site(request: Request, settings: Settings) -> bool:
    """L{foreign_browser} for a twisted.web request."""
    return cross_site_of(request.getHeader, request.isSecure(), settings)


def cross_site_of(header: Callable[[str], str | None], secure: bool, settings: Settings) -> bool:
    """L{foreign_browser} for a request whose headers C{header} gives by name."""
    config = settings.current
    own = own_origin((header("host") or ""), secure)
    return foreign_browser(header, own, config.browseraddresstrust, known_host(own, config.httphostnames))


def client_address(request: Request, settings: Settings) -> str:
    """The real client address (see the module doc)."""
    peer = request.getClientAddress()
    return client_of(str(getattr(peer, "host", "") or ""), request.getHeader, settings)


def client_of(host: str, header: Callable[[str], str | None], settings: Settings) -> str:
    """The real client address of a request from the TCP peer C{host} (see the module doc)."""
    proxies = settings.current.trustedproxies
    if not proxies or not in_networks(host, proxies):
        return str(host)
    forwarded = header("x-forwarded-for") or ""
    hops = [h.strip() for h in forwarded.split(",") if h.strip()]
    while hops:
        hop = hops.pop()
        if not in_networks(hop, proxies):
            return hop
    return str(host)


class ApiResource(Resource):
    """Answers every request under it as an API request."""

    isLeaf = True

    def __init__(
        self, settings: Settings, dispatch: Callable[[], Any], legacy: bool = False
    ) -> None:
        super().__init__()
        self.settings = settings
        #: Returns the current dispatcher (None while the store is starting).
        self.dispatcher = dispatch
        #: Whether this serves the old interface (/xmapi/COMMAND).
        self.legacy = legacy

    def render_GET(self, request: Request) -> Any:
        """GET: parameters in the query string."""
        return self._render(request)

    def render_POST(self, request: Request) -> Any:
        """POST: parameters in the body (any supported format) and the query."""
        return self._render(request)

    def render_HEAD(self, request: Request) -> Any:
        """HEAD: answered like GET, without the body."""
        return self._render(request)

    def render_OPTIONS(self, request: Request) -> bytes:
        """A CORS preflight: any origin may send GET and POST with a body type of its choice."""
        request.setResponseCode(204)
        request.setHeader(b"access-control-allow-origin", b"*")
        request.setHeader(b"access-control-allow-methods", b"GET, POST, HEAD")
        request.setHeader(b"access-control-allow-headers", b"content-type")
        request.setHeader(b"access-control-max-age", b"600")
        return b""

    def _render(self, request: Request) -> Any:
        fmt = "text"
        callback = None
        try:
            api_request = self._decode(request)
            fmt, callback = self.formatting(api_request)
        except RequestError as problem:
            self._write(request, error(problem.message, problem.status), fmt, None)
            return NOT_DONE_YET
        api = self.dispatcher()
        if api is None:
            self._write(request, error("starting, try again", answer.OTHER), fmt, callback, status=503)
            return NOT_DONE_YET
        d = defer.ensureDeferred(api.dispatch(api_request))
        if d.called:
            # Answered without waiting (a read served from SQLite's reader,
            # say): write now, without the bookkeeping a deferred answer needs.
            d.addCallback(lambda result: self._write(request, result, fmt, callback))
            d.addErrback(lambda failure: log.failure("writing an API answer", failure))
            return NOT_DONE_YET
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))
        d.addCallback(lambda result: None if gone else self._write(request, result, fmt, callback))
        d.addErrback(lambda failure: log.failure("writing an API answer", failure))
        return NOT_DONE_YET

    def _decode(self, request: Request) -> ApiRequest:
        body = b""
        if request.method == b"POST" and request.content is not None:
            length = request.getHeader("content-length")
            if length and ascii_digits(length) and int(length) > MAX_BODY:
                raise RequestError(f"request body over {MAX_BODY} bytes")
            request.content.seek(0)
            body = request.content.read(MAX_BODY + 1)
        return self.decode_parts(request.uri.decode("latin-1"), request.path.decode("latin-1"), body,
                                 request.getHeader, client_address(request, self.settings), request.isSecure())

    def decode_parts(self, uri: str, path: str, body: bytes, header: Callable[[str], str | None], source: str,
                     secure: bool) -> ApiRequest:
        """The API request in an HTTP request's target C{uri} (its C{path} apart), body and headers
        (C{header}: a value by lower-case name), from C{source}; raises L{RequestError}."""
        if len(uri) > MAX_URL:
            raise RequestError(f"request URL over {MAX_URL} characters")
        query = uri.split("?", 1)[1] if "?" in uri else ""
        # /mvapireq/NAME names the function when apientry does not (the OpenAPI document's paths).
        tail = urllib.parse.unquote(path).lower().partition("/mvapireq/")[2].strip("/") if "/mvapireq/" in \
            path.lower() or "%" in path else ""
        api = self.dispatcher()
        if tail and ("/" in tail or self.legacy or api is None or api.registry.get(tail) is None):
            tail = ""  # /mvapireq/anything-else?apientry=... stays what it always was
        api_request = decode(
            function=tail or None,
            query=query,
            body=body,
            content_type=header("content-type") or "",
            source=source,
            transport="https" if secure else "http",
            secure=secure,
            encrypt_key=self.settings.current.httpapiencryptkey,
            cross_site=cross_site_of(header, secure, self.settings),
        )
        if api_request.answer_format == "jsonp":
            # A JSONP answer is script any page may include: it never carries what address trust alone allows.
            api_request.cross_site = True
        if tail and api_request.function != tail:
            # A proxy may allow paths: the path and apientry must not name different functions.
            raise RequestError(f"apientry and the path name different functions ({tail[:40]})")
        if self.legacy:
            command = path.lower().split("/xmapi/", 1)[1].strip("/") if "/xmapi/" in path.lower() else ""
            return legacy.to_request(command, api_request)
        return api_request

    def formatting(self, api_request: ApiRequest) -> tuple[str, str | None]:
        """The answer format a request asks for (JSONP only when enabled) and its JSONP callback."""
        fmt = api_request.answer_format
        callback = api_request.params.get("callback") or api_request.params.get("jsonp")
        if fmt == "jsonp" and not self.settings.current.enablejsonp:
            fmt = "json"
        return fmt, callback

    def response_parts(self, result: ApiAnswer, fmt: str, callback: str | None,
                       status: int | None = None) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """The status, headers (Content-Length aside) and body of an answer."""
        body, content_type = encode(result, fmt, callback)
        if status is None:
            status = 200
            if self.settings.current.httpstrictrtspose and not result.ok:
                status = result.status
        headers = [(b"content-type", content_type.encode("ascii")), (b"cache-control", b"no-store"),
                   # Any page may read an answer: what it may see is decided by the request's own
                   # credentials, since a request from another site's page earns no trust by address.
                   (b"access-control-allow-origin", b"*")]
        for name, value in result.headers:  # as twisted.web's setHeader: no line breaks, one value per name
            key = _clean(name).encode("latin-1")
            headers = [(n, v) for n, v in headers if n.lower() != key.lower()]
            headers.append((key, _clean(value).encode("latin-1")))
        return status, headers, body

    def _write(
        self, request: Request, result: ApiAnswer, fmt: str, callback: str | None, status: int | None = None
    ) -> None:
        status, headers, body = self.response_parts(result, fmt, callback, status)
        request.setResponseCode(status, http.RESPONSES.get(status, b"API error"))
        for name, value in headers:
            request.setHeader(name, value)
        request.setHeader(b"content-length", str(len(body)).encode("ascii"))
        if request.method != b"HEAD":
            request.write(body)
        request.finish()


def _clean(text: str) -> str:
    """A header name or value with its line breaks made spaces."""
    return text.replace("\r\n", " ").replace("\r", " ").replace("\n", " ")


#: Bytes a connection may queue behind a request that waits before it stops being read (as twisted.web).
LEAN_BACKLOG = 16 * 1024


class RootResource(Resource):
    """Routes by path: /mvapireq anywhere in it is the API, /xmapi/ the old interface."""

    def __init__(
        self, api: ApiResource, old: ApiResource, websocket: Any = None, static: Resource | None = None,
        sip_websocket: Any = None, portal: Resource | None = None, metrics: Resource | None = None,
        openapi: Resource | None = None,
    ) -> None:
        super().__init__()
        self.metrics = metrics
        self.openapi = openapi
        self.portal = portal or _PORTAL_OFF
        self.api = api
        self.old = old
        self.websocket = websocket
        self.static = static
        self.sip_websocket = sip_websocket

    def getChild(self, path: bytes, request: Request) -> Resource:
        """Any path containing /mvapireq is the API; /xmapi/ the old one; the rest is not found."""
        lowered = request.path.lower()
        if self.websocket is not None and b"/mvstwebsock" in lowered:
            websocket: Resource = self.websocket  # autobahn's WebSocketResource provides IResource
            return websocket
        if self.sip_websocket is not None and b"/mfstwebsock" in lowered:
            sip_websocket: Resource = self.sip_websocket
            return sip_websocket
        if b"/mvapireq" in lowered:
            return self.api
        if lowered.startswith(b"/xmapi"):
            return self.old
        if path == b"metrics" and self.metrics is not None:
            return self.metrics
        if path == b"openapi.json" and self.openapi is not None:
            return self.openapi
        if path.lower() in (b"webvoip", b"webvoipportal"):
            return self.portal
        if path == b"" and self.portal is not _PORTAL_OFF and b"function" in (request.args or {}):
            return _ToPortal()  # the old portal links: /?function=PAGE&username=...
        if path == b"mvweb" and self.static is not None:
            # twisted.web.static.File: content types, conditional GET and
            # ranges, and no way out of its directory.
            return self.static
        return NOT_FOUND

    def render(self, request: Request) -> bytes:
        """The bare root: not found."""
        return NOT_FOUND.render(request)


class _ToPortal(Resource):
    """A redirect to /webvoip keeping the query (the page removes credentials from it at once)."""

    isLeaf = True

    def render(self, request: Request) -> bytes:
        request.redirect(b"/webvoip?" + request.uri.partition(b"?")[2])
        request.setHeader(b"referrer-policy", b"no-referrer")
        return b""


_PORTAL_OFF = NotFound(b"ERROR: the web portal is off (webportal=0)")


class LimitedRequest(Request):
    """A request whose body may not exceed L{MAX_BODY}.

    twisted.web would otherwise spool any body, however large, to a
    temporary file before the resource sees it.  A declared length over the
    limit, or a chunked body that grows past it, is answered 413 and the
    connection closed; nothing more is read or stored.
    """

    _received = 0
    _refused = False

    def gotLength(self, length: int | None) -> None:
        """Refuse a declared body over the limit before reading it."""
        if length is not None and length > MAX_BODY:
            self._refuse()
            length = 0
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        """Count the body as it arrives; refuse it once it passes the limit."""
        if self._refused:
            return
        self._received += len(data)
        if self._received > MAX_BODY:
            self._refuse()
            return
        super().handleContentChunk(data)

    def process(self) -> None:
        """Render, unless the body was refused."""
        if not self._refused:
            super().process()

    def _refuse(self) -> None:
        self._refused = True
        body = f"ERROR: request body over {MAX_BODY} bytes".encode()
        transport: Any = self.channel.transport if self.channel else None
        if transport is not None:
            transport.write(
                b"HTTP/1.1 413 Request Entity Too Large\r\nContent-Type: text/plain; charset=utf-8\r\n"
                b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
            )
            # The channel's own close: it unregisters itself as the transport's producer first, without
            # which TLS never closes.
            self.channel.loseConnection()


class _Channel(http.HTTPChannel):
    """HTTPChannel that answers a request line too long to buffer (Twisted's closes without a word), and gives
    each request C{requesttimeout} from its first byte to its last (Twisted's idle timeout is reset by every
    byte, so a request sent a byte a minute would hold the connection for ever)."""

    transport: Any
    site: Any
    _deadline: Any = None
    _busy = False
    #: The lean path (L{mizud.wire.lean}) serves this connection until a request needs twisted.web.
    _lean = True
    _lean_buffer = b""
    _lean_waiting = False
    _lean_closing = False
    _lean_paused = False
    _lean_secure: bool | None = None
    _lean_idle: Any = None

    def dataReceived(self, data: bytes) -> None:
        """Start the request's deadline with its first byte (not while a request is being answered)."""
        if self._lean:
            if self._lean_closing:
                return  # answered with Connection: close, or timed out: nothing more is read
            if not self._lean_waiting:
                self.resetTimeout()
                if data and self._deadline is None:
                    self._deadline = self.callLater(self.site.settings.current.requesttimeout, self._too_slow)
            self._lean_buffer += data
            if self._lean_waiting and len(self._lean_buffer) > LEAN_BACKLOG and not self._lean_paused:
                # Like twisted.web: stop reading while a request waits and more than a little is queued.
                self._lean_paused = True
                producer: Any = self._networkProducer
                producer.pauseProducing()
            self._lean_serve()
            return
        if data and not self._busy and self._deadline is None:
            self._deadline = self.callLater(self.site.settings.current.requesttimeout, self._too_slow)
        super().dataReceived(data)

    # -- the lean path ----------------------------------------------------------------------------------

    def _lean_serve(self) -> None:
        """Answer the buffered lean requests in order, one at a time; hand the rest to twisted.web."""
        buffer, start = self._lean_buffer, 0
        try:
            while self._lean and not self._lean_waiting and not self._lean_closing:
                end = head_end(buffer, start)
                if end == -1 and len(buffer) - start < MAX_HEAD + 4:
                    return  # the head is still arriving
                head = parse_head(buffer[start:end]) if start <= end <= start + MAX_HEAD else None
                resource = self._lean_resource(head)
                if head is None or resource is None:
                    self._lean_buffer, start = buffer[start:], 0
                    self._hand_over()
                    return
                start = end + 4  # (the buffer is cut once, below: no copy per pipelined request)
                self._stop_deadline()
                self._lean_request(resource, head)
        finally:
            if start:
                self._lean_buffer = buffer[start:]

    def _lean_resource(self, head: Head | None) -> ApiResource | None:
        """The API resource when the site's root would give this request to it, else None."""
        root = self.site.resource
        if head is None or not isinstance(root, RootResource):
            return None
        lowered = head.path.lower()
        if "/mvapireq" not in lowered or "/mvstwebsock" in lowered or "/mfstwebsock" in lowered:
            return None
        return root.api

    def _hand_over(self) -> None:
        """From now on twisted.web reads this connection, starting with what is buffered."""
        self._lean = False
        data, self._lean_buffer = self._lean_buffer, b""
        if data:
            self.dataReceived(data)

    def _lean_request(self, resource: ApiResource, head: Head) -> None:
        try:
            self._lean_dispatch(resource, head)
        except Exception:
            self._lean_failed(Failure())

    def _lean_dispatch(self, resource: ApiResource, head: Head) -> None:
        if self._lean_secure is None:
            self._lean_secure = bool(self.isSecure())
        peer = self.transport.getPeer()
        fmt, callback = "text", None
        try:
            api_request = resource.decode_parts(head.target, head.path, b"", head.header,
                                                client_of(str(getattr(peer, "host", "") or ""), head.header,
                                                          self.site.settings), self._lean_secure)
            fmt, callback = resource.formatting(api_request)
        except RequestError as problem:
            self._lean_write(resource, head, error(problem.message, problem.status), fmt, None)
            return
        api = resource.dispatcher()
        if api is None:
            self._lean_write(resource, head, error("starting, try again", answer.OTHER), fmt, callback, 503)
            return
        d = defer.ensureDeferred(api.dispatch(api_request))
        if not d.called:
            # As twisted.web does while a request is handled: no idle timeout, and HTTPChannel's
            # producer methods keep the reads paused if they were paused.
            self._lean_waiting = True
            self._handlingRequest = True
            self._lean_idle = self.setTimeout(None)
        d.addCallback(self._lean_answered, resource, head, fmt, callback)
        d.addErrback(self._lean_failed)

    def _lean_done_waiting(self) -> bool:
        """The answer a request waited for is here: timeouts and reading as before; whether it waited."""
        if not self._lean_waiting:
            return False
        self._lean_waiting = False
        self._handlingRequest = False
        self.setTimeout(self._lean_idle)
        if self._lean_paused:
            self._lean_paused = False
            if not self._waitingForTransport:
                producer: Any = self._networkProducer
                producer.resumeProducing()
        return True

    def _lean_answered(self, result: ApiAnswer, resource: ApiResource, head: Head, fmt: str,
                       callback: str | None) -> None:
        waited = self._lean_done_waiting()
        if self.transport is None or self._lean_closing or getattr(self.transport, "disconnected", False):
            return
        self._lean_write(resource, head, result, fmt, callback)
        if waited:
            if self._lean_buffer and self._deadline is None:
                self._deadline = self.callLater(self.site.settings.current.requesttimeout, self._too_slow)
            self._lean_serve()

    def _lean_failed(self, failure: Any) -> None:
        log.failure("answering an API request", failure)
        self._lean_done_waiting()
        if self.transport is not None and not self._lean_closing:
            self._lean_closing = True
            self.transport.write(response(500, b"Internal Server Error", [], b"", True))
            self.loseConnection()

    def _lean_write(self, resource: ApiResource, head: Head, result: ApiAnswer, fmt: str, callback: str | None,
                    status: int | None = None) -> None:
        code, headers, body = resource.response_parts(result, fmt, callback, status)
        self.transport.write(response(code, http.RESPONSES.get(code, b"API error"), headers, body, head.close))
        if head.close:
            self._lean_closing = True
            self.loseConnection()  # the channel's: it unregisters its producer first (TLS closes only then)

    def allContentReceived(self) -> None:
        """The request is complete: its deadline is met."""
        self._stop_deadline()
        self._busy = True
        super().allContentReceived()

    def requestDone(self, request: Any) -> None:
        """Answered: the next request (perhaps already buffered) gets its own deadline."""
        self._busy = False
        super().requestDone(request)

    def _too_slow(self) -> None:
        self._deadline = None
        peer = self.transport.getPeer() if self.transport is not None else None
        self.site.rejections(str(getattr(peer, "host", "")), "closing HTTP from {source}: a request took over "
                             "{seconds} s", seconds=self.site.settings.current.requesttimeout)
        if self.transport is not None:
            self._lean_closing = True
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
                                 b"connection: close\r\n\r\nERROR: request not finished in time\n")
            self.loseConnection()

    def _stop_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def connectionLost(self, reason: Any = None) -> None:
        """Stop the deadline."""
        self._stop_deadline()
        super().connectionLost(reason)

    def lineLengthExceeded(self, line: bytes) -> None:
        """414, then close."""
        self.transport.write(b"HTTP/1.1 414 URI Too Long\r\ncontent-type: text/plain; charset=utf-8\r\n"
                             b"connection: close\r\n\r\nERROR: request line too long\n")
        self.loseConnection()


class QuietSite(Site):
    """A Site without a per-request access log (failures are logged where decided), whose connections
    time out after C{connectionidletimeout} idle and C{requesttimeout} per request."""

    requestFactory = LimitedRequest
    #: Our channel itself, not wrapped in twisted.web's private HTTP/2 negotiator (mizud speaks HTTP/1.1).
    protocol = _Channel  # type: ignore[assignment]  # typed as the negotiator, which is a protocol too

    def __init__(self, resource: Resource, settings: Settings, clock: Any = None) -> None:
        super().__init__(resource, timeout=settings.current.connectionidletimeout, reactor=clock)
        self.settings = settings
        #: Log lines about connections closed for being too slow (limited).
        self.rejections = RejectionLog(self.reactor, "slow HTTP requests")

    def log(self, request: http.Request) -> None:
        """No access log line per request."""
