"""db, showcfg, checkcredits, quickstat, regstat, reguser and the maintenance runs."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest_twisted
from twisted.internet.task import deferLater
from twisted.logger import globalLogPublisher

from test_api_dispatch import KEY, SALT, Harness, make_harness

ALICE = f"authkey={KEY}&authid=alice&authpwd=alicepw"


async def register_contact(h: Harness, username: str, contact: str, minutes: int) -> None:
    """A registration row that expires in C{minutes} (negative: lapsed)."""
    user = await h.store.find_user(username)
    assert user is not None
    now = h.store.now()
    await h.db.run_statement(
        "x", "INSERT INTO tb_registrations (userid, username, contact, address, expires, created) VALUES (?, ?, ?, ?, ?, ?)",
        (user.id, username, contact, "1.2.3.4:5060", now + timedelta(minutes=minutes), now),
    )


@pytest_twisted.ensureDeferred
async def test_db_function(tmp_path: Path, database_option: str) -> None:
    """db runs one statement for admins, logs it, answers rows or a count; others are refused."""
    h = await make_harness(tmp_path, database=database_option)
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        rows = await h.call(f"apientry=db&txt={quote('SELECT username FROM tb_users ORDER BY id')}", "127.0.0.1")
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert rows.records == [{"username": "alice"}, {"username": "root"}]
    assert any("db by trusted address from 127.0.0.1: SELECT username" in e["log_format"].format(**e)
               for e in events if "log_format" in e and e.get("sql"))
    changed = await h.call(f"apientry=db&txt={quote(chr(85) + 'PDATE tb_users SET name = ' + repr('x'))}", "127.0.0.1")
    assert changed.text == "OK: 2 rows affected"
    assert (await h.call("apientry=db&txt=SELEC", "127.0.0.1")).text.startswith("ERROR: statement failed:")
    assert (await h.call(f"apientry=db&{ALICE}&txt=SELECT%201", "10.0.0.3")).text == "ERROR: access denied"
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_showcfg_hides_secrets(tmp_path: Path) -> None:
    """showcfg lists every option with its origin; keys and salts are hidden."""
    h = await make_harness(tmp_path)
    answer = await h.call("apientry=showcfg", "127.0.0.1")
    values = {r["option"]: r["value"] for r in answer.records or []}
    assert values["apiv2key"] == "***" and values["apiv2md5salt"] == "***"
    assert KEY not in str(answer.records) and SALT not in str(answer.records)
    assert values["mainaport"] == "80"
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_checkcredits_finds_tampering(tmp_path: Path, database_option: str) -> None:
    """checkcredits passes on a consistent ledger and names a balance changed behind its back."""
    h = await make_harness(tmp_path, database=database_option)
    assert (await h.call("apientry=checkcredits", "127.0.0.1")).text == "OK: every balance equals its ledger"
    await h.db.run_statement("x", "UPDATE tb_users SET credit = credit + ? WHERE username = 'alice'", (Decimal(1),))
    answer = await h.call("apientry=checkcredits", "127.0.0.1")
    assert (answer.ok, answer.status) == (False, 412)
    assert answer.records == [{"userid": (await h.store.find_user("alice")).id,  # type: ignore[union-attr]
                               "credit": "6.00", "ledger": "5.00"}]
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_registrations_and_stats(tmp_path: Path, database_option: str) -> None:
    """regstat, reguser and quickstat read current registrations; lapsed ones do not count."""
    h = await make_harness(tmp_path, database=database_option)
    await register_contact(h, "alice", "sip:alice@1.2.3.4:5060", 30)
    await register_contact(h, "alice", "sip:alice@5.6.7.8:5060", 30)
    await register_contact(h, "root", "sip:root@9.9.9.9", -5)
    assert (await h.call("apientry=regstat", "127.0.0.1")).text == "OK: 1 users registered with 2 contacts; transport_udp: 2"
    listed = await h.call("apientry=reguser&usr=alice", "127.0.0.1")
    assert [r["contact"] for r in listed.records or []] == ["sip:alice@1.2.3.4:5060", "sip:alice@5.6.7.8:5060"]
    assert (await h.call("apientry=reguser&usr=root", "127.0.0.1")).text == "ERROR: root is not registered"
    assert len((await h.call("apientry=reguser&usr=x", "127.0.0.1")).records or []) == 2
    stats = (await h.call("apientry=quickstat", "127.0.0.1")).records or [{}]
    assert (stats[0]["users"], stats[0]["registered"], stats[0]["credit"]) == (2, 1, "5.00")
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_maintenance(tmp_path: Path, database_option: str) -> None:
    """The maintenance runs expire what has lapsed and keep what has not."""
    h = await make_harness(tmp_path, database=database_option)
    now = h.store.now()
    await register_contact(h, "alice", "sip:old@x", -1)
    await register_contact(h, "alice", "sip:new@x", 10)
    await h.db.run_statement("x", "INSERT INTO tb_phonenumbers (number, userid, status, lockeduntil, created) "
                                  "VALUES ('361', 1, 1, ?, ?)", (now - timedelta(minutes=1), now))
    await h.db.run_statement("x", "INSERT INTO tb_banned (kind, value, created, until) VALUES ('ip', '9.9.9.9', ?, ?)",
                             (now - timedelta(days=3), now - timedelta(days=2)))
    await h.api.nonces.uses.use("0123456789abcdef0123456789abcdef", "authv3_x", -10)
    answer = await h.call("apientry=hourlymaint", "127.0.0.1")
    assert answer.text == "OK: nonces 1, bans 1, numbers 1, registrations 1, websessions 0"
    assert (await h.db.run_query("x", "SELECT contact FROM tb_registrations")).rows == [("sip:new@x",)]
    assert (await h.db.run_query("x", "SELECT userid, status FROM tb_phonenumbers")).rows == [(0, 0)]
    daily = await h.call("apientry=dailymaint", "127.0.0.1")
    assert daily.text == "OK: nonces 0, bans 0, numbers 0, registrations 0, websessions 0, optimized 1"
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_rebill(tmp_path: Path, database_option: str) -> None:
    """rebill reprices CDRs from the current tariffs and moves the difference through the ledger; the test
    records of gencdr are never charged (issue 16, item 18)."""
    h = await make_harness(tmp_path, "defaulttariff=1", database=database_option)
    alice = await h.store.find_user("alice")
    assert alice is not None
    await h.db.run_statement(
        "x", "INSERT INTO tb_tariffs (tariffid, prefix, name, price, currency) VALUES (1, '36', 'HU', ?, 'USD')",
        (Decimal("0.6"),),
    )
    await h.api.rater.rebuild()
    for number, duration, cost in (("3611", 60, "0.10"), ("3622", 30, "0.30"), ("3633", 0, "0")):
        await h.db.run_statement(
            "x", "INSERT INTO tb_cdrs (datum, callednumber, userid, duration, cost) VALUES (?, ?, ?, ?, ?)",
            (h.store.now(), number, alice.id, duration, Decimal(cost)),
        )
    assert (await h.call(f"apientry=gencdr&count=20&userid={alice.id}", "127.0.0.1")).ok
    # Test records priced from a tariff that is then changed: a rebill would charge them all.
    await h.db.run_statement("x", "UPDATE tb_cdrs SET callednumber = '3699', duration = 60, cost = 0 "
                                  "WHERE generated = 1")
    answer = await h.call("apientry=rebill&days=today", "127.0.0.1")
    assert answer.text == "OK: 3 CDRs checked, 1 repriced"
    costs = (await h.db.run_query("x", "SELECT callednumber, cost FROM tb_cdrs WHERE generated = 0 ORDER BY id")).rows
    assert [(n, h.db.engine.money(c)) for n, c in costs] == [("3611", Decimal("0.6")), ("3622", Decimal("0.3")),
                                                              ("3633", Decimal(0))]
    assert (await h.store.find_user("alice")).credit == Decimal("4.5")  # type: ignore[union-attr]
    assert [e.kind for e in await h.store.ledger(alice.id)][-1] == "rebill"
    assert (await h.call("apientry=rebill&days=today", "127.0.0.1")).text == "OK: 3 CDRs checked, 0 repriced"
    assert await h.store.audit() == []
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_a_password_changed_by_sql_is_refused_at_once_despite_the_cache(tmp_path: Path,
                                                                             database_option: str) -> None:
    """The attack a user cache invites: an old password (or a disabled account) still accepted from memory.
    After db changes alice's password, the next request with the old one is refused and the new one works;
    after db disables her, she is refused.  fastusers lists the cache, syncusers empties it."""
    from twisted.internet import reactor
    from mizud.store.notify import Notifications

    h = await make_harness(tmp_path, database=database_option)
    listener = None
    if database_option.startswith("postgresql"):
        listener = Notifications(h.db, reactor, database_option)
        listener.start()
        while not h.db.changes.trusted():
            await deferLater(reactor, 0.01, lambda: None)
    try:
        assert (await h.call(f"apientry=balance&{ALICE}")).ok
        assert (await h.call(f"apientry=balance&{ALICE}")).ok
        listed = await h.call("apientry=fastusers", "127.0.0.1")
        assert "alice" in {r["username"] for r in listed.records}, listed.text
        assert h.store.users.hits >= 1
        sql = "UPDATE tb_users SET password = 'newpw' WHERE username = 'alice'"
        assert (await h.call(f"apientry=db&txt={quote(sql)}", "127.0.0.1")).ok
        assert (await h.call(f"apientry=balance&{ALICE}")).text == "ERROR: wrong authentication"
        assert (await h.call(f"apientry=balance&authkey={KEY}&authid=alice&authpwd=newpw")).ok
        sql = "UPDATE tb_users SET enabled = 0 WHERE username = 'alice'"
        assert (await h.call(f"apientry=db&txt={quote(sql)}", "127.0.0.1")).ok
        assert not (await h.call(f"apientry=balance&authkey={KEY}&authid=alice&authpwd=newpw")).ok
        forgotten = await h.call("apientry=syncusers", "127.0.0.1")
        assert forgotten.ok and forgotten.text.endswith("cached keys forgotten")
        assert "alice" not in {r["username"] for r in (await h.call("apientry=fastusers", "127.0.0.1")).records}
    finally:
        if listener is not None:
            listener.stop()
        await h.db.close()
