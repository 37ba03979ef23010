"""The store components SIP and the API use (routes, calls and CDRs, messages, SMS log, bans), run on
SQLite and on PostgreSQL through the same contract."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

import pytest
import pytest_twisted

from mizud.store.authstate import BanRows
from mizud.store.billing import HOLD_SETTLED, BillingStore
from mizud.store.calls import AlreadySettled, CallRows, close_call, insert_call
from mizud.store.messages import MessageRows
from mizud.store.registrations import Bindings, Change
from mizud.store.routes import ROLE_SENDER, RouteRows
from mizud.store.sms import SmsRows

D = Decimal


async def _gateway(store: BillingStore, name: str, ip: str, role: int = 0) -> int:
    """A SIP server (type 9) as addserver makes one."""
    return await store.create_user(name, "gwpw", type=9, ip=ip, port=5070, transport="tcp", domain="gw.example",
                                   serverrole=role)


async def _route(store: BillingStore, name: str, prefix: str, serverid: int, priority: int = 0) -> None:
    await store.db.run_statement(
        "test_route", "INSERT INTO tb_routing (name, prefix, serverid, priority, created) VALUES (?, ?, ?, ?, ?)",
        (name, prefix, serverid, priority, store.now()))


@pytest_twisted.ensureDeferred
async def test_routes_longest_prefix_then_priority(store: BillingStore) -> None:
    """gateways() returns the enabled routes whose prefix begins the number: longest first, then priority;
    a traffic-sender-only server is never a route."""
    first = await _gateway(store, "gw1", "192.0.2.1")
    second = await _gateway(store, "gw2", "192.0.2.2")
    sender = await _gateway(store, "in1", "192.0.2.3", role=ROLE_SENDER)
    await _route(store, "default", "", first, priority=5)
    await _route(store, "uk", "44", second, priority=1)
    await _route(store, "uk-backup", "44", first, priority=2)
    await _route(store, "sender", "44", sender)
    rows = RouteRows(store.db)
    found = await rows.gateways("4412345")
    assert [(g.routing, g.username, g.priority) for g in found] == [("uk", "gw2", 1), ("uk-backup", "gw1", 2),
                                                                   ("default", "gw1", 5)]
    assert (found[0].ip, found[0].port, found[0].transport, found[0].domain) == ("192.0.2.2", 5070, "tcp",
                                                                                 "gw.example")
    assert [g.routing for g in await rows.gateways("331")] == ["default"]


@pytest_twisted.ensureDeferred
async def test_route_lookups_of_users_senders_and_numbers(store: BillingStore) -> None:
    """user_named() finds a user by username or assigned DID (never a server), sender_at() a traffic sender by
    address, owns() a DID or a proved number, account() and sms_gateway() a server's settings."""
    alice = await store.create_user("alice", "pw")
    await _gateway(store, "gw1", "192.0.2.1")
    await store.db.run_statement("test_did", "INSERT INTO tb_phonenumbers (number, userid, created) VALUES (?, ?, ?)",
                                 ("15550001", alice, store.now()))
    rows = RouteRows(store.db)
    assert await rows.user_named("alice") == (alice, "alice")
    assert await rows.user_named("15550001") == (alice, "alice")
    assert await rows.user_named("gw1") is None and await rows.user_named("nobody") is None
    assert await rows.sender_at("[192.0.2.1]") == "gw1" and await rows.sender_at("192.0.2.9") is None
    assert await rows.owns(alice, "15550001", "15550001") and not await rows.owns(alice, "15550002", "15550002")
    assert await rows.account("gw1") == ("gw1", "gwpw") and await rows.account("gone") == ("", "")
    assert await rows.sms_gateway("gw1") == ("", "gw1", "gwpw") and await rows.sms_gateway("gone") is None


@pytest_twisted.ensureDeferred
async def test_a_call_is_held_connected_and_settled_once(store: BillingStore) -> None:
    """The live call is inserted with its hold, marked connected, and closed with its CDRs in the settling
    transaction; a second close finds it gone (AlreadySettled) and writes nothing."""
    uid = await store.create_user("caller", "pw", credit="5")
    now = store.now()

    async def insert(txn: object, holdid: int) -> int:
        return await insert_call(txn, uid, "p2p", "caller", "4412345", "", holdid, D("1.20"), "a@x", "b@x",  # type: ignore[arg-type]
                                 now, "node1")

    result = await store.hold(uid, "1.20", reference="test call", then=insert)
    holdid, callid = int(dict(result.extra)["holdid"]), int(dict(result.extra)["then"])
    rows = CallRows(store.db)
    assert await rows.is_live(callid)
    await rows.connected(callid, now + timedelta(seconds=3))
    cdr = {"userid": uid, "callerid": "caller", "callednumber": "4412345", "duration": 10, "cost": D("0.40"),
           "sipcallid": "a@x", "datum": now, "callid": callid}
    ids: list[int] = []

    async def write(txn: object, _: int = 0) -> None:
        ids[:] = await close_call(txn, callid, [cdr])  # type: ignore[arg-type]

    await store.settle(holdid, D("0.40"), then=write)
    assert not await rows.is_live(callid)
    assert await rows.cdr_ids(callid) == ids and len(ids) == 1
    assert await rows.hold_status(holdid) == HOLD_SETTLED and await rows.hold_status(holdid + 99) is None
    assert await store.balance(uid) == D("4.60") and await store.audit() == []
    with pytest.raises(AlreadySettled):
        await store.db.run_interaction("again", lambda txn: close_call(txn, callid, [cdr]))
    assert await rows.cdr_ids(callid) == ids


@pytest_twisted.ensureDeferred
async def test_messages_pending_attempted_delivered_and_handed_over_once(store: BillingStore) -> None:
    """Stored messages stay pending until delivered or tried too often; hand_over() takes each only once."""
    bob = await store.create_user("bob", "pw")
    rows = MessageRows(store.db, store.now)
    first = await rows.store("alice", bob, "bob", "one")
    second = await rows.store("alice", bob, "bob", "two")
    assert [m.body for m in await rows.pending(bob, 5, 10)] == ["one", "two"]
    await rows.attempted(first.id)
    assert [m.id for m in await rows.pending(bob, 1, 10)] == [second.id]
    await rows.delivered(second.id)
    assert [m.id for m in await rows.pending(bob, 5, 10)] == [first.id]
    assert [m.body for m in await rows.hand_over(bob, 10)] == ["one"]
    assert await rows.hand_over(bob, 10) == [] and await rows.pending(bob, 5, 10) == []


@pytest_twisted.ensureDeferred
async def test_sms_log_records_and_finishes(store: BillingStore) -> None:
    """An SMS is logged when sent and its outcome recorded."""
    uid = await store.create_user("texter", "pw")
    rows = SmsRows(store.db, store.now)
    smsid = await rows.record(uid, "texter", "4412345", "hello", 1, "", "sending", D("0.05"), 0)
    await rows.finish(smsid, "delivered", "gw1", "")
    row = (await store.db.run_query("test_sms", "SELECT status, route, cost, finished FROM tb_sms WHERE id = ?",
                                    (smsid,))).one()
    assert row is not None and (row[0], row[1]) == ("delivered", "gw1") and row[3] is not None


@pytest_twisted.ensureDeferred
async def test_bans_are_added_listed_and_lifted(store: BillingStore) -> None:
    """Bans in force are listed soonest ending first; lifting one value or all ends them."""
    rows = BanRows(store.db)
    now = datetime(2026, 1, 2, 3, 4, 5)
    await rows.add("ip", "192.0.2.7", "test", now, now + timedelta(minutes=5))
    await rows.add("user", "mallory", "test", now, now + timedelta(minutes=1))
    await rows.add("ip", "192.0.2.8", "old", now - timedelta(hours=2), now - timedelta(hours=1))
    assert [(b.kind, b.value) for b in await rows.active(now)] == [("user", "mallory"), ("ip", "192.0.2.7")]
    assert await rows.lift("mallory", now) == 1
    assert [b.value for b in await rows.active(now)] == ["192.0.2.7"]
    assert await rows.lift(None, now) == 1 and await rows.active(now) == []


@pytest_twisted.ensureDeferred
async def test_registrations_are_counted(store: BillingStore) -> None:
    """count() says how many bindings are stored."""
    uid = await store.create_user("phone", "pw")
    bindings = Bindings(store.db, store.now)
    assert await bindings.count() == 0
    await bindings.register(uid, "phone", [Change("sip:phone@192.0.2.5:5062", 300)], wildcard=False, callid="call-1",
                            cseq=1, address="192.0.2.5:5062", transport="udp", useragent="test")
    assert await bindings.count() == 1
