"""The old HTTP interface: /xmapi/COMMAND with its own key, salt and address rules."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest_twisted

from mizud.api import legacy
from mizud.api.answer import ApiAnswer, ok
from mizud.api.dispatcher import Call
from mizud.api.registry import Category
from mizud.api.request import decode
from test_api_dispatch import OTHER_IP, PUBLIC_IP, Harness, make_harness


async def old(h: Harness, command: str, query: str, source: str = PUBLIC_IP) -> ApiAnswer:
    """Dispatch an old-interface request."""
    return await h.api.dispatch(legacy.to_request(command, decode(query=query, source=source)))


def md5(text: str) -> str:
    """Hex MD5, independent of the server's helpers."""
    return hashlib.md5(text.encode()).hexdigest()


@pytest_twisted.ensureDeferred
async def test_balance_with_password_and_md5auth(tmp_path: Path) -> None:
    """usr+pwd and usr+md5auth (rd58s or rD58s, salt httpapimd5salt) authenticate."""
    h = await make_harness(tmp_path)
    assert (await old(h, "balance", "usr=alice&pwd=alicepw&now")).text == "OK: 5.00 USD"
    assert (await old(h, "balance", "usr=alice&pwd=wrong&now")).text == "ERROR: wrong authentication"
    for prefix in ("rd58s", "rD58s"):
        digest = md5(f"{prefix}:alice:alicepw:87159643")
        assert (await old(h, "balance", f"usr=alice&md5auth={digest}")).text == "OK: 5.00 USD"
    assert not (await old(h, "balance", f"usr=alice&md5auth={md5('rd58s:alice:alicepw:1')}")).ok
    user = await h.store.find_user("alice")
    assert user is not None
    assert (await old(h, "balance", f"userid={user.id}&pwd=alicepw")).ok
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_key_and_allowed_addresses(tmp_path: Path) -> None:
    """httpapikey must match; httpapiallowedip limits every command."""
    h = await make_harness(tmp_path, "httpapikey=oldkey", f"httpapiallowedip={OTHER_IP}")
    assert (await old(h, "balance", "key=oldkey&usr=alice&pwd=alicepw")).text == "ERROR: access not allowed from this address"
    assert (await old(h, "balance", "usr=alice&pwd=alicepw", OTHER_IP)).text == "ERROR: wrong authentication"
    assert (await old(h, "balance", "key=oldkey&usr=alice&pwd=alicepw", OTHER_IP)).text == "OK: 5.00 USD"
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_pin_authentication_modes(tmp_path: Path) -> None:
    """pin= is the PIN field; with callingcardauth=1 also username+password concatenated."""
    h = await make_harness(tmp_path)
    assert (await old(h, "balance", "pin=777111")).text == "OK: 5.00 USD"
    assert not (await old(h, "balance", "pin=alicealicepw")).ok
    await h.db.close()
    (tmp_path / "b").mkdir()
    h = await make_harness(tmp_path / "b", "callingcardauth=1")
    assert (await old(h, "balance", "pin=alicealicepw")).text == "OK: 5.00 USD"
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_sensitive_commands_only_from_allowedip2(tmp_path: Path) -> None:
    """addcredit and adduser run only from httpapiallowedip2 (or this machine), without a password."""
    h = await make_harness(tmp_path, f"httpapiallowedip2={OTHER_IP}")

    @h.api.registry.function("addcredit", Category.SENSITIVE, "test stand-in", ("pin", "credit"))
    async def addcredit(call: Call) -> ApiAnswer:
        return ok(f"{call.caller.how} {call.arg('pin')} {call.arg('credit')}")

    refused = await old(h, "addcredit", "usr=alice&credit=5")
    assert refused.text == "ERROR: only allowed from httpapiallowedip2 addresses"
    assert (await old(h, "addcredit", "usr=alice&credit=5", OTHER_IP)).text == "OK: httpapiallowedip2 alice 5"
    assert (await old(h, "addcredit", "usr=alice&credit=5", "127.0.0.1")).ok
    # From an allowedip2 address a user command needs no password either.
    assert (await old(h, "balance", "usr=alice", OTHER_IP)).text == "OK: 5.00 USD"
    assert not (await old(h, "balance", "usr=alice")).ok
    await h.db.close()


def test_command_mapping() -> None:
    """Old commands and parameters map onto the registry's functions."""
    request = legacy.to_request("cb", decode(query="usr=a&pwd=b&anum=3630", source="1.1.1.1"))
    assert (request.function, request.params["num"]) == ("callback", "3630")
    assert legacy.to_request("", decode(query="anum=1&bnum=2", source="x")).function == "p2p"
    assert legacy.to_request("", decode(query="anum=1", source="x")).function == "callback"
    assert legacy.to_request("adduser", decode(query="u_username=n", source="x")).function == "newuseri"
    charge = legacy.to_request("charge", decode(query="anum=123456", source="x"))
    assert charge.params["pin"] == "123456"
    rating = legacy.to_request("rating", decode(query="anum=3630", source="x"))
    assert rating.params["bnum"] == "3630"
