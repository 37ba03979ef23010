"""Call detail records: cdr (lists and summaries) and gencdr (test records).

cdr parameters (spec): caller, called, maxcount, days (today, lastweek,
lastmonth, thismonth or a number of days), dir (all, in, out), type (all,
connected, notconnected), prefix, fields (min, normal, all), summary (no,
yes), by (all, day, caller, called), order (date, caller, called, user),
and offset for paging.  Days are calendar days in UTC.  End users see their
own records, resellers and owners also their customers' (parentid), admins
all.  Lists are ordered by the chosen key, then by id, so paging with
offset is stable.  `caller` matches the caller id, or for a number the
billed user's id as well (the spec's "calls from user id 123").
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
import random
from typing import TYPE_CHECKING, Any

from ...store.billing import USER_OWNER, USER_RESELLER
from ...store.cdrs import (CDR_GROUPINGS, CDR_ORDERS, CdrFilter, GeneratedCdr, cdr_list, cdr_summary, cdr_totals,
                           insert_generated)
from ...store.money import format_money
from ..answer import ApiAnswer, error, ok
from ..invocation import Invocation
from ..registry import Functions, REQ_ADMINS, Category
from ..request import RequestError
from ...text import ascii_digits, ascii_int, canonical_id

if TYPE_CHECKING:  # pragma: no cover
    from ...billing.rating import Rater
    from ...config import Settings
    from ...store.billing import BillingStore
    from ...store.database import Database

FIELDS = {
    "min": ("id", "datum", "callednumber", "duration", "cost"),
    "normal": ("id", "datum", "callerid", "callednumber", "duration", "cost", "direction", "disconnectreason"),
    "all": ("id", "datum", "userid", "callerid", "callednumber", "duration", "cost", "gatewaycost", "direction",
            "disconnectreason", "sipcallid", "gateway"),
}
MONEY = ("cost", "gatewaycost", "profit")


def since(days: str, now: datetime) -> datetime:
    """The start of the period the days parameter names."""
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    period = days.strip().lower() or "lastmonth"
    named = {
        "today": today,
        "lastweek": today - timedelta(days=7),
        "lastmonth": today - timedelta(days=30),
        "thismonth": today.replace(day=1),
    }
    if period in named:
        return named[period]
    count = ascii_int(period, 1, 3660)
    if count is not None:
        return today - timedelta(days=count - 1)
    raise RequestError("days must be today, lastweek, lastmonth, thismonth or a number of days (1 to 3660)", 412)


def _choice(invocation: Invocation, name: str, allowed: tuple[str, ...], default: str) -> str:
    value = invocation.arg(name, default).strip().lower()
    if value not in allowed:
        raise RequestError(f"{name} must be one of {', '.join(allowed)}", 412)
    return value


#: This module's API functions (registered by build_registry).
fn = Functions()


def _visibility(invocation: Invocation) -> tuple[int | None, bool]:
    """The records this caller may see, as (viewer, customers): (None, False) for admins (all), else the
    caller's own, and with customers (resellers and owners) those of its customers (parentid)."""
    if invocation.caller.level <= REQ_ADMINS:
        return None, False
    user = invocation.caller.user
    if user is None:
        raise RequestError("cdr needs authid (the user)", 421)
    return user.id, user.type in (USER_RESELLER, USER_OWNER)


def _record(columns: tuple[str, ...], row: tuple[Any, ...]) -> dict[str, Any]:
    """One CDR of a list as the answer shows it (money formatted, the time to the second)."""
    record: dict[str, Any] = {}
    for column, value in zip(columns, row):
        if column in MONEY:
            value = format_money(value)
        elif column == "datum":
            value = value.isoformat(sep=" ", timespec="seconds")
        record[column] = value
    return record


@dataclass(frozen=True, kw_only=True, eq=False)
class CdrFunctions:
    """The call records: listing, summaries and generated test records."""

    db: Database
    rater: Rater
    settings: Settings
    store: BillingStore

    @fn("cdr",
        Category.USER,
        params=("caller", "called", "maxcount", "days", "dir", "type", "prefix", "fields", "summary", "by", "order"))
    async def cdr(self, invocation: Invocation) -> ApiAnswer:
        """call detail records: lists and summaries"""
        start = since(invocation.arg("days"), self.store.now())
        viewer, customers = _visibility(invocation)
        caller = invocation.arg("caller").strip() or None
        called = invocation.arg("called").strip() if invocation.arg("called") else None
        prefix = invocation.arg("prefix").strip().lstrip("+")
        if prefix and (not ascii_digits(prefix) or len(prefix) > 32):
            return error("prefix must be digits", 412)
        direction = _choice(invocation, "dir", ("all", "in", "out"), "all")
        kind = _choice(invocation, "type", ("all", "connected", "notconnected"), "all")
        where = CdrFilter(
            since=start, viewer=viewer, customers=customers, caller=caller,
            caller_userid=canonical_id(caller) if caller else None, called=called, prefix=prefix or None,
            direction=None if direction == "all" else direction,
            connected={"all": None, "connected": True, "notconnected": False}[kind],
        )
        fields = _choice(invocation, "fields", ("min", "normal", "all"), "normal")
        by = invocation.arg("by").strip().lower()
        admin = invocation.caller.level <= REQ_ADMINS
        if by:
            if by not in CDR_GROUPINGS:
                return error("by must be one of all, day, caller, called", 412)
            profit = admin and fields == "all"
            records = []
            for group in await cdr_summary(self.db, where, by, profit):
                record: dict[str, Any] = {by: group.key, "calls": group.calls, "connected": group.connected,
                                          "duration": group.duration, "cost": format_money(group.cost)}
                if group.profit is not None:
                    record["profit"] = format_money(group.profit)
                records.append(record)
            total = sum(r["calls"] for r in records)
            return ok(f"{total} calls", records)
        count = invocation.integer("maxcount", 1, 10000, 100)
        offset = invocation.integer("offset", 0, 10_000_000, 0)
        order = _choice(invocation, "order", CDR_ORDERS, "date")
        columns = FIELDS[fields]
        rows = await cdr_list(self.db, where, columns, order, count, offset)
        records = [_record(columns, row) for row in rows]
        message = f"{len(records)} calls"
        if _choice(invocation, "summary", ("no", "yes"), "no") == "yes":
            totals = await cdr_totals(self.db, where)
            message += f"; total {totals.calls} calls, {totals.seconds} s, cost {format_money(totals.cost)}"
        return ok(message, records)

    @fn("gencdr", Category.ADMIN, params=("count", "userid", "days"))
    async def gencdr(self, invocation: Invocation) -> ApiAnswer:
        """generate test CDRs priced by the rating engine (marked generated: never charged, rebill leaves them
        alone)"""
        count = invocation.integer("count", 1, 10000, 10)
        days = invocation.integer("days", 1, 366, 1)
        own = str(invocation.caller.user.id) if invocation.caller.user else ""
        userid = canonical_id(invocation.arg("userid") or own)
        user = await self.store.get_user(userid) if userid is not None else None
        if user is None:
            return error("gencdr needs userid (an existing user)", 404)
        rng = random.Random()
        now = self.store.now()
        plan = user.tariffid or self.settings.current.defaulttariff
        rows = []
        for _ in range(count):
            number = "".join(rng.choice("0123456789") for _ in range(11))
            duration = rng.choice([0, 0, rng.randint(1, 900)])
            tariff = self.rater.table.lookup(plan, number)
            cost = tariff.cost(duration) if tariff else Decimal(0)
            when = now - timedelta(seconds=rng.randint(0, days * 86400 - 1))
            rows.append(GeneratedCdr(when, user.username, number, user.id, duration, cost, "out",
                                     "normal" if duration else "no answer", f"gencdr-{rng.getrandbits(64):016x}"))
        made = await insert_generated(self.db, rows)
        return ok(f"{made} CDRs generated for {user.username}")
