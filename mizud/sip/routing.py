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
from ..store.database import Database
from ..store.registrations import Bindings

#: tb_users.serverrole: what a server added by addserver may do.
ROLE_BOTH, ROLE_SENDER, ROLE_SERVER = 0, 5, 9


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

    def __init__(self, db: Database, now: Any) -> None:
        self.db = db
        self.now = now

    async def routes(self, called: str) -> list[Route]:
        """Every route for C{called}, in the order a call would try them."""
        local = await self._local(called)
        if local is not None:
            return local
        digits = normalise(called)
        if digits is None:
            return []
        result = await self.db.run_query(
            "routes",
            "SELECT r.name, r.prefix, r.priority, u.username, u.domain, u.ip, u.port, u.transport, u.proxy "
            "FROM tb_routing r JOIN tb_users u ON u.id = r.serverid "
            "WHERE r.enabled <> 0 AND u.enabled <> 0 AND u.serverrole <> ? AND u.type IN (?, ?) "
            "AND substr(?, 1, length(r.prefix)) = r.prefix "
            "ORDER BY length(r.prefix) DESC, r.priority, r.id",
            (ROLE_SENDER, 9, 5, digits),
        )
        return [
            Route("gateway", row[3], server_uri(digits, row[4], row[5], int(row[6]), row[7]), row[1], int(row[2]),
                  row[0], row[7], row[8])
            for row in result.rows
        ]

    async def _local(self, called: str) -> list[Route] | None:
        """The contacts of the user C{called} names (username or DID); None if it names no user."""
        result = await self.db.run_query(
            "route_user",
            "SELECT u.id, u.username FROM tb_users u WHERE u.username = ? AND u.type NOT IN (5, 9) "
            "UNION SELECT u.id, u.username FROM tb_phonenumbers n JOIN tb_users u ON u.id = n.userid "
            "WHERE n.number = ? AND n.userid > 0",
            (called, called),
        )
        row = result.one()
        if row is None:
            return None
        bindings = await Bindings(self.db, self.now).of_user(int(row[0]))
        return [Route("user", row[1], b.contact, transport=b.transport, address=b.address, domain=b.domain)
                for b in bindings]

    async def sender(self, address: str) -> str | None:
        """The traffic sender (a server allowed to send calls) at this IP address, if any."""
        result = await self.db.run_query(
            "route_sender",
            "SELECT username FROM tb_users WHERE enabled <> 0 AND serverrole <> ? AND type IN (5, 9) AND ip = ? "
            "ORDER BY id",
            (ROLE_SERVER, address.strip("[]")),
        )
        row = result.one()
        return str(row[0]) if row else None


async def owns_number(db: Database, userid: int, username: str, number: str) -> bool:
    """Whether C{number} is the user's username, one of their DIDs, or a number they added and proved
    (cli, addcallbacknumber)."""
    if number == username:
        return True
    found = await db.run_query(
        "owns_number", "SELECT number FROM tb_phonenumbers WHERE userid = ? AND number = ? "
                       "UNION SELECT number FROM tb_usernumbers WHERE userid = ? AND number = ? AND verified IS NOT NULL",
        (userid, number, userid, normalise(number) or number))
    return bool(found.rows)
