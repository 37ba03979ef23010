"""The JSONP forwarder: /mvapireq/jppget?url=...&callback=NAME (enablejsonp=2 only).

It fetches a JSON document from a host listed in C{jsonpforwardhosts} and
answers C{NAME(document);}, so a web page can read a remote JSON service.
Anything else is refused: the forwarder must never become an open proxy.
Only http and https URLs, to a listed host name (exact match), at most
L{MAX_DOCUMENT} bytes, within L{TIMEOUT} seconds, with a JSON body.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import urlsplit

from twisted.web.server import Request

MAX_DOCUMENT = 256 * 1024
TIMEOUT = 10.0
_CALLBACK = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$.]{0,63}$")


class ForwardRefused(Exception):
    """The forward is not allowed or failed; the message is for the client."""


def check(url: str, allowed: tuple[str, ...]) -> str:
    """The URL if it may be fetched; raises L{ForwardRefused} otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ForwardRefused("url must be an http or https URL")
    if parts.hostname.lower() not in allowed:
        raise ForwardRefused(f"host {parts.hostname[:64]} is not in jsonpforwardhosts")
    if parts.username or parts.password:
        raise ForwardRefused("url must not carry credentials")
    return url


async def forward(url: str, callback: str, reactor: Any) -> bytes:
    """Fetch the JSON document and wrap it as JSONP."""
    import treq

    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    if not _CALLBACK.match(callback):
        raise ForwardRefused("callback must be a plain JavaScript name")
    try:
        response = await treq.get(url, timeout=TIMEOUT, reactor=reactor, allow_redirects=False)
        body = await treq.content(response)
    except Exception as problem:
        raise ForwardRefused(f"fetch failed: {type(problem).__name__}") from None
    if response.code != 200:
        raise ForwardRefused(f"the remote service answered {response.code}")
    if len(body) > MAX_DOCUMENT:
        raise ForwardRefused(f"the remote document is over {MAX_DOCUMENT} bytes")
    try:
        json.loads(body)
    except ValueError:
        raise ForwardRefused("the remote document is not JSON") from None
    return callback.encode() + b"(" + body + b");"


def is_forward(request: Request) -> bool:
    """Whether the request is for the forwarder (/mvapireq/jppget)."""
    return request.path.rstrip(b"/").lower().endswith(b"/jppget")
