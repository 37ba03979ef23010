"""Registrations, presence and instant messages: the SIP layer's state through the API.

status, verifyuser, presence_get, presence_set, sendim (users); reguser,
regstat, endpoints, epreg, unreg, fastregusers (admins).  Everything but
fastregusers (this node's recent REGISTERs) and the connection counts
reads the database, so every node answers the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from ...store.registrations import Bindings
from ...sip.registrar import describe
from ..answer import ApiAnswer, error, ok
from ..invocation import Invocation
from ..registry import Functions, Category

if TYPE_CHECKING:  # pragma: no cover
    from ...store.billing import BillingStore

#: A presence_set this recent counts as online even without a SIP registration (webphones poll).
PRESENCE_FRESH = timedelta(minutes=10)
MAX_NAMES = 500
MAX_TEXT = 4000
MAX_STATUS = 200
OFFLINE_MARK = "XOFFMESSAGE:"


def _session_record(session: Any) -> dict[str, Any]:
    """A web client's session in the shape of reguser's contact records."""
    return {"username": session.username, "contact": f"websession {session.sessionid}", "address": session.address,
            "transport": f"api-{session.transport}", "useragent": f"{session.brandname} {session.version}".strip(),
            "q": "", "expires": "", "registered": session.created.isoformat(sep=" ", timespec="seconds")}


def _names(text: str) -> list[str]:
    names = [name.strip() for name in text.replace(";", ",").split(",") if name.strip()]
    return list(dict.fromkeys(names))


#: This module's API functions (registered by build_registry).
fn = Functions()


@dataclass(frozen=True, kw_only=True, eq=False)
class SipStateFunctions:
    """What SIP knows of users: status, registrations, endpoints, presence and instant messages."""

    sip: Any
    store: BillingStore

    def _bindings(self, invocation: Invocation) -> Bindings:
        return self.store.registrations

    async def _offline_messages(self, invocation: Invocation) -> str:
        """The caller's stored messages in the spec's XOFFMESSAGE form (taken: marked delivered)."""
        sip = self.sip
        user = invocation.caller.user
        if sip is None or user is None:
            return ""
        taken = await sip.messenger.hand_over(user.id)
        if not taken:
            return ""
        parts = [f"{OFFLINE_MARK}{m.fromuser}:{m.body.replace(OFFLINE_MARK, 'XOFFMESSAGE ')}" for m in taken]
        return "".join(parts) + OFFLINE_MARK

    async def presence_of(self, invocation: Invocation, names: list[str]) -> dict[str, str]:
        """Each name's presence: its presence_set status or "online" when registered or fresh, else "offline"."""
        now = self.store.now()
        found: dict[str, str] = {}
        for username, status, when, live, until in await self.store.presence.of_users(names):
            # Fresh: set lately through the API (webphones poll), or published over SIP and not lapsed.
            fresh = (when is not None and now - when <= PRESENCE_FRESH) or (until is not None and until > now)
            found[username] = (status or "online") if int(live) or fresh else "offline"
        return {name: found.get(name, "unknown") for name in names}

    @fn("status", Category.USER)
    async def status(self, invocation: Invocation) -> ApiAnswer:
        """own online status: 0 doesn't exist, 1 offline, 2 online, 3 calling, 4 speaking"""
        return ok(str(await self._bindings(invocation).status(invocation.user().username)))

    @fn("verifyuser", Category.USER, params=("userusername",))
    async def verifyuser(self, invocation: Invocation) -> ApiAnswer:
        """a user's online status: 0 doesn't exist, 1 offline, 2 online, 3 calling, 4 speaking"""
        name = invocation.arg("userusername") or invocation.arg("username") or invocation.require("userusername")
        return ok(str(await self._bindings(invocation).status(name)))

    @fn("presence_get", Category.USER, params=("userusername", "ptype", "domain"))
    async def presence_get(self, invocation: Invocation) -> ApiAnswer:
        """presence of users (comma list): OK: puserlist: user1:status1,... (stored messages come with presence_set)"""
        names = _names(invocation.arg("userusername") or invocation.arg("userlist")
                       or invocation.require("userusername"))
        if len(names) > MAX_NAMES:
            return error(f"at most {MAX_NAMES} users per request", 412)
        found = await self.presence_of(invocation, names)
        # Only the list: clients split it on "," and ":", and the spec hands stored messages over in
        # presence_set's answer (the webphone reads them only there).
        return ok("puserlist: " + ",".join(f"{name}:{state}" for name, state in found.items()))

    @fn("presence_set", Category.USER, params=("pstatus", "ptype"))
    async def presence_set(self, invocation: Invocation) -> ApiAnswer:
        """set own presence status text; the answer carries stored messages as XOFFMESSAGE:from:text..."""
        user = invocation.user()
        text = invocation.arg("pstatus").strip()
        if len(text) > MAX_STATUS or any(ch in text for ch in ",:\r\n"):
            return error(f"pstatus must be at most {MAX_STATUS} characters without , : or line breaks", 412)
        await self.store.presence.set(user.id, text)
        return ok(f"presence set{await self._offline_messages(invocation)}")

    @fn("sendim", Category.USER, params=("bnum", "txt"))
    async def sendim(self, invocation: Invocation) -> ApiAnswer:
        """send a chat message (SIP MESSAGE) to a user or a comma list of users"""
        sender = invocation.user()
        names = _names(invocation.arg("bnum") or invocation.arg("buserlist") or invocation.require("bnum"))
        text = invocation.require("txt")
        if len(text) > MAX_TEXT:
            return error(f"txt longer than {MAX_TEXT} characters", 412)
        if len(names) > MAX_NAMES:
            return error(f"at most {MAX_NAMES} recipients", 412)
        sip = self.sip
        if sip is None:
            return error("SIP is not running on this node", 412)
        recipients: list[Any] = []
        unknown = []
        for name in names:
            user = await self.store.find_user(name)
            (recipients.append(user) if user is not None else unknown.append(name))
        if unknown:
            return error(f"unknown user: {','.join(unknown)[:200]}", 404)
        sent, stored = await sip.messenger.send(sender.username, recipients, text)
        return ok(f"message for {len(recipients)} users: {sent} sent to registered devices, "
                  f"{stored} stored until online")

    @fn("reguser", Category.ADMIN, params=("usr",))
    async def reguser(self, invocation: Invocation) -> ApiAnswer:
        """registered users and devices (SIP contacts and web clients' sessions): empty lists users, all (or x)
        every device, or one username's devices"""
        which = invocation.arg("usr").strip()
        now = self.store.now()
        everyone = not which or which.lower() in ("all", "x")  # the spec's own admin example asks with usr=x
        bindings = await self._bindings(invocation).all("" if everyone else which)
        sessions = await self.store.presence.sessions("" if everyone else which)
        if not which:
            users: dict[str, int] = {}
            for name in [b.username for b in bindings] + [s.username for s in sessions]:
                users[name] = users.get(name, 0) + 1
            records = [{"username": name, "devices": count} for name, count in users.items()]
            return ok(f"{len(users)} registered users: {','.join(users)[:2000]}", records)
        if not everyone and not bindings and not sessions:
            return error(f"{which[:64]} is not registered", 404)
        records = [describe(binding, now) for binding in bindings] + [_session_record(s) for s in sessions]
        suffix = f", {len(sessions)} web sessions" if sessions else ""
        return ok(f"{len(bindings)} contacts{suffix}", records)

    @fn("regstat", Category.ADMIN)
    async def regstat(self, invocation: Invocation) -> ApiAnswer:
        """registrar statistics"""
        bindings = await self._bindings(invocation).all()
        by_transport: dict[str, int] = {}
        for binding in bindings:
            by_transport[binding.transport] = by_transport.get(binding.transport, 0) + 1
        users = len({b.userid for b in bindings})
        record: dict[str, Any] = {
            "users": users, "contacts": len(bindings),
            **{f"transport_{name}": count for name, count in sorted(by_transport.items())},
        }
        sip = self.sip
        if sip is not None:
            for name in ("registrations", "challenges", "auth_failures", "messages", "bad_messages", "requests"):
                record[f"node_{name}"] = sip.stats[name]
            record["node_connections"] = len(sip.connections)
        details = ", ".join(f"{key}: {value}" for key, value in list(record.items())[2:])
        return ok(f"{users} users registered with {len(bindings)} contacts" + (f"; {details}" if details else ""),
                  [record])

    @fn("endpoints", Category.ADMIN)
    async def endpoints(self, invocation: Invocation) -> ApiAnswer:
        """endpoints: each registered device address (and web client) with its users"""
        bindings = await self._bindings(invocation).all()
        seen: dict[tuple[str, str], dict[str, Any]] = {}
        sip = self.sip
        devices = [(b.transport, b.address, b.useragent, b.username) for b in bindings] + [
            (f"api-{s.transport}", s.address, f"{s.brandname} {s.version}".strip(), s.username)
            for s in await self.store.presence.sessions()]
        for transport, address, useragent, username in devices:
            key = (transport, address)
            entry = seen.setdefault(key, {"address": address, "transport": transport, "useragent": useragent,
                                          "users": []})
            if username not in entry["users"]:
                entry["users"].append(username)
        records = []
        for (transport, address), entry in seen.items():
            host, _, port = address.rpartition(":")
            connected = (sip is not None and not transport.startswith("api-")
                         and (transport, host.strip("[]"), int(port or 0)) in sip.connections)
            records.append({**entry, "users": ",".join(entry["users"]), "connected_here": int(connected)})
        return ok(f"{len(records)} endpoints", records)

    @fn("epreg", Category.ADMIN, params=("regtype", "regstate"))
    async def epreg(self, invocation: Invocation) -> ApiAnswer:
        """registrar endpoints: regtype a transport (udp, tcp, tls, ws; empty all), regstate 1 registered (default)
        or 0 expired and not yet swept"""
        transport = invocation.arg("regtype").strip().lower()
        if transport and transport not in ("udp", "tcp", "tls", "ws", "wss"):
            return error("regtype must be udp, tcp, tls, ws or wss", 412)
        state = invocation.arg("regstate", "1").strip()
        if state not in ("0", "1"):
            return error("regstate must be 1 (registered) or 0 (expired)", 412)
        now = self.store.now()
        bindings = await self._bindings(invocation).all(transport=transport, live=state == "1")
        return ok(f"{len(bindings)} registrations", [describe(b, now) for b in bindings])

    @fn("unreg", Category.ADMIN, params=("username", "ip", "mode"))
    async def unreg(self, invocation: Invocation) -> ApiAnswer:
        """unregister a user or "all" (optionally only from one ip); mode 1 also closes their TCP/TLS connections"""
        name = invocation.require("username")
        address = invocation.arg("ip").strip()
        mode = invocation.arg("mode", "0").strip()
        if mode not in ("0", "1"):
            return error("mode must be 0 (unregister) or 1 (remove)", 412)
        bindings = await self._bindings(invocation).all("" if name.lower() == "all" else name)
        names = await self._bindings(invocation).remove("" if name.lower() == "all" else name, address)
        closed = 0
        sip = self.sip
        if mode == "1" and sip is not None:
            for binding in bindings:
                host, _, port = binding.address.rpartition(":")
                connection = sip.connections.get((binding.transport, host.strip("[]"), int(port or 0)))
                if connection is not None and (not address or host.strip("[]") == address):
                    connection.transport.loseConnection()
                    closed += 1
        if not names:
            return ok(f"{name} was not registered")
        suffix = f"; {closed} connections closed" if mode == "1" else ""
        return ok(f"unregistered {len(names)} users: {','.join(names)[:500]}{suffix}")

    @fn("fastregusers", Category.ADMIN, params=("succ",))
    async def fastregusers(self, invocation: Invocation) -> ApiAnswer:
        """this node's latest REGISTER per user: succ (default) the successful ones, all also the failed"""
        which = (invocation.arg("succ") or "succ").strip().lower()
        if which not in ("succ", "all"):
            return error("the parameter must be succ or all", 412)
        sip = self.sip
        if sip is None:
            return ok("0 users", [])
        now = sip.clock.seconds()
        records = [
            {"username": name, "result": "ok" if attempt.ok else "failed", "address": attempt.address,
             "transport": attempt.transport, "contacts": attempt.contacts, "seconds_ago": int(now - attempt.when)}
            for name, attempt in reversed(sip.registrar.recent.items()) if attempt.ok or which == "all"
        ]
        return ok(f"{len(records)} users", records)
