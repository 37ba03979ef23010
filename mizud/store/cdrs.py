"""The CDRs the API reads and writes (tb_cdrs): lists, summaries and totals for C{cdr}, the records
C{rebill} reprices and the test records of C{gencdr}.

Which records a read covers is a L{CdrFilter} of plain values; the
statement's conditions are written here, every value a bound parameter.
The columns a list returns are named by the caller and checked to be
plain identifiers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Sequence

from .database import Database, Txn
from .identifiers import identifier

_ORDER_BY = {"date": "datum DESC", "caller": "callerid", "called": "callednumber", "user": "userid"}
#: The orders a CDR list may be sorted in (then by id, newest first), by name.
CDR_ORDERS: tuple[str, ...] = tuple(_ORDER_BY)
#: The groupings a CDR summary may have, by name.
CDR_GROUPINGS: tuple[str, ...] = ("all", "day", "caller", "called")
#: The money columns of tb_cdrs (a list returns them as L{Decimal}).
MONEY_COLUMNS = ("cost", "gatewaycost")


@dataclass(frozen=True)
class CdrFilter:
    """Which CDRs a read covers: those since C{since}, and each condition that is not None."""

    since: datetime
    #: Only this user's records (None: everyone's), and with C{customers} also those of its customers.
    viewer: int | None = None
    customers: bool = False
    #: The caller id; with C{caller_userid}, or the records billed to that user.
    caller: str | None = None
    caller_userid: int | None = None
    called: str | None = None
    #: The called number begins with these digits.
    prefix: str | None = None
    #: C{in} or C{out}.
    direction: str | None = None
    #: True: answered calls only (duration > 0); False: unanswered ones only.
    connected: bool | None = None


def _where(where: CdrFilter) -> tuple[str, list[Any]]:
    """The condition of a L{CdrFilter} and its parameters."""
    conditions = ["datum >= ?"]
    params: list[Any] = [where.since]
    if where.viewer is not None:
        if where.customers:
            conditions.append("(userid = ? OR userid IN (SELECT id FROM tb_users WHERE parentid = ?))")
            params.extend([where.viewer, where.viewer])
        else:
            conditions.append("userid = ?")
            params.append(where.viewer)
    if where.caller is not None:
        if where.caller_userid is not None:
            conditions.append("(callerid = ? OR userid = ?)")
            params.extend([where.caller, where.caller_userid])
        else:
            conditions.append("callerid = ?")
            params.append(where.caller)
    if where.called is not None:
        conditions.append("callednumber = ?")
        params.append(where.called)
    if where.prefix is not None:
        conditions.append("substr(callednumber, 1, ?) = ?")
        params.extend([len(where.prefix), where.prefix])
    if where.direction is not None:
        conditions.append("direction = ?")
        params.append(where.direction)
    if where.connected is True:
        conditions.append("duration > 0")
    elif where.connected is False:
        conditions.append("duration = 0")
    return " AND ".join(conditions), params


@dataclass(frozen=True)
class CdrGroup:
    """One row of a CDR summary."""

    #: The group: C{all}, the day (YYYY-MM-DD), the caller id or the called number.
    key: str
    calls: int
    connected: int
    duration: int
    cost: Decimal
    #: The cost less the gateway cost, when asked for (else None).
    profit: Decimal | None


async def cdr_summary(db: Database, where: CdrFilter, by: str, profit: bool = False) -> list[CdrGroup]:
    """The CDRs of C{where} grouped C{by} one of L{CDR_GROUPINGS} (C{all}: one row, even for no calls), in
    the order of the group; with C{profit}, each group's profit as well."""
    groups = {"all": "'all'", "day": db.engine.day("datum"), "caller": "callerid", "called": "callednumber"}
    if by not in groups:
        raise ValueError(f"not a CDR grouping: {by[:40]!r}")
    condition, params = _where(where)
    extra = ", coalesce(sum(cost), 0) - coalesce(sum(gatewaycost), 0)" if profit else ""
    grouping = "" if by == "all" else f" GROUP BY {groups[by]} ORDER BY 1 LIMIT 10000"
    sql = (
        f"SELECT {groups[by]} AS grp, count(*), sum(CASE WHEN duration > 0 THEN 1 ELSE 0 END), "
        f"coalesce(sum(duration), 0), coalesce(sum(cost), 0){extra} FROM tb_cdrs WHERE {condition}{grouping}"
    )
    result = await db.run_statement("cdr_summary", sql, params)
    money = db.engine.money
    return [CdrGroup(row[0], int(row[1]), int(row[2] or 0), int(row[3] or 0), money(row[4]),
                     money(row[5]) if profit else None)
            for row in result.rows]


def _count(value: int, what: str) -> int:
    """A row count for a statement's LIMIT or OFFSET (bound, like every value), checked to be a whole number
    of at least 0."""
    if type(value) is not int or value < 0:
        raise ValueError(f"{what} must be a whole number of at least 0")
    return value


async def cdr_list(db: Database, where: CdrFilter, columns: Sequence[str], order: str, count: int, offset: int
                   ) -> list[tuple[Any, ...]]:
    """The C{columns} of the CDRs of C{where}: at most C{count} of them after the first C{offset}, sorted by
    C{order} (one of L{CDR_ORDERS}) then by id, newest first.  Money columns come as L{Decimal}, C{datum} as
    a L{datetime}."""
    names = [identifier(column) for column in columns]
    if order not in _ORDER_BY:
        raise ValueError(f"not a CDR order: {order[:40]!r}")
    condition, params = _where(where)
    sql = (
        f"SELECT {', '.join(names)} FROM tb_cdrs WHERE {condition} "
        f"ORDER BY {_ORDER_BY[order]}, id DESC LIMIT ? OFFSET ?"
    )
    result = await db.run_statement("cdr_list", sql, [*params, _count(count, "count"), _count(offset, "offset")])
    engine = db.engine
    converters = [engine.money if name in MONEY_COLUMNS else engine.time if name == "datum" else None
                  for name in names]
    return [tuple(value if convert is None else convert(value) for convert, value in zip(converters, row))
            for row in result.rows]


@dataclass(frozen=True)
class CdrTotals:
    """How many CDRs, their seconds and their cost."""

    calls: int
    seconds: int
    cost: Decimal


async def cdr_totals(db: Database, where: CdrFilter) -> CdrTotals:
    """The totals of the CDRs of C{where}."""
    condition, params = _where(where)
    row = (await db.run_statement(
        "cdr_totals",
        f"SELECT count(*), coalesce(sum(duration), 0), coalesce(sum(cost), 0) FROM tb_cdrs WHERE {condition}",
        params,
    )).rows[0]
    return CdrTotals(int(row[0]), int(row[1]), db.engine.money(row[2]))


@dataclass(frozen=True)
class PricedCdr:
    """A CDR as C{rebill} reprices it."""

    id: int
    userid: int
    callednumber: str
    duration: int
    cost: Decimal


async def rebill_candidates(db: Database, since: datetime, userid: int | None = None) -> list[PricedCdr]:
    """The charged CDRs since C{since} (of C{userid} only, if given), by user then id: never those of
    users 0 or below, nor the test records of C{gencdr}, which were never charged."""
    sql = ("SELECT id, userid, callednumber, duration, cost FROM tb_cdrs WHERE datum >= ? AND userid > 0 "
           "AND generated = 0")
    params: list[Any] = [since]
    if userid is not None:
        sql += " AND userid = ?"
        params.append(userid)
    rows = (await db.run_statement("rebill_read", sql + " ORDER BY userid, id", params)).rows
    money = db.engine.money
    return [PricedCdr(int(row[0]), int(row[1]), str(row[2]), int(row[3]), money(row[4])) for row in rows]


@dataclass(frozen=True)
class GeneratedCdr:
    """A test record of C{gencdr} (written marked C{generated}: never charged, never repriced)."""

    datum: datetime
    callerid: str
    callednumber: str
    userid: int
    duration: int
    cost: Decimal
    direction: str
    disconnectreason: str
    sipcallid: str


async def insert_generated(db: Database, records: Sequence[GeneratedCdr]) -> int:
    """Write test records, all in one transaction; how many were written."""
    rows = [(r.datum, r.callerid, r.callednumber, r.userid, r.duration, r.cost, r.direction, r.disconnectreason,
             r.sipcallid) for r in records]

    async def gencdr_txn(txn: Txn) -> int:
        for row in rows:
            await txn.execute(
                "INSERT INTO tb_cdrs (datum, callerid, callednumber, userid, duration, cost, direction, "
                "disconnectreason, sipcallid, generated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1)",
                row,
            )
        return len(rows)

    return await db.run_interaction("gencdr", gencdr_txn)
