"""Account functions needed by every client: balance."""

from __future__ import annotations

from ...store.money import format_money
from ..answer import ApiAnswer, error, ok
from ..dispatcher import Call
from ..registry import Category, Registry


def register(registry: Registry) -> None:
    """Register this module's handlers."""

    @registry.function("balance", Category.USER, "credit request: the caller's balance and currency")
    async def balance(call: Call) -> ApiAnswer:
        user = call.caller.user
        if user is None:
            return error("balance needs authid (the user)", 421)
        # "OK: 12.34 USD": the number first, as Mizu clients parse it.
        return ok(f"{format_money(user.credit)} {user.currency}")
