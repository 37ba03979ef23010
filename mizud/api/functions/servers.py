"""SIP servers, traffic senders and routing: addserver and routingtest."""

from __future__ import annotations

from dataclasses import dataclass
import ipaddress
import re
import secrets
from typing import TYPE_CHECKING, Any

from ...sip.routing import Router
from ...store.routes import ROLE_BOTH, ROLE_SENDER, ROLE_SERVER
from ...store.billing import USER_SIPSERVER, USER_TRAFFICSENDER
from ...store.database import Txn
from ...store.money import parse_amount
from ...store.servers import insert_route, routing_entry_by_id, routing_entry_named, set_user_columns
from ..answer import ApiAnswer, error, ok
from ..invocation import Invocation
from ..registry import Functions, Category
from ..request import RequestError
from .fields import convert
from .accounts import check_username

if TYPE_CHECKING:  # pragma: no cover
    from ...config import Settings
    from ...store.billing import BillingStore
    from ...store.database import Database

HOSTNAME = re.compile(r"(?=.{1,253}\Z)(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\Z")
NAME = re.compile(r"[A-Za-z0-9_.@+\-]{1,64}\Z")
PREFIX = re.compile(r"[0-9]{0,32}\Z")
#: tb_users columns addserver's fieldNameX may not set (identity, money, the server's own parameters).
NOT_EXTRA = frozenset({
    "id", "credit", "creditlimit", "type", "username", "password", "serverrole", "created", "currency",
    "postpaid", "status", "statusdate", "domain", "ip", "port", "proxy", "transport", "needauth",
})
DIGITS = re.compile(r"[0-9]+\Z")
ADDSERVER_PARAMS = (
    "u_type", "u_name", "u_username", "u_password", "u_domain", "u_ip", "u_port", "u_proxy", "u_transport",
    "u_auth", "u_email", "u_country", "u_currency", "u_credit", "u_routing", "u_routingpriority",
)


def _host_port(text: str, what: str) -> tuple[str, int | None]:
    """Split C{host[:port]} and check both; IPv6 in brackets."""
    host, port = text, None
    if text.startswith("["):
        close = text.find("]")
        host, rest = text[1:close], text[close + 1:]
        if rest:
            port = _port(rest.removeprefix(":"), what)
    elif text.count(":") == 1:
        host, given = text.split(":")
        port = _port(given, what)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not HOSTNAME.match(host):
            raise RequestError(f"{what} is not a host name or IP address: {text[:60]}", 412) from None
    return host, port


def _port(text: str, what: str) -> int:
    if not DIGITS.match(text) or len(text) > 5 or not 0 < int(text) < 65536:
        raise RequestError(f"{what} has a bad port: {text[:10]}", 412)
    return int(text)


def _extra_fields(invocation: Invocation, columns: set[str]) -> dict[str, Any]:
    """fieldNameX / fieldvalX (X from 0 to 99): more tb_users columns to set."""
    extra: dict[str, Any] = {}
    params = {key.lower(): value for key, value in invocation.request.params.items()}
    for index in range(100):
        name = params.get(f"fieldname{index}", "").strip().lower()
        if not name:
            continue
        if name not in columns or name in NOT_EXTRA:
            raise RequestError(f"fieldname{index}: not a settable tb_users column: {name[:40]}", 412)
        value = convert("auto", params.get(f"fieldval{index}", ""))
        if name == "smsurl" and value and (not str(value).startswith(("http://", "https://"))
                                           or not str(value).isprintable() or " " in str(value)):
            raise RequestError(f"fieldval{index}: smsurl must be an http(s) URL template", 412)
        extra[name] = value
    return extra


#: This module's API functions (registered by build_registry).
fn = Functions()


@dataclass(frozen=True, kw_only=True, eq=False)
class ServerFunctions:
    """Gateways and traffic senders (addserver) and the route a number takes (routingtest)."""

    db: Database
    settings: Settings
    store: BillingStore

    @fn("addserver", Category.ADMIN, params=ADDSERVER_PARAMS)
    async def addserver(self, invocation: Invocation) -> ApiAnswer:
        """add a SIP server (gateway) or traffic sender, with a routing entry"""
        role = invocation.arg("u_type", "0").strip()
        if role not in ("0", "5", "9"):
            return error("u_type must be 0 (both), 5 (traffic sender) or 9 (SIP server)", 412)
        serverrole = {"0": ROLE_BOTH, "5": ROLE_SENDER, "9": ROLE_SERVER}[role]
        name = invocation.arg("u_name").strip()
        username = invocation.arg("u_username").strip() or re.sub(r"[^A-Za-z0-9_.@+\-]", "_", name)[:64]
        if not username or not NAME.match(username):
            return error("u_name or u_username is needed (letters, digits and _ . @ + -)", 421)
        if len(name) > 100 or not name.isprintable():
            return error("u_name must be at most 100 printable characters", 412)
        domain_text, ip_text = invocation.arg("u_domain").strip(), invocation.arg("u_ip").strip()
        if not domain_text and not ip_text:
            return error("u_domain or u_ip is needed", 421)
        domain, domain_port = _host_port(domain_text, "u_domain") if domain_text else ("", None)
        ip, ip_port = _host_port(ip_text, "u_ip") if ip_text else ("", None)
        if ip:
            try:
                ipaddress.ip_address(ip)
            except ValueError:
                return error(f"u_ip is not an IP address: {ip[:60]}", 412)
        given = invocation.arg("u_port")
        port = _port(given, "u_port") if given else (ip_port or domain_port or 5060)
        transport = invocation.arg("u_transport", "udp").strip().lower()
        if transport not in ("udp", "tcp", "tls"):
            return error("u_transport must be udp, tcp or tls", 412)
        proxy = invocation.arg("u_proxy").strip()
        if proxy:
            _host_port(proxy, "u_proxy")
        auth = invocation.arg("u_auth", "1").strip()
        if not DIGITS.match(auth) or len(auth) > 3:
            return error("u_auth must be a number (1: by IP address)", 412)
        password = invocation.arg("u_password") or secrets.token_urlsafe(12)
        if len(password) > 128 or not password.isprintable():
            return error("u_password must be at most 128 printable characters", 412)
        currency = (invocation.arg("u_currency") or self.settings.current.defaultcurrency).upper()
        if not re.fullmatch(r"[A-Z]{3}", currency):
            return error("u_currency must be a three-letter code", 412)
        credit = parse_amount(invocation.arg("u_credit") or "0", allow_zero=True)
        priority_text = invocation.arg("u_routingpriority", "0").strip() or "0"
        if not re.fullmatch(r"-?[0-9]{1,6}", priority_text):
            return error("u_routingpriority must be a whole number", 412)
        priority = int(priority_text)
        routing = invocation.arg("u_routing").strip()
        extra = _extra_fields(invocation, (await self.store.columns.tables()).get("tb_users", set()))
        store = self.store
        if await store.find_user(username) is not None:
            return error(f"username already exists: {username}", 412)
        await check_username(self.store, username, signup=False)
        db = self.db
        entry_name, entry_prefix = username, ""
        if routing and routing.lower() != "null":
            numeric = bool(DIGITS.match(routing)) and len(routing) < 19
            if numeric:
                found = await routing_entry_by_id(db, int(routing))
                if found is None:
                    return error(f"no routing entry with id {routing}", 404)
            else:
                found = await routing_entry_named(db, routing)
            entry_name, entry_prefix = found if found else (routing[:64], "")
        makes_route = routing.lower() != "null" and serverrole != ROLE_SENDER

        async def link(txn: Txn, userid: int) -> None:
            await set_user_columns(txn, userid, extra)
            if makes_route:
                await insert_route(txn, entry_name, entry_prefix, userid, priority, store.now())

        try:
            userid = await store.create_user(
                username, password, type=USER_TRAFFICSENDER if serverrole == ROLE_SENDER else USER_SIPSERVER,
                credit=credit, currency=currency, then=link, name=name, email=invocation.arg("u_email").strip()[:200],
                country=invocation.arg("u_country").strip()[:64], domain=domain, ip=ip, port=port, proxy=proxy,
                transport=transport, needauth=int(auth), serverrole=serverrole,
            )
        except Exception:
            if await store.find_user(username) is not None:
                return error(f"username already exists: {username}", 412)
            raise
        route = f"; routing entry {entry_name} prefix '{entry_prefix}' priority {priority}" if makes_route else ""
        return ok(f"{userid}{route}", [{"id": userid, "username": username, "password": password}])

    @fn("routingtest", Category.ADMIN, params=("ip", "caller", "called"))
    async def routingtest(self, invocation: Invocation) -> ApiAnswer:
        """the routes a call from ip/caller to called would try, in order"""
        called = invocation.require("called").strip()
        if len(called) > 64 or not called.isprintable():
            return error("called must be at most 64 printable characters", 412)
        router = Router(self.store)
        named, routes = await router.resolve(called)
        source = invocation.arg("ip").strip()
        sender = await router.sender(source) if source else None
        origin = f" (from traffic sender {sender})" if sender else ""
        # As a call from a phone goes: a user's forwarding first (always: straight to it).
        if named is not None:
            forwards = await self.store.routes.forwards(named[0])
            if forwards.always:
                origin += f" ({named[1]} forwards always to {forwards.always[:64]})"
                routes = await router.routes(forwards.always)
            elif forwards.busy or forwards.noanswer:
                origin += (f" ({named[1]} forwards" + (f" on busy to {forwards.busy[:64]}" if forwards.busy else "")
                           + (f" on no answer to {forwards.noanswer[:64]}" if forwards.noanswer else "") + ")")
        records = [route.record(order) for order, route in enumerate(routes, 1)]
        if not routes:
            return error(f"no route to {called[:64]}{origin}", 404)
        listing = ", ".join(f"{r.name} {r.target}" for r in routes)
        return ok(f"{len(routes)} routes{origin}: {listing}", records)
