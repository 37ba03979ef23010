"""Spec points issue 16 found missing or wrong: the free number pool, status while calling, callrating without
callid, recharge and oop, and the positional form of parameters."""

from __future__ import annotations

from pathlib import Path

import pytest_twisted

from test_api_dispatch import KEY, make_harness

ALICE = f"authkey={KEY}&authid=alice&authpwd=alicepw"
ADMIN = "127.0.0.1"


@pytest_twisted.ensureDeferred
async def test_the_free_pool_gives_numbers_and_reserves_the_one_asked_for(tmp_path: Path, database_option: str) -> None:
    """getphonenumbers returns free numbers (count of them, not reserved); lockphonenumbers num= reserves that one."""
    h = await make_harness(tmp_path, database=database_option)
    for number in ("3610001", "3610002", "3610003"):
        await h.db.run_statement("x", "INSERT INTO tb_phonenumbers (number, userid, status, created) VALUES (?, 0, 0, ?)",
                                 (number, h.store.now()))
    assert (await h.call(f"apientry=getphonenumber&{ALICE}")).text == "OK: 3610001"
    listed = await h.call(f"apientry=getphonenumbers&count=3&{ALICE}")
    assert listed.text == "OK: 3610001,3610002,3610003" and len(listed.records or []) == 3
    assert (await h.call(f"apientry=lockphonenumber&num=3610002&{ALICE}")).text == "OK: 3610002"
    assert (await h.call(f"apientry=lockphonenumber&num=3610002&{ALICE}")).text == (
        "ERROR: 3610002 is not a free number of the pool")
    assert (await h.call(f"apientry=getphonenumbers&count=3&{ALICE}")).text == "OK: 3610001,3610003"
    assert (await h.call(f"apientry=lockphonenumbers&{ALICE}")).text == "OK: 3610001"
    assert (await h.call(f"apientry=getphonenumbers&count=0&{ALICE}")).status == 412
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_status_is_calling_then_speaking_from_live_calls(tmp_path: Path, database_option: str) -> None:
    """status and verifyuser answer 3 while a live call (of any node) rings a user's leg, 4 once connected."""
    h = await make_harness(tmp_path, database=database_option)
    alice = await h.store.find_user("alice")
    assert alice is not None
    assert (await h.call(f"apientry=status&{ALICE}")).text == "OK: 1"
    await h.db.run_statement("x", "INSERT INTO tb_calls (userid, anum, bnum, state, node, created) "
                                  "VALUES (2, 'root', 'alice', 'calling', 'node-b', ?)", (h.store.now(),))
    assert (await h.call(f"apientry=status&{ALICE}")).text == "OK: 3"
    await h.db.run_statement("x", "UPDATE tb_calls SET state = 'connected'")
    assert (await h.call(f"apientry=verifyuser&userusername=alice&{ALICE}")).text == "OK: 4"
    await h.db.run_statement("x", "DELETE FROM tb_calls")
    assert (await h.call(f"apientry=status&{ALICE}")).text == "OK: 1"
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_recharge_and_oop(tmp_path: Path) -> None:
    """recharge is charge (the spec's example of a user function); oop runs a console line for an admin only,
    under the operation's own access rule."""
    h = await make_harness(tmp_path)
    await h.db.run_statement("x", "INSERT INTO tb_pins (pin, credit, currency, created) VALUES ('99887766', ?, 'USD', ?)",
                             (__import__("decimal").Decimal("2.50"), h.store.now()))
    assert (await h.call(f"apientry=recharge&pin=99887766&{ALICE}")).text.startswith("OK: 7.50 USD")
    ran = await h.call("apientry=oop&txt=rating%203630&authid=root&authpwd=rootpw", ADMIN)
    assert ran.text == "ERROR: no tariff for 3630 in plan 0"
    balance = await h.call("apientry=oop&txt=balance%20targetuser=alice&authid=root&authpwd=rootpw", ADMIN)
    assert balance.text == "OK: 7.50 USD"
    assert (await h.call(f"apientry=oop&txt=balance&{ALICE}")).text == "ERROR: access denied"
    assert (await h.call("apientry=oop&txt=oop%20balance&authid=root&authpwd=rootpw", ADMIN)).status == 406
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_the_positional_form(tmp_path: Path) -> None:
    """Without apientry, param1..4 are function, key, user and password and param5.. the function's own;
    with apientry, param1.. are the function's own (the spec's unreg example)."""
    h = await make_harness(tmp_path)
    assert (await h.call(f"param1=balance&param2={KEY}&param3=alice&param4=alicepw&now=1")).text == "OK: 5.00 USD"
    assert (await h.call(f"param1=rating&param2={KEY}&param3=alice&param4=alicepw&param5=3630")).text == (
        "ERROR: no tariff for 3630 in plan 0")
    assert (await h.call("apientry=unreg&param1=alma&param3=1", ADMIN)).text == "OK: alma was not registered"
    await h.db.close()
