"""SMS: to SIP users (free, stored when offline), to numbers through gateways by HTTP or SIP MESSAGE,
rated per part and paid through a hold that is settled on delivery and released on failure."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest_twisted
from twisted.internet import defer
from twisted.internet import reactor as global_reactor
from twisted.internet.task import deferLater
from twisted.web.resource import Resource
from twisted.web.server import Site

from mizud.sip.responses import response_to
from mizud.sip.message import parse_datagram
from mizud.sip.sms import parts
from sipkit import Phone, Rig, make_rig, settle
from test_api_dispatch import Harness

ALICE = "authkey=apikey123&authid=alice&authpwd=alicepw"
ADMIN = "127.0.0.1"


class Provider(Resource):
    """An HTTP SMS provider: records each request, answers with the configured code."""

    isLeaf = True

    def __init__(self, code: int = 200) -> None:
        super().__init__()
        self.code = code
        self.seen: list[dict[bytes, list[bytes]]] = []

    def render_GET(self, request: Any) -> bytes:
        self.seen.append(request.args)
        request.setResponseCode(self.code)
        return b"accepted" if self.code == 200 else b"no"


async def rig_with_tariff(tmp_path: Path, *sets: str, database: str | None = None) -> Rig:
    """A rig with plan 1 (default): Hungary 36 at 0.05 per SMS part."""
    rig = await make_rig(tmp_path, "defaulttariff=1", *sets, database=database)
    await rig.h.db.run_statement(
        "x", "INSERT INTO tb_tariffs (tariffid, prefix, name, price, connectfee, mininterval, interval, currency, "
             "smsprice) VALUES (1, '36', 'Hungary', ?, 0, 0, 1, 'USD', ?)", (Decimal("0.02"), Decimal("0.05")))
    await rig.h.api.rater.rebuild()
    rig.core.clock = global_reactor  # real network for HTTP providers
    return rig


async def sms_gateway(h: Harness) -> tuple[Provider, Any]:
    """A working HTTP SMS provider on a loopback port, added as the gateway C{gw}; the provider and its port."""
    provider = Provider(200)
    port = global_reactor.listenTCP(0, Site(provider), interface="127.0.0.1")
    url = quote(f"http://127.0.0.1:{port.getHost().port}/send?from={{from}}&to={{to}}&text={{text}}", safe="")
    assert (await h.call(f"apientry=addserver&u_username=gw&u_domain=sms.example&fieldname0=smsurl&fieldval0={url}",
                         ADMIN)).ok
    return provider, port


async def balance(rig: Rig) -> str:
    """alice's balance as the API says it."""
    return (await rig.h.call(f"apientry=balance&{ALICE}")).text


def test_parts() -> None:
    """GSM 7-bit text takes 160 septets per single part, 153 per part of a long one (extension characters
    take two); anything else is UCS-2 with 70 and 67 UTF-16 units (an emoji takes two)."""
    assert (parts("a" * 160, False), parts("a" * 161, False), parts("a" * 306, False)) == (1, 2, 2)
    assert (parts("é" * 160, False), parts("{" * 80, False), parts("{" * 81, False)) == (1, 1, 2)
    assert (parts("á" * 70, False), parts("á" * 71, False), parts("a" * 70, True)) == (1, 2, 1)
    assert (parts("😀" * 35, False), parts("😀" * 36, False), parts("`", False)) == (1, 2, 1)


@pytest_twisted.ensureDeferred
async def test_http_provider_failover_and_billing(tmp_path: Path, database_option: str) -> None:
    """The first gateway's provider fails (500), the second delivers: one part charged, ledger consistent."""
    rig = await rig_with_tariff(tmp_path, database=database_option)
    h = rig.h
    broken, working = Provider(500), Provider(200)
    ports = [global_reactor.listenTCP(0, Site(p), interface="127.0.0.1") for p in (broken, working)]
    for name, port, priority in (("gwbad", ports[0], 1), ("gwgood", ports[1], 2)):
        url = quote(f"http://127.0.0.1:{port.getHost().port}/send?from={{from}}&to={{to}}&text={{text}}", safe="")
        answer = await h.call(f"apientry=addserver&u_username={name}&u_domain=sms.example&u_routingpriority={priority}"
                              f"&fieldname0=smsurl&fieldval0={url}", ADMIN)
        assert answer.ok, answer.text
    try:
        spoofed = await h.call(f"apientry=sms&anum=3670111&bnum=3630&txt=x&{ALICE}")
        assert spoofed.text == "ERROR: anum must be your username or one of your numbers"
        injected = await h.call(f"apientry=sms&anum=x%3E%0D%0AX-Evil:%201&bnum=3630&txt=x&{ALICE}")
        assert injected.text == "ERROR: anum must be 1 to 32 letters, digits or + . _ -"
        assert (await h.call("apientry=cli&anum=3670111&targetuser=alice", ADMIN)).ok  # approved: alice's number
        sent = await h.call(f"apientry=sms&anum=3670111&bnum=%2B36%2030%20123%204567&txt=Hello%20%C3%A1rv%C3%ADz&{ALICE}")
        assert sent.text == "OK: SMS 1 delivered through gwgood (cost 0.05)"
        assert len(broken.seen) == 1 and working.seen[0][b"to"] == [b"36301234567"]
        assert working.seen[0][b"text"] == ["Hello árvíz".encode()] and working.seen[0][b"from"] == [b"3670111"]
        assert await balance(rig) == "OK: 4.95 USD"
        assert (await h.call("apientry=checkcredits", ADMIN)).ok
        row = (await h.db.run_query("x", "SELECT status, route, parts FROM tb_sms")).rows[0]
        assert tuple(row) == ("delivered", "gwgood", 1)
        working.code = 503
        failed = await h.call(f"apientry=sendsmssync&bnum=3630&txt=x&{ALICE}")
        assert failed.text.startswith("ERROR: SMS 2 not delivered: gwbad: HTTP 500; gwgood: HTTP 503")
        assert await balance(rig) == "OK: 4.95 USD"  # the hold was released
        assert (await h.call(f"apientry=sms&bnum=4412345&txt=x&{ALICE}")).text == "ERROR: no tariff for 4412345"
        # A tariff without an SMS price (every row before delta 09) allows no SMS: never free by accident.
        await h.db.run_statement("x", "INSERT INTO tb_tariffs (tariffid, prefix, name, price, connectfee, mininterval, "
                                      "interval, currency) VALUES (1, '44', 'UK', 1, 0, 0, 1, 'USD')")
        await h.api.rater.rebuild()
        assert (await h.call(f"apientry=sms&bnum=4412345&txt=x&{ALICE}")).text == \
            "ERROR: no SMS price for 4412345 in the tariff"
        assert await balance(rig) == "OK: 4.95 USD"
    finally:
        for port in ports:
            await port.stopListening()
        await h.db.close()


@pytest_twisted.ensureDeferred
async def test_sip_gateway_and_queued_sms(tmp_path: Path) -> None:
    """Without an smsurl the gateway gets a SIP MESSAGE; sendsms answers at once and settles later."""
    rig = await rig_with_tariff(tmp_path)
    h = rig.h
    assert (await h.call("apientry=addserver&u_username=gw&u_ip=192.0.2.50:5070", ADMIN)).ok
    mark = len(rig.sent)
    pending = defer.ensureDeferred(h.call(f"apientry=sendsmssync&bnum=3612345&txt=via%20sip&{ALICE}"))
    request = None
    for _ in range(100):
        for addr, data in rig.sent[mark:]:
            if addr == ("192.0.2.50", 5070):
                request = parse_datagram(data)
        if request is not None:
            break
        await deferLater(global_reactor, 0.01, lambda: None)
    assert request is not None and request.method == "MESSAGE"
    assert request.uri == "sip:3612345@192.0.2.50:5070" and request.body == b"via sip"
    rig.core.datagram(response_to(request, 202).serialize(), rig.source("192.0.2.50", 5070))
    assert (await pending).text == "OK: SMS 1 delivered through gw (cost 0.05)"
    queued = await h.call(f"apientry=sendsms&bnum=3612345&txt=later&{ALICE}")
    assert queued.text == "OK: SMS 2 queued (held 0.05)"
    assert await balance(rig) == "OK: 4.90 USD"  # held already
    await settle()
    request = parse_datagram([d for a, d in rig.sent if a == ("192.0.2.50", 5070)][-1])
    rig.core.datagram(response_to(request, 480).serialize(), rig.source("192.0.2.50", 5070))
    for _ in range(100):
        status = (await h.db.run_query("x", "SELECT status FROM tb_sms WHERE id = 2")).rows[0][0]
        if status != "pending":
            break
        await settle()
    assert status == "failed" and await balance(rig) == "OK: 4.95 USD"
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_sms_to_users_and_inbound(tmp_path: Path) -> None:
    """An SMS to a username is a free instant message; smsreceive hands an inbound SMS to the DID's user."""
    rig = await rig_with_tariff(tmp_path)
    h = rig.h
    await h.store.create_user("bob", "bobpw")
    await rig.register(Phone("bob", "bobpw", host="192.0.2.30"), source=rig.source("192.0.2.30"))
    assert (await h.call(f"apientry=sms&bnum=bob&txt=hi%20bob&{ALICE}")).text == "OK: SMS 1 sent to the user"
    assert await balance(rig) == "OK: 5.00 USD"
    await h.db.run_statement("x", "INSERT INTO tb_phonenumbers (number, userid, status, created) VALUES "
                                  "('3615550000', 1, 1, ?)", (h.store.now(),))
    inbound = await h.call("apientry=smsreceive&anum=36209998888&bnum=3615550000&txt=ping", ADMIN)
    assert inbound.text == "OK: stored for alice until online"
    polled = await h.call(f"apientry=presence_set&pstatus=online&{ALICE}")
    assert polled.text.endswith("XOFFMESSAGE:36209998888:pingXOFFMESSAGE:")
    assert (await h.call("apientry=smsreceive&bnum=999&txt=x", ADMIN)).text == "ERROR: no user for 999"
    poor = await h.call("apientry=sms&bnum=3612345&txt=x&authkey=apikey123&authid=root&authpwd=rootpw")
    assert poor.text.startswith("ERROR: no route to 3612345")  # no gateway yet: nothing held
    await h.db.close()


class Stalling(Resource):
    """A provider that promises 100 bytes and sends 2, then goes silent."""

    isLeaf = True

    def render_GET(self, request: Any) -> Any:
        from twisted.web.server import NOT_DONE_YET

        request.setHeader(b"content-length", b"100")
        request.write(b"ok")
        return NOT_DONE_YET


@pytest_twisted.ensureDeferred
async def test_a_stalling_provider_releases_the_hold(tmp_path: Path, monkeypatch: Any) -> None:
    """A provider that never finishes its answer times out as a whole: the SMS fails and the money returns."""
    import mizud.sip.sms

    monkeypatch.setattr(mizud.sip.sms, "HTTP_TIMEOUT", 0.5)
    rig = await rig_with_tariff(tmp_path)
    h = rig.h
    port = global_reactor.listenTCP(0, Site(Stalling()), interface="127.0.0.1")
    url = quote(f"http://127.0.0.1:{port.getHost().port}/s?to={{to}}", safe="")
    assert (await h.call(f"apientry=addserver&u_username=slow&u_domain=s.example&fieldname0=smsurl&fieldval0={url}",
                         ADMIN)).ok
    try:
        answer = await h.call(f"apientry=sms&bnum=3612345&txt=x&{ALICE}")
        assert answer.text.startswith("ERROR: SMS 1 not delivered: slow:")
        assert await balance(rig) == "OK: 5.00 USD"
        holds = (await h.db.run_query("x", "SELECT status FROM tb_holds")).rows
        assert [r[0] for r in holds] == [2]  # released
    finally:
        await port.stopListening()
        await h.db.close()


@pytest_twisted.ensureDeferred
async def test_gateway_digest_challenge_is_answered(tmp_path: Path) -> None:
    """A gateway answering 407 gets the MESSAGE again with Proxy-Authorization for its account."""
    from mizud.sip.digest import md5, parse_credentials

    rig = await rig_with_tariff(tmp_path)
    h = rig.h
    assert (await h.call("apientry=addserver&u_username=gwauth&u_password=gwsecret&u_ip=192.0.2.60", ADMIN)).ok
    pending = defer.ensureDeferred(h.call(f"apientry=sms&bnum=3612345&txt=auth&{ALICE}"))

    async def next_request(count: int) -> Any:
        for _ in range(200):
            found = [parse_datagram(d) for a, d in rig.sent if a == ("192.0.2.60", 5060)]
            if len(found) >= count:
                return found[count - 1]
            await deferLater(global_reactor, 0.01, lambda: None)
        raise AssertionError("no request")

    first = await next_request(1)
    challenge = response_to(first, 407)
    challenge.add("Proxy-Authenticate", 'Digest realm="carrier", nonce="n0nce", qop="auth", algorithm=MD5')
    rig.core.datagram(challenge.serialize(), rig.source("192.0.2.60", 5060))
    second = await next_request(2)
    credentials = parse_credentials(second.get("proxy-authorization"))
    assert credentials is not None and credentials["username"] == "gwauth"
    assert second.call_id == first.call_id and second.cseq()[0] == first.cseq()[0] + 1
    ha1, ha2 = md5("gwauth:carrier:gwsecret"), md5(f"MESSAGE:{second.uri}")
    expected = md5(f"{ha1}:n0nce:{credentials['nc']}:{credentials['cnonce']}:auth:{ha2}")
    assert credentials["response"] == expected and credentials["uri"] == second.uri
    rig.core.datagram(response_to(second, 200).serialize(), rig.source("192.0.2.60", 5060))
    assert (await pending).text == "OK: SMS 1 delivered through gwauth (cost 0.05)"
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_numbers_are_proven_by_a_code_sent_to_them(tmp_path: Path, database_option: str) -> None:
    """cli sends a code to the number (paid as an SMS); only the code makes it the user's.  Someone else who
    claims the same number first cannot take it or lock the owner out; an unproven number is no sender id."""
    rig = await rig_with_tariff(tmp_path, database=database_option)
    h = rig.h
    provider, port = await sms_gateway(h)
    await h.store.create_user("mallory", "mallorypw", credit="5")
    mallory = "authkey=apikey123&authid=mallory&authpwd=mallorypw"
    try:
        # Mallory claims alice's number first: a code goes to the number (alice's phone), not to mallory.
        assert (await h.call(f"apientry=cli&anum=36701234567&{mallory}", "9.9.9.1")).text.startswith(
            "OK: a code was sent to 36701234567 by SMS")
        sent = provider.seen[-1][b"text"][0].decode()
        mallory_code = sent.rsplit(" ", 1)[1]
        assert provider.seen[-1][b"to"] == [b"36701234567"] and len(mallory_code) == 6
        again = await h.call(f"apientry=cli&anum=36701234567&{mallory}", "9.9.9.1")
        assert again.text.startswith("ERROR: a code was sent to 36701234567 less than 60 s ago")
        for guess in ("000000", "111111", "222222", "333333", "444444"):
            if guess != mallory_code:
                assert (await h.call(f"apientry=cli&anum=36701234567&code={guess}&{mallory}", "9.9.9.1")).text == (
                    "ERROR: wrong code")
        assert (await h.call(f"apientry=cli&anum=36701234567&code={mallory_code}&{mallory}", "9.9.9.1")).text == (
            "ERROR: too many wrong codes for 36701234567: ask for a new one")
        # Mallory cannot use the number meanwhile.
        assert (await h.call(f"apientry=sms&anum=36701234567&bnum=3630111&txt=x&{mallory}", "9.9.9.1")).text == (
            "ERROR: anum must be your username or one of your numbers")
        # Alice claims it and proves it with the code her phone received.
        assert (await h.call(f"apientry=cli&anum=36701234567&{ALICE}")).ok
        code = provider.seen[-1][b"text"][0].decode().rsplit(" ", 1)[1]
        assert (await h.call(f"apientry=cli&anum=36701234567&code={code}&{ALICE}")).text == "OK: 36701234567 added"
        assert await balance(rig) == "OK: 4.95 USD"  # the code was one SMS, paid by alice
        assert (await h.call(f"apientry=sms&anum=36701234567&bnum=3630111&txt=x&{ALICE}")).ok
        taken = await h.call(f"apientry=cli&anum=36701234567&{mallory}", "9.9.9.1")
        assert taken.text == "ERROR: 36701234567 belongs to another user"
        row = (await h.db.run_query("x", "SELECT userid, proof FROM tb_usernumbers WHERE verified IS NOT NULL")).rows
        alice = await h.store.find_user("alice")
        assert alice is not None and [tuple(r) for r in row] == [(alice.id, "sms")]
        assert (await h.call("apientry=checkcredits", ADMIN)).ok
    finally:
        await port.stopListening()
        await h.db.close()


@pytest_twisted.ensureDeferred
async def test_number_codes_cannot_be_guessed_in_parallel(tmp_path: Path) -> None:
    """40 guesses sent at once use up the code's 5 attempts (one statement each): 5 'wrong code' at most,
    which lock the account too; and at most 5 codes a day are sent for one claim."""
    from twisted.internet import defer

    from mizud.api.request import decode
    from mizud.store.numbers import MAX_CODES_A_DAY, NumberClaims

    rig = await rig_with_tariff(tmp_path)
    h = rig.h
    alice = await h.store.find_user("alice")
    assert alice is not None
    claims = NumberClaims(h.db, h.store.now, "cli")
    assert await claims.open(alice.id, "36709999999", "123456", 900)
    guesses = [f"apientry=cli&anum=36709999999&code={n:06d}&{ALICE}" for n in range(200000, 200040)]
    answers = await defer.gatherResults([defer.ensureDeferred(h.api.dispatch(decode(query=q, source=f"10.8.0.{i}")))
                                         for i, q in enumerate(guesses)])
    assert sum(a.text == "ERROR: wrong code" for a in answers) == 5
    claim = await claims.claim(alice.id, "36709999999")
    assert claim is not None and claim.attempts == 5 and not claim.verified
    # The wrong codes also counted as failed logins of alice's account: five at once lock it.
    assert (await h.call(f"apientry=cli&anum=36709999999&code=123456&{ALICE}")).text == (
        "ERROR: banned: too many failed authentications")
    for _ in range(MAX_CODES_A_DAY - 1):
        assert await claims.open(alice.id, "36709999999", "654321", 900)
    assert not await claims.open(alice.id, "36709999999", "111111", 900)
    rig.h.clock.advance(86401)
    assert await claims.open(alice.id, "36709999999", "222222", 900)
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_sms_commands_from_a_proven_number(tmp_path: Path) -> None:
    """An inbound SMS from a user's proven number whose text is a command (balance, rating, ...) runs it as that
    user and answers by SMS; from any other number it is not run, nor is cli (a forged sender could prove a
    number of its own), nor anything while smscommands is off (the default)."""
    rig = await rig_with_tariff(tmp_path, "smscommands=true")
    h = rig.h
    provider, port = await sms_gateway(h)
    try:
        assert (await h.call("apientry=cli&anum=36701112222&targetuser=alice", ADMIN)).ok
        cli = await h.call("apientry=smsreceive&anum=36701112222&bnum=1234&txt=cli%2036709998888", ADMIN)
        assert cli.text == "ERROR: no user for 1234", cli.text
        settings = h.api.settings
        settings.sets = (*settings.sets, "smscommands=false")
        settings.reload()
        off = await h.call("apientry=smsreceive&anum=36701112222&bnum=1234&txt=balance", ADMIN)
        assert off.text == "ERROR: no user for 1234", off.text
        settings.sets = settings.sets[:-1]
        settings.reload()
        ran = await h.call("apientry=smsreceive&anum=%2B36701112222&bnum=1234&txt=balance", ADMIN)
        assert ran.text == "OK: command balance run for alice, answered by SMS: OK: 5.00 USD", ran.text
        for _ in range(100):
            if provider.seen:
                break
            await deferLater(global_reactor, 0.02, lambda: None)
        assert provider.seen[-1][b"to"] == [b"36701112222"] and provider.seen[-1][b"text"] == [b"OK: 5.00 USD"]
        rated = await h.call("apientry=smsreceive&anum=36701112222&bnum=1234&txt=rating%2036301234", ADMIN)
        assert "run for alice" in rated.text and "Hungary" in rated.text, rated.text
        stranger = await h.call("apientry=smsreceive&anum=36709990000&bnum=1234&txt=balance", ADMIN)
        assert stranger.text == "ERROR: no user for 1234"
    finally:
        await port.stopListening()
        await h.db.close()
