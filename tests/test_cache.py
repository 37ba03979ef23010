"""The exact caches (mizud.store.cache) and the change feed that keeps them right (mizud.store.changes).

What is proved here, on both engines where it applies:
  - a change made on this node, by the store or by plain SQL (the C{db} function, custom SQL), is seen
    by the very next lookup;
  - on PostgreSQL a change made by another node, or by anyone's SQL on another connection, is seen
    within 100 ms, also with lookups in flight while it happens; while the listener is not confirmed,
    nothing is answered from memory;
  - a lookup that raced a change never puts the old row back;
  - a cached balance is never shown on PostgreSQL (its credit changes are not notified);
  - routes, traffic senders, bans and the tb_api rules follow the same changes.
"""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any, AsyncIterator, Callable

import psycopg2
import pytest_twisted
from twisted.internet import defer
from twisted.internet import reactor as global_reactor
from twisted.internet.task import Clock, deferLater

from mizud.security.bans import Bans
from mizud.store.billing import USER_SIPSERVER, BillingStore
from mizud.store.cache import Reload, RowCache, SnapshotCache, always
from mizud.store.changes import FRESH, Change, ChangeFeed, parse_change
from mizud.store.database import Database, open_database
from mizud.store.notify import Notifications
from mizud.store.schema import migrate


async def sleep(seconds: float) -> None:
    """Let the reactor run for C{seconds}."""
    await deferLater(global_reactor, seconds, lambda: None)


async def until(test: Callable[[], Any], seconds: float = 5.0) -> float:
    """Wait until C{test()} is true; the seconds it took."""
    started = time.monotonic()
    while not test():
        if time.monotonic() - started > seconds:
            raise AssertionError(f"not within {seconds} s")
        await sleep(0.002)
    return time.monotonic() - started


class Node:
    """One node's database, store and listener (the listener only on PostgreSQL)."""

    def __init__(self, db: Database, store: BillingStore, listener: Notifications | None) -> None:
        self.db, self.store, self.listener = db, store, listener

    @classmethod
    async def open(cls, database: str) -> "Node":
        """A started node on C{database} (migrated), its feed confirmed."""
        migrate(database, "2026-01-02T03:04:05")
        db = open_database(database, global_reactor)
        await db.start()
        store = BillingStore(db, global_reactor)
        listener = None
        if database.startswith("postgresql"):
            listener = Notifications(db, global_reactor, database)
            listener.start()
            await until(db.changes.trusted)
        return cls(db, store, listener)

    async def close(self) -> None:
        """Stop listening and close the database."""
        if self.listener is not None:
            self.listener.stop()
        await self.db.close()


@pytest_twisted.async_yield_fixture
async def node(database_option: str) -> AsyncIterator[Node]:
    """One node, on each engine."""
    opened = await Node.open(database_option)
    yield opened
    await opened.close()


@pytest_twisted.async_yield_fixture
async def two_nodes(pg_database: str) -> AsyncIterator[tuple[Node, Node]]:
    """Two nodes on one PostgreSQL database."""
    a = await Node.open(pg_database)
    b = await Node.open(pg_database)
    yield a, b
    await a.close()
    await b.close()


# -- the feed and the caches, with fakes ---------------------------------------------------------


def test_a_feed_that_needs_confirmation_is_trusted_only_briefly_after_it() -> None:
    """PostgreSQL's feed: untrusted until confirmed, then for FRESH seconds after the confirming question
    was asked; unconfirm() ends the trust at once."""
    clock = Clock()
    clock.advance(1000)
    feed = ChangeFeed(clock, confirmed=False)
    assert not feed.trusted()
    feed.confirm(clock.seconds())
    assert feed.trusted()
    clock.advance(FRESH - 0.001)
    assert feed.trusted()
    clock.advance(0.002)
    assert not feed.trusted()
    feed.confirm(clock.seconds() - 0.05)  # an answer to a question asked 50 ms ago
    assert feed.trusted()
    feed.unconfirm()
    assert not feed.trusted()
    assert ChangeFeed(clock).trusted()  # SQLite's needs none


def test_trigger_payloads_are_parsed_strictly() -> None:
    """Only 'table id' or 'table id s' of a watched table is a change."""
    assert parse_change("tb_users 5") == Change("tb_users", 5, False)
    assert parse_change("tb_users 5 s") == Change("tb_users", 5, True)
    assert parse_change("tb_routing *") == Change("tb_routing", None, True)  # a TRUNCATE
    from mizud.store.changes import parse_told

    assert parse_told("tb_users 5 s 4711") == (Change("tb_users", 5, True), 4711)  # delta 19's form
    assert parse_told("tb_users 5 - 4711") == (Change("tb_users", 5, False), 4711)
    assert parse_told("tb_api * 4711") == (Change("tb_api", None, True), 4711)
    assert parse_told("tb_users 5") == (Change("tb_users", 5), None)
    for bad in ("tb_users 5 - x", "tb_users 5 - ", "tb_users 5 q 1", "tb_users * 1 2", "tb_users 5 s 1 2"):
        assert parse_told(bad) is None, bad
    hostile = ("", "tb_users", "tb_users x", "tb_credits 5", "tb_users 5 s extra", "tb_users -1", "tb_users 5 x",
               "tb_users \u00b2", "tb_users " + "9" * 5000, "tb_users * s", "tb_users 99999999999999999999")
    for bad in hostile:
        assert parse_change(bad) is None, bad


def test_a_read_that_raced_a_change_is_not_kept() -> None:
    """A row read while a change of that table arrived is answered but not kept: the next lookup reads
    again (so the old row can never come back from memory)."""
    feed = ChangeFeed(Clock())
    cache: RowCache[str, tuple[int, str]] = RowCache(feed, "tb_users", 10, lambda row: row[0])
    reads: list[defer.Deferred[tuple[int, str]]] = []

    def read() -> defer.Deferred[tuple[int, str]]:
        reads.append(defer.Deferred())
        return reads[-1]

    first = defer.ensureDeferred(cache.get("alice", read))
    feed.tell([Change("tb_users", 1)])  # alice's password changes while her row is being read
    reads[0].callback((1, "old"))
    assert first.result == (1, "old")
    second = defer.ensureDeferred(cache.get("alice", read))
    assert len(reads) == 2, "the raced read was kept"
    reads[1].callback((1, "new"))
    assert second.result == (1, "new")
    third = defer.ensureDeferred(cache.get("alice", read))
    assert third.result == (1, "new") and len(reads) == 2  # now from memory
    feed.tell([Change("tb_users", 2)])  # another row: alice stays
    assert defer.ensureDeferred(cache.get("alice", read)).result == (1, "new") and len(reads) == 2
    feed.everything()
    defer.ensureDeferred(cache.get("alice", read))
    assert len(reads) == 3


def test_the_row_cache_is_bounded() -> None:
    """At most size keys; the least recently used goes first, and its row index with it."""
    feed = ChangeFeed(Clock())
    cache: RowCache[int, int] = RowCache(feed, "tb_users", 2, lambda row: row)
    for key in (1, 2, 3):
        defer.ensureDeferred(cache.get(key, lambda key=key: defer.succeed(key)))
    assert len(cache) == 2
    assert cache._keys.keys() == {2, 3}


def test_an_untrusted_feed_answers_nothing_from_memory() -> None:
    """While the feed is unconfirmed every lookup reads, and nothing read is kept."""
    clock = Clock()
    feed = ChangeFeed(clock, confirmed=False)
    cache: RowCache[str, int] = RowCache(feed, "tb_users", 10, lambda row: row)
    snapshot: SnapshotCache[list[int]] = SnapshotCache(feed, {"tb_routing": always})
    count = [0]

    def read() -> defer.Deferred[int]:
        count[0] += 1
        return defer.succeed(count[0])

    for _ in range(3):
        defer.ensureDeferred(cache.get("alice", read))
        defer.ensureDeferred(snapshot.get(lambda: defer.succeed([count[0]])))
    assert count[0] == 3 and len(cache) == 0
    feed.confirm(clock.seconds())
    defer.ensureDeferred(cache.get("alice", read))
    defer.ensureDeferred(cache.get("alice", read))
    assert count[0] == 4


def test_a_failing_listener_does_not_stop_the_others() -> None:
    """A cache that raises while taking a change is logged; the other caches still hear of it."""
    feed = ChangeFeed(Clock())
    seen: list[Change] = []

    def broken(change: Change) -> None:
        raise RuntimeError("broken cache")

    feed.watch("tb_users", broken)
    feed.watch("tb_users", seen.append)
    feed.tell([Change("tb_users", 1)])
    assert seen == [Change("tb_users", 1)]


def test_a_notify_is_not_told_twice_only_when_its_notice_was() -> None:
    """A NOTIFY repeats a NOTICE only when both carry the same transaction's id and change: that one is
    not told again (once); a NOTIFY of another transaction, even of the same row, is told, so an
    expectation left by a transaction whose NOTIFY never came (rolled back, two changes of one row) can
    never swallow a later change; expectations are forgotten after ECHO_WAIT, and on "everything"."""
    clock = Clock()
    feed = ChangeFeed(clock)
    change = Change("tb_users", 5)
    feed.told_directly([(900, change), (900, change)])
    assert feed.echo(900, change)
    assert not feed.echo(900, change)  # told once: a second NOTIFY of it is told
    assert not feed.echo(901, change)  # a later transaction's change of the same row
    feed.told_directly([(902, change)])
    clock.advance(11)
    feed.told_directly([(903, Change("tb_users", 7))])  # the old expectation is dropped
    assert not feed.echo(902, change)
    feed.told_directly([(904, change)])
    feed.everything()
    assert not feed.echo(904, change)


def test_a_reload_asked_for_while_it_runs_runs_once_more() -> None:
    """A burst of changes costs at most two reloads, and the last one starts after the last change."""
    waits: list[defer.Deferred[None]] = []

    def work() -> defer.Deferred[None]:
        waits.append(defer.Deferred())
        return waits[-1]

    reload = Reload(work, "test")
    reload()
    reload()
    reload()
    assert len(waits) == 1
    waits[0].callback(None)
    assert len(waits) == 2
    waits[1].callback(None)
    assert reload.reloads == 2
    reload()
    assert len(waits) == 3


# -- on the real engines --------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_this_nodes_changes_are_seen_by_the_next_lookup(node: Node) -> None:
    """Through the store or by plain SQL (as the db function and custom SQL run it), a password, a
    disabled flag or a deleted user is seen by the very next lookup, by name and by id."""
    store, db = node.store, node.db
    userid = await store.create_user("alice", "one")
    assert (await store.find_user("alice")).password == "one"  # type: ignore[union-attr]
    assert (await store.get_user(userid)).password == "one"  # type: ignore[union-attr]
    hits = store.users.hits
    assert (await store.find_user("alice")).password == "one"  # type: ignore[union-attr]
    assert store.users.hits == hits + 1, "not cached"
    await store.set_password(userid, "two")
    assert (await store.find_user("alice")).password == "two"  # type: ignore[union-attr]
    await db.run_statement("db", "UPDATE tb_users SET enabled = 0 WHERE username = 'alice'")
    assert not (await store.find_user("alice")).enabled  # type: ignore[union-attr]
    assert not (await store.get_user(userid)).enabled  # type: ignore[union-attr]

    async def rename(txn: Any) -> None:
        await txn.execute("UPDATE tb_users SET username = 'alicia', temporarydisabled = 1 WHERE id = ?", (userid,))

    await db.run_interaction("custom", rename)
    assert await store.find_user("alice") is None
    assert (await store.get_user(userid)).temporarydisabled  # type: ignore[union-attr]
    await db.run_statement("db", "DELETE FROM tb_users WHERE id = ?", (userid,))
    assert await store.get_user(userid) is None and await store.find_user("alicia") is None


@pytest_twisted.ensureDeferred
async def test_a_registration_does_not_empty_the_cache(node: Node) -> None:
    """Columns that are not cached (a user's status, written by registrations) tell the user cache
    nothing; where the registrar keeps the user's bindings in memory (SQLite), the status is told to it
    as a change of the user's bindings, which it goes with."""
    userid = await node.store.create_user("alice", "one")
    await node.store.find_user("alice")
    heard: list[Change] = []
    node.db.changes.watch("tb_users", heard.append)
    bindings: list[Change] = []
    node.db.changes.watch("tb_registrations", bindings.append)
    await node.db.run_statement("register", "UPDATE tb_users SET status = 1, statusdate = NULL WHERE id = ?",
                                (userid,))
    assert heard == []
    assert bindings == ([Change("tb_registrations", userid)] if node.db.changes.tells("tb_registrations") else [])
    hits = node.store.users.hits
    await node.store.find_user("alice")
    assert node.store.users.hits == hits + 1


@pytest_twisted.ensureDeferred
async def test_a_balance_is_current_on_both_engines(node: Node) -> None:
    """balance() and current_credit() follow every debit at once: from the cache where credit changes
    are told (SQLite), from the database where they are not (PostgreSQL)."""
    store = node.store
    userid = await store.create_user("alice", "pw", credit="10")
    user = await store.find_user("alice")
    assert user is not None
    await store.debit(userid, Decimal("2.5"))
    assert await store.balance(userid) == Decimal("7.5")
    cached = await store.find_user("alice")
    assert cached is not None and await store.current_credit(cached) == Decimal("7.5")
    await node.db.run_statement("db", "UPDATE tb_users SET credit = credit - ? WHERE id = ?", (Decimal(1), userid))
    assert await store.balance(userid) == Decimal("6.5")


@pytest_twisted.ensureDeferred
async def test_routes_and_traffic_senders_follow_changes(node: Node) -> None:
    """A gateway's route appears, a disabled server's route and a removed sender disappear, at the next
    lookup (SQLite) or within 100 ms (PostgreSQL)."""
    store, db, routes = node.store, node.db, node.store.routes
    assert await routes.gateways("3612345") == []
    server = await store.create_user("gw", "pw", type=USER_SIPSERVER, ip="192.0.2.7", port=5060, needauth=1)
    assert await routes.sender_by_address("192.0.2.7") == server
    await db.run_statement("db", "INSERT INTO tb_routing (name, prefix, priority, serverid, enabled, created) "
                                 "VALUES ('hu', '36', 1, ?, 1, ?)", (server, store.now()))

    async def route_count(digits: str) -> int:
        return len(await routes.gateways(digits))

    await wait_for(node, lambda: route_count("3612345"), 1)
    assert await route_count("4912345") == 0
    await db.run_statement("db", "UPDATE tb_users SET enabled = 0 WHERE id = ?", (server,))
    await wait_for(node, lambda: route_count("3612345"), 0)

    async def sender() -> int | None:
        return await routes.sender_by_address("192.0.2.7")

    await wait_for(node, sender, None)


async def wait_for(node: Node, probe: Callable[[], Any], expected: Any) -> None:
    """The probe answers C{expected} at once (SQLite) or within 100 ms (PostgreSQL)."""
    if node.listener is None:
        assert await probe() == expected
        return
    started = time.monotonic()
    while await probe() != expected:
        assert time.monotonic() - started < 0.1, "not within 100 ms"
        await sleep(0.002)


@pytest_twisted.ensureDeferred
async def test_bans_and_access_rules_reload_on_any_change(node: Node) -> None:
    """A ban written by plain SQL is in force at the next check (SQLite) or within 100 ms (PostgreSQL)."""
    bans = Bans(node.store.bans, global_reactor)
    node.db.changes.after("tb_banned", Reload(bans.refresh, "bans"))
    await bans.refresh()
    assert not bans.is_banned("ip", "198.51.100.9")
    await node.db.run_statement(
        "db", "INSERT INTO tb_banned (kind, value, reason, created, until) VALUES ('ip', '198.51.100.9', 'sql', ?, ?)",
        (node.store.now(), node.store.now().replace(year=2100)))

    async def banned() -> bool:
        return bans.is_banned("ip", "198.51.100.9")

    await wait_for(node, banned, True)


# -- PostgreSQL: other nodes and other connections ---------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_another_nodes_change_is_seen_within_100_ms(two_nodes: tuple[Node, Node], pg_database: str) -> None:
    """B changes alice's password, then disables her; an operator's psql session re-enables her: A sees
    each within 100 ms, while answering from memory in between."""
    a, b = two_nodes
    userid = await a.store.create_user("alice", "one")
    assert (await a.store.find_user("alice")).password == "one"  # type: ignore[union-attr]
    hits = a.store.users.hits
    await a.store.find_user("alice")
    assert a.store.users.hits == hits + 1

    async def password() -> str:
        return (await a.store.find_user("alice")).password  # type: ignore[union-attr]

    async def enabled() -> bool:
        return (await a.store.find_user("alice")).enabled  # type: ignore[union-attr]

    await b.store.set_password(userid, "two")
    await wait_for(a, password, "two")
    await b.db.run_statement("db", "UPDATE tb_users SET enabled = 0 WHERE id = ?", (userid,))
    await wait_for(a, enabled, False)
    operator = psycopg2.connect(pg_database)
    operator.autocommit = True
    try:
        with operator.cursor() as cursor:
            cursor.execute("UPDATE tb_users SET enabled = 1 WHERE id = %s", (userid,))
        await wait_for(a, enabled, True)
    finally:
        operator.close()


@pytest_twisted.ensureDeferred
async def test_lookups_in_flight_during_a_change_never_see_it_undone(two_nodes: tuple[Node, Node]) -> None:
    """Under load (a hundred lookups at a time on A) B changes the password: no lookup on A that starts
    100 ms after B's commit, or after another lookup came back with the new one, answers the old one."""
    a, b = two_nodes
    userid = await a.store.create_user("alice", "old")
    committed: list[float] = []
    late: list[str] = []
    seen_new: list[float] = []  # when a lookup first came back with the new password

    async def lookups() -> None:
        while True:
            started = time.monotonic()
            user = await a.store.find_user("alice")
            assert user is not None
            if user.password == "new":
                if not seen_new:
                    seen_new.append(time.monotonic())
            elif (seen_new and started > seen_new[0]) or (committed and started - committed[0] > FRESH):
                late.append(f"old password {started - committed[0]:.3f} s after the commit")
            if committed and started - committed[0] > 0.5:
                return

    workers = [defer.ensureDeferred(lookups()) for _ in range(100)]
    await sleep(0.2)
    await b.store.set_password(userid, "new")
    committed.append(time.monotonic())
    await defer.gatherResults(workers, consumeErrors=True)
    assert seen_new and not late, late[:5]
    assert a.store.users.hits > 100  # the load came from memory


@pytest_twisted.ensureDeferred
async def test_without_a_confirmed_listener_every_lookup_reads(pg_database: str) -> None:
    """A PostgreSQL store with no listener (or a lost one) never answers from memory."""
    migrate(pg_database, "2026-01-02T03:04:05")
    db = open_database(pg_database, global_reactor)
    await db.start()
    try:
        store = BillingStore(db, global_reactor)
        await store.create_user("alice", "pw")
        for _ in range(3):
            await store.find_user("alice")
        assert store.users.hits == 0 and len(store.users) == 0
    finally:
        await db.close()


@pytest_twisted.ensureDeferred
async def test_a_lost_listener_stops_the_cache_and_its_return_empties_it(pg_database: str) -> None:
    """When the listening connection is killed, the cache stops answering at once; when the listener
    is back, everything cached before counts as changed."""
    node = await Node.open(pg_database + "&application_name=mizud-listener")
    try:
        userid = await node.store.create_user("alice", "one")
        await node.store.find_user("alice")
        assert len(node.store.users) == 1
        killer = psycopg2.connect(pg_database)
        killer.autocommit = True
        with killer.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                           "WHERE application_name = 'mizud-listener' AND query LIKE 'SELECT 1%'")
            # While nobody listens, another connection changes the password.
            cursor.execute("UPDATE tb_users SET password = 'two' WHERE id = %s", (userid,))
        killer.close()
        await until(lambda: not node.db.changes.trusted(), 1.0)
        assert (await node.store.find_user("alice")).password == "two"  # type: ignore[union-attr]
        await until(node.db.changes.trusted, 10.0)
        assert (await node.store.find_user("alice")).password == "two"  # type: ignore[union-attr]
    finally:
        await node.close()


@pytest_twisted.ensureDeferred
async def test_a_truncate_or_a_delete_of_everything_empties_the_caches(node: Node) -> None:
    """TRUNCATE (PostgreSQL, delta 18) or DELETE without WHERE (SQLite): every route is gone at the next
    lookup (SQLite) or within 100 ms (PostgreSQL)."""
    store, db, routes = node.store, node.db, node.store.routes
    server = await store.create_user("gw", "pw", type=USER_SIPSERVER, ip="192.0.2.7", port=5060)
    await db.run_statement("db", "INSERT INTO tb_routing (name, prefix, priority, serverid, enabled, created) "
                                 "VALUES ('hu', '36', 1, ?, 1, ?)", (server, store.now()))

    async def route_count() -> int:
        return len(await routes.gateways("3612345"))

    await wait_for(node, route_count, 1)
    statement = "TRUNCATE tb_routing" if node.listener is not None else "DELETE FROM tb_routing"
    await db.run_statement("db", statement)
    await wait_for(node, route_count, 0)


@pytest_twisted.ensureDeferred
async def test_a_table_rebuilt_or_a_trigger_dropped_by_sql_counts_as_everything(sqlite_database: str) -> None:
    """SQLite: rebuilding tb_users or dropping a change trigger through SQL (the db function) would stop the
    changes being told; the writer notices the schema change, counts everything as changed and makes the
    triggers again, so the next password change is still seen."""
    node = await Node.open(sqlite_database)
    try:
        store, db = node.store, node.db
        userid = await store.create_user("alice", "one")
        await store.find_user("alice")
        for sql in ("ALTER TABLE tb_users RENAME TO tb_users_old", "CREATE TABLE tb_users AS SELECT * FROM tb_users_old",
                    "DROP TABLE tb_users_old"):
            await db.run_statement("db", sql)
        await db.run_statement("db", "UPDATE tb_users SET password = 'two' WHERE id = ?", (userid,))
        assert (await store.find_user("alice")).password == "two"  # type: ignore[union-attr]
        await db.run_statement("db", "DROP TRIGGER temp.mizud_tb_users_updated")
        await db.run_statement("db", "UPDATE tb_users SET password = 'three' WHERE id = ?", (userid,))
        assert (await store.find_user("alice")).password == "three"  # type: ignore[union-attr]
        await db.run_statement("db", "UPDATE tb_users SET password = 'four' WHERE id = ?", (userid,))
        assert (await store.find_user("alice")).password == "four"  # type: ignore[union-attr]
    finally:
        await node.close()


@pytest_twisted.ensureDeferred
async def test_a_node_whose_notices_stop_still_sees_its_changes_by_notify(pg_database: str) -> None:
    """A pool connection whose capture is switched off (RESET ALL through the db function, say) sends no
    NOTICE; its change's NOTIFY is then not taken for an echo, and is told within 100 ms."""
    migrate(pg_database, "2026-01-02T03:04:05")
    db = open_database(pg_database, global_reactor, pool_size=1)
    await db.start()
    listener = Notifications(db, global_reactor, pg_database)
    listener.start()
    node = Node(db, BillingStore(db, global_reactor), listener)
    try:
        await until(db.changes.trusted)
        userid = await node.store.create_user("alice", "one")
        await node.store.find_user("alice")
        await db.run_statement("db", "RESET ALL")  # the only pool connection: no more NOTICEs

        async def password() -> str:
            return (await node.store.find_user("alice")).password  # type: ignore[union-attr]

        await db.run_statement("db", "UPDATE tb_users SET password = 'two' WHERE id = ?", (userid,))
        await wait_for(node, password, "two")
    finally:
        await node.close()


@pytest_twisted.ensureDeferred
async def test_a_restore_elsewhere_empties_this_nodes_caches(two_nodes: tuple[Node, Node]) -> None:
    """A restore writes rows the triggers never see; the restoring node publishes "everything", and the
    other node forgets every cached user within 100 ms."""
    a, b = two_nodes
    await a.store.create_user("alice", "one")
    await a.store.find_user("alice")
    assert len(a.store.users) == 1
    assert b.listener is not None
    await b.listener.publish("everything")

    async def cached() -> int:
        return len(a.store.users)

    await wait_for(a, cached, 0)
