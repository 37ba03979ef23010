"""Rating functions: rating, rulesreload, reloaddialplan, importtariffs."""

from __future__ import annotations

from ...billing.rating import normalise
from ...billing.tariffs import COLUMNS, TariffError, parse_csv, replace_plan
from ...store.money import format_money
from ..answer import ApiAnswer, error, ok
from ..dispatcher import Call
from ..registry import Category, Registry


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

    async def rebuild(call: Call) -> ApiAnswer:
        table = await call.api.rater.rebuild()
        return ok(f"{table.size} tariffs loaded")

    fn("rulesreload", Category.ADMIN, "reload the tariffs into the rating engine")(rebuild)
    fn("reloaddialplan", Category.ADMIN, "reload the tariffs into the rating engine")(rebuild)

    @fn("importtariffs", Category.ADMIN, f"replace a tariff plan from CSV ({','.join(COLUMNS)})", ("tariffid", "csv"))
    async def importtariffs(call: Call) -> ApiAnswer:
        plan_text = call.require("tariffid")
        if not plan_text.isdigit() or len(plan_text) > 9:
            return error("tariffid must be a plan number", 421)
        config = call.api.settings.current
        try:
            tariffs = parse_csv(call.require("csv"), int(plan_text), config.defaultcurrency)
        except TariffError as problem:
            return error(f"tariff file refused: {problem}", 412)
        count = await replace_plan(call.api.db, int(plan_text), tariffs)
        table = await call.api.rater.rebuild()
        return ok(f"{count} tariffs imported into plan {plan_text}; {table.size} tariffs loaded")
