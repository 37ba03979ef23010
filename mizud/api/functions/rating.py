"""Rating functions: rating, tariffs, publictariffs, rulesreload, reloaddialplan, importtariffs."""

from __future__ import annotations

from ...billing.rating import normalise
from ...billing.tariffs import COLUMNS, TariffError, parse_csv, replace_plan
from ...store.tariffs import tariff_listing
from ...store.money import format_money
from ..answer import ApiAnswer, error, ok
from ..dispatcher import Call
from ..registry import Functions, Category
from ...text import ascii_digits


#: This module's API functions (registered by build_registry).
fn = Functions()


@fn("rating", Category.USER, params=("bnum",))
async def rating(call: Call) -> ApiAnswer:
    """price per minute to a number or prefix in the caller's plan"""
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


@fn("tariffs", Category.USER, params=("prefix", "maxcount"))
async def tariffs(call: Call) -> ApiAnswer:
    """the caller's tariff plan, by prefix (optional prefix filter, at most 1000 rows)"""
    user = call.caller.user
    plan = (user.tariffid if user else 0) or call.api.settings.current.defaulttariff
    return await _listing(call, plan)


@fn("publictariffs", Category.PUBLIC, params=("prefix", "maxcount"))
async def publictariffs(call: Call) -> ApiAnswer:
    """the public tariff plan (option publictariffs), by prefix"""
    plan = call.api.settings.current.publictariffs
    if not plan:
        return error("no public tariffs are published (publictariffs=0)", 404)
    return await _listing(call, plan)


async def rebuild(call: Call) -> ApiAnswer:
    """rulesreload, reloaddialplan: reload the tariffs into the rating engine, on every node."""
    table = await call.api.rater.rebuild()
    await call.api.publish("tariffs")
    return ok(f"{table.size} tariffs loaded")


fn("rulesreload", Category.ADMIN, "reload the tariffs into the rating engine")(rebuild)


fn("reloaddialplan", Category.ADMIN, "reload the tariffs into the rating engine")(rebuild)


@fn("importtariffs", Category.ADMIN, f"replace a tariff plan from CSV ({','.join(COLUMNS)})", ("tariffid", "csv"))
async def importtariffs(call: Call) -> ApiAnswer:
    """Replace one tariff plan from CSV, in one transaction, then reload the rating table everywhere."""
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
    records = [{"prefix": r[0], "name": r[1], "price": format_money(r[2]), "connectfee": format_money(r[3]),
                "mininterval": r[4], "interval": r[5], "currency": r[6], "smsprice": format_money(r[7])}
               for r in await tariff_listing(call.api.db, plan, prefix, most)]
    return ok(f"{len(records)} tariffs in plan {plan}", records)
