"""The dispatcher: authentication exactly per spec, access rules, limits, lockout.

Hashes are computed here independently, from the spec's formulas, with
hashlib; the server code is not used to compute what it must accept.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, AsyncIterator

import pytest_twisted
from twisted.internet import reactor as global_reactor
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from mizud.api.answer import ApiAnswer
from mizud.api.invocation import Invocation
from mizud.api.registry import Category
from mizud.api.dispatcher import Dispatcher
from mizud.api.functions import build_registry
from mizud.api.request import decode
from mizud.billing.rating import Rater
from mizud.config import Settings
from mizud.store.billing import USER_ADMIN, BillingStore
from mizud.store.database import Database, open_database
from mizud.store.schema import migrate

PUBLIC_IP = "1.2.3.4"
OTHER_IP = "5.6.7.8"
KEY = "apikey123"
SALT = "srvsalt"


def md5(text: str) -> str:
    """Hex MD5, independently of the server's helper."""
    return hashlib.md5(text.encode()).hexdigest()


class Harness:
    """An Dispatcher on a real SQLite store, a fake clock, and requests from any address."""

    def __init__(self, api: Dispatcher, store: BillingStore, clock: Clock, db: Database) -> None:
        self.api = api
        self.store = store
        self.clock = clock
        self.db = db

    async def call(self, query: str, source: str = PUBLIC_IP) -> ApiAnswer:
        """Dispatch a query string from C{source}."""
        return await self.api.dispatch(decode(query=query, source=source))

    def rebuild(self, **options: Any) -> Dispatcher:
        """A new dispatcher on the same store, clock, rating engine and tb_api rules, built with C{options}
        (settings=, or what the composition root gives it: sip=, reactor=, logbuffer=, operations=, ...): the
        handlers are bound to their dependencies when the dispatcher is built.  What the old one kept in
        memory (lockout counts, the bans' cache, the limiters, stand-ins registered on it) is not carried."""
        old = self.api
        settings = options.pop("settings", old.settings)
        kept: dict[str, Any] = dict(node=old.node, sip=old.sip, logbuffer=old.logbuffer, metrics=old.metrics,
                                    notifications=old.notifications, operations=old.operations, reactor=old.reactor)
        self.api = Dispatcher(settings, build_registry(), self.store, self.clock, old.rater, **{**kept, **options})
        self.api.overrides = old.overrides
        return self.api


async def make_harness(tmp_path: Path, *sets: str, database: str | None = None) -> Harness:
    """A harness with users alice (enduser) and root (admin), on SQLite unless a database is given."""
    path = database or str(tmp_path / "api.sqlite")
    migrate(path, "2026-01-01")
    db = open_database(path, global_reactor)
    await db.start()
    clock = Clock()
    clock.advance(1_800_000_000)
    store = BillingStore(db, clock)
    await store.create_user("alice", "alicepw", credit="5", pin="777111")
    await store.create_user("root", "rootpw", type=USER_ADMIN)
    settings = Settings(None, (f"apiv2key={KEY}", f"apiv2md5salt={SALT}", *sets))
    api = Dispatcher(settings, build_registry(), store, clock, Rater(path, global_reactor))
    await api.reload_access()
    return Harness(api, store, clock, db)


@pytest_twisted.async_yield_fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    """The default harness."""
    harness = await make_harness(tmp_path)
    yield harness
    await harness.db.close()


def line(answer: ApiAnswer) -> str:
    """The answer's text line."""
    return answer.text


@pytest_twisted.ensureDeferred
async def test_apitest1_needs_nothing(h: Harness) -> None:
    """apitest1 answers anyone, without key or credentials."""
    assert line(await h.call("apientry=apitest1")) == "OK: API test passed"


@pytest_twisted.ensureDeferred
async def test_key_required_from_untrusted(h: Harness) -> None:
    """A missing or wrong authkey from an untrusted address is wrong authentication."""
    for query in ("apientry=apitest&authid=alice&authpwd=alicepw", f"apientry=apitest&authkey=x{KEY}&authid=alice&authpwd=alicepw"):
        answer = await h.call(query)
        assert (answer.text, answer.status) == ("ERROR: wrong authentication", 403)
    answer = await h.call(f"apientry=apitest&authkey={KEY}&authid=alice&authpwd=alicepw")
    assert answer.text == "OK: API test passed (alice, password)"


@pytest_twisted.ensureDeferred
async def test_wrong_password_and_unknown_user_look_the_same(h: Harness) -> None:
    """An unknown user and a wrong password get the same answer."""
    wrong = await h.call(f"apientry=apitest&authkey={KEY}&authid=alice&authpwd=nope")
    unknown = await h.call(f"apientry=apitest&authkey={KEY}&authid=nobody&authpwd=nope", OTHER_IP)
    assert wrong == unknown
    assert wrong.text == "ERROR: wrong authentication"


@pytest_twisted.ensureDeferred
async def test_authmd5_simplified_form(h: Harness) -> None:
    """MD5(ck5Gp + authid + authpwd + serversalt + authsalt1) authenticates, in any case."""
    digest = md5("ck5Gp" + "alice" + "alicepw" + SALT + "4242")
    answer = await h.call(f"apientry=apitest&authkey={KEY}&authid=alice&authmd5={digest.upper()}&authsalt=4242")
    assert answer.text == "OK: API test passed (alice, authmd5)"
    bad = md5("ck5Gp" + "alice" + "alicepw" + SALT + "4243")
    assert (await h.call(f"apientry=apitest&authkey={KEY}&authid=alice&authmd5={bad}&authsalt=4242")).ok is False


@pytest_twisted.ensureDeferred
async def test_authmd5_full_form_without_nonce(h: Harness) -> None:
    """authv3_ + MD5(MD5(tU29m + authid + authpwd + salt1) + salt2 + serversalt) authenticates."""
    digest = "authv3_" + md5(md5("tU29m" + "alice" + "alicepw" + "s1") + "s2" + SALT)
    answer = await h.call(f"apientry=apitest&authkey={KEY}&authid=alice&authmd5={digest}&authsalt1=s1&authsalt2=s2")
    assert answer.ok, answer.text
    wrong_salt = await h.call(f"apientry=apitest&authkey={KEY}&authid=alice&authmd5={digest}&authsalt1=s1&authsalt2=s3")
    assert wrong_salt.text == "ERROR: wrong authentication"


@pytest_twisted.ensureDeferred
async def test_admin_functions(h: Harness) -> None:
    """Admin functions refuse endusers, accept admins, and trust loopback as admin by default."""
    denied = await h.call(f"apientry=version&authkey={KEY}&authid=alice&authpwd=alicepw")
    assert (denied.text, denied.status) == ("ERROR: access denied", 403)
    assert (await h.call(f"apientry=version&authkey={KEY}&authid=root&authpwd=rootpw")).text == "OK: mizud 0.1.0"
    assert (await h.call("apientry=version", "127.0.0.1")).ok
    assert (await h.call("apientry=version", "192.168.1.20")).ok  # LAN is trusted by default
    assert not (await h.call("apientry=version")).ok


@pytest_twisted.ensureDeferred
async def test_trust_options(tmp_path: Path) -> None:
    """apideftrustadmin=3 needs admin credentials even from loopback; trustlanip=false distrusts the LAN."""
    h = await make_harness(tmp_path, "apideftrustadmin=3", "trustlanip=false")
    assert (await h.call("apientry=version", "127.0.0.1")).text == "ERROR: access denied"
    assert (await h.call("apientry=version&authid=root&authpwd=rootpw", "127.0.0.1")).ok
    assert (await h.call("apientry=version&authid=root&authpwd=rootpw", "10.1.2.3")).text == "ERROR: wrong authentication"
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_trusted_only_and_req_ip(tmp_path: Path) -> None:
    """apitrustediponly refuses the internet; trustediplist admits one address."""
    h = await make_harness(tmp_path, "apitrustediponly=1", f"trustediplist={OTHER_IP}")
    assert (await h.call("apientry=apitest1")).text == "ERROR: access only from trusted addresses"
    assert (await h.call("apientry=apitest1", OTHER_IP)).ok
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_pin_authentication(h: Harness) -> None:
    """authid may be a PIN, and authpwd may carry the PIN."""
    assert (await h.call(f"apientry=login&authkey={KEY}&authid=777111&authpwd=alicepw")).ok
    assert (await h.call(f"apientry=login&authkey={KEY}&authid=alice&authpwd=777111")).text.startswith("OK: ")


@pytest_twisted.ensureDeferred
async def test_nonce_login_flow(tmp_path: Path) -> None:
    """With apidefneedlogin=2: no nonce gets a new one; the right hash passes once; fresh salts keep working."""
    h = await make_harness(tmp_path, "apidefneedlogin=2")
    first = await h.call(f"apientry=apitest&authkey={KEY}&authid=alice&authpwd=alicepw")
    assert first.text.startswith("ERROR: new nonce is:") and first.text.endswith("EOF")
    pre = await h.call("apientry=preauth")
    nonce = pre.text.removeprefix("OK: new nonce is:").removesuffix("EOF")
    assert len(nonce) == 32

    def query(salt2: str) -> str:
        digest = "authv3_" + md5(md5("tU29m" + "alice" + "alicepw" + "a1") + salt2 + SALT + nonce)
        return f"apientry=apitest&authkey={KEY}&authid=alice&authmd5={digest}&authsalt1=a1&authsalt2={salt2}&nonce={nonce[:10]}"

    assert (await h.call(query("b1"))).text == "OK: API test passed (alice, authmd5 with nonce)"
    replay = await h.call(query("b1"))
    assert replay.text.startswith("ERROR: new nonce is:")  # refused, and no password was guessed: not counted
    assert (await h.call(query("b2"))).ok
    unknown = await h.call(query("b3").replace(f"nonce={nonce[:10]}", "nonce=0123456789"))
    assert unknown.text.startswith("ERROR: new nonce is:")
    h.clock.advance(31 * 60)  # apinoncettl 30m
    assert (await h.call(query("b4"))).text.startswith("ERROR: new nonce is:")
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_nonce_bound_to_address(tmp_path: Path) -> None:
    """With apidefneedlogin=3 a nonce from another address is refused with a new nonce."""
    h = await make_harness(tmp_path, "apidefneedlogin=3")
    nonce = (await h.call("apientry=preauth", OTHER_IP)).text.removeprefix("OK: new nonce is:").removesuffix("EOF")
    digest = "authv3_" + md5(md5("tU29m" + "alice" + "alicepw" + "a") + "b" + SALT + nonce)
    query = f"apientry=apitest&authkey={KEY}&authid=alice&authmd5={digest}&authsalt1=a&authsalt2=b&nonce={nonce[:12]}"
    assert (await h.call(query)).text.startswith("ERROR: new nonce is:")
    assert (await h.call(query, OTHER_IP)).ok
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_login_needed_only_from_untrusted(tmp_path: Path) -> None:
    """apidefneedlogin=1 asks untrusted clients for a nonce and lets trusted ones through."""
    h = await make_harness(tmp_path, "apidefneedlogin=1")
    assert (await h.call(f"apientry=apitest&authkey={KEY}&authid=alice&authpwd=alicepw")).text.startswith("ERROR: new nonce")
    assert (await h.call("apientry=apitest&authid=alice&authpwd=alicepw", "127.0.0.1")).ok
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_tb_api_overrides_apply_on_apireload(h: Harness) -> None:
    """A tb_api row changes a function's access only after apireload; enabled=0 disables it."""
    await h.db.run_statement("x", "INSERT INTO tb_api (fname, req_key, req_user) VALUES ('version', 0, 14)")
    assert (await h.call(f"apientry=version&authkey={KEY}")).text == "ERROR: access denied"
    assert (await h.call("apientry=apireload", "127.0.0.1")).text == "OK: 1 tb_api rules loaded"
    assert (await h.call("apientry=version")).text == "OK: mizud 0.1.0"
    await h.db.run_statement("x", "UPDATE tb_api SET enabled = 0 WHERE fname = 'version'")
    await h.api.reload_access()
    answer = await h.call("apientry=version")
    assert (answer.text, answer.status) == ("ERROR: function disabled: version", 406)


@pytest_twisted.ensureDeferred
async def test_unknown_and_unsupported_functions(h: Harness) -> None:
    """Unknown names and unsupported functions are 406 errors, never fake successes."""
    unknown = await h.call("apientry=nosuch")
    assert (unknown.text, unknown.status) == ("ERROR: unknown function: nosuch", 406)
    gk = await h.call("apientry=gk", "127.0.0.1")
    assert gk.text == "ERROR: not supported: H.323 is not part of mizud"
    assert (await h.call("now=1")).text == "ERROR: missing apientry (the function name)"


@pytest_twisted.ensureDeferred
async def test_aliases_reach_the_same_function(h: Harness) -> None:
    """Old names (cb, adduser, newuser) are aliases of the documented function."""
    for alias, name in (("cb", "callback"), ("adduser", "newuseri"), ("newuser", "newuseri")):
        assert h.api.registry.get(alias) is h.api.registry.get(name)


@pytest_twisted.ensureDeferred
async def test_rate_limit_per_address(tmp_path: Path) -> None:
    """ratelimitip=1 allows a burst of 2, then one per second (leaky bucket on the clock)."""
    h = await make_harness(tmp_path, "ratelimitip=1")
    answers = [await h.call("apientry=apitest1") for _ in range(3)]
    assert [a.ok for a in answers] == [True, True, False]
    assert (answers[2].text, answers[2].status) == ("ERROR: rate limited", 429)
    assert (await h.call("apientry=apitest1", OTHER_IP)).ok
    h.clock.advance(0.999)
    assert not (await h.call("apientry=apitest1")).ok
    h.clock.advance(0.002)
    assert (await h.call("apientry=apitest1")).ok
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_lockout_after_failures(h: Harness) -> None:
    """5 failures in 10 minutes lock the account (not the address) for 10 minutes; delbanned lifts a ban."""
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        for _ in range(5):
            await h.call(f"apientry=apitest&authkey={KEY}&authid=alice&authpwd=bad")
    finally:
        globalLogPublisher.removeObserver(events.append)
    lines = [e["log_format"].format(**e) for e in events if "authentication failure" in e.get("log_format", "")]
    assert lines[0] == f"authentication failure from {PUBLIC_IP} user=alice function=apitest reason=wrong password"
    good = f"apientry=apitest&authkey={KEY}&authid=alice&authpwd=alicepw"
    assert (await h.call(good)).text == "ERROR: banned: too many failed authentications"
    assert (await h.call(good, OTHER_IP)).text == "ERROR: banned: too many failed authentications"
    # The address itself is not banned: root, behind the same address, still gets in.
    assert (await h.call(f"apientry=apitest&authkey={KEY}&authid=root&authpwd=rootpw")).ok
    listed = await h.call("apientry=bannedlist", "127.0.0.1")
    assert sorted((r["kind"], r["value"]) for r in listed.records or []) == [("user", "alice")]
    h.clock.advance(601)
    await h.api.bans.refresh()
    assert (await h.call(good)).ok
    # Failures naming three different accounts ban the address.
    for name in ("nobody", "nobody2", "nobody3", "nobody", "nobody2"):
        await h.call(f"apientry=apitest&authkey={KEY}&authid={name}&authpwd=bad")
    assert (await h.call(good)).text == "ERROR: banned: too many failed authentications"
    assert (await h.call(good, OTHER_IP)).ok
    assert (await h.call(f"apientry=delbanned&ip={PUBLIC_IP}", "127.0.0.1")).text == "OK: 1 bans lifted"
    assert (await h.call(good)).ok


@pytest_twisted.ensureDeferred
async def test_disabled_user_refused(h: Harness) -> None:
    """Disabled and temporarily disabled users cannot authenticate."""
    for column in ("enabled = 0", "temporarydisabled = 1"):
        await h.db.run_statement("x", f"UPDATE tb_users SET enabled = 1, temporarydisabled = 0, {column} WHERE username = 'alice'")
        answer = await h.call(f"apientry=apitest&authkey={KEY}&authid=alice&authpwd=alicepw")
        assert answer.text == "ERROR: wrong authentication"


@pytest_twisted.ensureDeferred
async def test_targetuser_for_admins_only(h: Harness) -> None:
    """An admin acts as another user with targetuser; an enduser cannot."""
    alice = await h.store.find_user("alice")
    assert alice is not None
    answer = await h.call(f"apientry=login&authkey={KEY}&authid=root&authpwd=rootpw&targetuser=alice")
    assert answer.text == f"OK: {alice.id}"
    assert not (await h.call(f"apientry=login&authkey={KEY}&authid=alice&authpwd=alicepw&targetuser=root")).ok


@pytest_twisted.ensureDeferred
async def test_positional_parameters(h: Harness) -> None:
    """param1..N map onto a function's documented parameters."""
    answer = await h.call("apientry=help&param1=cb")
    assert answer.text == "OK: callback: calls num back, then connects it to bnum or the callback IVR/access number"


@pytest_twisted.ensureDeferred
async def test_help_lists_every_function(h: Harness) -> None:
    """help lists every registered function with its status."""
    answer = await h.call("apientry=help")
    names = {r["name"] for r in answer.records or []}
    assert {"balance", "p2p", "gk", "apitest", "preauth"} <= names
    assert len(names) == len(h.api.registry)


@pytest_twisted.ensureDeferred
async def test_reload_applies_live_options(tmp_path: Path) -> None:
    """reload re-reads the config file; a new apiv2key takes effect at once."""
    ini = tmp_path / "m.ini"
    ini.write_text("[global]\napiv2key = one\n")
    h = await make_harness(tmp_path)
    h.rebuild(settings=Settings(str(ini)))
    assert (await h.call("apientry=apitest&authkey=one&authid=alice&authpwd=alicepw")).ok
    ini.write_text("[global]\napiv2key = two\nmainaport = 81\n")
    answer = await h.call("apientry=reload", "127.0.0.1")
    assert answer.text == "OK: reloaded; changed: apiv2key; need a restart: mainaport"
    assert not (await h.call("apientry=apitest&authkey=one&authid=alice&authpwd=alicepw", OTHER_IP)).ok
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_balance(h: Harness) -> None:
    """balance answers the caller's credit; made public in tb_api it needs only authid."""
    digest = md5("ck5Gp" + "alice" + "alicepw" + SALT + "9")
    answer = await h.call(f"apientry=balance&authkey={KEY}&authid=alice&authmd5={digest}&authsalt=9")
    assert answer.text == "OK: 5.00 USD"
    assert answer.records is None
    assert not (await h.call(f"apientry=balance&authkey={KEY}&authid=alice")).ok
    await h.db.run_statement("x", "INSERT INTO tb_api (fname, req_key, req_user, req_user_mode) VALUES ('balance', 0, 14, 4)")
    await h.api.reload_access()
    assert (await h.call("apientry=balance&authid=alice")).text == "OK: 5.00 USD"


@pytest_twisted.ensureDeferred
async def test_register_and_credit_conditions(h: Harness) -> None:
    """req_user_register needs a current registration; req_user_credit a minimum credit."""
    await h.db.run_statement("x", "INSERT INTO tb_api (fname, req_user_register, req_user_credit) VALUES ('balance', 1, 0)")
    await h.api.reload_access()
    query = f"apientry=balance&authkey={KEY}&authid=alice&authpwd=alicepw"
    assert (await h.call(query)).text == "ERROR: the user is not registered"
    alice = await h.store.find_user("alice")
    assert alice is not None
    await h.db.run_statement(
        "x", "INSERT INTO tb_registrations (userid, username, contact, address, expires, created) VALUES (?, ?, ?, ?, ?, ?)",
        (alice.id, "alice", "sip:alice@x", "9.8.7.6:5060", h.store.now() + __import__("datetime").timedelta(minutes=5),
         h.store.now()),
    )
    assert (await h.call(query)).ok
    await h.db.run_statement("x", "UPDATE tb_api SET req_user_register = 2")
    await h.api.reload_access()
    assert (await h.call(query)).text == "ERROR: the user is not registered from this address"
    assert (await h.call(query, "9.8.7.6")).ok
    await h.db.run_statement("x", "UPDATE tb_api SET req_user_register = 1")
    await h.db.run_statement("x", "UPDATE tb_api SET req_user_register = 0, req_user_credit = ?", (__import__("decimal").Decimal("6"),))
    await h.api.reload_access()
    assert (await h.call(query)).text == "ERROR: not enough credit"


@pytest_twisted.ensureDeferred
async def test_per_function_limit(h: Harness) -> None:
    """A function's own limit (preauth: 5/s, burst 10) applies per address, on top of the general ones."""
    answers = [await h.call("apientry=preauth") for _ in range(11)]
    assert [a.ok for a in answers].count(True) == 10
    assert answers[-1].text == "ERROR: rate limited"
    assert (await h.call("apientry=preauth", OTHER_IP)).ok
    assert (await h.call("apientry=apitest1")).ok


@pytest_twisted.ensureDeferred
async def test_authid_may_be_a_did(h: Harness) -> None:
    """authid may name a user by an assigned phone number (DID)."""
    alice = await h.store.find_user("alice")
    assert alice is not None
    await h.db.run_statement(
        "x", "INSERT INTO tb_phonenumbers (number, userid, status, created) VALUES ('3612345678', ?, 2, 'x')", (alice.id,)
    )
    assert (await h.call(f"apientry=login&authkey={KEY}&authid=3612345678&authpwd=alicepw")).text == f"OK: {alice.id}"


@pytest_twisted.ensureDeferred
async def test_status_of_each_error_kind(h: Harness) -> None:
    """Each kind of failure carries the status strict mode puts on the wire."""
    from mizud.store.money import BadPin

    @h.api.registry.function("charge", Category.USER, "stand-in", ("pin",))
    async def charge(invocation: Invocation) -> ApiAnswer:
        raise BadPin("invalid or used PIN")

    cases = {
        "apientry=delbanned": (421, "ERROR: missing parameter: ip"),
        "apientry=login&targetuser=ghost": (404, "ERROR: no such user: ghost"),
        "apientry=charge&pin=1": (420, "ERROR: invalid or used PIN"),
        "apientry=nosuch": (406, "ERROR: unknown function: nosuch"),
    }
    for query, (status, text) in cases.items():
        answer = await h.call(query, "127.0.0.1")
        assert (answer.status, answer.text) == (status, text)
    await h.db.run_statement("x", "INSERT INTO tb_api (fname, customsql) VALUES ('broken', '*UPDATE nosuchtable SET a = 1')")
    await h.api.reload_access()
    broken = await h.call("apientry=broken", "127.0.0.1")
    assert broken.status == 412 and broken.text.startswith("ERROR: custom statement failed: ")


@pytest_twisted.ensureDeferred
async def test_internal_error_is_499_without_traceback(h: Harness) -> None:
    """A handler that breaks answers ERROR: internal error (499); the process goes on."""
    events: list[dict[str, Any]] = []

    @h.api.registry.function("info", Category.ADMIN, "stand-in that breaks")
    async def info(invocation: Invocation) -> ApiAnswer:
        raise RuntimeError("secret detail")

    globalLogPublisher.addObserver(events.append)
    try:
        answer = await h.call("apientry=info", "127.0.0.1")
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert (answer.text, answer.status) == ("ERROR: internal error", 499)
    assert any(e.get("log_failure") is not None for e in events)
    assert (await h.call("apientry=version", "127.0.0.1")).ok


@pytest_twisted.ensureDeferred
async def test_banned_user_learns_nothing(h: Harness) -> None:
    """Once a name is banned, right and wrong passwords get the same answer."""
    for i in range(5):
        await h.call(f"apientry=apitest&authkey={KEY}&authid=alice&authpwd=bad{i}", f"9.9.9.{i}")
    right = await h.call(f"apientry=apitest&authkey={KEY}&authid=alice&authpwd=alicepw", OTHER_IP)
    wrong = await h.call(f"apientry=apitest&authkey={KEY}&authid=alice&authpwd=bad", OTHER_IP)
    assert right == wrong
    assert right.text == "ERROR: banned: too many failed authentications"


@pytest_twisted.ensureDeferred
async def test_every_function_is_bound_to_an_area_holding_only_its_dependencies(tmp_path: Path) -> None:
    """A built dispatcher calls every implemented function through a method bound to its area's object;
    no area object holds the dispatcher (the handlers get what their area's constructor names, never a
    service locator); a declared method without an area object is refused when the registry is bound."""
    import pytest

    h = await make_harness(tmp_path)
    areas = set()
    for function in h.api.registry:
        if not function.implemented:
            continue
        handler = function.handler
        assert handler is not None, function.name
        area = getattr(handler, "__self__")
        assert type(area).__module__ == getattr(function.method, "__module__"), function.name
        areas.add(id(area))
        assert not any(isinstance(value, Dispatcher) for value in vars(area).values()), function.name
    assert len(areas) == 15
    with pytest.raises(ValueError, match="no area object of mizud.api.functions"):
        build_registry().bound([])
    await h.db.close()
