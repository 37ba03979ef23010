"""What the admin functions read: a statement an admin wrote (C{db}) and the quick statistics
(C{quickstat}) of tb_users, tb_registrations and tb_cdrs."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from .database import Database, Result


async def run_sql(db: Database, sql: str) -> Result:
    """Run one statement an admin wrote, as it is (the C{db} function); what it returned.  Errors of the
    statement are raised to the caller."""
    return await db.run_statement("db", sql)


@dataclass(frozen=True)
class QuickStats:
    """The figures of C{quickstat}."""

    #: How many users there are, and the sum of their credit.
    users: int
    credit: Decimal
    #: How many users have a live registration.
    registered: int
    #: The calls since the start of the day: how many, their seconds and their cost.
    calls_today: int
    seconds_today: int
    cost_today: Decimal


async def quick_stats(db: Database, now: datetime, today: datetime) -> QuickStats:
    """The users, the registrations live at C{now} and the calls since C{today}; a L{QuickStats}."""
    users = (await db.run_query("stat", "SELECT count(*), coalesce(sum(credit), 0) FROM tb_users")).rows[0]
    registered = (await db.run_query(
        "stat", "SELECT count(DISTINCT userid) FROM tb_registrations WHERE expires > ?", (now,))).rows[0][0]
    calls = (await db.run_statement(
        "stat", "SELECT count(*), coalesce(sum(duration), 0), coalesce(sum(cost), 0) FROM tb_cdrs WHERE datum >= ?",
        (today,))).rows[0]
    money = db.engine.money
    return QuickStats(int(users[0]), money(users[1]), int(registered), int(calls[0]), int(calls[1]),
                      money(calls[2]))
