"""Rating functions: rating, tariffs, publictariffs, rulesreload, reloaddialplan, importtariffs."""

from __future__ import annotations

from ...billing.rating import normalise
from ...billing.tariffs import COLUMNS, TariffError, parse_csv, replace_plan
from ...store.money import format_money
from ..answer import ApiAnswer, error, ok
from ..dispatcher import Call
from ..registry import Category, Registry
from ...text import ascii_digits


def register(registry: Registry) -> None:
    """Register this module's handlers."""
    fn = registry.function

    @fn("rating", Category.USER, "price per minute to a number or prefix in the caller's plan", ("bnum",))
    async def rating(call: Call) -> ApiAnswer:
        number = call.require("bnum")
        if normalise(number) is None:
            return error(f"not a phone number or prefix: {number[:40]}", 421)
        user = call.caller.user
        plan = (user.tariffid if user else 0) or call.api.settings.current.defaulttariff
        tariff = call.api.rater.table.lookup(plan, number)
        if tariff is None:
            return error(f"no tariff for {number[:40]} in plan {plan}", 404)
        price = format_money(tariff.price)
        record = {
            "prefix": tariff.prefix, "name": tariff.name, "price": price, "currency": tariff.currency,
            "connectfee": format_money(tariff.connectfee), "mininterval": tariff.mininterval,
            "interval": tariff.interval, "plan": plan,
        }
        return ok(f"{price} {tariff.currency} {tariff.prefix} {tariff.name}".rstrip(), [record])

    @fn("tariffs", Category.USER, "the caller's tariff plan, by prefix (optional prefix filter, at most 1000 rows)",
        ("prefix", "maxcount"))
    async def tariffs(call: Call) -> ApiAnswer:
        user = call.caller.user
        plan = (user.tariffid if user else 0) or call.api.settings.current.defaulttariff
        return await _listing(call, plan)

    @fn("publictariffs", Category.PUBLIC, "the public tariff plan (option publictariffs), by prefix",
        ("prefix", "maxcount"))
    async def publictariffs(call: Call) -> ApiAnswer:
        plan = call.api.settings.current.publictariffs
        if not plan:
            return error("no public tariffs are published (publictariffs=0)", 404)
        return await _listing(call, plan)

    async def rebuild(call: Call) -> ApiAnswer:
        table = await call.api.rater.rebuild()
        await call.api.publish("tariffs")
        return ok(f"{table.size} tariffs loaded")

    fn("rulesreload", Category.ADMIN, "reload the tariffs into the rating engine")(rebuild)
    fn("reloaddialplan", Category.ADMIN, "reload the tariffs into the rating engine")(rebuild)

    @fn("importtariffs", Category.ADMIN, f"replace a tariff plan from CSV ({','.join(COLUMNS)})", ("tariffid", "csv"))
    async def importtariffs(call: Call) -> ApiAnswer:
        plan = call.integer("tariffid", 0, 999_999_999)
        config = call.api.settings.current
        try:
            tariffs = parse_csv(call.require("csv"), plan, config.defaultcurrency)
        except TariffError as problem:
            return error(f"tariff file refused: {problem}", 412)
        count = await replace_plan(call.api.db, plan, tariffs)
        table = await call.api.rater.rebuild()
        await call.api.publish("tariffs")
        return ok(f"{count} tariffs imported into plan {plan}; {table.size} tariffs loaded")


async def _listing(call: Call, plan: int) -> ApiAnswer:
    """A plan's tariffs whose prefix starts with C{prefix}, in prefix order."""
    prefix = call.arg("prefix").strip()
    if prefix and (not ascii_digits(prefix) or len(prefix) > 20):
        return error("prefix must be digits", 412)
    most = min(call.integer("maxcount", 0, 10**9, 1000), 1000)
    money = call.api.db.engine.money
    result = await call.api.db.run_query(
        "tariff_listing",
        "SELECT prefix, name, price, connectfee, mininterval, interval, currency, smsprice FROM tb_tariffs "
        "WHERE tariffid = ? AND substr(prefix, 1, ?) = ? ORDER BY prefix LIMIT ?",
        (plan, len(prefix), prefix, most))
    records = [{"prefix": r[0], "name": r[1], "price": format_money(money(r[2])),
                "connectfee": format_money(money(r[3])), "mininterval": int(r[4]), "interval": int(r[5]),
                "currency": r[6], "smsprice": format_money(money(r[7]))} for r in result.rows]
    return ok(f"{len(records)} tariffs in plan {plan}", records)
