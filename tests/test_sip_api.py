"""The API functions that read and change SIP state, and API requests inside SIP."""

from __future__ import annotations

from pathlib import Path

import pytest_twisted

from mizud.sip.responses import response_to
from mizud.sip.message import SipMessage, parse_datagram
from sipkit import Phone, Rig, make_rig, settle

ADMIN = "127.0.0.1"
USER = "authkey=apikey123&authid=alice&authpwd=alicepw"


def outbound(rig: Rig, since: int, method: str = "MESSAGE") -> list[tuple[tuple[str, int], SipMessage]]:
    """Requests mizud sent since index C{since}."""
    found = []
    for addr, data in rig.sent[since:]:
        message = parse_datagram(data)
        if message.method == method:
            found.append((addr, message))
    return found


async def answer(rig: Rig, request: SipMessage, status: int, host: str = "192.0.2.10", port: int = 5062) -> None:
    """Send a response to one of mizud's requests, from the phone."""
    response = response_to(request, status)
    rig.core.datagram(response.serialize(), rig.source(host, port))
    await settle()


@pytest_twisted.ensureDeferred
async def test_status_verifyuser_reguser_and_friends(tmp_path: Path, database_option: str) -> None:
    """status/verifyuser follow the registration; reguser, regstat, endpoints, epreg, fastregusers list it."""
    rig = await make_rig(tmp_path, database=database_option)
    h = rig.h
    assert (await h.call(f"apientry=status&{USER}")).text == "OK: 1"
    assert (await h.call(f"apientry=verifyuser&userusername=nobody&{USER}")).text == "OK: 0"
    assert (await rig.register(Phone("alice", "alicepw"))).status == 200
    assert (await h.call(f"apientry=status&{USER}")).text == "OK: 2"
    assert (await h.call(f"apientry=verifyuser&param1=alice&{USER}")).text == "OK: 2"
    assert (await h.call("apientry=reguser", ADMIN)).text == "OK: 1 registered users: alice"
    listed = await h.call("apientry=reguser&usr=alice", ADMIN)
    assert listed.records and listed.records[0]["contact"] == "sip:alice@192.0.2.10:5062"
    assert listed.records[0]["transport"] == "udp" and listed.records[0]["expires"] == 3600
    assert (await h.call("apientry=reguser&usr=root", ADMIN)).text == "ERROR: root is not registered"
    stat = await h.call("apientry=regstat", ADMIN)
    assert stat.text.startswith("OK: 1 users registered with 1 contacts; transport_udp: 1, node_registrations: 1,")
    ends = await h.call("apientry=endpoints", ADMIN)
    assert ends.records == [{"address": "192.0.2.10:5062", "transport": "udp", "useragent": "sipkit",
                             "users": "alice", "connected_here": 0}]
    assert len((await h.call("apientry=epreg&regtype=udp", ADMIN)).records or []) == 1
    assert (await h.call("apientry=epreg&regtype=tcp", ADMIN)).records == []
    assert (await h.call("apientry=epreg&regtype=carrier-pigeon", ADMIN)).text.startswith("ERROR:")
    fast = await h.call("apientry=fastregusers", ADMIN)
    assert [(r["username"], r["result"]) for r in fast.records or []] == [("alice", "ok")]
    await rig.register(Phone("root", "wrong", host="192.0.2.50"), source=rig.source("192.0.2.50"))
    assert len((await h.call("apientry=fastregusers&succ=all", ADMIN)).records or []) == 2
    assert len((await h.call("apientry=fastregusers", ADMIN)).records or []) == 1
    assert (await h.call(f"apientry=reguser&{USER}")).text.startswith("ERROR")  # admins only
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_unreg(tmp_path: Path, database_option: str) -> None:
    """unreg ends a user's bindings (or everyone's; or only those from one ip) and the user goes offline."""
    rig = await make_rig(tmp_path, database=database_option)
    h = rig.h
    await rig.register(Phone("alice", "alicepw"))
    await rig.register(Phone("root", "rootpw", host="192.0.2.20"), source=rig.source("192.0.2.20"))
    assert (await h.call("apientry=unreg&param1=alice&param2=192.0.2.99", ADMIN)).text == "OK: alice was not registered"
    assert (await h.call("apientry=unreg&param1=alice&param3=1", ADMIN)).text == \
        "OK: unregistered 1 users: alice; 0 connections closed"
    assert (await h.call(f"apientry=status&{USER}")).text == "OK: 1"
    assert (await h.call("apientry=unreg&username=all", ADMIN)).text == "OK: unregistered 1 users: root"
    assert (await h.call("apientry=regstat", ADMIN)).text.startswith("OK: 0 users registered with 0 contacts")
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_sendim_delivers_to_every_contact_and_stores_for_offline(tmp_path: Path, database_option: str) -> None:
    """sendim sends a MESSAGE to each contact of a registered user; offline users get it on registering."""
    rig = await make_rig(tmp_path, database=database_option)
    h = rig.h
    await h.store.create_user("bob", "bobpw")
    await rig.register(Phone("alice", "alicepw"))
    mark = len(rig.sent)
    sent = await h.call(f"apientry=sendim&bnum=alice,bob&txt=hello%20there&{USER}")
    assert sent.text == "OK: message for 2 users: 1 sent to registered devices, 1 stored until online"
    messages = outbound(rig, mark)
    assert len(messages) == 1
    addr, message = messages[0]
    assert addr == ("192.0.2.10", 5062) and message.uri == "sip:alice@192.0.2.10:5062"
    assert message.body == b"hello there" and "sip:alice@" in message.get("from")
    assert message.get("content-type").startswith("text/plain")
    await answer(rig, message, 200)
    rows = (await h.db.run_query("x", "SELECT tousername, delivered FROM tb_messages ORDER BY id")).rows
    assert [(r[0], r[1] is not None) for r in rows] == [("alice", True), ("bob", False)]
    # bob registers from his phone: the stored message goes out to it.
    mark = len(rig.sent)
    await rig.register(Phone("bob", "bobpw", host="192.0.2.30", port=5080), source=rig.source("192.0.2.30", 5080))
    await settle()
    addr, message = outbound(rig, mark)[0]
    assert addr == ("192.0.2.30", 5080) and message.body == b"hello there"
    await answer(rig, message, 200, "192.0.2.30", 5080)
    assert (await h.db.run_query("x", "SELECT count(*) FROM tb_messages WHERE delivered IS NULL")).rows[0][0] == 0
    assert (await h.call(f"apientry=sendim&bnum=nobody&txt=x&{USER}")).text == "ERROR: unknown user: nobody"
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_presence_and_offline_messages(tmp_path: Path, database_option: str) -> None:
    """presence_set stores a status; presence_get lists statuses and nothing else (clients split it on , and :);
    stored messages ride on presence_set's answers, as the spec documents."""
    rig = await make_rig(tmp_path, database=database_option)
    h = rig.h
    await h.store.create_user("bob", "bobpw")
    bob = "authkey=apikey123&authid=bob&authpwd=bobpw"
    listed = await h.call(f"apientry=presence_get&userusername=bob,alice,ghost&ptype=0&{USER}")
    assert listed.text == "OK: puserlist: bob:offline,alice:offline,ghost:unknown"
    assert (await h.call(f"apientry=presence_set&pstatus=away&ptype=0&{bob}")).text == "OK: presence set"
    await rig.register(Phone("alice", "alicepw"))
    assert (await h.call(f"apientry=presence_get&userusername=bob,alice&{USER}")).text == \
        "OK: puserlist: bob:away,alice:online"
    h.clock.advance(3600)  # a stale presence_set without a registration is offline again
    assert (await h.call(f"apientry=presence_get&userusername=bob&{USER}")).text == "OK: puserlist: bob:offline"
    await h.call(f"apientry=sendim&bnum=bob&txt=first&{USER}")
    await h.call(f"apientry=sendim&bnum=bob&txt=second&{USER}")
    answered = await h.call(f"apientry=presence_set&pstatus=online&ptype=1&{bob}")
    assert answered.text == "OK: presence setXOFFMESSAGE:alice:firstXOFFMESSAGE:alice:secondXOFFMESSAGE:"
    assert (await h.call(f"apientry=presence_set&pstatus=online&ptype=1&{bob}")).text == "OK: presence set"
    await h.call(f"apientry=sendim&bnum=bob&txt=third&{USER}")
    polled = await h.call(f"apientry=presence_get&userusername=alice&ptype=1&{bob}")
    assert polled.text in ("OK: puserlist: alice:offline", "OK: puserlist: alice:online")
    answered = await h.call(f"apientry=presence_set&pstatus=online&ptype=1&{bob}")
    assert answered.text == "OK: presence setXOFFMESSAGE:alice:thirdXOFFMESSAGE:"
    assert (await h.call(f"apientry=presence_set&pstatus=a,b&{bob}")).text.startswith("ERROR:")
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_message_between_phones(tmp_path: Path) -> None:
    """A phone's MESSAGE to another user is authenticated, accepted (202) and forwarded to the target."""
    rig = await make_rig(tmp_path)
    await rig.h.store.create_user("bob", "bobpw")
    await rig.register(Phone("bob", "bobpw", host="192.0.2.30"), source=rig.source("192.0.2.30"))
    alice = Phone("alice", "alicepw", host="192.0.2.40")
    src = rig.source("192.0.2.40")
    body = b"hi bob"
    first = await rig.one(alice.request("MESSAGE", "sip:bob@example.com", ("Content-Type", "text/plain"),
                                        body=body, to="sip:bob@example.com"), src)
    assert first.status == 401
    mark = len(rig.sent)
    credentials = alice.answer(first, "MESSAGE", "sip:bob@example.com")
    accepted = await rig.one(alice.request("MESSAGE", "sip:bob@example.com", ("Content-Type", "text/plain"),
                                           credentials, body=body, to="sip:bob@example.com"), src)
    assert accepted.status == 202
    forwarded = outbound(rig, mark)
    assert forwarded and forwarded[0][1].body == body and "sip:alice@" in forwarded[0][1].get("from")
    await rig.h.db.close()


async def sip_api(rig: Rig, query: str, method: str = "MESSAGE") -> SipMessage:
    """Send an API request inside a SIP request from alice, answering the challenge."""
    phone = Phone("alice", "alicepw")
    first = await rig.one(phone.request(method, "sip:mizud@example.com", ("X-MizuAPI", query)))
    if first.status != 401:
        return first
    credentials = phone.answer(first, method, "sip:mizud@example.com")
    return await rig.one(phone.request(method, "sip:mizud@example.com", ("X-MizuAPI", query), credentials))


@pytest_twisted.ensureDeferred
async def test_api_inside_sip(tmp_path: Path) -> None:
    """With sipapi on, X-MizuAPI runs as the SIP-authenticated user; off, it is refused; never unauthenticated."""
    (tmp_path / "off").mkdir()
    (tmp_path / "on").mkdir()
    off = await make_rig(tmp_path / "off")
    assert (await sip_api(off, "apientry=balance")).status == 403
    await off.h.db.close()
    rig = await make_rig(tmp_path / "on", "sipapi=1")
    answered = await sip_api(rig, "apientry=balance")
    assert answered.status == 200
    assert answered.get("x-mizuapi-answer") == "OK: 5.00 USD" and answered.body == b"OK: 5.00 USD"
    assert (await sip_api(rig, "/mvapireq/?apientry=status", "OPTIONS")).get("x-mizuapi-answer") == "OK: 1"
    # Credentials in the query do not replace SIP authentication (and cannot switch users).
    other = await sip_api(rig, "apientry=balance&authid=root&authpwd=rootpw")
    assert other.get("x-mizuapi-answer") == "OK: 5.00 USD"
    denied = await sip_api(rig, "apientry=db&txt=select%201")
    assert denied.get("x-mizuapi-answer") == "ERROR: access denied"
    unauthenticated = await rig.one(Phone("alice", "alicepw").request("OPTIONS", "sip:x@example.com",
                                                                      ("X-MizuAPI", "apientry=balance")))
    assert unauthenticated.status == 401 and not unauthenticated.body
    await rig.h.db.close()



@pytest_twisted.ensureDeferred
async def test_api_inside_sip_is_decoded_like_any_request(tmp_path: Path) -> None:
    """The X-MizuAPI header goes through the API's decode(): aliases apply (to, message), names are
    case-insensitive, format= is ignored (the answer is text), and the parameter cap holds."""
    rig = await make_rig(tmp_path, "sipapi=1")
    answered = await sip_api(rig, "APIENTRY=Balance&format=json")
    assert answered.get("x-mizuapi-answer") == "OK: 5.00 USD"
    sent = await sip_api(rig, "apientry=sendim&to=alice&message=hello")
    assert sent.get("x-mizuapi-answer", "").startswith("OK"), sent.body
    flood = "&".join(f"p{i}=1" for i in range(300))
    capped = await sip_api(rig, "apientry=balance&" + flood)
    assert capped.status == 200 and capped.body == b"ERROR: too many parameters (at most 256)"
    await rig.h.db.close()



@pytest_twisted.ensureDeferred
async def test_apidefneedregister_uses_live_registrations(tmp_path: Path) -> None:
    """With apidefneedregister the API serves a user only while a SIP registration is live (2: from its address)."""
    rig = await make_rig(tmp_path, "apidefneedregister=2")
    h = rig.h
    refused = await h.call(f"apientry=balance&{USER}", "192.0.2.10")
    assert refused.text.startswith("ERROR:") and "regist" in refused.text
    await rig.register(Phone("alice", "alicepw", host="192.0.2.10"), expires=60)
    assert (await h.call(f"apientry=balance&{USER}", "192.0.2.10")).text == "OK: 5.00 USD"
    assert (await h.call(f"apientry=balance&{USER}", "192.0.2.11")).text.startswith("ERROR:")  # another address
    h.clock.advance(61)
    assert (await h.call(f"apientry=balance&{USER}", "192.0.2.10")).text.startswith("ERROR:")  # lapsed
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_the_core_dispatches_each_method_to_its_registered_handler(tmp_path: Path) -> None:
    """A handler registered for a method answers it (after the RFC 3261 8.2 checks); only methods the element
    serves can get one."""
    import pytest

    from mizud.sip.backend import Backend
    from mizud.sip.transaction import Source

    rig = await make_rig(tmp_path)
    seen: list[str] = []

    async def options(request: SipMessage, source: Source, backend: Backend) -> SipMessage:
        seen.append(backend.node or "node")
        return response_to(request, 200, "Answered by the test handler", source=source)

    rig.core.handle("OPTIONS", options)
    answered = await rig.one(Phone("alice", "alicepw").request("OPTIONS", "sip:mizud@example.com"))
    assert (answered.status, answered.reason) == (200, "Answered by the test handler") and seen == ["node"]
    unsupported = await rig.one(Phone("alice", "alicepw").request("SUBSCRIBE", "sip:mizud@example.com"))
    assert unsupported.status == 405
    with pytest.raises(ValueError):
        rig.core.handle("SUBSCRIBE", options)
    await rig.h.db.close()
