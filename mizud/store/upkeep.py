"""The store's side of maintenance: reclaiming space, retention, the daily figures, the PIN check."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Callable

from .database import Database


@dataclass
class DayFigures:
    """What happened since a moment: the daily report's numbers."""

    since: datetime
    users: int = 0
    new_users: int = 0
    credit: Decimal = Decimal(0)
    registered: int = 0
    calls: int = 0
    seconds: int = 0
    call_cost: Decimal = Decimal(0)
    sms: int = 0
    sms_cost: Decimal = Decimal(0)
    #: Ledger kind to (rows, sum of amounts) since the moment.
    ledger: dict[str, tuple[int, Decimal]] = field(default_factory=dict)


@dataclass
class PinReport:
    """The state of the recharge PINs and every inconsistency found."""

    unused: int = 0
    unused_value: Decimal = Decimal(0)
    used: int = 0
    used_value: Decimal = Decimal(0)
    #: (pin id, what is wrong) for each PIN whose record contradicts the ledger or itself.
    problems: list[tuple[int, str]] = field(default_factory=list)


class Upkeep:
    """Statements of the periodic upkeep, on either engine."""

    def __init__(self, db: Database, now: Callable[[], datetime]) -> None:
        self.db = db
        self.now = now

    async def vacuum(self) -> None:
        """Give the space of deleted rows back and refresh the planner's statistics."""
        await self.db.run_outside("vacuum", self.db.engine.vacuum)

    async def ping(self) -> None:
        """Run the smallest statement: raises when the database does not answer."""
        await self.db.run_statement("heartbeat", "SELECT 1")

    async def optimize(self) -> None:
        """Refresh the planner's statistics (SQLite's PRAGMA optimize, PostgreSQL's ANALYZE)."""
        await self.db.run_statement(self.db.engine.optimize_name, self.db.engine.optimize)

    async def expire_bans(self, before: datetime) -> int:
        """Delete bans that ended before C{before}; how many."""
        return (await self.db.run_statement(
            "expire_bans", "DELETE FROM tb_banned WHERE until < ?", (before,))).rowcount

    async def expire_number_locks(self, now: datetime) -> int:
        """Free the pool numbers whose reservation lapsed before C{now}; how many."""
        return (await self.db.run_statement(
            "expire_locks", "UPDATE tb_phonenumbers SET userid = 0, status = 0, lockeduntil = NULL "
            "WHERE status = 1 AND lockeduntil < ?", (now,))).rowcount

    async def forget_messages(self, before: datetime) -> int:
        """Delete stored instant messages created before C{before}; how many."""
        return (await self.db.run_statement(
            "forget_messages", "DELETE FROM tb_messages WHERE created < ?", (before,))).rowcount

    async def forget_sms(self, before: datetime) -> int:
        """Delete SMS records that finished before C{before} (pending ones stay); how many."""
        return (await self.db.run_statement(
            "forget_sms", "DELETE FROM tb_sms WHERE finished IS NOT NULL AND finished < ?", (before,))).rowcount

    async def figures(self, since: datetime) -> DayFigures:
        """The report's numbers since C{since} (test records of gencdr left out)."""
        db, money = self.db, self.db.engine.money
        figures = DayFigures(since)
        users = (await db.run_statement(
            "report_users", "SELECT count(*), coalesce(sum(credit), 0), "
            "coalesce(sum(CASE WHEN created >= ? THEN 1 ELSE 0 END), 0) FROM tb_users", (since,))).rows[0]
        figures.users, figures.credit, figures.new_users = int(users[0]), money(users[1]), int(users[2])
        figures.registered = int((await db.run_statement(
            "report_registered", "SELECT count(DISTINCT userid) FROM tb_registrations WHERE expires > ?",
            (self.now(),))).rows[0][0])
        calls = (await db.run_statement(
            "report_calls", "SELECT count(*), coalesce(sum(duration), 0), coalesce(sum(cost), 0) FROM tb_cdrs "
            "WHERE datum >= ? AND generated = 0", (since,))).rows[0]
        figures.calls, figures.seconds, figures.call_cost = int(calls[0]), int(calls[1]), money(calls[2])
        sms = (await db.run_statement(
            "report_sms", "SELECT count(*), coalesce(sum(cost), 0) FROM tb_sms WHERE created >= ? AND direction = 'out'",
            (since,))).rows[0]
        figures.sms, figures.sms_cost = int(sms[0]), money(sms[1])
        for kind, count, total in (await db.run_statement(
                "report_ledger", "SELECT kind, count(*), coalesce(sum(amount), 0) FROM tb_credits WHERE created >= ? "
                "GROUP BY kind ORDER BY kind", (since,))).rows:
            figures.ledger[str(kind)] = (int(count), money(total))
        return figures

    async def check_pins(self) -> PinReport:
        """Count the PINs and find each one that contradicts itself or the ledger: a used PIN must name
        who used it and when, and have exactly one ledger row; an unused PIN must have none."""
        db, money = self.db, self.db.engine.money
        report = PinReport()
        for used, count, total in (await db.run_statement(
                "pins_count", "SELECT used, count(*), coalesce(sum(credit), 0) FROM tb_pins GROUP BY used")).rows:
            if int(used):
                report.used, report.used_value = report.used + int(count), report.used_value + money(total)
            else:
                report.unused, report.unused_value = report.unused + int(count), report.unused_value + money(total)
        # Ledger rows of PIN redemptions carry reference pin:ID.
        redeemed: dict[int, int] = {}
        for reference, count in (await db.run_statement(
                "pins_ledger", "SELECT reference, count(*) FROM tb_credits WHERE kind = 'pin' GROUP BY reference")).rows:
            text = str(reference)
            if text.startswith("pin:") and text[4:].isdigit():
                redeemed[int(text[4:])] = int(count)
        rows: list[Any] = (await db.run_statement(
            "pins_read", "SELECT id, used, usedby, useddate, credit FROM tb_pins ORDER BY id")).rows
        for pinid, used, usedby, useddate, credit in rows:
            pinid, entries = int(pinid), redeemed.pop(int(pinid), 0)
            if money(credit) <= 0:
                report.problems.append((pinid, "its credit is not positive"))
            if int(used):
                if not usedby or useddate is None:
                    report.problems.append((pinid, "used, but without who used it and when"))
                if entries != 1:
                    report.problems.append((pinid, f"used, with {entries} ledger rows instead of one"))
            elif entries:
                report.problems.append((pinid, f"unused, but credited {entries} times in the ledger"))
        for pinid, entries in sorted(redeemed.items()):
            report.problems.append((pinid, f"no such PIN, yet {entries} ledger rows name it"))
        return report
