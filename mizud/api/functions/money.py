"""Money functions: charge, addcredit, transfercredit.

Each moves money through the billing store (exact decimals, one ledger row
per balance change, conditional updates) and accepts an optional client
transaction id, C{txid}: a repeated id for the same user returns the first
result and moves nothing again.  Answers start with the caller's (or for
addcredit the target's) new balance and currency: C{OK: 12.50 USD, ...}.
"""

from __future__ import annotations

from ...store.billing import MoneyResult
from ...store.money import format_money
from ..answer import ApiAnswer, error, ok
from ..dispatcher import Call
from ..registry import Functions, REQ_ADMINS, Category


def _balance_line(result: MoneyResult, currency: str, note: str) -> ApiAnswer:
    repeated = " (repeated transaction)" if result.replayed else ""
    return ok(f"{format_money(result.balance)} {currency}, {note}{repeated}")


#: This module's API functions (registered by build_registry).
fn = Functions()


@fn("balance", Category.USER)
async def balance(call: Call) -> ApiAnswer:
    """credit request: the caller's balance and currency"""
    user = call.user()
    # "OK: 12.34 USD": the number first, as Mizu clients parse it.
    return ok(f"{format_money(user.credit)} {user.currency}")


@fn("charge", Category.USER, params=("pin", "txid"), aliases=("recharge",))
async def charge(call: Call) -> ApiAnswer:
    """recharge with a PIN from tb_pins (exactly once)"""
    user = call.user()
    result = await call.api.store.redeem_pin(user.id, call.require("pin"), txid=call.arg("txid") or None)
    return _balance_line(result, user.currency, f"credited {format_money_text(result.get('credit'))}")


@fn("addcredit", Category.SENSITIVE, params=("pin", "credit", "txid"))
async def addcredit(call: Call) -> ApiAnswer:
    """add credit to a user (negative: admins only)"""
    target = await call.api.find_user(call.require("pin"))
    if target is None:
        return error(f"no such user: {call.arg('pin')[:64]}", 404)
    amount = call.require("credit").strip()
    who = call.caller.user.username if call.caller.user else call.request.source
    comment = f"addcredit by {who}"
    txid = call.arg("txid") or None
    if amount.startswith("-"):
        if call.caller.level > REQ_ADMINS:
            return error("only admins may add a negative amount", 403)
        result = await call.api.store.debit(target.id, amount[1:], txid=txid, comment=comment)
        return _balance_line(result, target.currency, f"{target.username} debited {amount[1:]}")
    result = await call.api.store.credit(target.id, amount, txid=txid, comment=comment)
    return _balance_line(result, target.currency, f"{target.username} credited {amount}")


@fn("transfercredit", Category.USER, params=("username", "credit", "txid"))
async def transfercredit(call: Call) -> ApiAnswer:
    """send credit to another user"""
    user = call.user()
    target = await call.api.store.find_user(call.require("username"))
    if target is None:
        return error(f"no such user: {call.arg('username')[:64]}", 404)
    amount = call.require("credit")
    result = await call.api.store.transfer(
        user.id, target.id, amount, txid=call.arg("txid") or None, comment=f"transfercredit to {target.username}"
    )
    return _balance_line(result, user.currency, f"sent {amount} to {target.username}")


def format_money_text(value: str | None) -> str:
    """A stored amount as answer text."""
    from decimal import Decimal

    return format_money(Decimal(value)) if value else "0.00"

