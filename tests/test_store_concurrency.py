"""Money under concurrency, on SQLite and on PostgreSQL.

All operations are started before any is awaited, so on PostgreSQL they
run on several pooled connections at once and on SQLite they queue up into
group commits.
"""

from __future__ import annotations

import random
from decimal import Decimal

import pytest_twisted
from twisted.internet import defer

from mizud.store.billing import BillingStore
from mizud.store.money import BadPin, InsufficientCredit

D = Decimal


async def settle_all(calls: list[defer.Deferred]) -> list[object]:  # type: ignore[type-arg]
    """Wait for every Deferred; return results and exceptions in order."""
    results = await defer.DeferredList(calls, consumeErrors=True)
    return [value if ok else value.value for ok, value in results]


@pytest_twisted.ensureDeferred
async def test_concurrent_transfers_keep_total(store: BillingStore) -> None:
    """200 concurrent transfers among 10 users keep the total credit exactly."""
    users = [await store.create_user(f"u{i}", "pw", credit="10") for i in range(10)]
    rng = random.Random(4475)
    calls = []
    for _ in range(200):
        a, b = rng.sample(users, 2)
        amount = D(rng.randint(1, 500)) / 100
        calls.append(defer.ensureDeferred(store.transfer(a, b, amount)))
    outcomes = await settle_all(calls)
    unexpected = [o for o in outcomes if isinstance(o, Exception) and not isinstance(o, InsufficientCredit)]
    assert unexpected == []
    balances = [await store.balance(u) for u in users]
    assert sum(balances) == D(100)
    assert all(b >= 0 for b in balances)
    assert await store.audit() == []


@pytest_twisted.ensureDeferred
async def test_concurrent_pin_redemptions_one_success(store: BillingStore) -> None:
    """50 concurrent redemptions of one PIN give exactly one success."""
    users = [await store.create_user(f"u{i}", "pw") for i in range(50)]
    await store.create_pin("555000111", "25")
    outcomes = await settle_all([defer.ensureDeferred(store.redeem_pin(u, "555000111")) for u in users])
    successes = [o for o in outcomes if not isinstance(o, Exception)]
    assert len(successes) == 1
    assert all(isinstance(o, BadPin) for o in outcomes if isinstance(o, Exception))
    assert sum([await store.balance(u) for u in users], D(0)) == D(25)
    assert await store.audit() == []


@pytest_twisted.ensureDeferred
async def test_concurrent_debits_never_below_zero(store: BillingStore) -> None:
    """100 concurrent debits on one prepaid user never take it below zero."""
    uid = await store.create_user("u", "pw", credit="10")
    outcomes = await settle_all([defer.ensureDeferred(store.debit(uid, "0.3")) for _ in range(100)])
    successes = [o for o in outcomes if not isinstance(o, Exception)]
    assert len(successes) == 33
    assert all(isinstance(o, InsufficientCredit) for o in outcomes if isinstance(o, Exception))
    assert await store.balance(uid) == D("0.1")
    assert await store.audit() == []


@pytest_twisted.ensureDeferred
async def test_concurrent_holds_never_overspend(store: BillingStore) -> None:
    """Concurrent holds of one user reserve at most the credit."""
    uid = await store.create_user("u", "pw", credit="5")
    outcomes = await settle_all([defer.ensureDeferred(store.hold(uid, "1")) for _ in range(20)])
    assert len([o for o in outcomes if not isinstance(o, Exception)]) == 5
    assert await store.balance(uid) == D(0)
    assert await store.audit() == []


@pytest_twisted.ensureDeferred
async def test_concurrent_same_txid_moves_money_once(store: BillingStore) -> None:
    """The same transaction id sent 20 times at once moves money once."""
    uid = await store.create_user("u", "pw", credit="10")
    outcomes = await settle_all([defer.ensureDeferred(store.debit(uid, "1", txid="once")) for _ in range(20)])
    assert not [o for o in outcomes if isinstance(o, Exception)]
    assert await store.balance(uid) == D(9)
    assert len([o for o in outcomes if not o.replayed]) == 1  # type: ignore[attr-defined]
    assert await store.audit() == []
