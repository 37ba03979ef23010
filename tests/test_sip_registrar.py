"""The registrar: digest authentication, bindings in the database, tb_users.status, lockout."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pytest_twisted
from twisted.internet import defer

from mizud.store.registrations import Bindings
from mizud.sip.digest import DigestAuth, parse_credentials
from mizud.sip.message import parse_datagram
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


@pytest_twisted.ensureDeferred
async def test_admission_control_answers_503_early_and_lets_dialogs_through(tmp_path: Path) -> None:
    """Over sipmaxserving requests in the works, or with the event loop late past sipoverloadlag, a new
    REGISTER gets 503 Overloaded with Retry-After before anything is looked up, and no transaction is
    kept; one answering a challenge passes up to twice the bound; requests inside a dialog still pass;
    when the load is gone, registrations work again."""
    from mizud.sip.core import LAG_EVERY

    rig = await make_rig(tmp_path, "sipmaxserving=2", "sipoverloadlag=100ms")
    phone = Phone("alice", "alicepw")
    core = rig.core
    core.serving = 2  # two requests waiting for the database
    shed = await rig.one(phone.register())
    assert (shed.status, shed.reason) == (503, "Overloaded") and shed.get("retry-after") in ("1", "2", "3")
    assert core.stats["shed"] == 1 and core.transactions.find(parse_datagram(phone.register())) is None
    bye = phone.request("BYE", "sip:alice@192.0.2.1", to="sip:bob@example.com").replace(
        b"To: <sip:bob@example.com>", b"To: <sip:bob@example.com>;tag=x")
    in_dialog = await rig.one(bye)
    assert in_dialog.status == 481  # judged, not shed
    core.serving = 0
    assert (await rig.register(phone)).status == 200
    # The event loop ran late: sampled by the lag watch (here with the harness's fake clock).
    core.sample_lag()
    rig.h.clock.advance(LAG_EVERY + 0.15)
    core.sample_lag()
    assert core.lag > 0.1 and core.overloaded()
    assert (await rig.one(phone.register())).status == 503
    # The answer to a challenge finishes an exchange already begun: admitted up to twice the bound.
    core.lag, saved = 0.15, core.lag
    core.sojourn = 0.0
    challenge = await rig.one(phone.register())
    assert challenge.status == 503
    core.lag = 0.0
    challenge = await rig.one(phone.register())
    core.lag = 0.15
    assert (await rig.one(phone.register(phone.answer(challenge, "REGISTER")))).status == 200
    core.lag = 0.25
    assert (await rig.one(phone.register(phone.answer(challenge, "REGISTER", nc=2)))).status == 503
    core.lag = saved
    rig.h.clock.advance(LAG_EVERY)
    core.sample_lag()
    assert not core.overloaded()
    assert (await rig.register(phone)).status == 200
    await rig.h.db.close()


async def stored_expiry(rig: object, contact: str) -> object:
    """The expiry stored in tb_registrations for a contact."""
    db = rig.h.db  # type: ignore[attr-defined]
    row = (await db.run_query("x", "SELECT expires, cseq FROM tb_registrations WHERE contact = ?", (contact,))).rows[0]
    return db.engine.time(row[0]), int(row[1])


@pytest_twisted.ensureDeferred
async def test_an_unchanged_refresh_writes_nothing_until_its_stored_expiry_nears(
        tmp_path: Path, database_option: str) -> None:
    """A refresh that changes only the expiry is answered from one read, with no write; the new expiry is
    written in one transaction once the stored one is within REFRESH_HORIZON; a replay of the refreshed
    CSeq is still out of order; a REGISTER that changes something writes at once."""
    from mizud.store.registrations import REFRESH_HORIZON

    rig = await make_rig(tmp_path, database=database_option)
    store, clock = rig.h.store, rig.h.clock
    bindings = store.registrations
    phone = Phone("alice", "alicepw")
    contact = "sip:alice@192.0.2.10:5062"
    assert (await rig.register(phone, expires=120)).status == 200
    first_expiry, first_cseq = await stored_expiry(rig, contact)
    clock.advance(60)
    writes = [0]
    real = rig.h.db.run_interaction

    def counting(name: str, *args: object) -> object:
        writes[0] += 1
        return real(name, *args)  # type: ignore[arg-type]

    rig.h.db.run_interaction = counting  # type: ignore[method-assign]
    refreshed = await rig.register(phone, expires=120)
    assert refreshed.status == 200 and refreshed.all("contact") == [f"<{contact}>;expires=120"]
    assert writes[0] == 0 and bindings.unwritten == 1
    assert await stored_expiry(rig, contact) == (first_expiry, first_cseq)  # nothing written
    phone.cseq -= 2  # the next authenticated REGISTER repeats the refresh's CSeq, known only in memory
    challenge = await rig.one(phone.register(expires=120))
    replay = await rig.one(phone.register(phone.answer(challenge, "REGISTER"), expires=120))
    assert (replay.status, replay.reason) == (400, "Out of order CSeq")
    assert await bindings.flush() == 0  # the stored expiry is 60 s away
    clock.advance(60 - REFRESH_HORIZON + 1)
    assert await bindings.flush() == 1 and writes[0] == 1
    expiry, cseq = await stored_expiry(rig, contact)
    assert expiry == first_expiry + timedelta(seconds=60) and cseq > first_cseq
    # Another contact is a change: written before the 200.
    assert (await rig.register(phone, contact="<sip:alice@192.0.2.10:5070>", expires=120)).status == 200
    assert writes[0] == 2
    await rig.h.db.close()


@pytest_twisted.ensureDeferred
async def test_a_crash_loses_no_acknowledged_binding(tmp_path: Path) -> None:
    """A node that dies with refreshes unwritten leaves every binding it acknowledged stored and live
    until its stored expiry (which no refresh moved closer); the next node serves it from there."""
    rig = await make_rig(tmp_path)
    phone = Phone("alice", "alicepw")
    contact = "sip:alice@192.0.2.10:5062"
    assert (await rig.register(phone, expires=300)).status == 200
    stored, _ = await stored_expiry(rig, contact)
    rig.h.clock.advance(100)
    assert (await rig.register(phone, expires=300)).status == 200
    assert rig.h.store.registrations.unwritten == 1
    # The crash: this node's memory is gone; another store on the same database takes over.
    from mizud.store.registrations import Bindings

    survivor = Bindings(rig.h.db, rig.h.store.now)
    live = await survivor.of_user((await rig.h.store.find_user("alice")).id)  # type: ignore[union-attr]
    assert [(b.contact, b.expires) for b in live] == [(contact, stored)]
    await rig.h.db.close()


@pytest_twisted.ensureDeferred
async def test_a_refresh_with_a_new_call_id_and_a_row_rewritten_meanwhile(tmp_path: Path, database_option: str) -> None:
    """A refresh under a new Call-ID (as sipp sends them) is unchanged too; its unwritten expiry never
    overwrites a row that another node (or SQL) rewrote meanwhile."""
    rig = await make_rig(tmp_path, database=database_option)
    phone = Phone("alice", "alicepw")
    contact = "sip:alice@192.0.2.10:5062"
    assert (await rig.register(phone, expires=120)).status == 200
    rig.h.clock.advance(10)
    phone.call_id = "another@phone"
    phone.cseq = 0
    assert (await rig.register(phone, expires=120)).status == 200
    assert rig.h.store.registrations.unwritten == 1
    elsewhere = rig.h.store.now() + timedelta(seconds=500)
    await rig.h.db.run_statement("x", "UPDATE tb_registrations SET expires = ? WHERE contact = ?", (elsewhere, contact))
    assert await rig.h.store.registrations.flush(everything=True) == 0
    assert (await stored_expiry(rig, contact))[0] == elsewhere  # left as the other writer made it
    await rig.h.db.close()


@pytest_twisted.ensureDeferred
async def test_a_datagram_that_waited_in_the_receive_queue_turns_admission_control_on(tmp_path: Path) -> None:
    """On a real UDP socket: a REGISTER that sat 300 ms in the kernel's receive queue (the reactor busy
    elsewhere) is measured by its kernel timestamp; past sipoverloadlag it and the next new request get 503
    at once, and an empty queue at the next samples turns admission control off again."""
    import socket

    from twisted.internet import reactor
    from twisted.internet.task import deferLater
    from mizud.sip.transport import SipDatagramProtocol

    rig = await make_rig(tmp_path, "sipoverloadlag=200ms")
    core = rig.core
    protocol = SipDatagramProtocol(core)
    port = reactor.listenUDP(0, protocol, interface="127.0.0.1")
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    client.setblocking(False)

    async def receive() -> object:
        for _ in range(1000):
            try:
                return parse_datagram(client.recv(65536))
            except BlockingIOError:
                await deferLater(reactor, 0.005, lambda: None)
        raise AssertionError("no answer")

    try:
        if protocol.arrival is None:
            import pytest

            pytest.skip("no SIOCGSTAMP on this system")
        address = ("127.0.0.1", port.getHost().port)
        phone = Phone("alice", "alicepw", host="127.0.0.1", port=client.getsockname()[1])
        # The kernel turns receive stamps on a moment after the first ask (a deferred switch): let it.
        client.sendto(b"\r\n", address)
        await deferLater(reactor, 0.2, lambda: None)
        core.wants_sojourn = True
        port.stopReading()  # the event loop is busy: datagrams queue in the kernel
        client.sendto(phone.register(), address)
        time.sleep(0.3)
        port.startReading()
        first = await receive()
        assert first.status == 503 and core.sojourn > 0.25, core.sojourn  # type: ignore[attr-defined]
        client.sendto(phone.register(), address)
        assert (await receive()).status == 503  # type: ignore[attr-defined]
        core.sample_lag()  # a sample asks again; an idle sample clears the estimate
        core.sample_lag()
        assert core.sojourn == 0 and not core.overloaded()
        client.sendto(phone.register(), address)
        assert (await receive()).status == 401  # type: ignore[attr-defined]
    finally:
        client.close()
        await port.stopListening()
        await deferLater(reactor, 0, lambda: None)
        await rig.h.db.close()


@pytest_twisted.ensureDeferred
async def test_refreshes_survive_a_refused_register_and_shorter_or_late_ones_are_written_at_once(
        tmp_path: Path, database_option: str) -> None:
    """An acknowledged but unwritten refresh is still written after a REGISTER of the same user is refused
    (too many contacts); a refresh that shortens the expiry, or comes when less than half the new grant is
    still stored, is written before its 200 (the database, and so routing, never outlives a 200)."""
    rig = await make_rig(tmp_path, "sipmaxcontacts=1", database=database_option)
    bindings, clock = rig.h.store.registrations, rig.h.clock
    phone = Phone("alice", "alicepw")
    contact = "sip:alice@192.0.2.10:5062"
    assert (await rig.register(phone, expires=600)).status == 200
    clock.advance(10)
    assert (await rig.register(phone, expires=600)).status == 200
    assert bindings.unwritten == 1
    refused = await rig.register(phone, contact="<sip:alice@192.0.2.10:5999>", expires=600)
    assert refused.status == 403
    assert await bindings.flush(everything=True) == 1
    expiry, _ = await stored_expiry(rig, contact)
    assert expiry == rig.h.store.now() + timedelta(seconds=600)
    clock.advance(10)
    assert (await rig.register(phone, expires=60)).status == 200  # shorter: written now
    assert (await stored_expiry(rig, contact))[0] == rig.h.store.now() + timedelta(seconds=60)
    clock.advance(40)  # 20 s left of 60; a new 60 s grant: less than half is stored
    unwritten = bindings.unwritten
    assert (await rig.register(phone, expires=60)).status == 200
    assert bindings.unwritten == unwritten
    assert (await stored_expiry(rig, contact))[0] == rig.h.store.now() + timedelta(seconds=60)
    await rig.h.db.close()


@pytest_twisted.ensureDeferred
async def test_a_refresh_racing_a_change_of_the_same_user_loses_nothing(tmp_path: Path, database_option: str) -> None:
    """A refresh and a REGISTER that adds a contact, for one user at once: whatever the interleaving, once
    flushed the refreshed contact is stored with the refresh's expiry and CSeq."""
    from mizud.store.registrations import Change as Contact

    rig = await make_rig(tmp_path, database=database_option)
    store, bindings = rig.h.store, rig.h.store.registrations
    user = await store.find_user("alice")
    assert user is not None
    first = "sip:alice@192.0.2.10:5062"
    common = dict(wildcard=False, callid="c1@x", address="192.0.2.10:5062", transport="udp", useragent="ua",
                  domain="example.com")
    await bindings.register(user.id, "alice", [Contact(first, 600)], cseq=1, **common)  # type: ignore[arg-type]
    rig.h.clock.advance(10)
    refresh = defer.ensureDeferred(bindings.register(
        user.id, "alice", [Contact(first, 600)], cseq=2, **common))  # type: ignore[arg-type]
    added = defer.ensureDeferred(bindings.register(
        user.id, "alice", [Contact("sip:alice@192.0.2.10:6000", 600)], cseq=3, **common))  # type: ignore[arg-type]
    await defer.gatherResults([refresh, added])
    await bindings.flush(everything=True)
    expiry, cseq = await stored_expiry(rig, first)
    assert expiry == store.now() + timedelta(seconds=600) and cseq >= 2
    await rig.h.db.close()


@pytest_twisted.ensureDeferred
async def test_a_stored_expiry_written_by_sql_in_another_form_is_still_refreshed(tmp_path: Path) -> None:
    """SQLite keeps times as text: a row whose expiry SQL wrote without microseconds is the same time,
    and its unwritten refresh is written (the comparison is of times, not of text)."""
    rig = await make_rig(tmp_path)
    phone = Phone("alice", "alicepw")
    contact = "sip:alice@192.0.2.10:5062"
    assert (await rig.register(phone, expires=600)).status == 200
    stored, _ = await stored_expiry(rig, contact)
    await rig.h.db.run_statement("x", "UPDATE tb_registrations SET expires = ? WHERE contact = ?",
                                 (stored.strftime("%Y-%m-%d %H:%M:%S"), contact))  # type: ignore[attr-defined]
    rig.h.clock.advance(10)
    assert (await rig.register(phone, expires=600)).status == 200
    assert await rig.h.store.registrations.flush(everything=True) == 1
    await rig.h.db.close()


@pytest_twisted.ensureDeferred
async def test_a_refresh_costs_no_statement_yet_sees_every_change(tmp_path: Path, database_option: str) -> None:
    """Where the change feed tells every change of the bindings and the stored messages (SQLite), a refresh
    of unchanged bindings reads nothing (the registrar's read and the stored-messages check come from
    memory); and plain SQL (as the db function runs it) is seen by the very next REGISTER, each time with
    the memory in use just before: a binding deleted is written again, a status set offline (by an UPDATE,
    by a REPLACE of the user's row) is set back, a message stored is delivered.  User ids and binding row
    ids differ here, so a change told by the wrong id would be missed.  On PostgreSQL, where those tables
    are not notified, each refresh still reads."""
    rig = await make_rig(tmp_path, database=database_option)
    db, store = rig.h.db, rig.h.store
    for n in range(3):
        await store.create_user(f"filler{n}", "pw")
    root = Phone("root", "rootpw", port=5090)
    assert (await rig.register(root, source=rig.source(port=5090))).status == 200  # binding row 1: root's
    phone = Phone("alice", "alicepw")
    userid = (await store.find_user("alice")).id  # type: ignore[union-attr]
    assert (await rig.register(phone)).status == 200
    rowid = (await db.run_query("x", "SELECT id FROM tb_registrations WHERE userid = ?", (userid,))).rows[0][0]
    assert rowid != userid
    bindings = store.registrations
    in_memory = db.changes.tells("tb_registrations") and db.changes.tells("tb_messages")
    assert in_memory == ("://" not in database_option)  # SQLite: a path; PostgreSQL: a DSN

    async def warm() -> None:
        """Refresh until the memory answers (SQLite), proving each refresh is one and reads nothing."""
        assert (await rig.register(phone)).status == 200
        reads, unwritten = bindings.reads, bindings.unwritten
        assert (await rig.register(phone)).status == 200
        assert bindings.unwritten == unwritten + 1, "not answered as a refresh"
        assert bindings.reads == reads + (0 if in_memory else 1)

    reads: list[str] = []
    real = db.run_query

    def counting(name: str, sql: str, params: tuple[object, ...] = ()) -> defer.Deferred[object]:
        reads.append(name)
        return real(name, sql, params)

    await warm()
    db.run_query = counting  # type: ignore[method-assign]
    for _ in range(3):
        assert (await rig.register(phone)).status == 200
    await settle()
    db.run_query = real  # type: ignore[method-assign]
    refresh_reads = [name for name in reads if name in ("register_refresh", "pending_messages")]
    assert refresh_reads == ([] if in_memory else ["register_refresh", "pending_messages"] * 3)

    await warm()
    await db.run_statement("db", "DELETE FROM tb_registrations WHERE userid = ?", (userid,))
    assert (await rig.register(phone)).status == 200
    assert len(await bindings.of_user(userid)) == 1, "the deleted binding was not written again"
    await warm()
    await db.run_statement("db", "UPDATE tb_users SET status = 0 WHERE id = ?", (userid,))
    assert (await rig.register(phone)).status == 200
    assert (await status_row(rig, "alice"))[0] == 2, "the status set by SQL was not set back"
    if "://" not in database_option:  # SQLite's REPLACE: a delete and an insert of the user's row
        await warm()
        columns = ", ".join(row[1] for row in (await db.run_query("x", "PRAGMA table_info(tb_users)")).rows
                            if row[1] != "status")
        await db.run_statement("db", f"INSERT OR REPLACE INTO tb_users ({columns}, status) "
                                     f"SELECT {columns}, 0 FROM tb_users WHERE id = ?", (userid,))
        assert (await status_row(rig, "alice"))[0] == 0
        assert (await rig.register(phone)).status == 200
        assert (await status_row(rig, "alice"))[0] == 2, "the status set by REPLACE was not set back"
    await warm()
    await db.run_statement("db", "INSERT INTO tb_messages (fromuser, touserid, tousername, body, created) "
                                 "VALUES ('bob', ?, 'alice', 'stored by SQL', ?)", (userid, store.now()))
    mark = len(rig.sent)
    assert (await rig.register(phone)).status == 200
    await settle()
    sent = [parse_datagram(data) for _, data in rig.sent[mark:]]
    assert [m.body for m in sent if m.method == "MESSAGE"] == [b"stored by SQL"]
    await db.close()


@pytest_twisted.ensureDeferred
async def test_the_bindings_kept_in_memory_are_bounded_by_rows(tmp_path: Path, monkeypatch: object) -> None:
    """At most STORED_ROWS stored bindings are kept (the least recently refreshed users' go first), however
    many contacts each user has; the ones dropped are read again when needed."""
    from mizud.store import registrations

    monkeypatch.setattr(registrations, "STORED_ROWS", 3)  # type: ignore[attr-defined]
    rig = await make_rig(tmp_path)
    bindings = rig.h.store.registrations
    phones = []
    for n in range(4):
        await rig.h.store.create_user(f"u{n}", "pw")
        phones.append(Phone(f"u{n}", "pw", port=5100 + n))
    for phone in phones:
        for _ in range(2):  # the first writes, the second reads and keeps
            assert (await rig.register(phone, source=rig.source(port=phone.port))).status == 200
        assert bindings._stored_rows_kept == sum(len(rows) for rows in bindings._stored.values()) <= 3
    assert list(bindings._stored) == [(await rig.h.store.find_user(f"u{n}")).id for n in (1, 2, 3)]  # type: ignore[union-attr]
    reads = bindings.reads
    assert (await rig.register(phones[0], source=rig.source(port=phones[0].port))).status == 200
    assert bindings.reads == reads + 1 and bindings._stored_rows_kept <= 3
    await rig.h.db.close()
