"""The API's database work on PostgreSQL: nonces, replays, bans, tb_api, custom SQL."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest_twisted

from test_api_dispatch import KEY, OTHER_IP, SALT, make_harness


def md5(text: str) -> str:
    """Hex MD5."""
    return hashlib.md5(text.encode()).hexdigest()


@pytest_twisted.ensureDeferred
async def test_api_state_on_postgres(tmp_path: Path, pg_database: str) -> None:
    """Nonce login with replay refusal, a ban and its lifting, a tb_api custom function, on PostgreSQL."""
    h = await make_harness(tmp_path, "apidefneedlogin=2", database=pg_database)
    nonce = (await h.call("apientry=preauth")).text.removeprefix("OK: new nonce is:").removesuffix("EOF")
    digest = "authv3_" + md5(md5("tU29m" + "alice" + "alicepw" + "a") + "b" + SALT + nonce)
    query = f"apientry=balance&authkey={KEY}&authid=alice&authmd5={digest}&authsalt1=a&authsalt2=b&nonce={nonce[:10]}"
    assert (await h.call(query)).text == "OK: 5.00 USD"
    assert (await h.call(query)).text.startswith("ERROR: new nonce is:")  # a replay
    for name in ("bob", "bob", "carol", "dave", "bob"):
        await h.call(f"apientry=balance&authkey={KEY}&authid={name}&authpwd=x", OTHER_IP)
    assert (await h.call("apientry=preauth", OTHER_IP)).text.startswith("ERROR: banned")
    assert [(r["kind"], r["value"]) for r in (await h.call("apientry=bannedlist", "127.0.0.1")).records or []] == [
        ("ip", OTHER_IP)
    ]
    assert (await h.call("apientry=delbanned&ip=all", "127.0.0.1")).text == "OK: 1 bans lifted"
    await h.db.run_statement(
        "x", "INSERT INTO tb_api (fname, req_user_login, customsql) VALUES ('whoami', 0, 'SELECT username FROM tb_users WHERE id = [USERID]')"
    )
    await h.api.reload_access()
    answer = await h.call(f"apientry=whoami&authkey={KEY}&authid=alice&authpwd=alicepw")
    assert answer.records == [{"username": "alice"}]
    assert await h.api.nonces.expire() == 0
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_lockout_on_postgres_counts_accounts_and_clears_on_success(tmp_path: Path, pg_database: str) -> None:
    """Failures live in tb_authfailures: per account (ban at authfailmax), per address only across
    authfailaccounts accounts, a success clears the account's rows, and the chore expires old ones."""
    h = await make_harness(tmp_path, database=pg_database)
    for _ in range(4):
        await h.call(f"apientry=balance&authkey={KEY}&authid=alice&authpwd=x", OTHER_IP)
    rows = await h.db.run_query("x", "SELECT kind, value, account FROM tb_authfailures ORDER BY id")
    assert rows.rows[:2] == [("user", "alice", "alice"), ("ip", OTHER_IP, "alice")]
    assert (await h.call(f"apientry=balance&authkey={KEY}&authid=alice&authpwd=alicepw", OTHER_IP)).ok
    left = await h.db.run_query("x", "SELECT count(*) FROM tb_authfailures WHERE kind = 'user'")
    assert left.rows[0][0] == 0
    for _ in range(5):
        await h.call(f"apientry=balance&authkey={KEY}&authid=alice&authpwd=x", OTHER_IP)
    assert (await h.call(f"apientry=balance&authkey={KEY}&authid=alice&authpwd=alicepw", OTHER_IP)).text == (
        "ERROR: banned: too many failed authentications")
    assert (await h.call(f"apientry=balance&authkey={KEY}&authid=root&authpwd=rootpw", OTHER_IP)).ok
    h.clock.advance(601)
    await h.api.lockout.chore()
    assert (await h.db.run_query("x", "SELECT count(*) FROM tb_authfailures")).rows[0][0] == 0
    await h.db.close()
