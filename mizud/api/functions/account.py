"""Account functions needed by every client: balance."""

from __future__ import annotations

from ...store.money import format_money
from ..answer import ApiAnswer, error, ok
from ..dispatcher import Call
from ..registry import Category, Registry


def register(registry: Registry) -> None:
    """Register this module's handlers."""

    @registry.function("balance", Category.USER, "credit request: the caller's balance")
    async def balance(call: Call) -> ApiAnswer:
        user = call.caller.user
        if user is None:
            return error("balance needs authid (the user)", 421)
        # Just the number: clients of the Mizu API parse "OK: 12.34".
        return ok(format_money(user.credit))
