"""Money functions: charge, addcredit, transfercredit.

Each moves money through the billing store (exact decimals, one ledger row
per balance change, conditional updates) and accepts an optional client
transaction id, C{txid}: a repeated id for the same user returns the first
result and moves nothing again.  Answers start with the caller's (or for
addcredit the target's) new balance and currency: C{OK: 12.50 USD, ...}.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Awaitable, Callable

from ...store.billing import MoneyResult
from ...store.money import format_money
from ..answer import ApiAnswer, error, ok
from ..invocation import Invocation
from ..registry import Functions, REQ_ADMINS, Category

if TYPE_CHECKING:  # pragma: no cover
    from ...store.billing import BillingStore
    from ...store.billing import User


def _balance_line(result: MoneyResult, currency: str, note: str) -> ApiAnswer:
    repeated = " (repeated transaction)" if result.replayed else ""
    return ok(f"{format_money(result.balance)} {currency}, {note}{repeated}")


#: This module's API functions (registered by build_registry).
fn = Functions()


def format_money_text(value: str | None) -> str:
    """A stored amount as answer text."""
    from decimal import Decimal

    return format_money(Decimal(value)) if value else "0.00"


@dataclass(frozen=True, kw_only=True, eq=False)
class MoneyFunctions:
    """The money functions: balance, charge, addcredit, transfercredit."""

    find_user: Callable[[str], Awaitable[User | None]]
    store: BillingStore

    @fn("balance", Category.USER)
    async def balance(self, invocation: Invocation) -> ApiAnswer:
        """credit request: the caller's balance and currency"""
        user = invocation.user()
        # "OK: 12.34 USD": the number first, as Mizu clients parse it.
        return ok(f"{format_money(await self.store.current_credit(user))} {user.currency}")

    @fn("charge", Category.USER, params=("pin", "txid"), aliases=("recharge",))
    async def charge(self, invocation: Invocation) -> ApiAnswer:
        """recharge with a PIN from tb_pins (exactly once)"""
        user = invocation.user()
        result = await self.store.redeem_pin(user.id, invocation.require("pin"), txid=invocation.arg("txid") or None)
        return _balance_line(result, user.currency, f"credited {format_money_text(result.get('credit'))}")

    @fn("addcredit", Category.SENSITIVE, params=("pin", "credit", "txid"))
    async def addcredit(self, invocation: Invocation) -> ApiAnswer:
        """add credit to a user (negative: admins only)"""
        target = await self.find_user(invocation.require("pin"))
        if target is None:
            return error(f"no such user: {invocation.arg('pin')[:64]}", 404)
        amount = invocation.require("credit").strip()
        who = invocation.caller.user.username if invocation.caller.user else invocation.request.source
        comment = f"addcredit by {who}"
        txid = invocation.arg("txid") or None
        if amount.startswith("-"):
            if invocation.caller.level > REQ_ADMINS:
                return error("only admins may add a negative amount", 403)
            result = await self.store.debit(target.id, amount[1:], txid=txid, comment=comment)
            return _balance_line(result, target.currency, f"{target.username} debited {amount[1:]}")
        result = await self.store.credit(target.id, amount, txid=txid, comment=comment)
        return _balance_line(result, target.currency, f"{target.username} credited {amount}")

    @fn("transfercredit", Category.USER, params=("username", "credit", "txid"))
    async def transfercredit(self, invocation: Invocation) -> ApiAnswer:
        """send credit to another user"""
        user = invocation.user()
        target = await self.store.find_user(invocation.require("username"))
        if target is None:
            return error(f"no such user: {invocation.arg('username')[:64]}", 404)
        amount = invocation.require("credit")
        result = await self.store.transfer(
            user.id, target.id, amount, txid=invocation.arg("txid") or None,
            comment=f"transfercredit to {target.username}"
        )
        return _balance_line(result, user.currency, f"sent {amount} to {target.username}")
