"""charge, addcredit and transfercredit through the API, on both engines."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest_twisted
from twisted.internet import defer

from test_api_dispatch import KEY, Harness, make_harness

ALICE = f"authkey={KEY}&authid=alice&authpwd=alicepw"
BOB = f"authkey={KEY}&authid=bob&authpwd=bobpw"


async def harness(tmp_path: Path, database_option: str) -> Harness:
    """A harness on the engine under test, with a second enduser bob."""
    h = await make_harness(tmp_path, database=database_option)
    await h.store.create_user("bob", "bobpw", credit="1")
    return h


async def credit_of(h: Harness, name: str) -> Decimal:
    """A user's balance from the store."""
    user = await h.store.find_user(name)
    assert user is not None
    return user.credit


@pytest_twisted.ensureDeferred
async def test_charge(tmp_path: Path, database_option: str) -> None:
    """A PIN credits once; a repeated txid replays; a used or unknown PIN is 420."""
    h = await harness(tmp_path, database_option)
    await h.store.create_pin("900100200", "7.5")
    await h.store.create_pin("900100300", "1")
    assert (await h.call(f"apientry=charge&{ALICE}&pin=900100200")).text == "OK: 12.50 USD, credited 7.50"
    used = await h.call(f"apientry=charge&{ALICE}&pin=900100200")
    assert (used.text, used.status) == ("ERROR: invalid or used PIN", 420)
    assert (await h.call(f"apientry=charge&{ALICE}&pin=nosuch")).status == 420
    first = await h.call(f"apientry=charge&{ALICE}&pin=900100300&txid=t1")
    again = await h.call(f"apientry=charge&{ALICE}&pin=900100300&txid=t1")
    assert first.text == "OK: 13.50 USD, credited 1.00"
    assert again.text == "OK: 13.50 USD, credited 1.00 (repeated transaction)"
    assert await credit_of(h, "alice") == Decimal("13.5")
    assert (await h.call(f"apientry=charge&{ALICE}")).text == "ERROR: missing parameter: pin"
    assert await h.store.audit() == []
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_concurrent_charge_of_one_pin(tmp_path: Path, database_option: str) -> None:
    """Twenty users charging one PIN at once: exactly one succeeds."""
    h = await harness(tmp_path, database_option)
    for i in range(20):
        await h.store.create_user(f"u{i}", "pw")
    await h.store.create_pin("777000777", "3")
    calls = [
        defer.ensureDeferred(h.call(f"apientry=charge&authkey={KEY}&authid=u{i}&authpwd=pw&pin=777000777"))
        for i in range(20)
    ]
    answers = await defer.gatherResults(calls)
    assert sum(1 for a in answers if a.ok) == 1
    assert all(a.status == 420 for a in answers if not a.ok)
    assert await h.store.audit() == []
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_addcredit_permissions_and_effect(tmp_path: Path, database_option: str) -> None:
    """addcredit: trusted admins only; negative amounts debit within the limit; bad amounts change nothing."""
    h = await harness(tmp_path, database_option)
    root = f"authkey={KEY}&authid=root&authpwd=rootpw"
    refused = await h.call(f"apientry=addcredit&{root}&pin=alice&credit=5")
    assert refused.text == "ERROR: access not allowed from this address"
    assert (await h.call(f"apientry=addcredit&{ALICE}&pin=alice&credit=5", "10.0.0.9")).text == "ERROR: access denied"
    added = await h.call("apientry=addcredit&pin=alice&credit=2.25", "127.0.0.1")
    assert added.text == "OK: 7.25 USD, alice credited 2.25"
    taken = await h.call("apientry=addcredit&pin=alice&credit=-1.25", "127.0.0.1")
    assert taken.text == "OK: 6.00 USD, alice debited 1.25"
    assert (await h.call("apientry=addcredit&pin=alice&credit=-100", "127.0.0.1")).text == "ERROR: insufficient credit"
    for bad in ("abc", "1.0000001", "0", "1e99", "--1"):
        answer = await h.call(f"apientry=addcredit&pin=alice&credit={bad}", "127.0.0.1")
        assert not answer.ok and answer.text.startswith("ERROR: amount"), (bad, answer.text)
    assert (await h.call("apientry=addcredit&pin=ghost&credit=1", "127.0.0.1")).status == 404
    assert await credit_of(h, "alice") == Decimal(6)
    kinds = [e.kind for e in await h.store.ledger((await h.store.find_user("alice")).id)]  # type: ignore[union-attr]
    assert kinds == ["initial", "credit", "debit"]
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_transfercredit(tmp_path: Path, database_option: str) -> None:
    """transfercredit moves money between users in one transaction, never below zero."""
    h = await harness(tmp_path, database_option)
    assert (await h.call(f"apientry=transfercredit&{ALICE}&username=bob&credit=2")).text == "OK: 3.00 USD, sent 2 to bob"
    assert await credit_of(h, "bob") == Decimal(3)
    assert (await h.call(f"apientry=transfercredit&{ALICE}&username=bob&credit=3.01")).text == "ERROR: insufficient credit"
    assert (await h.call(f"apientry=transfercredit&{ALICE}&username=ghost&credit=1")).status == 404
    assert (await h.call(f"apientry=transfercredit&{ALICE}&username=bob&credit=-1")).text.startswith("ERROR: amount")
    assert (await h.call(f"apientry=transfercredit&{ALICE}&username=alice&credit=1")).text == (
        "ERROR: cannot transfer to the same account"
    )
    first = await h.call(f"apientry=transfercredit&{ALICE}&username=bob&credit=1&txid=x")
    again = await h.call(f"apientry=transfercredit&{ALICE}&username=bob&credit=1&txid=x")
    assert again.text == first.text + " (repeated transaction)"
    assert (await credit_of(h, "alice"), await credit_of(h, "bob")) == (Decimal(2), Decimal(4))
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_concurrent_transfers_both_ways(tmp_path: Path, database_option: str) -> None:
    """Simultaneous transfers in both directions conserve the total and never go negative."""
    h = await harness(tmp_path, database_option)
    calls = []
    for _ in range(30):
        calls.append(defer.ensureDeferred(h.call(f"apientry=transfercredit&{ALICE}&username=bob&credit=0.4")))
        calls.append(defer.ensureDeferred(h.call(f"apientry=transfercredit&{BOB}&username=alice&credit=0.3")))
    answers = await defer.gatherResults(calls)
    assert all(a.ok or a.text == "ERROR: insufficient credit" for a in answers)
    alice, bob = await credit_of(h, "alice"), await credit_of(h, "bob")
    assert alice + bob == Decimal(6)
    assert alice >= 0 and bob >= 0
    assert await h.store.audit() == []
    await h.db.close()
