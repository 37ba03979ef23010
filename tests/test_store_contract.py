"""The billing store contract, run on SQLite and on PostgreSQL."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest
import pytest_twisted

from mizud.store.billing import USER_ADMIN, BillingStore
from mizud.store.money import (
    BadPin,
    CurrencyMismatch,
    HoldClosed,
    InsufficientCredit,
    InvalidAmount,
    MoneyError,
    TxIdConflict,
    UnknownUser,
)

D = Decimal


async def ledger_total(store: BillingStore, userid: int) -> Decimal:
    """Sum of the user's ledger rows."""
    return sum((e.amount for e in await store.ledger(userid)), D(0))


async def assert_consistent(store: BillingStore) -> None:
    """Every user's ledger sums to the balance."""
    assert await store.audit() == []


@pytest_twisted.ensureDeferred
async def test_create_and_find_user(store: BillingStore) -> None:
    """A created user can be found by id and name with its fields."""
    uid = await store.create_user("alice", "pw", type=USER_ADMIN, email="a@example.com", currency="EUR")
    by_id = await store.get_user(uid)
    by_name = await store.find_user("alice")
    assert by_id == by_name
    assert by_id is not None
    assert (by_id.username, by_id.type, by_id.currency, by_id.credit) == ("alice", USER_ADMIN, "EUR", D("0"))
    assert await store.find_user("nobody") is None
    assert await store.get_user(uid + 1000) is None


@pytest_twisted.ensureDeferred
async def test_opening_credit_is_a_ledger_row(store: BillingStore) -> None:
    """Opening credit is written through the ledger with the clock's time."""
    uid = await store.create_user("bob", "pw", credit="12.5")
    entries = await store.ledger(uid)
    assert [(e.amount, e.balance, e.kind) for e in entries] == [(D("12.5"), D("12.5"), "initial")]
    assert entries[0].created == datetime(2026, 1, 2, 3, 4, 5)
    assert await store.balance(uid) == D("12.500000")


@pytest_twisted.ensureDeferred
async def test_duplicate_username_refused(store: BillingStore) -> None:
    """Usernames are unique."""
    await store.create_user("carol", "pw")
    with pytest.raises(Exception):
        await store.create_user("carol", "other")


@pytest_twisted.ensureDeferred
async def test_debit_and_credit(store: BillingStore) -> None:
    """Debit and credit change the balance exactly, each with one ledger row."""
    uid = await store.create_user("u", "pw", credit="10")
    result = await store.debit(uid, "0.000001")
    assert result.balance == D("9.999999")
    result = await store.credit(uid, D("0.1"))
    assert result.balance == D("10.099999")
    assert [e.kind for e in await store.ledger(uid)] == ["initial", "debit", "credit"]
    assert await ledger_total(store, uid) == D("10.099999")


@pytest_twisted.ensureDeferred
async def test_prepaid_debit_never_below_zero(store: BillingStore) -> None:
    """A prepaid debit larger than the balance is refused and writes nothing."""
    uid = await store.create_user("u", "pw", credit="1")
    with pytest.raises(InsufficientCredit):
        await store.debit(uid, "1.000001")
    assert (await store.debit(uid, "1")).balance == D(0)
    with pytest.raises(InsufficientCredit):
        await store.debit(uid, "0.000001")
    assert len(await store.ledger(uid)) == 2
    await assert_consistent(store)


@pytest_twisted.ensureDeferred
async def test_postpaid_debit_down_to_creditlimit(store: BillingStore) -> None:
    """A postpaid user may go negative down to the credit limit, no further."""
    uid = await store.create_user("p", "pw", postpaid=True, creditlimit="5")
    assert (await store.debit(uid, "4.5")).balance == D("-4.5")
    assert (await store.debit(uid, "0.5")).balance == D("-5")
    with pytest.raises(InsufficientCredit):
        await store.debit(uid, "0.000001")
    await assert_consistent(store)


@pytest_twisted.ensureDeferred
async def test_unknown_user(store: BillingStore) -> None:
    """Money operations on a missing user say so and write nothing."""
    for call in (
        lambda: store.debit(999, "1"),
        lambda: store.credit(999, "1"),
        lambda: store.hold(999, "1"),
        lambda: store.balance(999),
        lambda: store.redeem_pin(999, "x"),
    ):
        with pytest.raises(UnknownUser):
            await call()


BAD_AMOUNTS: list[Any] = [
    "-1", "abc", "1.0000001", "NaN", "Infinity", "1e30", "", " ", "0x10", 1.5, True, None, "0", "1,5",
]


@pytest_twisted.ensureDeferred
async def test_bad_amounts_refused(store: BillingStore) -> None:
    """Negative, non-numeric, over-precise, huge, zero or float amounts are refused."""
    uid = await store.create_user("u", "pw", credit="5")
    other = await store.create_user("v", "pw")
    for amount in BAD_AMOUNTS:
        for call in (
            lambda: store.debit(uid, amount),
            lambda: store.credit(uid, amount),
            lambda: store.transfer(uid, other, amount),
            lambda: store.hold(uid, amount),
        ):
            with pytest.raises(InvalidAmount):
                await call()
    assert await store.balance(uid) == D(5)
    assert len(await store.ledger(uid)) == 1


@pytest_twisted.ensureDeferred
async def test_transfer(store: BillingStore) -> None:
    """A transfer debits one user and credits the other in one transaction."""
    a = await store.create_user("a", "pw", credit="10")
    b = await store.create_user("b", "pw", credit="1")
    result = await store.transfer(a, b, "2.25")
    assert result.balance == D("7.75")
    assert result.get("to_balance") == "3.250000"
    assert [e.kind for e in await store.ledger(a)] == ["initial", "transfer_out"]
    assert [(e.kind, e.reference) for e in await store.ledger(b)][-1] == ("transfer_in", str(a))
    await assert_consistent(store)


@pytest_twisted.ensureDeferred
async def test_failed_transfers_move_nothing(store: BillingStore) -> None:
    """Insufficient credit, a missing payee, another currency or self: nothing moves."""
    a = await store.create_user("a", "pw", credit="1")
    b = await store.create_user("b", "pw")
    e = await store.create_user("e", "pw", currency="EUR", credit="3")
    with pytest.raises(InsufficientCredit):
        await store.transfer(a, b, "2")
    with pytest.raises(UnknownUser):
        await store.transfer(a, 9999, "1")
    with pytest.raises(UnknownUser):
        await store.transfer(9999, a, "1")
    with pytest.raises(CurrencyMismatch):
        await store.transfer(e, a, "1")
    with pytest.raises(MoneyError):
        await store.transfer(a, a, "1")
    assert (await store.balance(a), await store.balance(b), await store.balance(e)) == (D(1), D(0), D(3))
    assert len(await store.ledger(a)) == 1
    await assert_consistent(store)


@pytest_twisted.ensureDeferred
async def test_pin_redeems_exactly_once(store: BillingStore) -> None:
    """A recharge PIN credits its value once; a second use is refused."""
    a = await store.create_user("a", "pw")
    b = await store.create_user("b", "pw")
    await store.create_pin("123456789", "7.5")
    result = await store.redeem_pin(a, "123456789")
    assert (result.balance, result.get("credit")) == (D("7.5"), "7.500000")
    with pytest.raises(BadPin):
        await store.redeem_pin(b, "123456789")
    with pytest.raises(BadPin):
        await store.redeem_pin(a, "000")
    assert await store.balance(b) == D(0)
    await assert_consistent(store)


@pytest_twisted.ensureDeferred
async def test_pin_in_other_currency_refused(store: BillingStore) -> None:
    """A PIN is only redeemed into an account of its own currency."""
    a = await store.create_user("a", "pw", currency="USD")
    await store.create_pin("eur-1", "5", "EUR")
    with pytest.raises(BadPin):
        await store.redeem_pin(a, "eur-1")
    assert await store.balance(a) == D(0)


@pytest_twisted.ensureDeferred
async def test_txid_makes_operations_idempotent(store: BillingStore) -> None:
    """The same transaction id moves money once and replays the first result."""
    a = await store.create_user("a", "pw", credit="10")
    b = await store.create_user("b", "pw")
    first = await store.debit(a, "1", txid="tx-1")
    again = await store.debit(a, "1", txid="tx-1")
    assert (first.replayed, again.replayed) == (False, True)
    assert again.balance == first.balance == D(9)
    assert again.ledgerid == first.ledgerid
    t1 = await store.transfer(a, b, "2", txid="tx-2")
    t2 = await store.transfer(a, b, "2", txid="tx-2")
    assert t2.replayed and t2.get("to_balance") == t1.get("to_balance")
    c1 = await store.credit(b, "3", txid="tx-1")  # ids are per user
    assert not c1.replayed
    assert await store.balance(a) == D(7)
    assert await store.balance(b) == D(5)
    await assert_consistent(store)


@pytest_twisted.ensureDeferred
async def test_txid_reused_for_other_operation(store: BillingStore) -> None:
    """Reusing a transaction id for a different operation is refused."""
    a = await store.create_user("a", "pw", credit="10")
    await store.debit(a, "1", txid="t")
    with pytest.raises(TxIdConflict):
        await store.debit(a, "2", txid="t")
    with pytest.raises(TxIdConflict):
        await store.credit(a, "1", txid="t")
    assert await store.balance(a) == D(9)


@pytest_twisted.ensureDeferred
async def test_refused_operation_does_not_consume_txid(store: BillingStore) -> None:
    """A refused debit rolls back entirely; the same id succeeds after a top-up."""
    a = await store.create_user("a", "pw", credit="1")
    with pytest.raises(InsufficientCredit):
        await store.debit(a, "2", txid="t")
    await store.credit(a, "5")
    result = await store.debit(a, "2", txid="t")
    assert not result.replayed and result.balance == D(4)


@pytest_twisted.ensureDeferred
async def test_pin_redeem_with_txid_replays(store: BillingStore) -> None:
    """Redeeming with a repeated transaction id replays instead of failing."""
    a = await store.create_user("a", "pw")
    await store.create_pin("p1", "4")
    first = await store.redeem_pin(a, "p1", txid="r")
    again = await store.redeem_pin(a, "p1", txid="r")
    assert again.replayed and again.balance == first.balance == D(4)


@pytest.mark.parametrize("txid", ["", "x" * 129, "bad\nid"])
@pytest_twisted.ensureDeferred
async def test_bad_txid_refused(store: BillingStore, txid: str) -> None:
    """Transaction ids are 1 to 128 printable characters."""
    a = await store.create_user("a", "pw", credit="1")
    with pytest.raises(MoneyError):
        await store.debit(a, "1", txid=txid)


@pytest_twisted.ensureDeferred
async def test_hold_settle(store: BillingStore) -> None:
    """A hold reserves funds; settling charges the cost and refunds the rest."""
    a = await store.create_user("a", "pw", credit="10")
    held = await store.hold(a, "4", reference="call-1")
    assert held.balance == D(6)
    holdid = int(held.get("holdid") or 0)
    settled = await store.settle(holdid, "1.25")
    assert settled.balance == D("8.75")
    with pytest.raises(HoldClosed):
        await store.settle(holdid, "1")
    with pytest.raises(HoldClosed):
        await store.release(holdid)
    assert [e.kind for e in await store.ledger(a)] == ["initial", "hold", "settle"]
    await assert_consistent(store)


@pytest_twisted.ensureDeferred
async def test_hold_release_and_limits(store: BillingStore) -> None:
    """Release returns everything; a hold beyond the credit or a cost beyond the hold is refused."""
    a = await store.create_user("a", "pw", credit="3")
    with pytest.raises(InsufficientCredit):
        await store.hold(a, "3.5")
    held = await store.hold(a, "3")
    holdid = int(held.get("holdid") or 0)
    with pytest.raises(InvalidAmount):
        await store.settle(holdid, "3.01")
    released = await store.release(holdid)
    assert released.balance == D(3)
    full = await store.hold(a, "2")
    settled = await store.settle(int(full.get("holdid") or 0), "2")
    assert settled.balance == D(1) and settled.ledgerid is None
    await assert_consistent(store)


@pytest_twisted.ensureDeferred
async def test_balances_cannot_overflow(store: BillingStore) -> None:
    """Credits stop at 10^12 (balance plus what is held), so no engine overflows; refunds of held funds
    always come back; the ledger still sums to the balance."""
    from mizud.store.money import MAX_AMOUNT, BalanceLimit

    uid = await store.create_user("rich", "pw")
    await store.credit(uid, MAX_AMOUNT)
    for _ in range(3):
        with pytest.raises(BalanceLimit):
            await store.credit(uid, "1000000000000")
    with pytest.raises(BalanceLimit):
        await store.credit(uid, "0.000001")
    # Holding funds does not make room for more: what is held comes back.
    held = await store.hold(uid, "600000000000")
    with pytest.raises(BalanceLimit):
        await store.credit(uid, "1")
    other = await store.create_user("other", "pw")
    await store.credit(other, "10")
    with pytest.raises(BalanceLimit):
        await store.transfer(other, uid, "1")
    with pytest.raises(InvalidAmount):
        await store.create_user("opening", "pw", credit="1000000000000.000001")
    await store.release(int(held.get("holdid") or 0))
    assert await store.balance(uid) == MAX_AMOUNT
    await store.debit(uid, "1")
    assert (await store.credit(uid, "1")).balance == MAX_AMOUNT
    await assert_consistent(store)
