"""Where a call to a number goes: a registered user's contacts, or gateways by prefix.

The routing table (tb_routing) maps a destination prefix to SIP servers
(tb_users rows added by addserver) with a priority.  A number is offered to
every matching route in turn: the longest prefix first, then the lowest
priority number, then the oldest entry; the empty prefix is the default
route.  A number that is the username (or an assigned DID) of a user goes
to that user's registered contacts instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..billing.rating import normalise
from ..store.billing import BillingStore

class Unreachable(Exception):
    """A route cannot be used right now; the message says why."""


@dataclass(frozen=True, slots=True)
class Route:
    """One way to reach the called party, in the order they are tried."""

    kind: str  # "user" (a registered contact) or "gateway"
    name: str  # the user's username, or the gateway's
    target: str  # the Request-URI the call would be sent to
    prefix: str = ""
    priority: int = 0
    routing: str = ""  # the tb_routing entry name
    transport: str = "udp"
    proxy: str = ""
    #: For a registered contact: the address its REGISTER came from (how to reach it behind NAT).
    address: str = ""
    #: For a registered contact: the domain it registered under (requests to it name that domain).
    domain: str = ""

    def record(self, order: int) -> dict[str, Any]:
        """The route as an API record."""
        return {"order": order, "kind": self.kind, "name": self.name, "target": self.target,
                "prefix": self.prefix, "priority": self.priority, "routing": self.routing,
                "transport": self.transport, "proxy": self.proxy}


def server_uri(number: str, domain: str, ip: str, port: int, transport: str) -> str:
    """The Request-URI that reaches C{number} through a server."""
    host = ip or domain
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 address (addserver keeps the port in its own column)
    text = f"sip:{number}@{host}"
    if port and port != 5060:
        text += f":{port}"
    return text + (f";transport={transport}" if transport != "udp" else "")


class Router:
    """Answers where a call goes, from the database (so every node agrees)."""

    def __init__(self, store: BillingStore) -> None:
        self.rows = store.routes
        self.bindings = store.registrations

    async def routes(self, called: str) -> list[Route]:
        """Every route for C{called}, in the order a call would try them."""
        return (await self.resolve(called))[1]

    async def resolve(self, called: str) -> tuple[tuple[int, str] | None, list[Route]]:
        """(id, username) of the user C{called} names (a username or DID; None: no user), and every route
        for it in the order a call tries them: that user's contacts, else the gateways."""
        named = await self.rows.user_named(called)
        if named is not None:
            userid, username = named
            return named, [Route("user", username, b.contact, transport=b.transport, address=b.address,
                                 domain=b.domain) for b in await self.bindings.of_user(userid)]
        digits = normalise(called)
        if digits is None:
            return None, []
        return None, [Route("gateway", g.username, server_uri(digits, g.domain, g.ip, g.port, g.transport),
                            g.prefix, g.priority, g.routing, g.transport, g.proxy)
                      for g in await self.rows.gateways(digits)]

    async def sender(self, address: str) -> str | None:
        """The traffic sender (a server allowed to send calls) at this IP address, if any."""
        return await self.rows.sender_at(address)


async def owns_number(store: BillingStore, userid: int, username: str, number: str) -> bool:
    """Whether C{number} is the user's username, one of their DIDs, or a number they added and proved
    (cli, addcallbacknumber)."""
    return number == username or await store.routes.owns(userid, number, normalise(number) or number)
