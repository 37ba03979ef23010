"""The JSONP forwarder (C{jppget}, enablejsonp=2): fetch a listed host's JSON for a web page.

C{/mvapireq/jppget?url=...&callback=NAME} fetches a JSON document and
answers C{NAME(document);}, so a page can read a remote JSON service.  It
must never become an open proxy, nor a way into the daemon itself or the
network behind it:

  - only for an authenticated user (the function's access rule);
  - only http and https URLs without credentials, to a host named in
    C{jsonpforwardhosts} (exact, case-insensitive);
  - the name is resolved once, and every address it resolves to is
    checked: loopback, private, link-local, unique-local, multicast,
    unspecified and reserved addresses are refused unless that very
    address is listed in C{jsonpforwardhosts}; an address of this machine
    on one of mizud's own ports is refused even then;
  - the connection goes to the checked address (the URL's name still
    names the host for HTTP and TLS), so a second lookup cannot lead
    elsewhere (DNS rebinding); no redirects are followed;
  - at most L{MAX_DOCUMENT} bytes, within L{TIMEOUT} seconds, and the body
    must be JSON.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
from typing import Any, Iterable
from urllib.parse import urlsplit

from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.threads import deferToThreadPool
from zope.interface import implementer

from twisted.web.iweb import IAgentEndpointFactory

MAX_DOCUMENT = 256 * 1024
TIMEOUT = 10.0
_CALLBACK = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$.]{0,63}$")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class ForwardRefused(Exception):
    """The forward is not allowed or failed; the message is for the client."""


def check_url(url: str, allowed: tuple[str, ...]) -> tuple[str, str, int]:
    """(scheme, host, port) of a URL that may be fetched; raises L{ForwardRefused} otherwise."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ForwardRefused("url is not a URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ForwardRefused("url must be an http or https URL")
    if parts.username or parts.password:
        raise ForwardRefused("url must not carry credentials")
    host = parts.hostname.lower()
    if host not in allowed:
        raise ForwardRefused(f"host {host[:64]} is not in jsonpforwardhosts")
    return parts.scheme, host, port or (443 if parts.scheme == "https" else 80)


def _address(text: str) -> IPAddress | None:
    try:
        address = ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def _internal(address: IPAddress) -> bool:
    """Loopback, private, link-local, multicast, unspecified or reserved: not the public internet."""
    return (address.is_loopback or address.is_private or address.is_link_local or address.is_multicast
            or address.is_unspecified or address.is_reserved or not address.is_global)


def is_this_machine(address: IPAddress) -> bool:
    """Whether the address is one of this machine's own (the kernel would send to it from itself)."""
    if address.is_loopback or address.is_unspecified:
        return True
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((str(address), 9))  # no packet is sent: only the route is looked up
            return _address(probe.getsockname()[0]) == address
    except OSError:
        return False


def check_address(address: IPAddress, port: int, allowed: Iterable[str], own_ports: Iterable[int]) -> None:
    """Raise L{ForwardRefused} unless the forwarder may connect to C{address}:C{port}."""
    if port in set(own_ports) and is_this_machine(address):
        raise ForwardRefused("url leads to mizud itself")
    listed = {_address(name) for name in allowed} - {None}
    if _internal(address) and address not in listed:
        raise ForwardRefused(f"url resolves to an internal address ({address}); list that address to allow it")


async def resolve(reactor: Any, host: str, port: int) -> list[IPAddress]:
    """Every address C{host} resolves to (an address literal: itself)."""
    literal = _address(host)
    if literal is not None:
        return [literal]
    try:
        found = await deferToThreadPool(reactor, reactor.getThreadPool(), socket.getaddrinfo, host, port,
                                        0, socket.SOCK_STREAM)
    except OSError as problem:
        raise ForwardRefused(f"host {host[:64]} cannot be resolved: {problem.strerror or problem}") from None
    addresses = [_address(str(entry[4][0])) for entry in found]
    return list(dict.fromkeys(a for a in addresses if a is not None))


@implementer(IAgentEndpointFactory)
class _Pinned:
    """Endpoints to one checked address whatever the URL's host name says."""

    def __init__(self, reactor: Any, address: IPAddress) -> None:
        self.reactor = reactor
        self.address = address

    def endpointForURI(self, uri: Any) -> Any:
        """A TCP (or TLS over TCP) endpoint to the pinned address and the URI's port."""
        kind = TCP6ClientEndpoint if self.address.version == 6 else TCP4ClientEndpoint
        endpoint: Any = kind(self.reactor, str(self.address), uri.port, timeout=TIMEOUT)
        if uri.scheme == b"https":
            from twisted.internet.ssl import optionsForClientTLS

            return wrapClientTLS(optionsForClientTLS(uri.host.decode("idna")), endpoint)
        return endpoint


async def forward(url: str, callback: str, allowed: tuple[str, ...], own_ports: Iterable[int], reactor: Any) -> bytes:
    """Fetch the JSON document at C{url} (after every check above) and wrap it as JSONP."""
    import treq
    from twisted.web.client import Agent

    if not _CALLBACK.match(callback):
        raise ForwardRefused("callback must be a plain JavaScript name")
    _, host, port = check_url(url, allowed)
    addresses = await resolve(reactor, host, port)
    if not addresses:
        raise ForwardRefused(f"host {host[:64]} has no address")
    for address in addresses:
        check_address(address, port, allowed, own_ports)
    agent = Agent.usingEndpointFactory(reactor, _Pinned(reactor, addresses[0]))
    chunks: list[bytes] = []

    def collect(data: bytes) -> None:
        chunks.append(data)
        if sum(len(c) for c in chunks) > MAX_DOCUMENT:
            raise ForwardRefused(f"the remote document is over {MAX_DOCUMENT} bytes")

    async def fetch() -> None:
        response = await treq.get(url, agent=agent, reactor=reactor, allow_redirects=False)
        if response.code != 200:
            raise ForwardRefused(f"the remote service answered {response.code}")
        await treq.collect(response, collect)

    # One deadline for the whole exchange: treq's own timeout ends once the headers have come.
    fetching = defer.ensureDeferred(fetch())
    fetching.addTimeout(TIMEOUT, reactor)
    try:
        await fetching
    except ForwardRefused:
        raise
    except (defer.CancelledError, defer.TimeoutError):
        raise ForwardRefused("fetch failed: timed out") from None
    except Exception as problem:
        raise ForwardRefused(f"fetch failed: {type(problem).__name__}") from None
    body = b"".join(chunks)
    try:
        json.loads(body)
    except ValueError:
        raise ForwardRefused("the remote document is not JSON") from None
    return callback.encode() + b"(" + body + b");"
