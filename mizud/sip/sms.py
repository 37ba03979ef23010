"""SMS: to SIP users as stored-and-forwarded MESSAGEs, to phone numbers through gateways.

A message to a username (or a DID assigned to a user) is an instant
message: free, stored while the user is offline.  A message to a phone
number is rated per part from the sender's tariff (`smsprice`), the cost
is held before anything is sent, and the routed gateways are tried in
order: a gateway with an `smsurl` gets an HTTP GET of that template (with
{from}, {to} and {text} filled in, URL-encoded; any 2xx is success), any
other gets a SIP MESSAGE to its address (any 2xx is success).  Success
settles the hold, failure of every route releases it: the sender pays
exactly for what was delivered to a gateway.  Each SMS is a row of tb_sms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING
from urllib.parse import quote

from twisted.logger import Logger

from ..billing.rating import normalise
from ..store.billing import USER_SIPSERVER, USER_TRAFFICSENDER, User
from .core import SERVER
from .routing import Route, Router

if TYPE_CHECKING:
    from .core import SipCore

log = Logger()

#: Characters of one part: GSM 7-bit alone / in a multipart message, and UCS-2 alike.
GSM_SINGLE, GSM_MULTI, UCS_SINGLE, UCS_MULTI = 160, 153, 70, 67
MAX_PARTS = 10
HTTP_TIMEOUT = 20


class SmsError(Exception):
    """The SMS cannot be sent; the message says why."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one SMS."""

    smsid: int
    status: str  # sent, stored, delivered, failed, queued
    route: str = ""
    cost: Decimal = Decimal(0)
    reason: str = ""


def parts(text: str, unicode: bool) -> int:
    """How many SMS parts the text needs."""
    wide = unicode or not text.isascii()
    single, multi = (UCS_SINGLE, UCS_MULTI) if wide else (GSM_SINGLE, GSM_MULTI)
    return 1 if len(text) <= single else math.ceil(len(text) / multi)


class SmsSender:
    """Sends SMS for a L{SipCore}."""

    def __init__(self, core: SipCore) -> None:
        self.core = core

    async def send(self, user: User, anum: str, bnum: str, text: str, *, unicode: bool = False,
                   wait: bool = True) -> Outcome:
        """Send one SMS for C{user}; with C{wait} False a gateway SMS is answered once held and queued."""
        api = self.core.api_of()
        if api is None:
            raise SmsError("the server is starting")
        if not text or len(text) > UCS_MULTI * MAX_PARTS:
            raise SmsError(f"txt must be 1 to {UCS_MULTI * MAX_PARTS} characters")
        count = parts(text, unicode)
        if count > MAX_PARTS:
            raise SmsError(f"txt needs more than {MAX_PARTS} parts")
        store = api.store
        router = Router(api.db, store.now)
        recipient = await store.find_user(bnum) or await store.find_user_by_number(bnum)
        if recipient is not None and recipient.type not in (USER_TRAFFICSENDER, USER_SIPSERVER):
            smsid = await self._record(user, anum, recipient.username, text, count, "user", "sent", Decimal(0), 0)
            sent, _ = await self.core.messenger.send(user.username, [recipient], text)
            return Outcome(smsid, "sent" if sent else "stored", "user")
        number = normalise(bnum)
        if number is None:
            raise SmsError(f"bnum is neither a user nor a phone number: {bnum[:40]}")
        plan = user.tariffid or api.settings.current.defaulttariff
        tariff = api.rater.table.lookup(plan, number)
        if tariff is None:
            raise SmsError(f"no tariff for {number}")
        routes = [r for r in await router.routes(number) if r.kind == "gateway"]
        if not routes:
            raise SmsError(f"no route to {number}")
        cost = (tariff.smsprice * count).quantize(Decimal("0.000001"))
        holdid = 0
        if cost > 0:
            # Held before anything is sent or recorded: no credit, no SMS.
            held = await store.hold(user.id, cost, reference=f"sms to {number}")
            holdid = int(held.get("holdid") or 0)
        smsid = await self._record(user, anum, number, text, count, "", "pending", cost, holdid)
        if not wait:
            from twisted.internet import defer

            defer.ensureDeferred(self._deliver(smsid, holdid, cost, anum or user.username, number, text, routes))
            return Outcome(smsid, "queued", "", cost)
        return await self._deliver(smsid, holdid, cost, anum or user.username, number, text, routes)

    async def _record(self, user: User, anum: str, bnum: str, text: str, count: int, route: str, status: str,
                      cost: Decimal, holdid: int) -> int:
        api = self.core.api_of()
        result = await api.db.run_statement(
            "sms_record",
            "INSERT INTO tb_sms (userid, anum, bnum, body, parts, route, status, cost, holdid, created) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (user.id, anum[:64], bnum[:64], text, count, route, status, cost, holdid, api.store.now()),
        )
        return int(result.rows[0][0])

    async def _deliver(self, smsid: int, holdid: int, cost: Decimal, sender: str, number: str, text: str,
                       routes: list[Route]) -> Outcome:
        api = self.core.api_of()
        reasons = []
        for route in routes:
            try:
                await self._through(route, sender, number, text)
            except Exception as problem:
                reasons.append(f"{route.name}: {str(problem)[:100] or type(problem).__name__}")
                continue
            if holdid:
                await api.store.settle(holdid, cost)
            await self._finish(smsid, "delivered", route.name, "")
            return Outcome(smsid, "delivered", route.name, cost)
        if holdid:
            await api.store.release(holdid)
        reason = "; ".join(reasons)[:500]
        await self._finish(smsid, "failed", "", reason)
        log.info("SMS {id} to {number} failed: {reason}", id=smsid, number=number, reason=reason)
        return Outcome(smsid, "failed", "", Decimal(0), reason)

    async def _finish(self, smsid: int, status: str, route: str, reason: str) -> None:
        api = self.core.api_of()
        await api.db.run_statement(
            "sms_finish", "UPDATE tb_sms SET status = ?, route = ?, reason = ?, finished = ? WHERE id = ?",
            (status, route, reason, api.store.now(), smsid))

    async def _through(self, route: Route, sender: str, number: str, text: str) -> None:
        """Hand the SMS to one gateway; raises if it does not accept it."""
        api = self.core.api_of()
        row = (await api.db.run_query("sms_gateway", "SELECT smsurl, domain, ip, port FROM tb_users WHERE username = ?",
                                      (route.name,))).one()
        if row is None:
            raise SmsError("gateway gone")
        template = row[0]
        if template:
            await self._http(template, sender, number, text)
        else:
            await self._sip(route, row[1], row[2], int(row[3]), sender, number, text)

    async def _http(self, template: str, sender: str, number: str, text: str) -> None:
        import treq

        url = (template.replace("{from}", quote(sender, safe="")).replace("{to}", quote(number, safe=""))
               .replace("{text}", quote(text, safe="")))
        response = await treq.get(url, timeout=HTTP_TIMEOUT, reactor=self.core.clock)
        await response.content()
        if not 200 <= response.code < 300:
            raise SmsError(f"HTTP {response.code}")

    async def _sip(self, route: Route, domain: str, ip: str, port: int, sender: str, number: str, text: str) -> None:
        core = self.core
        host = ip or domain
        if not ip:
            host = await core.clock.resolve(domain)
        if not core.udp_sockets:
            raise SmsError("no UDP socket to send from")
        write, local = core.udp_sockets[0]
        local = core._reachable(local, host)
        realm = core.settings.current.siprealm or SERVER
        request = core.request("MESSAGE", route.target, f"sip:{sender}@{realm}", route.target, local, "udp")
        request.add("Content-Type", "text/plain;charset=UTF-8")
        request.body = text.encode("utf-8")
        destination = (host, port or 5060)
        response = await core.clients.start(request, lambda data: write(data, destination), reliable=False)
        if not 200 <= response.status < 300:
            raise SmsError(f"SIP {response.status} {response.reason}"[:100])
