"""Attacks a hostile tester made on the API, each reproduced, and what mizud now answers.

Every test here failed before its fix.  The harness is the dispatcher on a
real SQLite store with a fake clock (see test_api_dispatch); attacks that
need sockets, browsers or two nodes live beside the features they hit.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest_twisted
from twisted.logger import globalLogPublisher

from test_api_dispatch import KEY, PUBLIC_IP, make_harness


def md5(text: str) -> str:
    """Hex MD5, independently of the server's helpers."""
    return hashlib.md5(text.encode()).hexdigest()


@pytest_twisted.ensureDeferred
async def test_unicode_digits_get_a_clear_error_naming_the_parameter(tmp_path: Path) -> None:
    """Superscript and other non-ASCII digits are refused by name, never an internal error with a traceback."""
    h = await make_harness(tmp_path)
    failures: list[dict[str, object]] = []

    def observe(event: dict[str, object]) -> None:
        if event.get("log_failure") is not None:
            failures.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        admin = "authid=root&authpwd=rootpw"
        cases = {
            f"apientry=cdr&{admin}&offset=\u00b2": "offset",
            f"apientry=cdr&{admin}&maxcount=\uff13": "maxcount",
            f"apientry=listusers&{admin}&u_maxcount=\u00b2": "u_maxcount",
            f"apientry=listusers&{admin}&u_type=\u0663": "u_type",
            f"apientry=gencdr&{admin}&count=\u00b2": "count",
        }
        for query, name in cases.items():
            answered = await h.call(query, "127.0.0.1")
            assert not answered.ok and name in answered.message and "internal" not in answered.message, query
        answered = await h.call(f"apientry=setfield&{admin}&fieldname=name&fieldvalue=x&rowid=\u00b2", "127.0.0.1")
        assert answered.text == "ERROR: rowid must be the row's id"
        answered = await h.call(f"apientry=setfield&{admin}&fieldname=tariffid&fieldtype=int&fieldvalue=\u00b2",
                                "127.0.0.1")
        assert answered.text.startswith("ERROR: fieldvalue is not an integer")
        # Before authentication too: an authid in superscript digits is just an unknown name.
        answered = await h.call(f"apientry=balance&authkey={KEY}&authid=%C2%B2&authpwd=x")
        assert answered.text == "ERROR: wrong authentication"
    finally:
        globalLogPublisher.removeObserver(observe)
    assert failures == []
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_mail_subject_with_any_line_break_is_refused(tmp_path: Path) -> None:
    """A subject holding a vertical tab or U+2028 (line breaks to the e-mail library) gets a clear error."""
    h = await make_harness(tmp_path, "smtpserver=127.0.0.1:9")
    for number, subject in enumerate(("a%0Bb", "a%E2%80%A8b", "a%0Cb")):
        answered = await h.call(
            f"apientry=sendmail&authid=root&authpwd=rootpw&to=x@example.com&subject={subject}&txt=hi",
            f"127.0.0.{number + 1}")
        assert answered.text == "ERROR: subject must be one line of at most 500 printable characters", subject
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_every_spelling_of_an_account_shares_one_lockout(tmp_path: Path) -> None:
    """Guesses under 3, 03, 000003, fullwidth or Arabic-Indic digits and the username count for one account;
    only ASCII digits without a leading zero name an id, and the locked account answers the same to all."""
    h = await make_harness(tmp_path)
    alice = await h.store.find_user("alice")
    assert alice is not None
    userid = str(alice.id)
    spellings = ["alice", userid, "0" + userid, "00000" + userid, chr(0xFF10 + alice.id), "\u0660" + userid]
    # Only the plain ASCII id logs in as alice; the other spellings name nobody.
    assert (await h.call(f"apientry=balance&authkey={KEY}&authid={userid}&authpwd=alicepw")).ok
    for odd in spellings[2:]:
        assert not (await h.call(f"apientry=balance&authkey={KEY}&authid={odd}&authpwd=alicepw")).ok, odd
    for number in range(5):
        await h.call(f"apientry=balance&authkey={KEY}&authid={spellings[number % 2]}&authpwd=guess{number}",
                     f"10.{number}.0.1")
    for spelling in spellings[:2]:
        right = await h.call(f"apientry=balance&authkey={KEY}&authid={spelling}&authpwd=alicepw", "8.8.8.8")
        wrong = await h.call(f"apientry=balance&authkey={KEY}&authid={spelling}&authpwd=nope", "8.8.8.8")
        assert right == wrong and right.text == "ERROR: banned: too many failed authentications", spelling
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_banned_account_is_no_password_oracle_by_id_or_pin(tmp_path: Path) -> None:
    """Locked by username, the account's id, PIN and md5 forms answer 'banned' whatever the proof."""
    h = await make_harness(tmp_path)
    alice = await h.store.find_user("alice")
    assert alice is not None
    for number in range(5):
        await h.call(f"apientry=balance&authkey={KEY}&authid=alice&authpwd=guess{number}", f"10.{number}.0.1")
    right_md5 = md5("ck5Gp" + str(alice.id) + "alicepw" + "srvsalt" + "s")
    for query in (f"authid={alice.id}&authpwd=alicepw", f"authid={alice.id}&authpwd=wrong",
                  "authid=777111&authpwd=777111", "authid=777111&authpwd=000000",
                  f"authid={alice.id}&authmd5={right_md5}&authsalt=s", f"authid={alice.id}&authmd5={md5('x')}&authsalt=s"):
        answered = await h.call(f"apientry=balance&authkey={KEY}&{query}", "8.8.4.4")
        assert answered.text == "ERROR: banned: too many failed authentications", query
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_failed_login_memory_is_bounded(tmp_path: Path) -> None:
    """200,000 distinct failed names keep at most the cap of keys, and old ones expire."""
    from mizud.security.lockout import MAX_KEYS

    h = await make_harness(tmp_path)
    book = h.api.lockout.local
    for number in range(200_000):
        address = f"10.{number >> 16}.{(number >> 8) & 255}.{number & 255}"
        book.record(f"name{number}", address, address, 600)
    assert len(book) <= 2 * MAX_KEYS
    h.clock.advance(601)
    await h.api.lockout.chore()
    assert len(book) == 0
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_forged_udp_sources_neither_ban_nor_gain_trust(tmp_path: Path) -> None:
    """Datagrams 'from' a victim with wrong passwords do not ban the victim's address (only UDP logins from
    it stop, so spraying over UDP ends too); 'from' a LAN address they are not trusted (no admin db); with
    apiudptrusted=1 the operator says the UDP network is trusted."""
    from mizud.api.request import decode

    h = await make_harness(tmp_path)

    async def datagram(query: str, source: str) -> str:
        return (await h.api.dispatch(decode(query=query, source=source, transport="udp",
                                            forgeable_source=True))).text

    for number in range(20):
        await datagram(f"apientry=balance&authkey={KEY}&authid=user{number}&authpwd=x", PUBLIC_IP)
    assert (await h.call(f"apientry=balance&authkey={KEY}&authid=root&authpwd=rootpw")).ok
    sprayed = await datagram(f"apientry=balance&authkey={KEY}&authid=alice&authpwd=alicepw", PUBLIC_IP)
    assert sprayed == "ERROR: banned: too many failed authentications"
    injected = await datagram("apientry=db&txt=UPDATE%20tb_users%20SET%20type=15", "192.168.1.20")
    assert injected.startswith("ERROR:")
    assert (await datagram("apientry=balance&authid=alice", "127.0.0.1")).startswith("ERROR:")
    alice = await h.store.find_user("alice")
    assert alice is not None and alice.type == 0
    # With credentials UDP works as before (from a source that did not fail).
    assert await datagram(f"apientry=balance&authkey={KEY}&authid=alice&authpwd=alicepw", "5.6.7.9") == "OK: 5.00 USD"
    await h.db.close()
    (tmp_path / "b").mkdir()
    h = await make_harness(tmp_path / "b", "apiudptrusted=1")
    assert (await datagram("apientry=balance&authid=alice", "127.0.0.1")) == "OK: 5.00 USD"
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_anonymous_requests_leave_no_state_under_nonce_login(tmp_path: Path) -> None:
    """With apidefneedlogin=2, thousands of anonymous requests answer 'new nonce' and write no row."""
    h = await make_harness(tmp_path, "apidefneedlogin=2", "ratelimitip=0", "ratelimitglobal=0")
    for number in range(2000):
        answered = await h.call(f"apientry=balance&authkey={KEY}&authid=alice", f"10.0.{number >> 8}.{number & 255}")
        assert answered.text.startswith("ERROR: new nonce is:")
    result = await h.db.run_query("count", "SELECT count(*) FROM tb_nonceuse")
    assert result.rows[0][0] == 0
    # A nonce issued here works (and is stored once, to refuse its replay).
    nonce = answered.text.removeprefix("ERROR: new nonce is:").removesuffix("EOF")
    digest = "authv3_" + md5(md5("tU29m" + "alice" + "alicepw" + "a") + "b" + "srvsalt" + nonce)
    good = f"apientry=balance&authkey={KEY}&authid=alice&authmd5={digest}&authsalt1=a&authsalt2=b&nonce={nonce[:10]}"
    assert (await h.call(good, "10.0.7.207")).text == "OK: 5.00 USD"
    assert (await h.db.run_query("count", "SELECT count(*) FROM tb_nonceuse")).rows[0][0] == 1
    assert (await h.call(good, "10.0.7.207")).text.startswith("ERROR: new nonce is:")  # the replay is refused
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_addcredit_cannot_overflow_a_balance(tmp_path: Path) -> None:
    """Ten addcredit credit=1000000000000 stop at the limit: no REAL balance, no lost money, checkcredits fine;
    setfield cannot plant an out-of-range credit limit either."""
    h = await make_harness(tmp_path)
    answers = [await h.call("apientry=addcredit&pin=root&credit=1000000000000", "127.0.0.1") for _ in range(10)]
    assert answers[0].ok and all(not a.ok and "would exceed 1000000000000" in a.message for a in answers[1:])
    row = await h.db.run_query("x", "SELECT typeof(credit), credit FROM tb_users WHERE username = 'root'")
    assert row.rows == [("integer", 10**18)]
    assert (await h.call("apientry=checkcredits", "127.0.0.1")).text == "OK: every balance equals its ledger"
    assert (await h.call("apientry=balance&authid=root", "127.0.0.1")).text == "OK: 1000000000000.00 USD"
    refused = await h.call("apientry=setfield&fieldname=creditlimit&fieldtype=float&fieldvalue=1e20&authid=root",
                           "127.0.0.1")
    assert refused.text.startswith("ERROR: fieldvalue must be at most 1000000000000")
    await h.db.close()


def test_which_browser_requests_count_as_another_sites() -> None:
    """Fetch metadata, Origin and Referer decide; a browser showing none of them (a plain-HTTP LAN address,
    referrer hidden) is not trusted by address unless browseraddresstrust says so; non-browsers are."""
    from mizud.wire.http import foreign_browser, own_origin

    own = own_origin("192.168.1.5:8080", secure=False)
    chrome = "Mozilla/5.0 (X11; Linux x86_64) Chrome/156.0"

    def foreign(trust: bool = False, **headers: str) -> bool:
        given = {name.replace("_", "-"): value for name, value in headers.items()}
        return foreign_browser(given.get, own, trust)

    assert not foreign(sec_fetch_site="same-origin", user_agent=chrome)
    assert not foreign(sec_fetch_site="none", user_agent=chrome)  # typed into the address bar
    assert foreign(sec_fetch_site="same-site", user_agent=chrome)  # another port of the same host
    assert foreign(sec_fetch_site="cross-site", origin="http://192.168.1.5:8080")  # metadata decides
    assert not foreign(origin="http://192.168.1.5:8080", user_agent=chrome)
    assert foreign(origin="http://192.168.1.5:9999", user_agent=chrome)
    assert foreign(origin="https://192.168.1.5:8080")
    assert foreign(origin="null", user_agent=chrome)  # sandboxed frames, data: pages
    assert not foreign(referer="http://192.168.1.5:8080/webvoip", user_agent=chrome)
    assert foreign(referer="http://evil.example/page", user_agent=chrome)
    assert foreign(user_agent=chrome)  # an <img> from a public page, referrer hidden
    assert not foreign(True, user_agent=chrome)  # ... unless the operator trusts browsers on the LAN
    assert foreign(True, origin="http://evil.example", user_agent=chrome)  # never another site's
    assert not foreign(user_agent="curl/8.5.0") and not foreign()  # scripts and daemons
    assert not foreign_browser({"origin": "http://example.com"}.get, own_origin("example.com", False), False)
    assert foreign_browser({"origin": "http://example.com"}.get, own_origin("example.com", True), False)


@pytest_twisted.ensureDeferred
async def test_signup_cannot_take_over_a_number(tmp_path: Path) -> None:
    """newuseru u_username=36301234567 (a number routed to a gateway) is refused, so routing, SMS and calls
    to it still go to the gateway; no username anywhere may shadow a user id, a PIN or a DID."""
    h = await make_harness(tmp_path)
    admin = "127.0.0.1"
    assert (await h.call("apientry=addserver&u_username=gw&u_ip=192.0.2.50&u_routing=&u_routingpriority=1", admin)).ok
    await h.db.run_statement("x", "INSERT INTO tb_phonenumbers (number, userid, status, created) VALUES "
                                  "('3612000', 1, 1, ?)", (h.store.now(),))
    signup = f"apientry=newuseru&authkey={KEY}&u_password=Secret123&u_email=m%40example.com&u_username="
    for number in ("36301234567", "%2B36301234567", "36-30-1234567"):
        answered = await h.call(signup + number, f"10.1.1.{len(number)}")
        assert answered.text == "ERROR: u_username must not be a phone number: numbers are assigned by the operator"
    routes = await h.call("apientry=routingtest&called=36301234567", admin)
    assert routes.ok and routes.records and routes.records[0]["kind"] == "gateway"
    await h.db.close()
    (tmp_path / "b").mkdir()
    h = await make_harness(tmp_path / "b", "signupnumericusernames=1")
    assert (await h.call("apientry=addserver&u_username=gw&u_ip=192.0.2.50&u_routing=&u_routingpriority=1", admin)).ok
    # With the option a number may be chosen only when it reaches nothing else; the route here has the empty
    # prefix (every number), so only the routing entry's absence lets one through.
    assert (await h.call(signup + "36301234567", "10.2.0.1")).text == (
        "ERROR: u_username 36301234567 is a number that is routed elsewhere")
    await h.db.run_statement("x", "DELETE FROM tb_routing")
    assert (await h.call(signup + "36301234567", "10.2.0.2")).ok
    # Whoever creates or renames a user: never another user's id, a PIN or a DID.
    alice = await h.store.find_user("alice")
    assert alice is not None
    await h.db.run_statement("x", "INSERT INTO tb_phonenumbers (number, userid, status, created) VALUES "
                                  "('3612000', ?, 1, ?)", (alice.id, h.store.now()))
    for name, what in ((str(alice.id), "the id of another user"), ("777111", "the PIN of another user"),
                       ("3612000", "a number of the pool (DID)")):
        answered = await h.call(f"apientry=newuseri&u_username={name}&u_password=pw", admin)
        assert answered.text == f"ERROR: u_username {name} is {what}", name
        renamed = await h.call(f"apientry=setfield&fieldname=username&fieldvalue={name}&rowid=2", admin)
        assert renamed.text == f"ERROR: fieldvalue {name} is {what}", name
        server = await h.call(f"apientry=addserver&u_username={name}&u_ip=192.0.2.9&u_routing=null", admin)
        assert server.text == f"ERROR: u_username {name} is {what}", name
    # An ordinary extension number is fine for an admin.
    assert (await h.call("apientry=newuseri&u_username=1111&u_password=pw", admin)).ok
    await h.db.close()


def test_a_browser_addressing_another_host_name_gets_no_address_trust() -> None:
    """DNS rebinding: a page's own name pointed at this server looks same-origin (Host, Origin and Referer
    all say evil.example); a browser's request to a host name that is not this server's is foreign.
    IP addresses and localhost are always this server's, and httphostnames adds names."""
    from mizud.wire.http import foreign_browser, known_host, own_origin

    chrome = "Mozilla/5.0 Chrome/156.0"
    rebound = {"host": "evil.example:8080", "referer": "http://evil.example:8080/a.html", "user-agent": chrome}
    own = own_origin(rebound["host"], False)
    assert not known_host(own, "") and known_host(own, "voip.example.com, evil.example")
    assert foreign_browser(rebound.get, own, False, known_host(own, ""))
    assert not foreign_browser(rebound.get, own, False, known_host(own, "evil.example"))
    for host in ("127.0.0.1:8080", "[::1]:8080", "localhost:8080", "192.168.1.5"):
        assert known_host(own_origin(host, False), ""), host
    # A script (no browser headers) keeps its trust whatever Host it sends.
    assert not foreign_browser({"host": "evil.example"}.get, own, False, False)


@pytest_twisted.ensureDeferred
async def test_the_owners_logins_do_not_reset_an_attackers_count(tmp_path: Path) -> None:
    """Four guesses from one address, the owner's good login from another, again and again: the account is
    locked after authfailmax guesses all the same (a success clears only its own address's failures)."""
    h = await make_harness(tmp_path)
    answers = []
    for round in range(3):
        for guess in range(4):
            answers.append((await h.call(f"apientry=balance&authkey={KEY}&authid=alice&authpwd=guess{round}{guess}",
                                         "203.0.113.7")).text)
        answers.append((await h.call(f"apientry=balance&authkey={KEY}&authid=alice&authpwd=alicepw", "198.51.100.2")).text)
    assert answers[4] == "OK: 5.00 USD" and answers[5] == "ERROR: wrong authentication"
    assert answers[6] == "ERROR: banned: too many failed authentications"  # the fifth guess locked it
    # The owner's own failures are cleared by the owner's own success, as before.
    (tmp_path / "b").mkdir()
    h2 = await make_harness(tmp_path / "b")
    for round in range(3):
        for guess in range(4):
            await h2.call(f"apientry=balance&authkey={KEY}&authid=alice&authpwd=typo{guess}", "198.51.100.2")
        assert (await h2.call(f"apientry=balance&authkey={KEY}&authid=alice&authpwd=alicepw", "198.51.100.2")).ok
    await h.db.close()
    await h2.db.close()


@pytest_twisted.ensureDeferred
async def test_parallel_guesses_meet_the_lockout(tmp_path: Path, database_option: str) -> None:
    """60 guesses sent at once, the right password among them: at most authfailmax are checked, the right
    one is refused as banned, and the account is banned (on both engines)."""
    from twisted.internet import defer

    from mizud.api.request import decode

    h = await make_harness(tmp_path, "ratelimitip=0", "ratelimituser=0", "ratelimitglobal=0", database=database_option)
    queries = [f"apientry=balance&authkey={KEY}&authid=alice&authpwd=guess{n}" for n in range(60)]
    queries[40] = f"apientry=balance&authkey={KEY}&authid=alice&authpwd=alicepw"
    answers = await defer.gatherResults([defer.ensureDeferred(h.api.dispatch(decode(query=q, source="203.0.113.9")))
                                         for q in queries])
    texts = [a.text for a in answers]
    assert texts[40] == "ERROR: banned: too many failed authentications"
    assert texts.count("ERROR: wrong authentication") <= 5
    assert h.api.bans.is_banned("user", "alice")
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_a_password_reminder_cannot_be_guessed_past_the_lockout(tmp_path: Path) -> None:
    """forgotpasswordanswer counts failures for the account the e-mail names (whatever its case) and, once
    it is locked, checks no more answers."""
    h = await make_harness(tmp_path, "smtpserver=127.0.0.1:9")
    await h.db.run_statement("x", "UPDATE tb_users SET email = 'alice@example.com', forgotquestion = 'pet?', "
                                  "forgotanswer = 'rex' WHERE username = 'alice'")
    for number, email in enumerate(("alice@example.com", "ALICE@example.com", "Alice@Example.com",
                                    "alice@EXAMPLE.com", "aLiCe@example.com")):
        answered = await h.call(f"apientry=forgotpasswordanswer&authkey={KEY}&email={email}&forgotpasswordanswer=x{number}",
                                f"10.9.0.{number}")
        assert answered.text == "ERROR: wrong answer"
    right = await h.call(f"apientry=forgotpasswordanswer&authkey={KEY}&email=alice@example.com&forgotpasswordanswer=rex",
                         "10.9.1.1")
    assert right.text == "ERROR: banned: too many failed authentications"
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_repeated_nonce_logins_of_one_client_work(tmp_path: Path) -> None:
    """A client that logs in with a fresh preauth each time, without authsalt2, is never refused as a replay:
    two preauths in the same second from one address give different nonces."""
    h = await make_harness(tmp_path, "apidefneedlogin=2")
    nonces = set()
    for _ in range(5):
        nonce = (await h.call("apientry=preauth")).text.removeprefix("OK: new nonce is:").removesuffix("EOF")
        nonces.add(nonce[:10])
        digest = "authv3_" + md5(md5("tU29m" + "alice" + "alicepw" + "fixed") + "" + "srvsalt" + nonce)
        answered = await h.call(f"apientry=balance&authkey={KEY}&authid=alice&authmd5={digest}&authsalt1=fixed"
                                f"&nonce={nonce[:10]}")
        assert answered.text == "OK: 5.00 USD"
    assert len(nonces) == 5
    await h.db.close()


def test_the_connection_cap_spares_proxies_and_counts_ipv6_by_64() -> None:
    """trustedproxies carry many clients and are not capped; the addresses of one IPv6 /64 share one budget."""
    from twisted.internet.task import Clock

    from mizud.config import Settings
    from mizud.wire.limits import ConnectionBudget

    budget = ConnectionBudget(Settings(None, ("maxconnectionsperip=2", "trustedproxies=10.0.0.9")), Clock())
    assert all(budget.admit("10.0.0.9") == "" for _ in range(10))
    assert budget.admit("2001:db8::1") == budget.admit("2001:db8::2") == "2001:db8::/64"
    assert budget.admit("2001:db8::3") is None and budget.admit("2001:db8:0:1::1") is not None
    assert budget.admit("::ffff:192.0.2.1") == "192.0.2.1"


@pytest_twisted.ensureDeferred
async def test_setfield_writes_money_columns_as_money(tmp_path: Path) -> None:
    """A money column gets an exact, bounded amount whatever fieldtype says: int 5 is 5.00, not 5 micro-units,
    and 2^62 is refused."""
    h = await make_harness(tmp_path)
    await h.db.run_statement("x", "INSERT INTO tb_tariffs (tariffid, prefix, name, price, connectfee, mininterval, "
                                  "interval, currency) VALUES (1, '36', 'Hungary', 0, 0, 0, 1, 'USD')")
    admin = "127.0.0.1"
    answered = await h.call("apientry=setfield&table=tb_tariffs&fieldname=price&fieldtype=int&fieldvalue=5&rowid=1",
                            admin)
    assert answered.ok, answered.text
    row = await h.db.run_query("x", "SELECT price FROM tb_tariffs WHERE id = 1")
    assert h.db.engine.money(row.rows[0][0]) == 5
    huge = await h.call(f"apientry=setfield&fieldname=creditlimit&fieldvalue={2**62}&rowid=1", admin)
    assert huge.text.startswith("ERROR: fieldvalue must be at most 1000000000000")
    await h.db.close()
