"""Calls: p2p, callback, calls/call (live calls), discall, callrating.

p2p and callback place real calls through L{mizud.sip.calls}: leg A first
(anum for p2p, num for callback), then leg B (bnum; for a callback without
bnum, C{defcallbackivr} or else C{callbackaccessnumber}).  C{waitfor}=1
answers once leg A answered, 2 once both legs are connected (or either
failed), anything else at once with the call id.  Users may only start
calls whose first leg is their own (username, DIDs, cli/callback numbers)
unless C{p2panyanum} is on; admins may call for any user (C{username}).
"""

from __future__ import annotations

from dataclasses import dataclass
import re
from typing import TYPE_CHECKING, Any

from ...sip.calls import ANSWERED, CONNECTED, CallError, PlacedCall
from ...sip.routing import owns_number
from ...sip.sms import SENDER
from ...store.money import format_money
from ..answer import ApiAnswer, error, ok
from ..invocation import Invocation
from ..registry import Functions, REQ_ADMINS, Category
from ..request import RequestError
from ...text import canonical_id

if TYPE_CHECKING:  # pragma: no cover
    from ...config import Settings
    from ...store.billing import BillingStore

#: A number or username a call may go to (nothing a SIP URI's user part would need escaped).
NUMBER = re.compile(r"[A-Za-z0-9+*._-]{1,64}\Z")


def _number(invocation: Invocation, *names: str, required: bool = True) -> str:
    value = ""
    for name in names:
        value = invocation.arg(name).strip()
        if value:
            break
    if not value:
        if required:
            raise RequestError(f"missing parameter: {names[0]}", 421)
        return ""
    if not NUMBER.match(value):
        raise RequestError(f"{names[0]} is not a number or username: {value[:40]!r}", 412)
    return value


def _answer(placed: PlacedCall, text: str) -> ApiAnswer:
    return ok(f"{text} (max {format_money(placed.held)} {placed.currency} held)", [placed.record()])


#: This module's API functions (registered by build_registry).
fn = Functions()


@dataclass(frozen=True, kw_only=True, eq=False)
class CallFunctions:
    """Calls placed by the API (p2p, callback) and the live calls: listing, ending, rating."""

    settings: Settings
    sip: Any
    store: BillingStore

    async def _caller_for(self, invocation: Invocation) -> Any:
        """The user a call is for: the caller, or for admins the user named by C{username} if given."""
        admin = invocation.caller.level <= REQ_ADMINS
        name = invocation.arg("username").strip()
        if admin and name:
            user = await self.store.find_user(name)
            if user is None:
                raise RequestError(f"no such user: {name[:40]}", 404)
            return user
        return invocation.user()

    async def _place(self, invocation: Invocation, user: Any, kind: str, anum: str, bnum: str, cnum: str) -> ApiAnswer:
        sip = self.sip
        if sip is None:
            return error("SIP is not running on this node", 412)
        admin = invocation.caller.level <= REQ_ADMINS
        store = self.store
        if not admin and not self.settings.current.p2panyanum and not await owns_number(store, user.id, user.username,
                                                                                             anum):
            return error(f"{anum} is not one of your numbers (add it with cli or addcallbacknumber)", 412)
        if cnum and not admin:
            if not SENDER.match(cnum) or not await owns_number(store, user.id, user.username, cnum):
                return error("cnum must be your username or one of your numbers", 412)
        try:
            placed = await sip.calls.place(user, kind, anum, bnum, cnum)
        except CallError as problem:
            return error(str(problem), 412)
        waitfor = invocation.arg("waitfor").strip()
        level = {"1": ANSWERED, "2": CONNECTED}.get(waitfor)
        if level is None:
            return _answer(placed, f"call {placed.id} placed")
        await placed.wait(level)
        if placed.reached < level:
            await placed.wait(3)  # failed: wait for its CDRs so the answer can name them
            return ApiAnswer(False, f"call {placed.id} failed: {placed.outcome() or placed.stopping}", 412,
                             [placed.record()])
        return _answer(placed, f"call {placed.id} {'connected' if level == CONNECTED else 'answered by A'}")

    async def _visible(self, invocation: Invocation, callid: str) -> PlacedCall:
        """A live call of this node by id (or SIP Call-ID of either leg) that the caller may see."""
        sip = self.sip
        found: PlacedCall | None = None
        if sip is not None:
            number = canonical_id(callid)
            if number is not None:
                found = sip.calls.find(number)
            else:
                found = next((c for c in sip.calls.live.values() if callid in (c.a.call_id, c.b.call_id)), None)
        if found is None or (invocation.caller.level > REQ_ADMINS and found.user.id != invocation.user().id):
            raise RequestError(f"no live call {callid[:40]} on this node", 404)
        return found

    @fn("p2p", Category.USER, params=("bnum", "cnum", "waitfor", "anum"))
    async def p2p(self, invocation: Invocation) -> ApiAnswer:
        """phone to phone call: rings anum, then connects it to bnum"""
        user = await self._caller_for(invocation)
        anum = _number(invocation, "anum", required=False) or user.username
        return await self._place(invocation, user, "p2p", anum, _number(invocation, "bnum"),
                                 _number(invocation, "cnum", required=False))

    @fn("callback", Category.USER, params=("num", "bnum", "cnum", "waitfor"))
    async def callback(self, invocation: Invocation) -> ApiAnswer:
        """calls num back, then connects it to bnum or the callback IVR/access number"""
        num = _number(invocation, "num", "anum")
        config = self.settings.current
        bnum = _number(invocation, "bnum", required=False) or config.defcallbackivr or config.callbackaccessnumber
        if not bnum:
            return error("nothing to connect the callback to: give bnum, or set defcallbackivr", 412)
        if not NUMBER.match(bnum):
            return error("defcallbackivr is not a number or username", 412)
        return await self._place(invocation, await self._caller_for(invocation), "callback", num, bnum,
                                 _number(invocation, "cnum", required=False))

    async def live_calls(self, invocation: Invocation) -> ApiAnswer:
        """calls and call: the live calls of every node (a user's own; all for admins), this node's with their
        legs and state; the GSM SIM test call is not supported."""
        if invocation.arg("origsimid") or invocation.arg("telnum"):
            return error("not supported: simulated calls between GSM SIMs are specific to Mizu's VoIP-GSM gateways",
                         406)
        admin = invocation.caller.level <= REQ_ADMINS
        rows = await self.store.calls.listing(None if admin else invocation.user().id)
        sip = self.sip
        records = []
        for row in rows:
            local = sip.calls.find(row.id) if sip is not None else None
            if local is not None:
                records.append(local.record())
            else:
                records.append({"callid": row.id, "username": row.username, "kind": row.kind, "anum": row.anum,
                                "bnum": row.bnum, "state": row.state, "held": format_money(row.held),
                                "node": row.node})
        listing = ", ".join(f"{r['callid']} {r['anum']}->{r['bnum']} {r['state']}" for r in records)
        return ok(f"{len(records)} calls" + (f": {listing}" if listing else ""), records)

    fn("calls", Category.USER, "live calls (a user's own; all for admins)")(live_calls)

    fn("call", Category.USER, "live calls, like calls (the GSM SIM test call with origsimid/telnum: not supported)",
       ("origsimid", "telnum", "duration"))(
        live_calls)

    @fn("discall", Category.USER, params=("dbcallid",))
    async def discall(self, invocation: Invocation) -> ApiAnswer:
        """end a live call (a user's own; any for admins)"""
        placed = await self._visible(invocation, invocation.require("dbcallid").strip())
        who = invocation.caller.user.username if invocation.caller.user else "the API"
        placed.stop(f"ended by {who} (discall)")
        await placed.wait(3)
        return ok(f"call {placed.id} ended (cost {format_money(placed.cost)} {placed.currency})", [placed.record()])

    @fn("callrating", Category.USER, params=("username", "callid"))
    async def callrating(self, invocation: Invocation) -> ApiAnswer:
        """credit, maximum remaining duration and rate of a live call (without callid: the user's own, the latest if
        several)"""
        given = invocation.arg("callid").strip()
        note = ""
        if given:
            placed = await self._visible(invocation, given)
        else:
            # The spec's "rating for an ongoing call": without callid, the user's own live call.
            sip = self.sip
            mine = [c for c in (sip.calls.live.values() if sip is not None else ())
                    if c.user.id == invocation.user().id]
            if not mine:
                return error("no live call of yours on this node (give callid)", 404)
            placed = max(mine, key=lambda c: c.id)
            if len(mine) > 1:
                note = f" (call {placed.id}, the latest of {len(mine)} live calls)"
        name = invocation.arg("username").strip()
        if name and name != placed.user.username:
            return error(f"call {placed.id} is not {name[:40]}'s", 404)
        credit = await self.store.balance(placed.user.id)
        record = placed.record()
        record.update(credit=format_money(credit), rate=format_money(placed.rate()))
        return ok(f"credit {format_money(credit)} {placed.user.currency}, maxduration {record['maxduration']}, "
                  f"rating {format_money(placed.rate())} {placed.currency}/min{note}", [record])
