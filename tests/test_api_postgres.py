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
    assert (await h.call(query)).text == "ERROR: wrong authentication"
    for _ in range(5):
        await h.call(f"apientry=balance&authkey={KEY}&authid=bob&authpwd=x", OTHER_IP)
    assert (await h.call("apientry=preauth", OTHER_IP)).text.startswith("ERROR: banned")
    assert [(r["kind"], r["value"]) for r in (await h.call("apientry=bannedlist", "127.0.0.1")).records or []] == [
        ("ip", OTHER_IP), ("user", "bob")
    ]
    assert (await h.call("apientry=delbanned&ip=all", "127.0.0.1")).text == "OK: 2 bans lifted"
    await h.db.run_statement(
        "x", "INSERT INTO tb_api (fname, req_user_login, customsql) VALUES ('whoami', 0, 'SELECT username FROM tb_users WHERE id = [USERID]')"
    )
    await h.api.reload_access()
    answer = await h.call(f"apientry=whoami&authkey={KEY}&authid=alice&authpwd=alicepw")
    assert answer.records == [{"username": "alice"}]
    assert await h.api.nonces.expire() == 0
    await h.db.close()
