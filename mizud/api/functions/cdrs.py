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

import random
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from ...store.billing import USER_OWNER, USER_RESELLER
from ...store.money import format_money
from ..answer import ApiAnswer, error, ok
from ..dispatcher import Call
from ..registry import REQ_ADMINS, Category, Registry
from ..request import RequestError
from ...text import ascii_digits, ascii_int, canonical_id

FIELDS = {
    "min": ("id", "datum", "callednumber", "duration", "cost"),
    "normal": ("id", "datum", "callerid", "callednumber", "duration", "cost", "direction", "disconnectreason"),
    "all": ("id", "datum", "userid", "callerid", "callednumber", "duration", "cost", "gatewaycost", "direction",
            "disconnectreason", "sipcallid", "gateway"),
}
ORDER = {"date": "datum DESC", "caller": "callerid", "called": "callednumber", "user": "userid"}
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


def _choice(call: Call, name: str, allowed: tuple[str, ...], default: str) -> str:
    value = call.arg(name, default).strip().lower()
    if value not in allowed:
        raise RequestError(f"{name} must be one of {', '.join(allowed)}", 412)
    return value


def register(registry: Registry) -> None:
    """Register this module's handlers."""
    fn = registry.function

    @fn("cdr", Category.USER, "call detail records: lists and summaries",
        ("caller", "called", "maxcount", "days", "dir", "type", "prefix", "fields", "summary", "by", "order"))
    async def cdr(call: Call) -> ApiAnswer:
        api = call.api
        engine = api.db.engine
        where = ["datum >= ?"]
        params: list[Any] = [since(call.arg("days"), api.store.now())]
        visibility = _visibility(call)
        if visibility:
            where.append(visibility[0])
            params.extend(visibility[1])
        caller = call.arg("caller").strip()
        if caller:
            userid = canonical_id(caller)
            if userid is not None:
                where.append("(callerid = ? OR userid = ?)")
                params.extend([caller, userid])
            else:
                where.append("callerid = ?")
                params.append(caller)
        if call.arg("called"):
            where.append("callednumber = ?")
            params.append(call.arg("called").strip())
        prefix = call.arg("prefix").strip().lstrip("+")
        if prefix:
            if not ascii_digits(prefix) or len(prefix) > 32:
                return error("prefix must be digits", 412)
            where.append("substr(callednumber, 1, ?) = ?")
            params.extend([len(prefix), prefix])
        direction = _choice(call, "dir", ("all", "in", "out"), "all")
        if direction != "all":
            where.append("direction = ?")
            params.append(direction)
        kind = _choice(call, "type", ("all", "connected", "notconnected"), "all")
        if kind == "connected":
            where.append("duration > 0")
        elif kind == "notconnected":
            where.append("duration = 0")
        fields = _choice(call, "fields", ("min", "normal", "all"), "normal")
        by = call.arg("by").strip().lower()
        condition = " AND ".join(where)
        money = engine.money
        admin = call.caller.level <= REQ_ADMINS
        if by:
            groups = {"all": "'all'", "day": engine.day("datum"), "caller": "callerid", "called": "callednumber"}
            if by not in groups:
                return error("by must be one of all, day, caller, called", 412)
            profit = ", coalesce(sum(cost), 0) - coalesce(sum(gatewaycost), 0)" if admin and fields == "all" else ""
            # by=all is one aggregate row (always present, even for no calls).
            grouping = "" if by == "all" else f" GROUP BY {groups[by]} ORDER BY 1 LIMIT 10000"
            sql = (
                f"SELECT {groups[by]} AS grp, count(*), sum(CASE WHEN duration > 0 THEN 1 ELSE 0 END), "
                f"coalesce(sum(duration), 0), coalesce(sum(cost), 0){profit} FROM tb_cdrs WHERE {condition}{grouping}"
            )
            result = await api.db.run_statement("cdr_summary", sql, params)
            records = []
            for row in result.rows:
                record = {by: row[0], "calls": int(row[1]), "connected": int(row[2] or 0),
                          "duration": int(row[3] or 0), "cost": format_money(money(row[4]))}
                if profit:
                    record["profit"] = format_money(money(row[5]))
                records.append(record)
            total = sum(r["calls"] for r in records)
            return ok(f"{total} calls", records)
        count = call.integer("maxcount", 1, 10000, 100)
        offset = call.integer("offset", 0, 10_000_000, 0)
        order = ORDER[_choice(call, "order", tuple(ORDER), "date")]
        columns = FIELDS[fields]
        sql = (
            f"SELECT {', '.join(columns)} FROM tb_cdrs WHERE {condition} "
            f"ORDER BY {order}, id DESC LIMIT {count} OFFSET {offset}"
        )
        result = await api.db.run_statement("cdr_list", sql, params)
        records = [_record(columns, row, engine) for row in result.rows]
        message = f"{len(records)} calls"
        if _choice(call, "summary", ("no", "yes"), "no") == "yes":
            totals = (
                await api.db.run_statement(
                    "cdr_totals",
                    f"SELECT count(*), coalesce(sum(duration), 0), coalesce(sum(cost), 0) FROM tb_cdrs WHERE {condition}",
                    params,
                )
            ).rows[0]
            message += f"; total {int(totals[0])} calls, {int(totals[1])} s, cost {format_money(money(totals[2]))}"
        return ok(message, records)

    @fn("gencdr", Category.ADMIN, "generate test CDRs priced by the rating engine (marked generated: never "
        "charged, rebill leaves them alone)", ("count", "userid", "days"))
    async def gencdr(call: Call) -> ApiAnswer:
        count = call.integer("count", 1, 10000, 10)
        days = call.integer("days", 1, 366, 1)
        userid = canonical_id(call.arg("userid") or (str(call.caller.user.id) if call.caller.user else ""))
        user = await call.api.store.get_user(userid) if userid is not None else None
        if user is None:
            return error("gencdr needs userid (an existing user)", 404)
        rng = random.Random()
        now = call.api.store.now()
        plan = user.tariffid or call.api.settings.current.defaulttariff
        rows = []
        for _ in range(count):
            number = "".join(rng.choice("0123456789") for _ in range(11))
            duration = rng.choice([0, 0, rng.randint(1, 900)])
            tariff = call.api.rater.table.lookup(plan, number)
            cost = tariff.cost(duration) if tariff else Decimal(0)
            when = now - timedelta(seconds=rng.randint(0, days * 86400 - 1))
            rows.append((when, user.username, number, user.id, duration, cost, "out",
                         "normal" if duration else "no answer", f"gencdr-{rng.getrandbits(64):016x}"))

        async def gencdr_txn(txn: Any) -> int:
            for row in rows:
                await txn.execute(
                    "INSERT INTO tb_cdrs (datum, callerid, callednumber, userid, duration, cost, direction, "
                    "disconnectreason, sipcallid, generated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1)",
                    row,
                )
            return len(rows)

        made = await call.api.db.run_interaction("gencdr", gencdr_txn)
        return ok(f"{made} CDRs generated for {user.username}")


def _visibility(call: Call) -> tuple[str, list[Any]] | None:
    """The records this caller may see: none for admins (all), else own and customers'."""
    if call.caller.level <= REQ_ADMINS:
        return None
    user = call.caller.user
    if user is None:
        raise RequestError("cdr needs authid (the user)", 421)
    if user.type in (USER_RESELLER, USER_OWNER):
        return "(userid = ? OR userid IN (SELECT id FROM tb_users WHERE parentid = ?))", [user.id, user.id]
    return "userid = ?", [user.id]


def _record(columns: tuple[str, ...], row: tuple[Any, ...], engine: Any) -> dict[str, Any]:
    record: dict[str, Any] = {}
    for column, value in zip(columns, row):
        if column in MONEY:
            value = format_money(engine.money(value))
        elif column == "datum":
            value = engine.time(value).isoformat(sep=" ", timespec="seconds")
        record[column] = value
    return record
