"""Running the daemon: maintenance runs, the daily report, backups and restores, resets, restart."""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from twisted.logger import Logger

from ...billing.rating import normalise
from ...mail import MailError
from ...store.backup import Backups, BackupError
from ...store.money import format_money
from ...errors import StartupError
from ..answer import BAD_FUNCTION, ApiAnswer, error, ok
from ..dispatcher import Call
from ..registry import Functions, Category
from ..request import RequestError

log = Logger()

#: The options that hold API keys (all live: a request always uses their current value).
KEY_OPTIONS = ("apiv2key", "apiv2md5salt", "httpapikey", "httpapimd5salt", "httpapiencryptkey")
RESTORING = "the database is being restored"


def _maintenance(run: Callable[[Any], Awaitable[dict[str, int]]]) -> Any:
    async def handler(call: Call) -> ApiAnswer:
        """Run one maintenance round now; answers what it did, item by item."""
        done = await run(call.api.maintenance)
        return ok(", ".join(f"{k} {v}" for k, v in done.items()))

    return handler


def _operations(call: Call, what: str) -> Any:
    """The service tree's operations; "not supported" when the dispatcher runs outside twistd's tree."""
    if call.api.operations is None:
        raise RequestError(f"not supported: this dispatcher runs without the daemon's {what}", BAD_FUNCTION)
    return call.api.operations


def _backups(call: Call) -> Backups:
    api = call.api
    return Backups(api.db, api.settings.current.backupdir, api.store.now, api.reactor)


#: This module's API functions (registered by build_registry).
fn = Functions()


fn("hourlymaint", Category.ADMIN, "expire nonces, old bans, lapsed reservations, registrations and web "
   "sessions")(_maintenance(lambda m: m.hourly()))


fn("dailymaint", Category.ADMIN, "the hourly work, then the database's statistics (ANALYZE or PRAGMA "
   "optimize)")(_maintenance(lambda m: m.daily()))


fn("weeklymaint", Category.ADMIN, "the daily work, then VACUUM (space of deleted rows given back)")(
    _maintenance(lambda m: m.weekly()))


fn("monthlymaint", Category.ADMIN, "delete stored messages and SMS records older than retainmessages and "
   "retainsms, then the weekly work; CDRs and the ledger are never deleted")(_maintenance(lambda m: m.monthly()))


@fn("dailyreport", Category.ADMIN)
async def dailyreport(call: Call) -> ApiAnswer:
    """mail the report of the last 24 hours (users, calls, SMS, ledger, balance and PIN checks) to adminemail
    through smtpserver; the answer carries its figures"""
    try:
        recipient, figures = await call.api.maintenance.mail_report()
    except MailError as problem:
        return error(f"report not sent: {problem}", 503)
    return ok(f"daily report sent to {recipient}", [figures])


@fn("reloadapikeys", Category.ADMIN)
async def reloadapikeys(call: Call) -> ApiAnswer:
    """re-read the configuration's API keys (live options) and the tb_api rules with their keys"""
    applied, _ = call.api.reload()
    rules = await call.api.reload_access()
    await call.api.publish("access")
    changed = [name for name in applied if name in KEY_OPTIONS]
    return ok(f"keys changed: {', '.join(changed) or 'none'}; {rules} tb_api rules loaded")


@fn("checkpins", Category.ADMIN)
async def checkpins(call: Call) -> ApiAnswer:
    """count the recharge PINs and list each one that contradicts itself or the ledger (a used PIN has exactly
    one ledger row, an unused one none)"""
    report = await call.api.maintenance.upkeep.check_pins()
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
async def normalizechk(call: Call) -> ApiAnswer:
    """the called and caller numbers as mizud rates and routes them (+, 00, spaces, dashes, dots and brackets
    dropped), with the tariff the called number gets"""
    called, caller = call.arg("called"), call.arg("caller")
    if not called and not caller:
        return error("missing called or caller", 421)
    record: dict[str, Any] = {}
    for name, number in (("called", called), ("caller", caller)):
        if number:
            record[name] = number
            record[f"{name}_normalized"] = normalise(number) or ""
    if called:
        plan = call.api.settings.current.defaulttariff
        if call.caller.user is not None and call.caller.user.tariffid:
            plan = call.caller.user.tariffid
        tariff = call.api.rater.table.lookup(plan, called)
        record["tariffid"], record["prefix"] = plan, tariff.prefix if tariff else ""
        record["destination"] = tariff.name if tariff else ""
    message = ", ".join(f"{k} {record[k + '_normalized'] or '(not a number)'}" for k in ("called", "caller")
                        if k in record)
    if call.arg("country"):
        # Mizu can add a country's prefix to national numbers; mizud's numbers are international already.
        message += "; country is not used: numbers are taken as international"
    return ok(message, [record])


async def backup(call: Call) -> ApiAnswer:
    """dbbackup, backupdb, backup: a consistent copy of the database into backupdir; answers its path."""
    try:
        path = await _backups(call).backup(call.arg("path"))
    except BackupError as problem:
        return error(f"backup failed: {problem}", 412)
    log.info("database backup written to {path} by {who}", path=path, who=_who(call))
    return ok(f"backup written to {path}", [{"file": path}])


for _name in ("dbbackup", "backupdb", "backup"):
    fn(_name, Category.ADMIN, "a consistent copy of the database into backupdir (SQLite's online backup, "
       "pg_dump for PostgreSQL); path= a file name there (default mizud-ENGINE-DATE-TIME), never "
       "overwritten", ("path",))(backup)
del _name


@fn("dbrestore", Category.ADMIN, params=("path",))
async def dbrestore(call: Call) -> ApiAnswer:
    """replace the database by a backup in backupdir (path= its file name; without it, the list of backups);
    refused while calls are live; every request is refused meanwhile"""
    api, backups = call.api, _backups(call)
    name = call.arg("path")
    try:
        if not name:
            listed = [{"file": f.name, "bytes": f.size, "modified": f.modified} for f in backups.listing()]
            return ApiAnswer(False, f"missing path: the file name of one of {len(listed)} backups", 421, listed)
        live = len(api.sip.calls.live) if api.sip is not None else 0
        if live:
            # Their holds and records would be settled against the restored tables (and ids reused).
            return error(f"restore refused: {live} calls are live on this node; end them (discall) first", 412)
        log.warn("database restore from {name} by {who}: refusing requests meanwhile", name=name, who=_who(call))
        api.paused = RESTORING
        try:
            path = await backups.restore(name)
        finally:
            api.paused = ""
    except BackupError as problem:
        return error(f"restore failed: {problem}", 412)
    # What this node keeps in memory comes from the restored tables.
    await api.reload_access()
    await api.rater.rebuild()
    await api.bans.refresh()
    for topic in ("access", "tariffs", "bans"):
        await api.publish(topic)
    log.warn("database restored from {path}", path=path)
    return ok(f"database restored from {path}")


@fn("dbreset", Category.ADMIN)
async def dbreset(call: Call) -> ApiAnswer:
    """replace every database connection by a new one (busy ones after their transaction)"""
    count = await call.api.db.reset()
    return ok(f"{count} database connections replaced")


@fn("sipreset", Category.ADMIN)
async def sipreset(call: Call) -> ApiAnswer:
    """close and bind again the SIP listeners (sipport UDP and TCP, localtsport) and re-read the SIP options;
    registrations and calls go on"""
    operations = _operations(call, "listeners")
    try:
        done = await operations.reset_sip()
    except StartupError as problem:
        return error(str(problem), 503)
    if call.api.sip is not None:
        call.api.sip.reconfigure()
    if not done:
        return ok("no SIP-only listener to bind again (sipport is 0 or shared with mainaport)")
    return ok(f"bound again: {', '.join(done)}")


@fn("mantreset", Category.ADMIN)
async def mantreset(call: Call) -> ApiAnswer:
    """restart the periodic chores (heartbeat, bans, lockout, hourly, daily, weekly and monthly maintenance)"""
    operations = _operations(call, "chores")
    return ok(f"{operations.restart_chores()} periodic chores restarted")


@fn("restart", Category.ADMIN, params=("what",))
async def restart(call: Call) -> ApiAnswer:
    """what=service stops mizud with status 0 for its service manager to start it again
    (etc/systemd/mizud.service: Restart=always); server and database are refused"""
    what = call.require("what").strip().lower()
    if what == "server":
        return error("not supported: restarting the machine changes the operating system, which an API must "
                     "not do", BAD_FUNCTION)
    if what == "database":
        return error("not supported: the database server is not mizud's to restart; dbreset reconnects",
                     BAD_FUNCTION)
    if what != "service":
        return error("what must be service, server or database", 412)
    operations = _operations(call, "reactor")
    log.warn("restart requested by {who}: stopping", who=_who(call))
    operations.stop()
    return ok("stopping; the service manager starts mizud again")


def _who(call: Call) -> str:
    user = call.caller.user
    return f"{user.username} from {call.request.source}" if user else f"trusted address {call.request.source}"
