"""setfield and getfield: allow-lists for users, schema-checked identifiers for admins."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import pytest_twisted

from test_api_dispatch import KEY, make_harness

ALICE = f"authkey={KEY}&authid=alice&authpwd=alicepw"


async def field(h, name: str) -> object:  # type: ignore[no-untyped-def]
    """A column of alice's row."""
    return (await h.db.run_query("x", f"SELECT {name} FROM tb_users WHERE username = 'alice'")).rows[0][0]


@pytest_twisted.ensureDeferred
async def test_user_allow_lists(tmp_path: Path, database_option: str) -> None:
    """Users set the first list freely, the second only while empty, nothing else."""
    h = await make_harness(tmp_path, database=database_option)
    assert (await h.call(f"apientry=setfield&{ALICE}&fieldname=forwardalways&fieldvalue=3630123")).text == (
        "OK: forwardalways set"
    )
    assert (await h.call(f"apientry=setfield&{ALICE}&param2=voicemail&param3=1&param1=int")).ok
    assert await field(h, "forwardalways") == "3630123" and await field(h, "voicemail") == 1
    assert (await h.call(f"apientry=setfield&{ALICE}&fieldname=email&fieldvalue=a%40b.c")).ok
    again = await h.call(f"apientry=setfield&{ALICE}&fieldname=email&fieldvalue=x%40y.z")
    assert again.text == "ERROR: email is set already; ask support to change it"
    for name in ("credit", "type", "password", "tariffid"):
        refused = await h.call(f"apientry=setfield&{ALICE}&fieldname={name}&fieldvalue=1")
        assert refused.text == f"ERROR: field not allowed: {name}"
    evil = quote("x'; UPDATE tb_users SET credit = 1000000; --")
    assert (await h.call(f"apientry=setfield&{ALICE}&fieldname=displayname&fieldvalue={evil}")).ok
    assert await field(h, "displayname") == "x'; UPDATE tb_users SET credit = 1000000; --"
    assert (await h.store.find_user("alice")).credit == 5  # type: ignore[union-attr]
    assert (await h.call(f"apientry=setfield&{ALICE}&fieldname=voicemail&fieldvalue=x&fieldtype=int")).status == 412
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_admin_any_table(tmp_path: Path, database_option: str) -> None:
    """Admins set any existing field of any table by row id; identifiers are checked; money is protected."""
    h = await make_harness(tmp_path, database=database_option)
    alice = await h.store.find_user("alice")
    assert alice is not None
    set_type = await h.call(f"apientry=setfield&table=tb_users&fieldname=tariffid&fieldvalue=7&rowid={alice.id}", "127.0.0.1")
    assert set_type.text == f"OK: tb_users.tariffid set for row {alice.id}"
    assert await field(h, "tariffid") == 7
    for table, name, status in (("tb_users", "nosuch", 404), ("nosuch", "x", 404), ("tb_users", "credit", 403),
                                ("tb_credits", "amount", 403), ("tb_users; DROP", "x", 404)):
        answer = await h.call(f"apientry=setfield&table={quote(table)}&fieldname={name}&fieldvalue=1&rowid={alice.id}", "127.0.0.1")
        assert answer.status == status, (table, name, answer.text)
    assert (await h.call("apientry=setfield&table=tb_users&fieldname=name&fieldvalue=x&rowid=99999", "127.0.0.1")).status == 404
    got = await h.call("apientry=getfield&table=tb_users&retfieldname=tariffid&filterfieldvalue=alice", "127.0.0.1")
    assert got.text == "OK: 7"
    credit = await h.call("apientry=getfield&retfieldname=credit&filterfieldvalue=alice", "127.0.0.1")
    assert credit.text == "OK: 5.000000"
    assert (await h.call("apientry=getfield&retfieldname=password&filterfieldvalue=alice", "127.0.0.1")).status == 403
    assert (await h.call("apientry=getfield&filterfieldvalue=ghost", "127.0.0.1")).status == 404
    assert (await h.call(f"apientry=getfield&{ALICE}&filterfieldvalue=alice", "10.0.0.4")).text == "ERROR: access denied"
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_a_column_added_by_db_is_settable_at_once(tmp_path: Path, database_option: str) -> None:
    """The tables and columns setfield and getfield check against are read again after the db function ran:
    a column an admin adds with ALTER TABLE can be set and read without a restart."""
    h = await make_harness(tmp_path, database=database_option)
    alice = await h.store.find_user("alice")
    assert alice is not None
    setting = f"apientry=setfield&table=tb_users&fieldname=loyaltyclass&fieldvalue=gold&rowid={alice.id}"
    assert (await h.call(setting, "127.0.0.1")).status == 404  # no such column yet (and the columns are read)
    added = await h.call("apientry=db&txt=" + quote("ALTER TABLE tb_users ADD COLUMN loyaltyclass TEXT"), "127.0.0.1")
    assert added.ok, added.text
    assert (await h.call(setting, "127.0.0.1")).ok
    got = await h.call("apientry=getfield&retfieldname=loyaltyclass&filterfieldvalue=alice", "127.0.0.1")
    assert got.text == "OK: gold"
    await h.db.close()
