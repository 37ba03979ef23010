"""What routing reads: the gateways for a number, the user a number names, traffic senders, numbers a
user owns, a server's own account and SMS settings (all from tb_users, tb_routing, tb_phonenumbers and
tb_usernumbers).  The order a call tries them in is decided in L{mizud.sip.routing}."""

from __future__ import annotations

from dataclasses import dataclass

from .cache import SnapshotCache, always
from .changes import Change
from .database import Database

#: tb_users.serverrole: what a server added by addserver may do.
ROLE_BOTH, ROLE_SENDER, ROLE_SERVER = 0, 5, 9


@dataclass(frozen=True, slots=True)
class GatewayRoute:
    """One tb_routing entry matching a number, with the server it leads to."""

    routing: str
    prefix: str
    priority: int
    username: str
    domain: str
    ip: str
    port: int
    transport: str
    proxy: str


@dataclass(frozen=True, slots=True)
class Forwards:
    """A user's call forwarding (tb_users): always, on busy, on no answer after C{timeout} seconds (0: the
    ring timeout)."""

    always: str
    busy: str
    noanswer: str
    timeout: int


def _servers(change: Change) -> bool:
    """A change of a tb_users row that is or was a traffic sender or SIP server."""
    return change.server


class RouteRows:
    """The routing queries (see the module doc).

    The routes and the traffic senders by address, read on every call, come
    from exact snapshots (L{mizud.store.cache}): a change of tb_routing, or
    of a server's tb_users row, is seen by the next call.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self._routes: SnapshotCache[list[GatewayRoute]] = SnapshotCache(
            db.changes, {"tb_routing": always, "tb_users": _servers})
        self._senders: SnapshotCache[list[tuple[int, str, str, bool]]] = SnapshotCache(
            db.changes, {"tb_users": _servers})

    async def gateways(self, digits: str) -> list[GatewayRoute]:
        """The enabled routes whose prefix begins C{digits}: longest prefix first, then priority, then age."""
        if not self.db.changes.trusted():  # the snapshot may not answer: the one number's routes, indexed
            return await self._read_routes(digits)
        routes = await self._routes.get(self._read_routes)
        return [route for route in routes if digits.startswith(route.prefix)]

    async def _read_routes(self, digits: str | None = None) -> list[GatewayRoute]:
        """The enabled routes (C{digits}: only those whose prefix begins it), in the order they are tried."""
        match, params = ("", ()) if digits is None else (" AND substr(?, 1, length(r.prefix)) = r.prefix", (digits,))
        result = await self.db.run_query(
            "routes",
            "SELECT r.name, r.prefix, r.priority, u.username, u.domain, u.ip, u.port, u.transport, u.proxy "
            "FROM tb_routing r JOIN tb_users u ON u.id = r.serverid "
            "WHERE r.enabled <> 0 AND u.enabled <> 0 AND u.serverrole <> ? AND u.type IN (?, ?)" + match +
            " ORDER BY length(r.prefix) DESC, r.priority, r.id",
            (ROLE_SENDER, 9, 5, *params),
        )
        return [GatewayRoute(row[0], row[1], int(row[2]), row[3], row[4], row[5], int(row[6]), row[7], row[8])
                for row in result.rows]

    async def _read_senders(self, host: str | None = None) -> list[tuple[int, str, str, bool]]:
        """Every enabled server that may send calls (C{host}: only those at that address): (id, username,
        ip, authenticates by its address)."""
        match, params = ("", ()) if host is None else (" AND ip = ?", (host,))
        result = await self.db.run_query(
            "route_senders",
            "SELECT id, username, ip, needauth FROM tb_users WHERE enabled <> 0 AND serverrole <> ? "
            "AND type IN (5, 9)" + match + " ORDER BY id",
            (ROLE_SERVER, *params),
        )
        return [(int(row[0]), str(row[1]), str(row[2] or ""), row[3] == 1) for row in result.rows]

    async def _senders_at(self, host: str) -> list[tuple[int, str, str, bool]]:
        """The senders at C{host}: from the snapshot when it may answer, else by an indexed read."""
        if not self.db.changes.trusted():
            return await self._read_senders(host)
        return [sender for sender in await self._senders.get(self._read_senders) if sender[2] == host]

    async def user_named(self, called: str) -> tuple[int, str] | None:
        """(id, username) of the user C{called} names: its username (not a server's) or an assigned DID."""
        result = await self.db.run_query(
            "route_user",
            "SELECT u.id, u.username FROM tb_users u WHERE u.username = ? AND u.type NOT IN (5, 9) "
            "UNION SELECT u.id, u.username FROM tb_phonenumbers n JOIN tb_users u ON u.id = n.userid "
            "WHERE n.number = ? AND n.userid > 0",
            (called, called),
        )
        row = result.one()
        return (int(row[0]), str(row[1])) if row is not None else None

    async def sender_at(self, address: str) -> str | None:
        """The traffic sender (a server allowed to send calls) at this IP address, if any."""
        for _, username, _, _ in await self._senders_at(address.strip("[]")):
            return username
        return None

    async def sender_by_address(self, address: str) -> int | None:
        """The id of the enabled traffic sender that authenticates by its IP address (u_auth 1) at
        C{address}, if any: its calls need no digest."""
        for userid, _, _, by_address in await self._senders_at(address.strip("[]")):
            if by_address:
                return userid
        return None

    async def forwards(self, userid: int) -> Forwards:
        """The user's forwarding numbers (empty when none)."""
        row = (await self.db.run_query(
            "route_forwards", "SELECT forwardalways, forwardonbusy, forwardonnoanswer, noanswertimeout "
                              "FROM tb_users WHERE id = ?", (userid,))).one()
        if row is None:
            return Forwards("", "", "", 0)
        return Forwards(str(row[0] or "").strip(), str(row[1] or "").strip(), str(row[2] or "").strip(),
                        int(row[3] or 0))

    async def may_send(self, userid: int) -> bool:
        """Whether the server account C{userid} may send calls in (a traffic sender, or both roles)."""
        result = await self.db.run_query(
            "route_may_send", "SELECT id FROM tb_users WHERE id = ? AND enabled <> 0 AND serverrole <> ? "
                              "AND type IN (5, 9)", (userid, ROLE_SERVER))
        return result.one() is not None

    async def owns(self, userid: int, number: str, normalised: str) -> bool:
        """Whether C{number} is one of the user's DIDs, or C{normalised} a number they added and proved."""
        found = await self.db.run_query(
            "owns_number", "SELECT number FROM tb_phonenumbers WHERE userid = ? AND number = ? "
                           "UNION SELECT number FROM tb_usernumbers WHERE userid = ? AND number = ? "
                           "AND verified IS NOT NULL",
            (userid, number, userid, normalised))
        return bool(found.rows)

    async def account(self, server: str) -> tuple[str, str]:
        """A server's own account (addserver's u_username/u_password), to answer its challenges."""
        row = (await self.db.run_query(
            "gateway_account", "SELECT username, password FROM tb_users WHERE username = ?", (server,))).one()
        return (str(row[0]), str(row[1])) if row else ("", "")

    async def sms_gateway(self, server: str) -> tuple[str, str, str] | None:
        """(smsurl, username, password) of an SMS gateway, or None when it is gone."""
        row = (await self.db.run_query(
            "sms_gateway", "SELECT smsurl, username, password FROM tb_users WHERE username = ?", (server,))).one()
        return (str(row[0] or ""), str(row[1]), str(row[2])) if row is not None else None
