"""Periodic upkeep of the API's tables and the database."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from ..mail import Mailer, MailError
from ..store.money import format_money

if TYPE_CHECKING:  # pragma: no cover
    from ..config import Settings
    from ..security.lockout import Lockout
    from ..store.billing import BillingStore
    from .state import Nonces

#: How far back the daily report looks.
REPORT_PERIOD = timedelta(days=1)


class Maintenance:
    """The periodic upkeep: runs hourly and daily on timers, and on demand."""

    def __init__(self, store: BillingStore, settings: Settings, nonces: Nonces, lockout: Lockout, reactor: Any,
                 node: str = "") -> None:
        self.store = store
        self.settings = settings
        self.nonces = nonces
        self.lockout = lockout
        #: The reactor the daily report is mailed with.
        self.reactor = reactor
        #: This node's name in the report.
        self.node = node
        self.upkeep = store.upkeep

    async def hourly(self) -> dict[str, int]:
        """Expire nonces, ended bans, lapsed number reservations, registrations and web sessions."""
        now = self.store.now()
        done = {"nonces": await self.nonces.expire()}
        done["bans"] = await self.upkeep.expire_bans(now - timedelta(days=1))
        await self.lockout.chore()
        done["numbers"] = await self.upkeep.expire_number_locks(now)
        # The SIP service sweeps every few seconds too; this one also serves nodes without it.
        done["registrations"] = await self.store.registrations.expire()
        done["websessions"] = await self.store.presence.expire()
        return done

    async def daily(self) -> dict[str, int]:
        """The hourly work, then the database's own upkeep (statistics, WAL truncation)."""
        done = await self.hourly()
        await self.upkeep.optimize()
        done["optimized"] = 1
        return done

    async def weekly(self) -> dict[str, int]:
        """The daily work, then VACUUM: the space of deleted rows goes back to the file system."""
        done = await self.daily()
        await self.upkeep.vacuum()
        done["vacuumed"] = 1
        return done

    async def monthly(self) -> dict[str, int]:
        """The weekly work after deleting what is older than its retention (retainmessages, retainsms).
        CDRs and the ledger are financial records: they are never deleted."""
        config, now = self.settings.current, self.store.now()
        done = {"messages": 0, "sms": 0}
        if config.retainmessages:
            done["messages"] = await self.upkeep.forget_messages(now - timedelta(seconds=config.retainmessages))
        if config.retainsms:
            done["sms"] = await self.upkeep.forget_sms(now - timedelta(seconds=config.retainsms))
        return {**await self.weekly(), **done}

    async def report(self) -> tuple[str, dict[str, Any]]:
        """The daily report of the last 24 hours: its text and its figures as one record."""
        now = self.store.now()
        figures = await self.upkeep.figures(now - REPORT_PERIOD)
        differing = len(await self.store.audit())
        pins = await self.upkeep.check_pins()
        node = self.node or "this node"
        lines = [
            f"mizud daily report of {node}, {figures.since:%Y-%m-%d %H:%M} to {now:%Y-%m-%d %H:%M} UTC",
            "",
            f"Users: {figures.users} ({figures.new_users} new), credit {format_money(figures.credit)}",
            f"Registered now: {figures.registered}",
            f"Calls: {figures.calls}, {figures.seconds} seconds, cost {format_money(figures.call_cost)}",
            f"SMS sent: {figures.sms}, cost {format_money(figures.sms_cost)}",
            "Ledger:" if figures.ledger else "Ledger: no balance changes",
        ]
        lines += [f"  {kind}: {count} changes, {format_money(total)}" for kind, (count, total) in figures.ledger.items()]
        lines += [
            "Balances: every balance equals its ledger" if not differing else
            f"Balances: {differing} differ from their ledger (checkcredits lists them)",
            f"PINs: {pins.unused} unused, {pins.used} used, "
            + (f"{len(pins.problems)} problems (checkpins lists them)" if pins.problems else "no problems"),
        ]
        record = {
            "since": figures.since, "users": figures.users, "new_users": figures.new_users,
            "credit": format_money(figures.credit), "registered": figures.registered, "calls": figures.calls,
            "seconds": figures.seconds, "call_cost": format_money(figures.call_cost), "sms": figures.sms,
            "sms_cost": format_money(figures.sms_cost), "balances_differing": differing,
            "pin_problems": len(pins.problems),
        }
        return "\n".join(lines) + "\n", record

    async def mail_report(self) -> tuple[str, dict[str, Any]]:
        """Mail the daily report to adminemail; the recipient and the figures.  Raises L{MailError}."""
        recipient = self.settings.current.adminemail
        if not recipient:
            raise MailError("no adminemail is configured")
        text, record = await self.report()
        node = self.node or "mizud"
        await Mailer(self.settings, self.reactor).send([recipient], f"mizud daily report: {node}", text)
        return recipient, record
