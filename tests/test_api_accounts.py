"""newuseri, newuseru, deluser, listusers, getdetails and changepwd, on both engines."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from urllib.parse import quote

import pytest_twisted

from test_api_dispatch import KEY, make_harness

ALICE = f"authkey={KEY}&authid=alice&authpwd=alicepw"
NEW = "u_username=carol&u_password=Secret123&u_name=Carol&u_email=carol%40example.com&u_currency=eur"


@pytest_twisted.ensureDeferred
async def test_newuseri(tmp_path: Path, database_option: str) -> None:
    """An admin from a trusted address creates a user with opening credit through the ledger."""
    h = await make_harness(tmp_path, database=database_option)
    answer = await h.call(f"apientry=newuseri&{NEW}&credit=5", "127.0.0.1")
    carol = await h.store.find_user("carol")
    assert carol is not None and answer.text == f"OK: {carol.id}"
    assert (carol.currency, carol.credit, carol.password) == ("EUR", Decimal(5), "Secret123")
    assert [e.kind for e in await h.store.ledger(carol.id)] == ["initial"]
    assert (await h.call(f"apientry=adduser&{NEW}", "127.0.0.1")).text == "ERROR: username already exists: carol"
    assert (await h.call(f"apientry=newuseri&{ALICE}&{NEW.replace('carol', 'dave')}")).text == (
        "ERROR: access not allowed from this address"
    )
    assert (await h.call(f"apientry=newuser&{NEW.replace('carol', 'erin')}&credit=-1", "127.0.0.1")).text.startswith(
        "ERROR: amount"
    )
    assert await h.store.find_user("erin") is None
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_newuseru_validates_and_limits(tmp_path: Path) -> None:
    """Public signup checks username, password strength and e-mail, records the device, and is rate limited."""
    h = await make_harness(tmp_path)
    base = f"apientry=newuseru&authkey={KEY}"
    cases = {
        "u_username=bad%20name&u_password=Secret123&u_email=a%40b.cc": "u_username may hold",
        "u_username=frank&u_password=short1&u_email=a%40b.cc": "at least 8 characters",
        "u_username=frank&u_password=frank12345&u_email=a%40b.cc": "must not contain the username",
        "u_username=frank&u_password=Secret123&u_email=nope": "not an e-mail address",
        "u_username=frank&u_password=Secret123": "not an e-mail address",
    }
    for number, (query, message) in enumerate(cases.items()):
        answer = await h.call(f"{base}&{query}", f"8.8.8.{number}")
        assert message in answer.text, answer.text
    signup = await h.call(f"{base}&u_username=frank&u_password=Secret123&u_email=f%40x.org&deviceid=dev-1&credit=99")
    assert signup.ok
    frank = await h.store.find_user("frank")
    assert frank is not None and frank.credit == 0 and frank.type == 0
    rows = (await h.db.run_query("x", "SELECT deviceid FROM tb_users WHERE username = 'frank'")).rows
    assert rows == [("dev-1",)]
    again = await h.call(f"{base}&u_username=gina&u_password=Secret123&u_email=g%40x.org")
    assert again.text == "ERROR: rate limited"
    assert not (await h.call("apientry=newuseru&u_username=hal&u_password=Secret123&u_email=h%40x.org", "9.9.9.9")).ok
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_deluser(tmp_path: Path, database_option: str) -> None:
    """deluser removes a user with zero balance and its ledger; a balance refuses it."""
    h = await make_harness(tmp_path, database=database_option)
    uid = await h.store.create_user("zed", "pw")
    await h.store.credit(uid, "1")
    refused = await h.call("apientry=deluser&u_username=zed", "127.0.0.1")
    assert refused.text == "ERROR: the balance of zed is not zero; move it first"
    await h.store.debit(uid, "1")
    assert (await h.call(f"apientry=deluser&u_id={uid}", "127.0.0.1")).text == "OK: deleted zed"
    assert await h.store.find_user("zed") is None
    assert (await h.db.run_query("x", "SELECT count(*) FROM tb_credits WHERE userid = ?", (uid,))).rows[0][0] == 0
    assert (await h.call("apientry=deluser&u_username=zed", "127.0.0.1")).status == 404
    assert (await h.call("apientry=deluser", "127.0.0.1")).status == 421
    assert (await h.call(f"apientry=deluser&{ALICE}&u_username=root", "10.0.0.5")).text == "ERROR: access denied"
    root = f"authkey={KEY}&authid=root&authpwd=rootpw"
    assert (await h.call(f"apientry=deluser&{root}&u_username=root")).text.startswith("ERROR: an admin cannot delete")
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_listusers(tmp_path: Path, database_option: str) -> None:
    """listusers filters by type, limits, orders, and refuses unknown orders."""
    h = await make_harness(tmp_path, database=database_option)
    answer = await h.call("apientry=listusers&u_type=0&u_extended=1&u_order=username", "127.0.0.1")
    assert [r["username"] for r in answer.records or []] == ["alice"]
    assert (answer.records or [{}])[0]["credit"] == "5.00"
    all_users = await h.call("apientry=listusers&u_maxcount=1&u_order=username", "127.0.0.1")
    assert [r["username"] for r in all_users.records or []] == ["alice"]
    bad = await h.call(f"apientry=listusers&u_order={quote('id; DROP TABLE tb_users')}", "127.0.0.1")
    assert bad.text.startswith("ERROR: u_order must be one of")
    assert (await h.call(f"apientry=listusers&{ALICE}", "10.0.0.5")).text == "ERROR: access denied"
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_getdetails_and_changepwd(tmp_path: Path, database_option: str) -> None:
    """getdetails shows the caller's fields by mode, never the password; changepwd needs the old one."""
    h = await make_harness(tmp_path, database=database_option)
    minimal = await h.call(f"apientry=getdetails&{ALICE}&mode=min")
    assert minimal.records == [{"id": (await h.store.find_user("alice")).id, "username": "alice",  # type: ignore[union-attr]
                                "credit": "5.00", "currency": "USD"}]
    full = (await h.call(f"apientry=getdetails&{ALICE}&mode=max")).records or [{}]
    assert "password" not in full[0] and full[0]["forwardalways"] == ""
    assert (await h.call(f"apientry=getdetails&{ALICE}&mode=huge")).status == 412
    assert (await h.call(f"apientry=changepwd&{ALICE}&newpassword=newpass9&oldpassword=wrong")).text == (
        "ERROR: oldpassword is wrong"
    )
    assert (await h.call(f"apientry=changepwd&{ALICE}&newpassword=a%20b&oldpassword=alicepw")).status == 412
    assert (await h.call(f"apientry=changepwd&{ALICE}&newpassword=newpass9&oldpassword=alicepw")).text == (
        "OK: password changed"
    )
    assert (await h.call(f"apientry=apitest&authkey={KEY}&authid=alice&authpwd=newpass9")).ok
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_forgot_password(tmp_path: Path) -> None:
    """The reminder question by e-mail; the right answer e-mails a new password; a wrong one counts as a failure."""
    from twisted.internet import reactor as global_reactor
    from twisted.internet.protocol import Factory
    from twisted.internet.task import deferLater

    from test_api_custom import FakeSmtp

    factory = Factory.forProtocol(FakeSmtp)
    factory.messages = []  # type: ignore[attr-defined]
    port = global_reactor.listenTCP(0, factory, interface="127.0.0.1")
    h = await make_harness(tmp_path, f"smtpserver=127.0.0.1:{port.getHost().port}")
    h.api.actions.reactor = global_reactor
    signup = (f"apientry=newuseri&u_username=ivy&u_password=Secret123&u_email=ivy%40example.com"
              f"&forgotquestion={quote('First pet?')}&forgotanswer=Rex")
    assert (await h.call(signup, "127.0.0.1")).ok
    base = f"authkey={KEY}&email=IVY%40example.com"
    assert (await h.call(f"apientry=forgotpasswordquestion&{base}")).text == "OK: First pet?"
    assert (await h.call(f"apientry=forgotpasswordquestion&authkey={KEY}&email=no%40example.com", "2.2.2.2")).text == (
        "ERROR: no question for this e-mail"
    )
    wrong = await h.call(f"apientry=forgotpasswordanswer&{base}&forgotpasswordanswer=Max", "3.3.3.3")
    assert (wrong.text, wrong.status) == ("ERROR: wrong answer", 403)
    right = await h.call(f"apientry=forgotpasswordanswer&{base}&forgotpasswordanswer=%20rex%20", "4.4.4.4")
    assert right.text == "OK: a new password was sent by e-mail"
    message = factory.messages[0].decode()  # type: ignore[attr-defined]
    assert "To: ivy@example.com" in message
    new_password = message.split("is now: ", 1)[1].split()[0]
    assert (await h.store.find_user("ivy")).password == new_password  # type: ignore[union-attr]
    await port.stopListening()
    await deferLater(global_reactor, 0, lambda: None)
    await h.db.close()
