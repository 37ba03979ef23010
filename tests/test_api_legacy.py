"""The old HTTP interface: /xmapi/COMMAND with its own key, salt and address rules."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest_twisted

from mizud.api import legacy
from mizud.api.answer import ApiAnswer, error, ok
from mizud.api.invocation import Invocation
from mizud.api.registry import Category
from mizud.api.request import RequestError, decode
from test_api_dispatch import KEY, OTHER_IP, PUBLIC_IP, Harness, make_harness


async def old(h: Harness, command: str, query: str, source: str = PUBLIC_IP) -> ApiAnswer:
    """Dispatch an old-interface request (with the harness's API key, which the old interface needs too)."""
    return await bare(h, command, f"key={KEY}&{query}", source)


async def bare(h: Harness, command: str, query: str, source: str = PUBLIC_IP) -> ApiAnswer:
    """Dispatch an old-interface request exactly as given (a refused command answers as the front end does)."""
    try:
        request = legacy.to_request(command, decode(query=query, source=source))
    except RequestError as problem:
        return error(problem.message, problem.status)
    return await h.api.dispatch(request)


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
    assert (await bare(h, "balance", "key=oldkey&usr=alice&pwd=alicepw")).text == "ERROR: access not allowed from this address"
    assert (await bare(h, "balance", "usr=alice&pwd=alicepw", OTHER_IP)).text == "ERROR: wrong authentication"
    assert (await bare(h, "balance", "key=oldkey&usr=alice&pwd=alicepw", OTHER_IP)).text == "OK: 5.00 USD"
    # With httpapikey set, the API key is not the old interface's key.
    assert (await bare(h, "balance", f"key={KEY}&usr=alice&pwd=alicepw", OTHER_IP)).text == "ERROR: wrong authentication"
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
    """addcredit and adduser run only from httpapiallowedip2 (or another trusted address), without a password."""
    h = await make_harness(tmp_path, f"httpapiallowedip2={OTHER_IP}")

    @h.api.registry.function("addcredit", Category.SENSITIVE, "test stand-in", ("pin", "credit"))
    async def addcredit(invocation: Invocation) -> ApiAnswer:
        """Answers how the caller was proven and the two parameters."""
        return ok(f"{invocation.caller.how} {invocation.arg('pin')} {invocation.arg('credit')}")

    refused = await old(h, "addcredit", "usr=alice&credit=5")
    assert refused.text == "ERROR: access not allowed from this address"
    assert (await old(h, "addcredit", "usr=alice&credit=5", OTHER_IP)).text == "OK: trusted address alice 5"
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


@pytest_twisted.ensureDeferred
async def test_old_interface_runs_only_its_own_commands(tmp_path: Path) -> None:
    """/xmapi/transfercredit and other API functions are unknown commands there (no side door)."""
    h = await make_harness(tmp_path)
    for command in ("transfercredit", "deluser", "setfield", "info", "preauth"):
        answered = await old(h, command, "usr=alice&pwd=alicepw&username=root&credit=1")
        assert (answered.status, answered.text) == (406, f"ERROR: unknown command of the old interface: {command}")
    smuggled = await old(h, "", "apientry=transfercredit&usr=alice&pwd=alicepw&username=root&credit=1")
    assert smuggled.text == "ERROR: unknown command of the old interface: transfercredit"
    user = await h.store.find_user("alice")
    assert user is not None and user.credit == 5
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_old_interface_obeys_nonce_login_and_the_api_key(tmp_path: Path) -> None:
    """With apidefneedlogin=2 a static md5auth is refused (not replayable for ever) unless legacystaticauth;
    the API key and apitrustediponly apply as on /mvapireq."""
    digest = md5(f"rd58s:alice:alicepw:87159643")
    h = await make_harness(tmp_path, "apidefneedlogin=2")
    answered = await old(h, "balance", f"usr=alice&md5auth={digest}")
    assert answered.text == "ERROR: this server requires nonce authentication: use /mvapireq with preauth"
    assert (await old(h, "balance", f"usr=alice&md5auth={digest}")).text == answered.text
    assert (await old(h, "balance", "usr=alice&pwd=alicepw")).text == answered.text
    # The key: apiv2key applies when httpapikey is empty.
    assert (await bare(h, "balance", f"usr=alice&md5auth={digest}")).text == "ERROR: wrong authentication"
    await h.db.close()
    (tmp_path / "b").mkdir()
    h = await make_harness(tmp_path / "b", "apidefneedlogin=2", "legacystaticauth=1")
    assert (await old(h, "balance", f"usr=alice&md5auth={digest}")).text == "OK: 5.00 USD"
    await h.db.close()
    (tmp_path / "c").mkdir()
    h = await make_harness(tmp_path / "c", "apitrustediponly=1")
    assert (await old(h, "balance", f"usr=alice&md5auth={digest}")).text == "ERROR: access only from trusted addresses"
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_old_interface_obeys_the_trust_options(tmp_path: Path) -> None:
    """allowtrustedip=0 or apideftrustadmin=3 take away passwordless admin from 127.x on /xmapi/ too."""
    for option in ("allowtrustedip=0", "apideftrustadmin=3"):
        folder = tmp_path / option.replace("=", "")
        folder.mkdir()
        h = await make_harness(folder, option)
        for source in ("127.0.0.1", "127.8.9.10"):
            answered = await old(h, "addcredit", "usr=alice&credit=5", source)
            assert not answered.ok, (option, source)
            answered = await old(h, "db", "txt=select%20password%20from%20tb_users", source)
            assert not answered.ok and "alicepw" not in answered.text, (option, source)
        user = await h.store.find_user("alice")
        assert user is not None and user.credit == 5
        await h.db.close()


@pytest_twisted.ensureDeferred
async def test_old_interface_shares_the_lockout(tmp_path: Path) -> None:
    """Wrong md5auth on /xmapi/ counts towards the account's lockout, and a banned account learns nothing."""
    h = await make_harness(tmp_path)
    for i in range(5):
        await old(h, "balance", f"usr=alice&md5auth={md5(str(i))}", f"9.9.9.{i}")
    right = await old(h, "balance", "usr=alice&pwd=alicepw", OTHER_IP)
    wrong = await old(h, "balance", "usr=alice&pwd=wrong", OTHER_IP)
    assert right == wrong and right.text == "ERROR: banned: too many failed authentications"
    api = await h.call(f"apientry=balance&authkey={KEY}&authid=alice&authpwd=alicepw", OTHER_IP)
    assert api.text == "ERROR: banned: too many failed authentications"
    await h.db.close()
