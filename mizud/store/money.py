"""Exact money values and the errors money operations raise."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from .engines import MONEY_PLACES, QUANTUM

#: The largest amount one operation may move (and the largest balance).
MAX_AMOUNT = Decimal("1000000000000")


class MoneyError(Exception):
    """A money operation was refused; C{code} is a stable machine name."""

    code = "refused"


class InvalidAmount(MoneyError):
    """The amount is negative, not a number, too precise or too large."""

    code = "invalid_amount"


class InsufficientCredit(MoneyError):
    """The debit would take the balance below what the account allows."""

    code = "insufficient_credit"


class BalanceLimit(MoneyError):
    """The credit would take the balance (with what is held for calls) past L{MAX_AMOUNT}."""

    code = "balance_limit"


class UnknownUser(MoneyError):
    """No such user."""

    code = "unknown_user"


class BadPin(MoneyError):
    """The recharge PIN does not exist, was used already, or is in another currency."""

    code = "bad_pin"


class TxIdConflict(MoneyError):
    """The transaction id was used before for a different operation."""

    code = "txid_conflict"


class HoldClosed(MoneyError):
    """The hold does not exist or was settled or released already."""

    code = "hold_closed"


class CurrencyMismatch(MoneyError):
    """The two accounts keep different currencies."""

    code = "currency_mismatch"


def parse_amount(value: Any, *, allow_zero: bool = False) -> Decimal:
    """Validate an amount of money and return it as an exact L{Decimal}.

    Accepts a L{Decimal}, an L{int} or a decimal string.  Refuses floats
    (they are not exact), booleans, non-numbers, negative amounts, zero
    (unless C{allow_zero}), more than six decimal places, and amounts over
    L{MAX_AMOUNT}.
    """
    if isinstance(value, bool) or isinstance(value, float):
        raise InvalidAmount(f"amount must be an exact decimal, not {type(value).__name__}")
    if isinstance(value, Decimal):
        amount = value
    elif isinstance(value, int):
        amount = Decimal(value)
    elif isinstance(value, str):
        text = value.strip()
        if not text or any(c not in "0123456789.+-" for c in text):
            raise InvalidAmount(f"amount is not a decimal number: {value!r}")
        try:
            amount = Decimal(text)
        except InvalidOperation:
            raise InvalidAmount(f"amount is not a decimal number: {value!r}") from None
    else:
        raise InvalidAmount(f"amount must be a decimal number, not {type(value).__name__}")
    if not amount.is_finite():
        raise InvalidAmount("amount must be finite")
    if amount < 0:
        raise InvalidAmount(f"amount must not be negative: {amount}")
    if amount == 0 and not allow_zero:
        raise InvalidAmount("amount must be greater than zero")
    if amount > MAX_AMOUNT:
        raise InvalidAmount(f"amount exceeds {MAX_AMOUNT}")
    if amount != amount.quantize(QUANTUM):
        raise InvalidAmount(f"amount has more than {MONEY_PLACES} decimal places: {amount}")
    return amount.quantize(QUANTUM)


def format_money(amount: Decimal) -> str:
    """An amount for answers: at least two decimals, no trailing zeros beyond them."""
    text = f"{amount.quantize(QUANTUM):f}"
    whole, _, fraction = text.partition(".")
    fraction = fraction.rstrip("0").ljust(2, "0")
    return f"{whole}.{fraction}"
