"""Admin functions: db, showcfg, checkcredits, quickstat and rebill."""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from ...service import redact_database
from ...store.money import format_money
from ..answer import ApiAnswer, error, ok
from ..dispatcher import Call
from ..registry import Category, Registry
from ...text import canonical_id
from .cdrs import since

log = Logger()

#: Options whose values showcfg never shows.
SECRETS = frozenset({"apiv2key", "apiv2md5salt", "httpapikey", "httpapimd5salt", "httpapiencryptkey", "bootstrapadmin",
                     "smtppassword"})
MAX_DB_ROWS = 1000


def register(registry: Registry) -> None:
    """Register this module's handlers."""
    fn = registry.function

    @fn("db", Category.ADMIN, "run one SQL statement (admins only; logged); SELECT answers rows", ("txt",))
    async def db(call: Call) -> ApiAnswer:
        sql = call.require("txt").strip().rstrip(";")
        who = call.caller.user.username if call.caller.user else "trusted address"
        log.info("db by {who} from {source}: {sql}", who=who, source=call.request.source, sql=sql[:2000])
        try:
            result = await call.api.db.run_statement("db", sql)
        except Exception as problem:
            return error(f"statement failed: {(str(problem).strip().splitlines() or ['error'])[0]}", 412)
        if result.columns:
            records = [dict(zip(result.columns, row)) for row in result.rows[:MAX_DB_ROWS]]
            return ok(f"{len(records)} rows", records)
        return ok(f"{max(result.rowcount, 0)} rows affected")

    @fn("showcfg", Category.ADMIN, "the running configuration (secrets hidden)")
    async def showcfg(call: Call) -> ApiAnswer:
        config = call.api.settings.current
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

    @fn("checkcredits", Category.ADMIN, "check that every balance equals the sum of its ledger")
    async def checkcredits(call: Call) -> ApiAnswer:
        problems = await call.api.store.audit()
        records = [{"userid": u, "credit": format_money(c), "ledger": format_money(s)} for u, c, s in problems]
        if records:
            return ApiAnswer(False, f"{len(records)} balances differ from their ledger", 412, records)
        return ok("every balance equals its ledger")

    @fn("quickstat", Category.ADMIN, "quick statistics")
    async def quickstat(call: Call) -> ApiAnswer:
        db, now = call.api.db, call.api.store.now()
        users = (await db.run_query("stat", "SELECT count(*), coalesce(sum(credit), 0) FROM tb_users")).rows[0]
        registered = (await db.run_query(
            "stat", "SELECT count(DISTINCT userid) FROM tb_registrations WHERE expires > ?", (now,))).rows[0][0]
        calls = (await db.run_statement(
            "stat", "SELECT count(*), coalesce(sum(duration), 0), coalesce(sum(cost), 0) FROM tb_cdrs WHERE datum >= ?",
            (since("today", now),))).rows[0]
        record = {
            "users": int(users[0]), "credit": format_money(db.engine.money(users[1])), "registered": int(registered),
            "calls_today": int(calls[0]), "seconds_today": int(calls[1]),
            "cost_today": format_money(db.engine.money(calls[2])), "api_requests": call.api.requests,
        }
        return ok(f"{record['users']} users, {record['registered']} registered, {record['calls_today']} calls today",
                  [record])


def register_rebill(registry: Registry) -> None:
    """rebill: recompute CDR costs from the current tariffs, adjusting each user's ledger."""

    @registry.function("rebill", Category.ADMIN, "recompute CDR costs from the current tariffs (days=, userid=; "
                       "not the test records of gencdr)",
                       ("days", "userid"))
    async def rebill(call: Call) -> ApiAnswer:
        api = call.api
        start = since(call.arg("days", "today"), api.store.now())
        userid = call.arg("userid")
        # Test records of gencdr were never charged, so they are never repriced either.
        sql = ("SELECT id, userid, callednumber, duration, cost FROM tb_cdrs WHERE datum >= ? AND userid > 0 "
               "AND generated = 0")
        params: list[Any] = [start]
        if userid:
            number = canonical_id(userid)
            if number is None:
                return error("userid must be a user id", 412)
            sql += " AND userid = ?"
            params.append(number)
        rows = (await api.db.run_statement("rebill_read", sql + " ORDER BY userid, id", params)).rows
        money = api.db.engine.money
        changes: dict[int, list[tuple[int, Any]]] = {}
        differences: dict[int, Any] = {}
        plans: dict[int, int] = {}
        for cdrid, owner, number, duration, cost in rows:
            if owner not in plans:
                user = await api.store.get_user(owner)
                plans[owner] = (user.tariffid if user else 0) or api.settings.current.defaulttariff
            tariff = api.rater.table.lookup(plans[owner], number)
            new = tariff.cost(int(duration)) if tariff else money(0)
            if new != money(cost):
                changes.setdefault(owner, []).append((cdrid, new))
                differences[owner] = differences.get(owner, money(0)) + new - money(cost)
        adjusted, refused = 0, []
        for owner, updates in changes.items():
            try:
                await api.store.rebill(owner, updates, differences[owner])
                adjusted += len(updates)
            except Exception as problem:
                refused.append({"userid": owner, "reason": str(problem)})
        message = f"{len(rows)} CDRs checked, {adjusted} repriced"
        if refused:
            return ApiAnswer(False, message + f", {len(refused)} users refused", 412, refused)
        return ok(message)
