"""The store components the admin, CDR, number and server API functions use (store/admin.py, cdrs.py,
pool.py, users.py, servers.py, identifiers.py), run on SQLite and on PostgreSQL through the same contract."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import pytest_twisted

from mizud.store.admin import QuickStats, quick_stats, run_sql
from mizud.store.billing import USER_RESELLER, BillingStore
from mizud.store.cdrs import (CDR_GROUPINGS, CDR_ORDERS, CdrFilter, CdrGroup, CdrTotals, GeneratedCdr, PricedCdr,
                              cdr_list, cdr_summary, cdr_totals, insert_generated, rebill_candidates)
from mizud.store.database import Txn
from mizud.store.identifiers import identifier
from mizud.store.pool import first_free, first_free_of, free_numbers, lock_number
from mizud.store.registrations import Bindings, Change
from mizud.store.servers import insert_route, routing_entry_by_id, routing_entry_named, set_user_columns
from mizud.store.users import FORWARD_COLUMNS, UserMatch, search_users, set_forwards, users_named

D = Decimal


async def _cdr(store: BillingStore, datum: datetime, userid: int, callerid: str, called: str, duration: int,
               cost: str, *, gatewaycost: str = "0", direction: str = "out", generated: int = 0) -> int:
    """Write one CDR; its id."""
    result = await store.db.run_statement(
        "test_cdr", "INSERT INTO tb_cdrs (datum, callerid, callednumber, userid, duration, cost, gatewaycost, "
        "direction, generated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        (datum, callerid, called, userid, duration, D(cost), D(gatewaycost), direction, generated))
    return int(result.rows[0][0])


async def _calls(store: BillingStore) -> dict[str, int]:
    """A reseller, its customer and another user, with CDRs of today (03:04:05 now) and one of 40 days ago."""
    now = store.now()
    reseller = await store.create_user("reseller", "pw", type=USER_RESELLER)
    customer = await store.create_user("customer", "pw", parentid=reseller)
    other = await store.create_user("other", "pw")
    ids = {
        "reseller": reseller, "customer": customer, "other": other,
        "r": await _cdr(store, now - timedelta(hours=1), reseller, "r", "4412345", 60, "0.30", gatewaycost="0.10"),
        "c": await _cdr(store, now - timedelta(hours=2), customer, "c", "4420000", 0, "0"),
        "o": await _cdr(store, now - timedelta(hours=3), other, "o", "3312345", 30, "0.20", direction="in"),
        "old": await _cdr(store, now - timedelta(days=40), other, "o", "3399999", 10, "0.05"),
    }
    return ids


def _today(store: BillingStore) -> datetime:
    return store.now().replace(hour=0, minute=0, second=0, microsecond=0)


def test_identifiers_are_plain_names() -> None:
    """identifier() passes plain lower-case names and refuses anything that could carry SQL."""
    assert identifier("forwardalways") == "forwardalways" and identifier("_x9") == "_x9"
    for bad in ("", "9x", "Name", "id; DROP TABLE tb_users", "a b", "a-b", "id--", "name\n"):
        with pytest.raises(ValueError):
            identifier(bad)


@pytest_twisted.ensureDeferred
async def test_run_sql_answers_rows_counts_and_errors(store: BillingStore) -> None:
    """run_sql() runs the statement as written: a SELECT's columns and rows, a change's row count; a bad
    statement raises."""
    await store.create_user("alice", "pw")
    await store.create_user("bob", "pw")
    selected = await run_sql(store.db, "SELECT username FROM tb_users ORDER BY id")
    assert (selected.columns, selected.rows) == (("username",), [("alice",), ("bob",)])
    changed = await run_sql(store.db, "UPDATE tb_users SET name = 'x' WHERE username = 'bob'")
    assert (changed.columns, changed.rowcount) == ((), 1)
    with pytest.raises(Exception):
        await run_sql(store.db, "SELECT nothing FROM tb_nowhere")


@pytest_twisted.ensureDeferred
async def test_quick_stats(store: BillingStore) -> None:
    """quick_stats() counts users and their credit, users registered now, and the calls since the day began."""
    alice = await store.create_user("alice", "pw", credit="5")
    await store.create_user("bob", "pw", credit="2.5")
    bindings = Bindings(store.db, store.now)
    await bindings.register(alice, "alice", [Change("sip:alice@192.0.2.5:5062", 300)], wildcard=False,
                            callid="call-1", cseq=1, address="192.0.2.5:5062", transport="udp", useragent="test")
    now = store.now()
    await _cdr(store, now - timedelta(hours=1), alice, "alice", "4412345", 60, "0.30")
    await _cdr(store, now - timedelta(hours=2), alice, "alice", "4412345", 15, "0.05")
    await _cdr(store, now - timedelta(days=1), alice, "alice", "4412345", 600, "9")
    stats = await quick_stats(store.db, now, _today(store))
    assert stats == QuickStats(users=2, credit=D("7.5"), registered=1, calls_today=2, seconds_today=75,
                               cost_today=D("0.35"))
    later = await quick_stats(store.db, now + timedelta(seconds=301), _today(store) + timedelta(days=1))
    assert later == QuickStats(2, D("7.5"), 0, 0, 0, D(0))


@pytest_twisted.ensureDeferred
async def test_cdr_list_filters(store: BillingStore) -> None:
    """cdr_list() returns the chosen columns of the CDRs each filter condition selects, money as Decimal and
    the time as a datetime."""
    ids = await _calls(store)
    now, today = store.now(), _today(store)

    async def listed(**conditions: Any) -> list[int]:
        rows = await cdr_list(store.db, CdrFilter(since=today, **conditions), ("id",), "date", 100, 0)
        return [row[0] for row in rows]

    rows = await cdr_list(store.db, CdrFilter(since=today), ("id", "datum", "callerid", "cost", "gatewaycost"),
                          "date", 100, 0)
    assert rows == [(ids["r"], now - timedelta(hours=1), "r", D("0.30"), D("0.10")),
                    (ids["c"], now - timedelta(hours=2), "c", D(0), D(0)),
                    (ids["o"], now - timedelta(hours=3), "o", D("0.20"), D(0))]
    assert isinstance(rows[0][1], datetime) and isinstance(rows[0][3], Decimal)
    assert await listed(viewer=ids["reseller"], customers=True) == [ids["r"], ids["c"]]
    assert await listed(viewer=ids["reseller"]) == [ids["r"]]
    assert await listed(viewer=ids["customer"], customers=True) == [ids["c"]]
    assert await listed(caller="o") == [ids["o"]]
    assert await listed(caller=str(ids["reseller"]), caller_userid=ids["reseller"]) == [ids["r"]]
    assert await listed(caller=str(ids["reseller"])) == []
    assert await listed(called="4420000") == [ids["c"]]
    assert await listed(prefix="44") == [ids["r"], ids["c"]]
    assert await listed(prefix="4412") == [ids["r"]]
    assert await listed(direction="in") == [ids["o"]]
    assert await listed(connected=True) == [ids["r"], ids["o"]]
    assert await listed(connected=False) == [ids["c"]]
    assert await listed(prefix="33", direction="out") == []
    old = await cdr_list(store.db, CdrFilter(since=today - timedelta(days=60)), ("id",), "date", 100, 0)
    assert [row[0] for row in old] == [ids["r"], ids["c"], ids["o"], ids["old"]]


@pytest_twisted.ensureDeferred
async def test_cdr_list_orders_and_pages(store: BillingStore) -> None:
    """cdr_list() sorts by the named order then id (newest first) and pages with count and offset; it refuses
    names that are not columns or orders, and counts that are not whole numbers."""
    ids = await _calls(store)
    where = CdrFilter(since=_today(store) - timedelta(days=60))
    assert CDR_ORDERS == ("date", "caller", "called", "user")
    by_caller = await cdr_list(store.db, where, ("callerid", "id"), "caller", 100, 0)
    assert by_caller == [("c", ids["c"]), ("o", ids["old"]), ("o", ids["o"]), ("r", ids["r"])]
    by_called = await cdr_list(store.db, where, ("callednumber",), "called", 100, 0)
    assert by_called == [("3312345",), ("3399999",), ("4412345",), ("4420000",)]
    by_user = await cdr_list(store.db, where, ("userid", "id"), "user", 100, 0)
    assert by_user == [(ids["reseller"], ids["r"]), (ids["customer"], ids["c"]), (ids["other"], ids["old"]),
                       (ids["other"], ids["o"])]
    page = await cdr_list(store.db, where, ("id",), "date", 2, 1)
    assert page == [(ids["c"],), (ids["o"],)]
    assert await cdr_list(store.db, where, ("id",), "date", 2, 4) == []
    for columns, order, count, offset in ((("id; DELETE FROM tb_cdrs",), "date", 1, 0), (("id",), "id", 1, 0),
                                          (("id",), "date", -1, 0), (("id",), "date", 1, "0 UNION")):
        with pytest.raises(ValueError):
            await cdr_list(store.db, where, columns, order, count, offset)  # type: ignore[arg-type]
    assert len(await cdr_list(store.db, where, ("id",), "date", 100, 0)) == 4


@pytest_twisted.ensureDeferred
async def test_cdr_summary_groups(store: BillingStore) -> None:
    """cdr_summary() counts calls, answered calls, seconds and cost per group (and the profit when asked);
    by=all is one row even when nothing matches."""
    ids = await _calls(store)
    today = _today(store)
    where = CdrFilter(since=today)
    assert CDR_GROUPINGS == ("all", "day", "caller", "called")
    assert await cdr_summary(store.db, where, "all") == [CdrGroup("all", 3, 2, 90, D("0.50"), None)]
    assert await cdr_summary(store.db, where, "all", profit=True) == [CdrGroup("all", 3, 2, 90, D("0.50"), D("0.40"))]
    assert await cdr_summary(store.db, where, "caller") == [
        CdrGroup("c", 1, 0, 0, D(0), None), CdrGroup("o", 1, 1, 30, D("0.20"), None),
        CdrGroup("r", 1, 1, 60, D("0.30"), None)]
    assert await cdr_summary(store.db, CdrFilter(since=today - timedelta(days=60)), "day") == [
        CdrGroup("2025-11-23", 1, 1, 10, D("0.05"), None), CdrGroup("2026-01-02", 3, 2, 90, D("0.50"), None)]
    assert await cdr_summary(store.db, CdrFilter(since=today, viewer=ids["other"]), "called", profit=True) == [
        CdrGroup("3312345", 1, 1, 30, D("0.20"), D("0.20"))]
    nothing = CdrFilter(since=today, called="none")
    assert await cdr_summary(store.db, nothing, "all") == [CdrGroup("all", 0, 0, 0, D(0), None)]
    assert await cdr_summary(store.db, nothing, "caller") == []
    with pytest.raises(ValueError):
        await cdr_summary(store.db, where, "callerid, (SELECT password FROM tb_users)")


@pytest_twisted.ensureDeferred
async def test_cdr_totals(store: BillingStore) -> None:
    """cdr_totals() sums the CDRs of the filter (zero for none)."""
    ids = await _calls(store)
    today = _today(store)
    assert await cdr_totals(store.db, CdrFilter(since=today)) == CdrTotals(3, 90, D("0.50"))
    assert await cdr_totals(store.db, CdrFilter(since=today, viewer=ids["reseller"], customers=True)) == CdrTotals(
        2, 60, D("0.30"))
    assert await cdr_totals(store.db, CdrFilter(since=today - timedelta(days=60), caller="o")) == CdrTotals(
        2, 40, D("0.25"))
    assert await cdr_totals(store.db, CdrFilter(since=today, called="none")) == CdrTotals(0, 0, D(0))


@pytest_twisted.ensureDeferred
async def test_rebill_candidates(store: BillingStore) -> None:
    """rebill_candidates() returns the charged CDRs since the date by user then id, never the test records
    of gencdr nor those of no user; with a user id, that user's only."""
    alice = await store.create_user("alice", "pw")
    bob = await store.create_user("bob", "pw")
    now = store.now()
    b1 = await _cdr(store, now - timedelta(hours=1), bob, "bob", "4412345", 60, "0.30")
    a1 = await _cdr(store, now - timedelta(hours=2), alice, "alice", "3312345", 30, "0.20")
    a2 = await _cdr(store, now - timedelta(hours=1), alice, "alice", "3399999", 0, "0")
    await _cdr(store, now - timedelta(hours=1), alice, "alice", "3300000", 10, "1", generated=1)
    await _cdr(store, now - timedelta(hours=1), 0, "x", "3300000", 10, "1")
    await _cdr(store, now - timedelta(days=3), alice, "alice", "3300000", 10, "1")
    since = _today(store)
    assert await rebill_candidates(store.db, since) == [
        PricedCdr(a1, alice, "3312345", 30, D("0.20")), PricedCdr(a2, alice, "3399999", 0, D(0)),
        PricedCdr(b1, bob, "4412345", 60, D("0.30"))]
    assert await rebill_candidates(store.db, since, bob) == [PricedCdr(b1, bob, "4412345", 60, D("0.30"))]
    assert await rebill_candidates(store.db, since, bob + 99) == []
    assert len(await rebill_candidates(store.db, since - timedelta(days=7), alice)) == 3


@pytest_twisted.ensureDeferred
async def test_insert_generated_writes_all_or_nothing(store: BillingStore) -> None:
    """insert_generated() writes the test records marked generated, in one transaction: a record that fails
    leaves none of them."""
    alice = await store.create_user("alice", "pw")
    now = store.now()
    records = [GeneratedCdr(now - timedelta(minutes=i), "alice", f"44{i}", alice, 10 * i, D("0.1") * i, "out",
                            "normal" if i else "no answer", f"gencdr-{i}") for i in range(3)]
    assert await insert_generated(store.db, records) == 3
    rows = (await store.db.run_query(
        "test_gencdr", "SELECT callednumber, duration, cost, direction, disconnectreason, sipcallid, generated, "
        "userid, datum FROM tb_cdrs ORDER BY id")).rows
    money, time = store.db.engine.money, store.db.engine.time
    assert [(r[0], r[1], money(r[2]), r[3], r[4], r[5], r[6], r[7], time(r[8])) for r in rows] == [
        (f"44{i}", 10 * i, D("0.1") * i, "out", "normal" if i else "no answer", f"gencdr-{i}", 1, alice,
         now - timedelta(minutes=i)) for i in range(3)]
    broken = [records[0], GeneratedCdr(None, "alice", "449", alice, 1, D(0), "out", "", "gencdr-x")]  # type: ignore[arg-type]
    with pytest.raises(Exception):
        await insert_generated(store.db, broken)
    count = (await store.db.run_query("test_gencdr", "SELECT count(*) FROM tb_cdrs")).rows[0][0]
    assert int(count) == 3
    assert await insert_generated(store.db, []) == 0


@pytest_twisted.ensureDeferred
async def test_pool_free_numbers_and_locks(store: BillingStore) -> None:
    """The free numbers of the pool, oldest first; lock_number() reserves one only while it is free."""
    alice = await store.create_user("alice", "pw")
    bob = await store.create_user("bob", "pw")
    for number, userid, status in (("15550001", alice, 1), ("15550002", 0, 0), ("+15550003", 0, 0),
                                   ("15550004", 0, 1), ("15550005", 0, 0)):
        await store.db.run_statement(
            "test_pool", "INSERT INTO tb_phonenumbers (number, userid, status, created) VALUES (?, ?, ?, ?)",
            (number, userid, status, store.now()))
    ids = {row[1]: int(row[0]) for row in (await store.db.run_query(
        "test_pool", "SELECT id, number FROM tb_phonenumbers")).rows}
    assert await free_numbers(store.db, 10) == ["15550002", "+15550003", "15550005"]
    assert await free_numbers(store.db, 2) == ["15550002", "+15550003"]
    assert await first_free(store.db) == (ids["15550002"], "15550002")
    assert await first_free_of(store.db, "+15550003", "15550003") == (ids["+15550003"], "+15550003")
    assert await first_free_of(store.db, "15550003", "15550003") is None
    assert await first_free_of(store.db, "15550001", "15550001") is None
    assert await first_free_of(store.db, "15550004", "15550004") is None
    until = store.now().replace(microsecond=0) + timedelta(hours=1)
    assert await lock_number(store.db, ids["15550002"], bob, until) is True
    assert await lock_number(store.db, ids["15550002"], alice, until) is False
    assert await lock_number(store.db, ids["15550004"], alice, until) is False
    row = (await store.db.run_query("test_pool", "SELECT userid, status, lockeduntil FROM tb_phonenumbers WHERE id = ?",
                                    (ids["15550002"],))).one()
    assert row is not None and (int(row[0]), int(row[1]), store.db.engine.time(row[2])) == (bob, 1, until)
    assert await first_free(store.db) == (ids["+15550003"], "+15550003")
    assert await free_numbers(store.db, 10) == ["+15550003", "15550005"]


@pytest_twisted.ensureDeferred
async def test_forwards_are_set_and_only_forwarding_columns(store: BillingStore) -> None:
    """set_forwards() sets the forwarding columns given (empty clears) and refuses any other column."""
    alice = await store.create_user("alice", "pw")
    bob = await store.create_user("bob", "pw")

    async def forwards(userid: int) -> tuple[Any, ...] | None:
        return (await store.db.run_query(
            "test_forwards", f"SELECT {', '.join(FORWARD_COLUMNS)} FROM tb_users WHERE id = ?", (userid,))).one()

    await set_forwards(store.db, alice, {"forwardalways": "4412345", "forwardonnoanswer": "4499"})
    assert await forwards(alice) == ("4412345", "", "4499") and await forwards(bob) == ("", "", "")
    await set_forwards(store.db, alice, {"forwardalways": "", "forwardonbusy": "3312"})
    assert await forwards(alice) == ("", "3312", "4499")
    for bad in ({"credit": "100"}, {"forwardalways = '1', credit": "100"}, {}):
        with pytest.raises(ValueError):
            await set_forwards(store.db, alice, bad)
    assert await forwards(alice) == ("", "3312", "4499") and await store.balance(alice) == D(0)


@pytest_twisted.ensureDeferred
async def test_user_search(store: BillingStore) -> None:
    """search_users() finds any part of username, name, e-mail or phone ignoring case, with % and _ taken as
    themselves; users_named() finds an exact username or phone."""
    a = await store.create_user("a_b", "pw", name="Alice Smith", email="alice@example.com", phone="15550001")
    x = await store.create_user("axb", "pw", name="Bob", email="bob@100%.example", phone="15550002")
    c = await store.create_user("carol", "pw", name="CAROL", phone="a_b")
    assert await search_users(store.db, "a_b") == [UserMatch(a, "a_b", "Alice Smith", "alice@example.com",
                                                              "15550001"),
                                                    UserMatch(c, "carol", "CAROL", "", "a_b")]
    assert [m.id for m in await search_users(store.db, "SMITH")] == [a]
    assert [m.id for m in await search_users(store.db, "0%")] == [x]
    assert [m.id for m in await search_users(store.db, "example")] == [a, x]
    assert [m.id for m in await search_users(store.db, "arol")] == [c]
    assert await search_users(store.db, "a\\b") == []
    assert await users_named(store.db, "a_b") == [("a_b", "Alice Smith"), ("carol", "CAROL")]
    assert await users_named(store.db, "15550002") == [("axb", "Bob")]
    assert await users_named(store.db, "A_B") == [] and await users_named(store.db, "axb%") == []


@pytest_twisted.ensureDeferred
async def test_routing_entries_and_server_rows(store: BillingStore) -> None:
    """routing_entry_by_id() and routing_entry_named() find an entry's name and prefix (the oldest of a
    name); set_user_columns() and insert_route() write inside the caller's transaction, and a bad column name
    undoes it."""
    gw1 = await store.create_user("gw1", "pw", type=9)
    now = store.now()

    async def add(txn: Txn, name: str, prefix: str, priority: int) -> None:
        await insert_route(txn, name, prefix, gw1, priority, now)

    await store.db.run_interaction("test_route", add, "uk", "44", 1)
    await store.db.run_interaction("test_route", add, "uk", "4420", 2)
    await store.db.run_interaction("test_route", add, "fr", "33", 0)
    rows = (await store.db.run_query(
        "test_route", "SELECT id, name, prefix, serverid, priority, enabled, created FROM tb_routing ORDER BY id")).rows
    assert [(r[1], r[2], int(r[3]), int(r[4]), int(r[5]), store.db.engine.time(r[6])) for r in rows] == [
        ("uk", "44", gw1, 1, 1, now), ("uk", "4420", gw1, 2, 1, now), ("fr", "33", gw1, 0, 1, now)]
    first = int(rows[0][0])
    assert await routing_entry_by_id(store.db, first + 2) == ("fr", "33")
    assert await routing_entry_by_id(store.db, first + 99) is None
    assert await routing_entry_named(store.db, "uk") == ("uk", "44")
    assert await routing_entry_named(store.db, "UK") is None

    async def link(txn: Txn, userid: int) -> None:
        await set_user_columns(txn, userid, {"smsurl": "https://sms.example/?to={to}", "address": "Main St 1"})
        await insert_route(txn, "gw2", "", userid, 7, now)

    gw2 = await store.create_user("gw2", "pw", type=9, then=link)
    row = (await store.db.run_query("test_server", "SELECT smsurl, address FROM tb_users WHERE id = ?", (gw2,))).one()
    assert row == ("https://sms.example/?to={to}", "Main St 1")
    assert await routing_entry_named(store.db, "gw2") == ("gw2", "")

    async def bad_link(txn: Txn, userid: int) -> None:
        await insert_route(txn, "gw3", "", userid, 0, now)
        await set_user_columns(txn, userid, {"address": "x", "credit = 100, address": "y"})

    with pytest.raises(ValueError):
        await store.create_user("gw3", "pw", type=9, then=bad_link)
    assert await store.find_user("gw3") is None and await routing_entry_named(store.db, "gw3") is None
