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
import re
from dataclasses import dataclass
from decimal import Decimal
from urllib.parse import quote

from twisted.logger import Logger

from ..billing.rating import normalise
from ..store.billing import USER_SIPSERVER, USER_TRAFFICSENDER, User
from ..store.sms import SmsRows
from .backend import Backend
from .ports import Texting
from .responses import SERVER
from .routing import Route, Router, owns_number

log = Logger()

#: Characters of one part: GSM 7-bit alone / in a multipart message, and UCS-2 alike.
GSM_SINGLE, GSM_MULTI, UCS_SINGLE, UCS_MULTI = 160, 153, 70, 67
#: The GSM 03.38 default alphabet, and its extension table (each of those takes two septets).
GSM_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM_EXTENDED = frozenset("^{}\\[~]|€\f")
#: A sender id (anum): a number or a short alphanumeric name, nothing that could break a header.
SENDER = re.compile(r"[A-Za-z0-9+._-]{1,32}\Z")
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
    """How many SMS parts the text needs (GSM 7-bit when every character has a septet, else UCS-2)."""
    if not unicode and all(ch in GSM_BASIC or ch in GSM_EXTENDED for ch in text):
        length = len(text) + sum(1 for ch in text if ch in GSM_EXTENDED)
        single, multi = GSM_SINGLE, GSM_MULTI
    else:
        length = len(text.encode("utf-16-le")) // 2  # UTF-16 units: an emoji takes two
        single, multi = UCS_SINGLE, UCS_MULTI
    return 1 if length <= single else math.ceil(length / multi)


class SmsSender:
    """Sends SMS for a L{SipCore}."""

    def __init__(self, core: Texting) -> None:
        self.core = core

    def _backend(self) -> Backend:
        backend = self.core.backend_of()
        if backend is None:
            raise SmsError("the server is starting")
        return backend

    def _rows(self) -> SmsRows:
        backend = self._backend()
        return backend.store.sms

    async def send(self, user: User, anum: str, bnum: str, text: str, *, unicode: bool = False,
                   wait: bool = True, admin: bool = False) -> Outcome:
        """Send one SMS for C{user}; with C{wait} False a gateway SMS is answered once held and queued."""
        backend = self._backend()
        if not text or len(text) > GSM_MULTI * MAX_PARTS:
            raise SmsError("txt must not be empty")
        count = parts(text, unicode)
        if count > MAX_PARTS:
            raise SmsError(f"txt needs more than {MAX_PARTS} parts")
        store = backend.store
        if anum:
            await self._check_sender(user, anum, admin)
        router = Router(store)
        recipient = await store.find_user(bnum) or await store.find_user_by_number(bnum)
        if recipient is not None and recipient.type not in (USER_TRAFFICSENDER, USER_SIPSERVER):
            smsid = await self._record(user, anum, recipient.username, text, count, "user", "sent", Decimal(0), 0)
            sent, _ = await self.core.messenger.send(user.username, [recipient], text)
            return Outcome(smsid, "sent" if sent else "stored", "user")
        number = normalise(bnum)
        if number is None:
            raise SmsError(f"bnum is neither a user nor a phone number: {bnum[:40]}")
        plan = user.tariffid or self.core.settings.current.defaulttariff
        tariff = backend.rater.table.lookup(plan, number)
        if tariff is None:
            raise SmsError(f"no tariff for {number}")
        if tariff.smsprice <= 0:
            # A tariff without an SMS price does not allow SMS (a delta cannot know the price).
            raise SmsError(f"no SMS price for {number} in the tariff")
        routes = [r for r in await router.routes(number) if r.kind == "gateway"]
        if not routes:
            raise SmsError(f"no route to {number}")
        cost = (tariff.smsprice * count).quantize(Decimal("0.000001"))
        # Held before anything is sent or recorded: no credit, no SMS.
        held = await store.hold(user.id, cost, reference=f"sms to {number}")
        holdid = int(held.get("holdid") or 0)
        try:
            smsid = await self._record(user, anum, number, text, count, "", "pending", cost, holdid)
        except Exception:
            await store.release(holdid)
            raise
        sender = anum or user.username
        if not wait:
            from twisted.internet import defer

            d = defer.ensureDeferred(self._deliver(smsid, holdid, cost, sender, number, text, routes))
            d.addErrback(lambda failure: log.failure("SMS {id} delivery failed", failure, id=smsid))
            return Outcome(smsid, "queued", "", cost)
        return await self._deliver(smsid, holdid, cost, sender, number, text, routes)

    async def _check_sender(self, user: User, anum: str, admin: bool) -> None:
        """anum must be a plain sender id; users may only use their own username or numbers."""
        if not SENDER.match(anum):
            raise SmsError("anum must be 1 to 32 letters, digits or + . _ -")
        if admin:
            return
        if not await owns_number(self._backend().store, user.id, user.username, anum):
            raise SmsError("anum must be your username or one of your numbers")

    async def _record(self, user: User, anum: str, bnum: str, text: str, count: int, route: str, status: str,
                      cost: Decimal, holdid: int) -> int:
        return await self._rows().record(user.id, anum, bnum, text, count, route, status, cost, holdid)

    async def _deliver(self, smsid: int, holdid: int, cost: Decimal, sender: str, number: str, text: str,
                       routes: list[Route]) -> Outcome:
        backend = self._backend()
        reasons = []
        delivered = ""
        try:
            for route in routes:
                try:
                    await self._through(route, sender, number, text)
                except Exception as problem:
                    reasons.append(f"{route.name}: {str(problem)[:100] or type(problem).__name__}")
                    continue
                delivered = route.name
                break
        finally:
            # Whatever happened above, the hold is closed exactly once.
            if delivered:
                await backend.store.settle(holdid, cost)
            else:
                await backend.store.release(holdid)
        if delivered:
            await self._finish_quietly(smsid, "delivered", delivered, "")
            return Outcome(smsid, "delivered", delivered, cost)
        reason = "; ".join(reasons)[:500]
        await self._finish_quietly(smsid, "failed", "", reason)
        log.info("SMS {id} to {number} failed: {reason}", id=smsid, number=number, reason=reason)
        return Outcome(smsid, "failed", "", Decimal(0), reason)

    async def _finish_quietly(self, smsid: int, status: str, route: str, reason: str) -> None:
        # The money is settled; a failure to update the log row must not turn the answer into an error.
        try:
            await self._finish(smsid, status, route, reason)
        except Exception:
            log.failure("SMS {id}: could not record its outcome", id=smsid)

    async def _finish(self, smsid: int, status: str, route: str, reason: str) -> None:
        await self._rows().finish(smsid, status, route, reason)

    async def _through(self, route: Route, sender: str, number: str, text: str) -> None:
        """Hand the SMS to one gateway; raises if it does not accept it."""
        row = await self._backend().store.routes.sms_gateway(route.name)
        if row is None:
            raise SmsError("gateway gone")
        if row[0]:
            await self._http(row[0], sender, number, text)
        else:
            await self._sip(route, sender, text, (row[1], row[2]))

    async def _http(self, template: str, sender: str, number: str, text: str) -> None:
        import treq

        if not template.startswith(("http://", "https://")):
            raise SmsError("smsurl is not an http(s) URL")
        url = (template.replace("{from}", quote(sender, safe="")).replace("{to}", quote(number, safe=""))
               .replace("{text}", quote(text, safe="")))

        async def exchange() -> int:
            response = await treq.get(url, timeout=HTTP_TIMEOUT, reactor=self.core.clock, allow_redirects=False)
            await response.content()
            return int(response.code)

        from twisted.internet import defer

        # One deadline for the whole exchange (treq's covers only the headers).
        code = await defer.ensureDeferred(exchange()).addTimeout(HTTP_TIMEOUT, self.core.clock)
        if not 200 <= code < 300:
            raise SmsError(f"HTTP {code}")

    async def _sip(self, route: Route, sender: str, text: str, account: tuple[str, str]) -> None:
        core = self.core
        send, local, reliable, peer = await core.destination(route)
        realm = core.settings.current.siprealm or SERVER
        request = core.request("MESSAGE", route.target, f"sip:{sender}@{realm}", route.target, local, "udp")
        request.add("Content-Type", "text/plain;charset=UTF-8")
        request.body = text.encode("utf-8")
        response = await core.clients.start(request, send, reliable=reliable, peer=peer)
        if response.status in (401, 407):
            # The gateway challenges: answer once with its account (addserver's u_username/u_password).
            retry = core.authorised(request, response, account)
            if retry is None:
                raise SmsError(f"SIP {response.status}: a challenge mizud cannot answer")
            response = await core.clients.start(retry, send, reliable=reliable, peer=peer)
        if not 200 <= response.status < 300:
            raise SmsError(f"SIP {response.status} {response.reason}"[:100])
