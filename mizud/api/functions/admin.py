"""Admin functions: db, showcfg, checkcredits, quickstat, rebill, and the user cache (fastusers, syncusers)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from ...service import redact_database
from ...store.admin import quick_stats, run_sql
from ...store.cdrs import rebill_candidates
from ...store.money import format_money
from ..answer import ApiAnswer, error, ok
from ..invocation import Invocation
from ..registry import Functions, Category
from ...text import canonical_id
from .cdrs import since

if TYPE_CHECKING:  # pragma: no cover
    from ...billing.rating import Rater
    from ...config import Settings
    from ...store.billing import BillingStore
    from ...store.database import Database
    from ..state import Traffic

log = Logger()

#: Options whose values showcfg never shows.
SECRETS = frozenset({"apiv2key", "apiv2md5salt", "httpapikey", "httpapimd5salt", "httpapiencryptkey", "bootstrapadmin",
                     "smtppassword"})
MAX_DB_ROWS = 1000


#: This module's API functions (registered by build_registry).
fn = Functions()


@dataclass(frozen=True, kw_only=True, eq=False)
class AdminFunctions:
    """The administrator's functions on the database: SQL, the configuration, audits, figures, rebilling."""

    db: Database
    rater: Rater
    settings: Settings
    store: BillingStore
    traffic: Traffic

    @fn("fastusers", Category.ADMIN)
    async def fastusers(self, invocation: Invocation) -> ApiAnswer:
        """the users in the exact user cache (id, username, type, enabled), with its hits and misses"""
        cache = self.store.users
        users = cache.rows()
        records = [{"id": u.id, "username": u.username, "type": u.type, "enabled": int(u.enabled)} for u in users]
        lines = [f"{r['id']} {r['username']} type {r['type']}" + ("" if r["enabled"] else " disabled") for r in records]
        head = (f"{len(records)} users cached ({len(cache)} keys, at most {cache.size}); "
                f"{cache.hits} hits, {cache.misses} misses")
        if not cache.feed.trusted():
            head += "; not answering from memory now (changes from other nodes are not confirmed)"
        return ok(head + ("\n" + "\n".join(lines) if lines else ""), records)

    @fn("syncusers", Category.ADMIN)
    async def syncusers(self, invocation: Invocation) -> ApiAnswer:
        """forget every cached user: each is read from the database when next needed (the cache is exact
        anyway; this is for an operator who wants to be sure)"""
        return ok(f"{self.store.users.forget()} cached keys forgotten")

    @fn("db", Category.ADMIN, params=("txt",))
    async def run_db(self, invocation: Invocation) -> ApiAnswer:
        """run one SQL statement (admins only; logged); SELECT answers rows"""
        sql = invocation.require("txt").strip().rstrip(";")
        who = invocation.caller.user.username if invocation.caller.user else "trusted address"
        log.info("db by {who} from {source}: {sql}", who=who, source=invocation.request.source, sql=sql[:2000])
        try:
            result = await run_sql(self.db, sql)
        except Exception as problem:
            return error(f"statement failed: {(str(problem).strip().splitlines() or ['error'])[0]}", 412)
        finally:
            # It may have changed the tables (ALTER TABLE ... ADD COLUMN): setfield and getfield read them again.
            self.store.columns.forget()
        if result.columns:
            records = [dict(zip(result.columns, row)) for row in result.rows[:MAX_DB_ROWS]]
            return ok(f"{len(records)} rows", records)
        return ok(f"{max(result.rowcount, 0)} rows affected")

    @fn("showcfg", Category.ADMIN)
    async def showcfg(self, invocation: Invocation) -> ApiAnswer:
        """the running configuration (secrets hidden)"""
        config = self.settings.current
        records = []
        for name in config:
            value = config[name]
            if name in SECRETS and value:
                value = "***"
            elif name == "database":
                value = redact_database(value)
            elif isinstance(value, tuple):
                value = ",".join(str(v) for v in value)
            records.append({"option": name, "value": "" if value is None else str(value), "from": config.origins[name]})
        return ok(f"{len(records)} options", records)

    @fn("checkcredits", Category.ADMIN)
    async def checkcredits(self, invocation: Invocation) -> ApiAnswer:
        """check that every balance equals the sum of its ledger"""
        problems = await self.store.audit()
        records = [{"userid": u, "credit": format_money(c), "ledger": format_money(s)} for u, c, s in problems]
        if records:
            return ApiAnswer(False, f"{len(records)} balances differ from their ledger", 412, records)
        return ok("every balance equals its ledger")

    @fn("quickstat", Category.ADMIN)
    async def quickstat(self, invocation: Invocation) -> ApiAnswer:
        """quick statistics"""
        now = self.store.now()
        stats = await quick_stats(self.db, now, since("today", now))
        record = {
            "users": stats.users, "credit": format_money(stats.credit), "registered": stats.registered,
            "calls_today": stats.calls_today, "seconds_today": stats.seconds_today,
            "cost_today": format_money(stats.cost_today), "api_requests": self.traffic.requests,
        }
        return ok(f"{record['users']} users, {record['registered']} registered, {record['calls_today']} calls today",
                  [record])

    @fn("rebill", Category.ADMIN, params=("days", "userid"))
    async def rebill(self, invocation: Invocation) -> ApiAnswer:
        """recompute CDR costs from the current tariffs (days=, userid=; not the test records of gencdr)"""
        start = since(invocation.arg("days", "today"), self.store.now())
        userid = invocation.arg("userid")
        only: int | None = None
        if userid:
            only = canonical_id(userid)
            if only is None:
                return error("userid must be a user id", 412)
        # Test records of gencdr were never charged, so they are never repriced either (the store leaves them out).
        rows = await rebill_candidates(self.db, start, only)
        money = self.db.engine.money
        changes: dict[int, list[tuple[int, Any]]] = {}
        differences: dict[int, Any] = {}
        plans: dict[int, int] = {}
        for row in rows:
            owner = row.userid
            if owner not in plans:
                user = await self.store.get_user(owner)
                plans[owner] = (user.tariffid if user else 0) or self.settings.current.defaulttariff
            tariff = self.rater.table.lookup(plans[owner], row.callednumber)
            new = tariff.cost(row.duration) if tariff else money(0)
            if new != row.cost:
                changes.setdefault(owner, []).append((row.id, new))
                differences[owner] = differences.get(owner, money(0)) + new - row.cost
        adjusted, refused = 0, []
        for owner, updates in changes.items():
            try:
                await self.store.rebill(owner, updates, differences[owner])
                adjusted += len(updates)
            except Exception as problem:
                refused.append({"userid": owner, "reason": str(problem)})
        message = f"{len(rows)} CDRs checked, {adjusted} repriced"
        if refused:
            return ApiAnswer(False, message + f", {len(refused)} users refused", 412, refused)
        return ok(message)
