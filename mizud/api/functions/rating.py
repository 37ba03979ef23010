"""Rating functions: rating, tariffs, publictariffs, rulesreload, reloaddialplan, importtariffs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Awaitable, Callable

from ...billing.rating import normalise
from ...billing.tariffs import COLUMNS, TariffError, parse_csv, replace_plan
from ...store.tariffs import tariff_listing
from ...store.money import format_money
from ..answer import ApiAnswer, error, ok
from ..invocation import Invocation
from ..registry import Functions, Category
from ...text import ascii_digits

if TYPE_CHECKING:  # pragma: no cover
    from ...billing.rating import Rater
    from ...config import Settings
    from ...store.database import Database


#: This module's API functions (registered by build_registry).
fn = Functions()


@dataclass(frozen=True, kw_only=True, eq=False)
class RatingFunctions:
    """Rating: prices, tariff listings, reloading and importing tariffs."""

    db: Database
    publish: Callable[[str], Awaitable[None]]
    rater: Rater
    settings: Settings

    @fn("rating", Category.USER, params=("bnum",))
    async def rating(self, invocation: Invocation) -> ApiAnswer:
        """price per minute to a number or prefix in the caller's plan"""
        number = invocation.require("bnum")
        if normalise(number) is None:
            return error(f"not a phone number or prefix: {number[:40]}", 421)
        user = invocation.caller.user
        plan = (user.tariffid if user else 0) or self.settings.current.defaulttariff
        tariff = self.rater.table.lookup(plan, number)
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
    async def tariffs(self, invocation: Invocation) -> ApiAnswer:
        """the caller's tariff plan, by prefix (optional prefix filter, at most 1000 rows)"""
        user = invocation.caller.user
        plan = (user.tariffid if user else 0) or self.settings.current.defaulttariff
        return await self._listing(invocation, plan)

    @fn("publictariffs", Category.PUBLIC, params=("prefix", "maxcount"))
    async def publictariffs(self, invocation: Invocation) -> ApiAnswer:
        """the public tariff plan (option publictariffs), by prefix"""
        plan = self.settings.current.publictariffs
        if not plan:
            return error("no public tariffs are published (publictariffs=0)", 404)
        return await self._listing(invocation, plan)

    async def rebuild(self, invocation: Invocation) -> ApiAnswer:
        """rulesreload, reloaddialplan: reload the tariffs into the rating engine, on every node."""
        table = await self.rater.rebuild()
        await self.publish("tariffs")
        return ok(f"{table.size} tariffs loaded")

    fn("rulesreload", Category.ADMIN, "reload the tariffs into the rating engine")(rebuild)

    fn("reloaddialplan", Category.ADMIN, "reload the tariffs into the rating engine")(rebuild)

    @fn("importtariffs", Category.ADMIN, f"replace a tariff plan from CSV ({','.join(COLUMNS)})", ("tariffid", "csv"))
    async def importtariffs(self, invocation: Invocation) -> ApiAnswer:
        """Replace one tariff plan from CSV, in one transaction, then reload the rating table everywhere."""
        plan = invocation.integer("tariffid", 0, 999_999_999)
        config = self.settings.current
        try:
            tariffs = parse_csv(invocation.require("csv"), plan, config.defaultcurrency)
        except TariffError as problem:
            return error(f"tariff file refused: {problem}", 412)
        count = await replace_plan(self.db, plan, tariffs)
        table = await self.rater.rebuild()
        await self.publish("tariffs")
        return ok(f"{count} tariffs imported into plan {plan}; {table.size} tariffs loaded")

    async def _listing(self, invocation: Invocation, plan: int) -> ApiAnswer:
        """A plan's tariffs whose prefix starts with C{prefix}, in prefix order."""
        prefix = invocation.arg("prefix").strip()
        if prefix and (not ascii_digits(prefix) or len(prefix) > 20):
            return error("prefix must be digits", 412)
        most = min(invocation.integer("maxcount", 0, 10**9, 1000), 1000)
        records = [{"prefix": r[0], "name": r[1], "price": format_money(r[2]), "connectfee": format_money(r[3]),
                    "mininterval": r[4], "interval": r[5], "currency": r[6], "smsprice": format_money(r[7])}
                   for r in await tariff_listing(self.db, plan, prefix, most)]
        return ok(f"{len(records)} tariffs in plan {plan}", records)
