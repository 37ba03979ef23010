"""Running the daemon: maintenance runs, the daily report, backups and restores, resets, restart."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from twisted.logger import Logger

from ...billing.rating import normalise
from ...mail import MailError
from ...store.backup import Backups, BackupError
from ...store.money import format_money
from ...errors import StartupError
from ..answer import BAD_FUNCTION, ApiAnswer, error, ok
from ..invocation import Invocation
from ..registry import Functions, Category
from ..request import RequestError

if TYPE_CHECKING:  # pragma: no cover
    from ...billing.rating import Rater
    from ...config import Settings
    from ...security.bans import Bans
    from ...store.billing import BillingStore
    from ...store.database import Database
    from ..maintenance import Maintenance

log = Logger()

#: The options that hold API keys (all live: a request always uses their current value).
KEY_OPTIONS = ("apiv2key", "apiv2md5salt", "httpapikey", "httpapimd5salt", "httpapiencryptkey")
RESTORING = "the database is being restored"


def _maintenance(run: Callable[[Any], Awaitable[dict[str, int]]]) -> Any:
    async def handler(self: OperationFunctions, invocation: Invocation) -> ApiAnswer:
        """Run one maintenance round now; answers what it did, item by item."""
        done = await run(self.maintenance)
        return ok(", ".join(f"{k} {v}" for k, v in done.items()))

    return handler


#: This module's API functions (registered by build_registry).
fn = Functions()


def _who(invocation: Invocation) -> str:
    user = invocation.caller.user
    source = invocation.request.source
    return f"{user.username} from {source}" if user else f"trusted address {source}"


@dataclass(frozen=True, kw_only=True, eq=False)
class OperationFunctions:
    """Operations on the running daemon: maintenance rounds, reloads, backups, restores and resets."""

    bans: Bans
    db: Database
    maintenance: Maintenance
    operations: Any
    pause: Callable[[str], None]
    publish: Callable[[str], Awaitable[None]]
    rater: Rater
    reactor: Any
    reload: Callable[[], tuple[list[str], list[str]]]
    reload_access: Callable[[], Awaitable[int]]
    settings: Settings
    sip: Any
    store: BillingStore

    def _operations(self, what: str) -> Any:
        """The service tree's operations; "not supported" when the dispatcher runs outside twistd's tree."""
        if self.operations is None:
            raise RequestError(f"not supported: this dispatcher runs without the daemon's {what}", BAD_FUNCTION)
        return self.operations

    def _backups(self) -> Backups:
        return Backups(self.db, self.settings.current.backupdir, self.store.now, self.reactor)

    fn("hourlymaint", Category.ADMIN, "expire nonces, old bans, lapsed reservations, registrations and web "
       "sessions")(_maintenance(lambda m: m.hourly()))

    fn("dailymaint", Category.ADMIN, "the hourly work, then the database's statistics (ANALYZE or PRAGMA "
       "optimize)")(_maintenance(lambda m: m.daily()))

    fn("weeklymaint", Category.ADMIN, "the daily work, then VACUUM (space of deleted rows given back)")(
        _maintenance(lambda m: m.weekly()))

    fn("monthlymaint", Category.ADMIN, "delete stored messages and SMS records older than retainmessages and "
       "retainsms, then the weekly work; CDRs and the ledger are never deleted")(_maintenance(lambda m: m.monthly()))

    @fn("dailyreport", Category.ADMIN)
    async def dailyreport(self, invocation: Invocation) -> ApiAnswer:
        """mail the report of the last 24 hours (users, calls, SMS, ledger, balance and PIN checks) to adminemail
        through smtpserver; the answer carries its figures"""
        try:
            recipient, figures = await self.maintenance.mail_report()
        except MailError as problem:
            return error(f"report not sent: {problem}", 503)
        return ok(f"daily report sent to {recipient}", [figures])

    @fn("reloadapikeys", Category.ADMIN)
    async def reloadapikeys(self, invocation: Invocation) -> ApiAnswer:
        """re-read the configuration's API keys (live options) and the tb_api rules with their keys"""
        applied, _ = self.reload()
        rules = await self.reload_access()
        await self.publish("access")
        changed = [name for name in applied if name in KEY_OPTIONS]
        return ok(f"keys changed: {', '.join(changed) or 'none'}; {rules} tb_api rules loaded")

    @fn("checkpins", Category.ADMIN)
    async def checkpins(self, invocation: Invocation) -> ApiAnswer:
        """count the recharge PINs and list each one that contradicts itself or the ledger (a used PIN has exactly
        one ledger row, an unused one none)"""
        report = await self.maintenance.upkeep.check_pins()
        message = (f"{report.unused} unused PINs worth {format_money(report.unused_value)}, {report.used} used "
                   f"worth {format_money(report.used_value)}")
        records = [{"pinid": pinid, "problem": problem} for pinid, problem in report.problems]
        if records:
            return ApiAnswer(False, f"{message}; {len(records)} problems", 412, records)
        return ok(f"{message}; no problems")

    @fn("normalizechk",
        Category.ADMIN,
        params=("called", "caller",
                                                                                            "country"))
    async def normalizechk(self, invocation: Invocation) -> ApiAnswer:
        """the called and caller numbers as mizud rates and routes them (+, 00, spaces, dashes, dots and brackets
        dropped), with the tariff the called number gets"""
        called, caller = invocation.arg("called"), invocation.arg("caller")
        if not called and not caller:
            return error("missing called or caller", 421)
        record: dict[str, Any] = {}
        for name, number in (("called", called), ("caller", caller)):
            if number:
                record[name] = number
                record[f"{name}_normalized"] = normalise(number) or ""
        if called:
            plan = self.settings.current.defaulttariff
            if invocation.caller.user is not None and invocation.caller.user.tariffid:
                plan = invocation.caller.user.tariffid
            tariff = self.rater.table.lookup(plan, called)
            record["tariffid"], record["prefix"] = plan, tariff.prefix if tariff else ""
            record["destination"] = tariff.name if tariff else ""
        message = ", ".join(f"{k} {record[k + '_normalized'] or '(not a number)'}" for k in ("called", "caller")
                            if k in record)
        if invocation.arg("country"):
            # Mizu can add a country's prefix to national numbers; mizud's numbers are international already.
            message += "; country is not used: numbers are taken as international"
        return ok(message, [record])

    async def backup(self, invocation: Invocation) -> ApiAnswer:
        """dbbackup, backupdb, backup: a consistent copy of the database into backupdir; answers its path."""
        try:
            path = await self._backups().backup(invocation.arg("path"))
        except BackupError as problem:
            return error(f"backup failed: {problem}", 412)
        log.info("database backup written to {path} by {who}", path=path, who=_who(invocation))
        return ok(f"backup written to {path}", [{"file": path}])

    for _name in ("dbbackup", "backupdb", "backup"):
        fn(_name, Category.ADMIN, "a consistent copy of the database into backupdir (SQLite's online backup, "
           "pg_dump for PostgreSQL); path= a file name there (default mizud-ENGINE-DATE-TIME), never "
           "overwritten", ("path",))(backup)

    del _name

    @fn("dbrestore", Category.ADMIN, params=("path",))
    async def dbrestore(self, invocation: Invocation) -> ApiAnswer:
        """replace the database by a backup in backupdir (path= its file name; without it, the list of backups);
        refused while calls are live; every request is refused meanwhile"""
        backups = self._backups()
        name = invocation.arg("path")
        try:
            if not name:
                listed = [{"file": f.name, "bytes": f.size, "modified": f.modified} for f in backups.listing()]
                return ApiAnswer(False, f"missing path: the file name of one of {len(listed)} backups", 421, listed)
            live = len(self.sip.calls.live) if self.sip is not None else 0
            if live:
                # Their holds and records would be settled against the restored tables (and ids reused).
                return error(f"restore refused: {live} calls are live on this node; end them (discall) first", 412)
            log.warn("database restore from {name} by {who}: refusing requests meanwhile", name=name,
                     who=_who(invocation))
            self.pause(RESTORING)
            try:
                path = await backups.restore(name)
            finally:
                self.pause("")
        except BackupError as problem:
            return error(f"restore failed: {problem}", 412)
        # What this node keeps in memory comes from the restored tables.
        await self.reload_access()
        await self.rater.rebuild()
        await self.bans.refresh()
        self.store.columns.forget()
        # A restore writes no change triggers' notices (pg_restore makes the triggers after the rows): every
        # cache, here and on the other nodes, starts afresh.
        self.db.changes.everything()
        for topic in ("access", "tariffs", "bans", "everything"):
            await self.publish(topic)
        log.warn("database restored from {path}", path=path)
        return ok(f"database restored from {path}")

    @fn("dbreset", Category.ADMIN)
    async def dbreset(self, invocation: Invocation) -> ApiAnswer:
        """replace every database connection by a new one (busy ones after their transaction)"""
        count = await self.db.reset()
        return ok(f"{count} database connections replaced")

    @fn("sipreset", Category.ADMIN)
    async def sipreset(self, invocation: Invocation) -> ApiAnswer:
        """close and bind again the SIP listeners (sipport UDP and TCP, localtsport) and re-read the SIP options;
        registrations and calls go on"""
        operations = self._operations("listeners")
        try:
            done = await operations.reset_sip()
        except StartupError as problem:
            return error(str(problem), 503)
        if self.sip is not None:
            self.sip.reconfigure()
        if not done:
            return ok("no SIP-only listener to bind again (sipport is 0 or shared with mainaport)")
        return ok(f"bound again: {', '.join(done)}")

    @fn("mantreset", Category.ADMIN)
    async def mantreset(self, invocation: Invocation) -> ApiAnswer:
        """restart the periodic chores (heartbeat, bans, lockout, hourly, daily, weekly and monthly maintenance)"""
        operations = self._operations("chores")
        return ok(f"{operations.restart_chores()} periodic chores restarted")

    @fn("restart", Category.ADMIN, params=("what",))
    async def restart(self, invocation: Invocation) -> ApiAnswer:
        """what=service stops mizud with status 0 for its service manager to start it again
        (etc/systemd/mizud.service: Restart=always); server and database are refused"""
        what = invocation.require("what").strip().lower()
        if what == "server":
            return error("not supported: restarting the machine changes the operating system, which an API must "
                         "not do", BAD_FUNCTION)
        if what == "database":
            return error("not supported: the database server is not mizud's to restart; dbreset reconnects",
                         BAD_FUNCTION)
        if what != "service":
            return error("what must be service, server or database", 412)
        operations = self._operations("reactor")
        log.warn("restart requested by {who}: stopping", who=_who(invocation))
        operations.stop()
        return ok("stopping; the service manager starts mizud again")
