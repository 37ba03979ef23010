"""cli, addcallbacknumber, callbackaccessnumber, callforward, phone number pool, search."""

from __future__ import annotations

from pathlib import Path

import pytest_twisted
from twisted.internet import defer

from test_api_dispatch import KEY, make_harness

ALICE = f"authkey={KEY}&authid=alice&authpwd=alicepw"
BOB = f"authkey={KEY}&authid=bob&authpwd=bobpw"


@pytest_twisted.ensureDeferred
async def test_cli_and_callback_numbers(tmp_path: Path, database_option: str) -> None:
    """Numbers become a user's only once proven or approved by an admin; a second user cannot take them;
    bad numbers are refused."""
    h = await make_harness(tmp_path, "callbackaccessnumber=+3612345", database=database_option)
    await h.store.create_user("bob", "bobpw")
    # Without SMS on this node a user cannot prove a number: it waits for an admin.
    refused = await h.call(f"apientry=cli&{ALICE}&anum=%2B36 30 111 2222")
    assert refused.text == ("ERROR: 36301112222 must be proven by a code sent to it, and SMS is not running here: "
                            "ask an admin")
    assert (await h.db.run_query("x", "SELECT count(*) FROM tb_usernumbers")).rows[0][0] == 0
    admin = await h.call("apientry=cli&anum=%2B36 30 111 2222&targetuser=alice", "127.0.0.1")
    assert admin.text == "OK: 36301112222 added (approved by an admin)"
    assert (await h.call(f"apientry=cli&{ALICE}&anum=0036301112222", "9.9.9.1")).text == "OK: 36301112222 already added"
    assert (await h.call(f"apientry=cli&{BOB}&anum=36301112222", "9.9.9.2")).text == (
        "ERROR: 36301112222 belongs to another user")
    assert (await h.call("apientry=cli&anum=36301112222&targetuser=bob", "127.0.0.1")).text == (
        "ERROR: 36301112222 belongs to another user")
    assert (await h.call("apientry=addcallbacknumber&anum=36301112222&targetuser=bob", "127.0.0.1")).ok
    assert (await h.call(f"apientry=cli&{ALICE}&anum=12ab", "9.9.9.3")).status == 412
    # Another user's username is theirs: nobody can claim it as a number.
    assert (await h.call(f"apientry=cli&{BOB}&anum=alice", "9.9.9.4")).status == 412
    rows = (await h.db.run_query("x", "SELECT kind, number, proof FROM tb_usernumbers ORDER BY id")).rows
    assert [(r[0], r[1]) for r in rows] == [("cli", "36301112222"), ("callback", "36301112222")]
    assert all(r[2].startswith("admin ") for r in rows)
    assert (await h.call(f"apientry=callbackaccessnumber&{ALICE}")).text == "OK: +3612345"
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_callforward(tmp_path: Path, database_option: str) -> None:
    """anum, bnum and cnum set the forwarding fields; an empty value clears; absent ones stay."""
    h = await make_harness(tmp_path, database=database_option)
    assert (await h.call(f"apientry=callforward&{ALICE}&anum=111&bnum=222&cnum=333")).ok
    assert (await h.call(f"apientry=callforward&{ALICE}&bnum=")).text == "OK: forwardonbusy=-"
    row = (await h.db.run_query(
        "x", "SELECT forwardalways, forwardonbusy, forwardonnoanswer FROM tb_users WHERE username = 'alice'")).rows
    assert row == [("111", "", "333")]
    assert (await h.call(f"apientry=callforward&{ALICE}")).status == 421
    assert (await h.call(f"apientry=callforward&{ALICE}&anum=x1")).status == 412
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_phone_number_pool(tmp_path: Path, database_option: str) -> None:
    """getphonenumbers shows free numbers of the pool; concurrent lockphonenumbers never hand one number out twice."""
    h = await make_harness(tmp_path, database=database_option)
    for i in range(3):
        await h.db.run_statement("x", "INSERT INTO tb_phonenumbers (number, created) VALUES (?, ?)",
                                 (f"3610000{i}", h.store.now()))
    for i in range(6):
        await h.store.create_user(f"u{i}", "pw")
    assert (await h.call(f"apientry=getphonenumber&{ALICE}")).text == "OK: 36100000"
    answers = await defer.gatherResults([
        defer.ensureDeferred(h.call(f"apientry=lockphonenumbers&authkey={KEY}&authid=u{i}&authpwd=pw")) for i in range(6)
    ])
    numbers = [a.message for a in answers if a.ok]
    assert sorted(numbers) == ["36100000", "36100001", "36100002"]
    assert all(a.text == "ERROR: no free phone number" for a in answers if not a.ok)
    assert (await h.call(f"apientry=getphonenumbers&{ALICE}")).text == "ERROR: no free phone number"
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_search(tmp_path: Path, database_option: str) -> None:
    """Admins search by substring (wildcards are literal); users only by exact username or phone."""
    h = await make_harness(tmp_path, database=database_option)
    await h.store.create_user("bob_smith", "pw", email="bob@example.com", phone="3620")
    admin = await h.call("apientry=search&txt=SMITH", "127.0.0.1")
    assert [r["username"] for r in admin.records or []] == ["bob_smith"]
    assert (await h.call("apientry=search&txt=%25%25", "127.0.0.1")).records == []
    assert [r["username"] for r in (await h.call("apientry=search&txt=b_", "127.0.0.1")).records or []] == ["bob_smith"]
    user = await h.call(f"apientry=search&{ALICE}&txt=3620")
    assert user.records == [{"username": "bob_smith", "name": ""}]
    assert (await h.call(f"apientry=search&{ALICE}&txt=smith")).records == []
    await h.db.close()
