"""The registrar: digest authentication, bindings in the database, tb_users.status, lockout."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest_twisted

from mizud.store.registrations import Bindings
from mizud.sip.digest import DigestAuth, parse_credentials
from sipkit import Phone, digest_header, make_rig, settle


async def status_row(rig: object, username: str) -> tuple[int, object]:
    """tb_users.status and statusdate of a user."""
    db = rig.h.db  # type: ignore[attr-defined]
    row = (await db.run_query("x", "SELECT status, statusdate FROM tb_users WHERE username = ?", (username,))).rows[0]
    return int(row[0]), db.engine.time(row[1])


@pytest_twisted.ensureDeferred
async def test_register_challenge_then_ok(tmp_path: Path, database_option: str) -> None:
    """REGISTER gets 401 with an MD5 qop=auth challenge; the answered one is stored and listed in the 200."""
    rig = await make_rig(tmp_path, database=database_option)
    phone = Phone("alice", "alicepw")
    first = await rig.one(phone.register())
    assert first.status == 401
    challenge = parse_credentials(first.get("www-authenticate"))
    assert challenge is not None
    assert (challenge["realm"], challenge["algorithm"], challenge["qop"]) == ("example.com", "MD5", "auth")
    assert await Bindings(rig.h.db, rig.h.store.now).all() == []
    ok = await rig.one(phone.register(phone.answer(first, "REGISTER")))
    assert ok.status == 200
    assert ok.all("contact") == ["<sip:alice@192.0.2.10:5062>;expires=3600"]
    assert ok.get("date") and ";tag=" in ok.get("to")
    assert "received=192.0.2.10" in ok.get("via") or "rport=5062" in ok.get("via")
    bindings = await Bindings(rig.h.db, rig.h.store.now).all()
    assert [(b.username, b.contact, b.address, b.transport, b.useragent) for b in bindings] == [
        ("alice", "sip:alice@192.0.2.10:5062", "192.0.2.10:5062", "udp", "sipkit")]
    status, when = await status_row(rig, "alice")
    assert status == 2 and when == rig.h.store.now()
    # The spec's "is this user registered" SQL, in portable form.
    found = await rig.h.db.run_query(
        "x", "SELECT id FROM tb_users WHERE username = ? AND status > 0 AND statusdate > ? AND enabled <> 0 "
             "AND temporarydisabled <> 1", ("alice", rig.h.store.now() - timedelta(days=0.1)))
    assert len(found.rows) == 1
    await rig.h.db.close()


@pytest_twisted.ensureDeferred
async def test_contacts_q_expires_wildcard(tmp_path: Path, database_option: str) -> None:
    """Several contacts with q values, per-contact expiry, removal by expires=0 and by the * wildcard."""
    rig = await make_rig(tmp_path, database=database_option)
    phone = Phone("alice", "alicepw")
    two = "<sip:alice@192.0.2.10:5062>;q=0.5, <sip:alice@192.0.2.11:5070>;expires=120;q=1"
    ok = await rig.register(phone, contact=two)
    assert ok.status == 200
    assert ok.all("contact") == ["<sip:alice@192.0.2.11:5070>;expires=120", "<sip:alice@192.0.2.10:5062>;expires=3600;q=0.5"]
    ok = await rig.register(phone, contact="<sip:alice@192.0.2.11:5070>;expires=0")
    assert ok.all("contact") == ["<sip:alice@192.0.2.10:5062>;expires=3600;q=0.5"]
    # A query (no Contact) lists the bindings without changing them.
    ok = await rig.register(phone, contact="<sip:alice@192.0.2.12>", expires=7200 * 10)
    assert "<sip:alice@192.0.2.12>;expires=7200" in ok.all("contact")  # capped at sipmaxexpires
    brief = await rig.register(phone, contact="<sip:alice@192.0.2.13>", expires=5)
    assert (brief.status, brief.get("min-expires")) == (423, "60")
    bad = await rig.register(phone, contact="*", expires=3600)
    assert bad.status == 400
    gone = await rig.register(phone, contact="*", expires=0)
    assert gone.status == 200 and gone.all("contact") == []
    assert (await status_row(rig, "alice"))[0] == 0
    await rig.h.db.close()


@pytest_twisted.ensureDeferred
async def test_out_of_order_register_is_refused(tmp_path: Path) -> None:
    """A REGISTER with the same Call-ID and a CSeq not above the binding's changes nothing (RFC 3261 10.3)."""
    rig = await make_rig(tmp_path)
    phone = Phone("alice", "alicepw")
    assert (await rig.register(phone)).status == 200
    phone.cseq -= 5
    late = await rig.register(phone, expires=0)
    assert late.status == 400
    assert len(await Bindings(rig.h.db, rig.h.store.now).all()) == 1
    await rig.h.db.close()


@pytest_twisted.ensureDeferred
async def test_expired_bindings_are_swept(tmp_path: Path, database_option: str) -> None:
    """When the last binding lapses the sweep removes it and the user goes offline (status 0)."""
    rig = await make_rig(tmp_path, database=database_option)
    bindings = Bindings(rig.h.db, rig.h.store.now)
    assert (await rig.register(Phone("alice", "alicepw"), expires=60)).status == 200
    assert (await bindings.status("alice"), await bindings.status("root"), await bindings.status("nobody")) == (2, 1, 0)
    rig.h.clock.advance(61)
    assert await bindings.status("alice") == 1  # lapsed, even before the sweep
    assert await bindings.expire() == 1
    assert (await status_row(rig, "alice"))[0] == 0 and await bindings.all() == []
    await rig.h.db.close()


@pytest_twisted.ensureDeferred
async def test_wrong_password_counts_towards_the_lockout(tmp_path: Path) -> None:
    """Wrong digest answers count as failed logins of the account; a retry in the same dialog gets 403 (the
    phone stops); the account is locked, not the address: another phone behind the same NAT registers."""
    rig = await make_rig(tmp_path, "authfailmax=3")
    phone = Phone("alice", "wrong")
    assert (await rig.register(phone)).status == 401  # the first wrong answer: challenged again
    assert (await rig.register(phone)).status == 403  # the same wrong credentials again in this dialog
    assert (await rig.register(Phone("alice", "wrong"))).status == 401  # a new dialog: counted, challenged
    assert rig.h.api.bans.is_banned("user", "alice")
    assert not rig.h.api.bans.is_banned("ip", "192.0.2.10")
    # The right password from another address does not help a banned user.
    other = await rig.register(Phone("alice", "alicepw", host="192.0.2.99"), source=rig.source("192.0.2.99"))
    assert other.status == 403
    # Failed SIP logins are the API's failed logins: the API refuses alice too.
    answer = await rig.h.call("apientry=balance&authkey=apikey123&authid=alice&authpwd=alicepw", "192.0.2.98")
    assert answer.text.startswith("ERROR: banned")
    # root's phone behind the same address is not locked out.
    assert (await rig.register(Phone("root", "rootpw"))).status == 200
    await rig.h.db.close()


@pytest_twisted.ensureDeferred
async def test_failures_for_several_accounts_ban_the_address(tmp_path: Path) -> None:
    """A scanner trying one account after another from one address gets the address banned (then silence)."""
    rig = await make_rig(tmp_path, "authfailmax=3")
    for name in ("alice", "bob", "carol"):
        assert (await rig.register(Phone(name, "guess"))).status == 401
    assert rig.h.api.bans.is_banned("ip", "192.0.2.10")
    assert await rig.exchange(Phone("root", "rootpw").register()) == []  # banned addresses get nothing at all
    await rig.h.db.close()


@pytest_twisted.ensureDeferred
async def test_expiry_is_judged_after_authentication(tmp_path: Path) -> None:
    """An unauthenticated REGISTER with Expires: 15 is challenged (RFC 3261 10.3 step 3 before step 7)."""
    rig = await make_rig(tmp_path)
    phone = Phone("alice", "alicepw")
    assert (await rig.one(phone.register(expires=15))).status == 401
    answer = await rig.register(phone, expires=15)
    assert answer.status == 423 and answer.get("min-expires") == "60"
    await rig.h.db.close()


@pytest_twisted.ensureDeferred
async def test_nonce_stale_and_replay(tmp_path: Path) -> None:
    """An expired nonce gets stale=true; a nonce count used once cannot be used again."""
    rig = await make_rig(tmp_path, "sipnoncettl=60")
    phone = Phone("alice", "alicepw")
    first = await rig.one(phone.register())
    credentials = phone.answer(first, "REGISTER")
    assert (await rig.one(phone.register(credentials))).status == 200
    replay = await rig.one(phone.register(credentials))  # same nc=1 with a new branch and CSeq
    assert replay.status == 401 and "stale=true" in replay.get("www-authenticate")
    assert (await rig.one(phone.register(phone.answer(first, "REGISTER", nc=2)))).status == 200
    rig.h.clock.advance(61)
    stale = await rig.one(phone.register(phone.answer(first, "REGISTER", nc=3)))
    assert stale.status == 401 and "stale=true" in stale.get("www-authenticate")
    assert not rig.h.api.bans.is_banned("ip", "192.0.2.10")  # neither counts as a failed login
    await rig.h.db.close()


def test_digest_rejects_forged_and_foreign_nonces() -> None:
    """Nonces are checked by HMAC: an edited nonce or one from another process is stale, never accepted."""
    from twisted.internet.task import Clock

    clock = Clock()
    mine, theirs = DigestAuth(clock), DigestAuth(clock)
    header = digest_header(mine.challenge("r"), "REGISTER", "sip:r", "alice", "pw")[1]
    params = parse_credentials(header)
    assert params is not None and mine.check(dict(params), "REGISTER", "pw").ok
    assert theirs.check(dict(params, nc="00000002"), "REGISTER", "pw").stale
    forged = dict(params, nonce=params["nonce"][:-1] + ("0" if params["nonce"][-1] != "0" else "1"))
    assert not mine.check(forged, "REGISTER", "pw").ok
    assert mine.check(dict(params, nc="00000003"), "REGISTER", "wrong").wrong_password
    assert parse_credentials('Digest username="a", username="b"') is None
    assert parse_credentials("NoOneKnowsThisScheme opaque-data=here") is None


@pytest_twisted.ensureDeferred
async def test_register_rules(tmp_path: Path) -> None:
    """Only the AOR's own user may register it; disabled users are refused; To must be a SIP URI."""
    rig = await make_rig(tmp_path)
    # root authenticates but tries to register alice's address of record.
    root = Phone("root", "rootpw")
    first = await rig.one(root.request("REGISTER", "", ("Contact", "<sip:x@192.0.2.10>"), to="sip:alice@example.com"))
    answer = await rig.one(root.request("REGISTER", "", ("Contact", "<sip:x@192.0.2.10>"), root.answer(first, "REGISTER"),
                                        to="sip:alice@example.com"))
    assert answer.status == 403
    await rig.h.db.run_statement("x", "UPDATE tb_users SET enabled = 0 WHERE username = 'alice'")
    assert (await rig.register(Phone("alice", "alicepw"))).status == 403
    bad_to = await rig.one(root.request("REGISTER", "", to="tel:+123"))
    assert bad_to.status == 400
    await settle()
    await rig.h.db.close()
