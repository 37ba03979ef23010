"""Nodes and notifications without daemons: heartbeats, dead nodes' holds released exactly once, clock
jumps, and NOTIFY storms coalesced."""

from __future__ import annotations

from decimal import Decimal

import pytest_twisted
from twisted.internet import defer
from twisted.internet.task import Clock

from mizud.store.billing import HOLD_OPEN, HOLD_RELEASED, BillingStore
from mizud.store.database import Database
from mizud.store.nodes import Nodes
from mizud.store.notify import COALESCE, Notifications


@pytest_twisted.ensureDeferred
async def test_dead_nodes_holds_are_released_once(db: Database, clock: Clock) -> None:
    """Node A holds funds and stops beating; B and C sweep at the same time: the hold is released once
    (one ledger row), its live call is ended with CDRs, and nothing of a live node is touched."""
    a = BillingStore(db, clock, node="node-a")
    b, c = BillingStore(db, clock, node="node-b"), BillingStore(db, clock, node="node-c")
    userid = await a.create_user("erin", "pw", credit="5")
    held = await a.hold(userid, "2", reference="call")
    holdid = int(dict(held.extra)["holdid"])
    mine = await b.hold(userid, "1", reference="b's own")
    await db.run_statement("x", "INSERT INTO tb_calls (userid, anum, bnum, holdid, held, created, node) "
                                "VALUES (?, '361', '362', ?, ?, ?, 'node-a')", (userid, holdid, Decimal(2), a.now()))
    nodes_a, nodes_b, nodes_c = Nodes(a, "node-a"), Nodes(b, "node-b"), Nodes(c, "node-c")
    for nodes in (nodes_a, nodes_b, nodes_c):
        await nodes.beat()
    assert await nodes_b.sweep(120) == 0  # everyone is alive
    clock.advance(60)
    await nodes_b.beat()
    await nodes_c.beat()
    clock.advance(70)  # A last beat 130 s ago; B and C 70 s ago
    await nodes_b.beat()
    await nodes_c.beat()
    released = await defer.gatherResults([defer.ensureDeferred(nodes_b.sweep(120)),
                                          defer.ensureDeferred(nodes_c.sweep(120))])
    assert sorted(released) == [0, 1]
    assert await a.balance(userid) == Decimal("4.00")  # 5 - B's own 1; A's 2 came back once
    statuses = dict((await db.run_query("x", "SELECT id, status FROM tb_holds")).rows)
    assert statuses == {holdid: HOLD_RELEASED, int(dict(mine.extra)["holdid"]): HOLD_OPEN}
    assert (await db.run_query("x", "SELECT count(*) FROM tb_calls")).rows[0][0] == 0
    reasons = [r[0] for r in (await db.run_query("x", "SELECT disconnectreason FROM tb_cdrs")).rows]
    assert reasons == ["node node-a died; call not billed"] * 2
    assert await a.audit() == []


@pytest_twisted.ensureDeferred
async def test_a_clock_jump_releases_early_but_never_twice(db: Database, clock: Clock) -> None:
    """A node whose clock jumps an hour ahead sees the others as dead and releases their holds: early,
    but each once; the owner's later settlement is refused and moves nothing."""
    from mizud.store.money import HoldClosed

    owner = BillingStore(db, clock, node="node-a")
    userid = await owner.create_user("frank", "pw", credit="3")
    holdid = int(dict((await owner.hold(userid, "1")).extra)["holdid"])
    await Nodes(owner, "node-a").beat()
    ahead = Clock()
    ahead.advance(clock.seconds() + 3600)
    jumper = BillingStore(db, ahead, node="node-b")
    sweeper = Nodes(jumper, "node-b")
    await sweeper.beat()
    assert await sweeper.sweep(120) == 0  # not healthy for 120 s yet: it may just have come back
    ahead.advance(121)
    await sweeper.beat()
    assert await sweeper.sweep(120) == 1
    assert await sweeper.sweep(120) == 0
    try:
        await owner.settle(holdid, "0.5")
    except HoldClosed:
        pass
    else:
        raise AssertionError("a released hold was settled")
    assert await owner.balance(userid) == Decimal("3.00") and await owner.audit() == []


def test_notify_storm_is_coalesced() -> None:
    """A thousand notifications of one topic run its handler once per COALESCE; unknown topics are
    ignored."""
    clock = Clock()
    calls: list[str] = []

    async def reload() -> None:
        calls.append("tariffs")

    notifications = Notifications(db=None, reactor=clock)  # type: ignore[arg-type]
    notifications.subscribe("tariffs", reload)

    class Notify:
        def __init__(self, payload: str) -> None:
            self.payload = payload

    for _ in range(1000):
        notifications._notified(Notify("tariffs"))
    notifications._notified(Notify("drop table"))
    clock.advance(COALESCE)
    assert calls == ["tariffs"] and notifications.received == 1000
    for _ in range(10):
        notifications._notified(Notify("tariffs"))
    clock.advance(COALESCE)
    assert calls == ["tariffs", "tariffs"]




@pytest_twisted.ensureDeferred
async def test_no_sweep_right_after_an_outage_and_own_leftovers_released(db: Database, clock: Clock) -> None:
    """After an outage every heartbeat is old: a node sweeps only once its own beats have succeeded for
    nodedeadafter, by which time the others beat again; a node restarting releases the holds it left."""
    from mizud.store.nodes import release_own

    a, b = BillingStore(db, clock, node="node-a"), BillingStore(db, clock, node="node-b")
    userid = await a.create_user("gina", "pw", credit="5")
    holdid = int(dict((await a.hold(userid, "2")).extra)["holdid"])
    nodes_a, nodes_b = Nodes(a, "node-a"), Nodes(b, "node-b")
    await nodes_a.beat()
    await nodes_b.beat()
    clock.advance(300)  # the database was away: nobody could beat
    await nodes_b.beat()
    nodes_b.healthy_since = clock.seconds()  # as after the failed beats of the outage
    assert await nodes_b.sweep(120) == 0  # B just came back; A has not had the time to beat
    clock.advance(10)
    await nodes_a.beat()
    clock.advance(115)
    await nodes_a.beat()
    await nodes_b.beat()
    assert await nodes_b.sweep(120) == 0  # A is alive
    assert await a.balance(userid) == Decimal("3.00")
    clock.advance(5)
    restarted = Nodes(BillingStore(db, clock, node="node-a"), "node-a")
    await restarted.beat()
    assert restarted.started is not None
    assert await release_own(restarted.store, "node-a", restarted.started) == 1
    statuses = dict((await db.run_query("x", "SELECT id, status FROM tb_holds")).rows)
    assert statuses == {holdid: HOLD_RELEASED} and await a.balance(userid) == Decimal("5.00")
