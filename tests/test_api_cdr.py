"""The cdr function: the spec's worked examples, visibility, paging, bad input; and gencdr."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest_twisted

from mizud.store.billing import USER_RESELLER
from test_api_dispatch import KEY, Harness, make_harness

NOW = datetime(2027, 1, 15, 8, 0, 0)  # the harness clock
ALICE = f"authkey={KEY}&authid=alice&authpwd=alicepw"


async def add_cdr(h: Harness, user: str, ago: timedelta, called: str, duration: int, cost: str,
                  direction: str = "out", gatewaycost: str = "0") -> None:
    """Insert one CDR for a user."""
    found = await h.store.find_user(user)
    assert found is not None
    await h.db.run_statement(
        "x",
        "INSERT INTO tb_cdrs (datum, callerid, callednumber, userid, duration, cost, gatewaycost, direction) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (NOW - ago, user, called, found.id, duration, Decimal(cost), Decimal(gatewaycost), direction),
    )


async def world(tmp_path: Path, database: str | None) -> Harness:
    """alice with calls today, this month and earlier; bob (alice's reseller customer? no: reseller rita's) too."""
    h = await make_harness(tmp_path, database=database)
    rita = await h.store.create_user("rita", "ritapw", type=USER_RESELLER)
    await h.store.create_user("bob", "bobpw", parentid=rita)
    await add_cdr(h, "alice", timedelta(hours=1), "4012345", 60, "0.10", gatewaycost="0.04")
    await add_cdr(h, "alice", timedelta(hours=2), "3630111", 0, "0")
    await add_cdr(h, "alice", timedelta(hours=3), "3630222", 30, "0.05", direction="in")
    await add_cdr(h, "alice", timedelta(hours=4), "3630333", 0, "0", direction="in")
    await add_cdr(h, "alice", timedelta(days=3), "4099999", 120, "0.20", gatewaycost="0.10")
    await add_cdr(h, "alice", timedelta(days=20), "4411111", 10, "0.01")
    await add_cdr(h, "bob", timedelta(hours=5), "4055555", 600, "1.00", gatewaycost="0.70")
    return h


async def scenario(tmp_path: Path, database: str | None) -> None:
    """Every worked example of the spec, on one engine."""
    h = await world(tmp_path, database)
    today = await h.call(f"apientry=cdr&{ALICE}&days=today&by=all")
    assert today.records == [{"all": "all", "calls": 4, "connected": 2, "duration": 90, "cost": "0.15"}]
    month = await h.call(f"apientry=cdr&{ALICE}&days=thismonth&by=all")
    assert month.records == [{"all": "all", "calls": 5, "connected": 3, "duration": 210, "cost": "0.35"}]
    profit = await h.call("apientry=cdr&days=today&by=all&fields=all", "127.0.0.1")
    assert profit.records == [{"all": "all", "calls": 5, "connected": 3, "duration": 690, "cost": "1.15", "profit": "0.41"}]
    listing = await h.call(f"apientry=cdr&{ALICE}&days=today")
    assert [r["callednumber"] for r in listing.records or []] == ["4012345", "3630111", "3630222", "3630333"]
    assert (listing.records or [{}])[0] == {"id": (listing.records or [{}])[0]["id"], "datum": "2027-01-15 07:00:00",
                                             "callerid": "alice", "callednumber": "4012345", "duration": 60,
                                             "cost": "0.10", "direction": "out", "disconnectreason": ""}
    assert len((await h.call(f"apientry=cdr&{ALICE}&days=lastweek")).records or []) == 5
    assert len((await h.call(f"apientry=cdr&{ALICE}&days=lastmonth")).records or []) == 6
    summary = await h.call(f"apientry=cdr&{ALICE}&days=thismonth&summary=yes")
    assert summary.text == "OK: 5 calls; total 5 calls, 210 s, cost 0.35"
    alice = await h.store.find_user("alice")
    assert alice is not None
    by_user = await h.call(f"apientry=cdr&days=10&caller={alice.id}&prefix=40", "127.0.0.1")
    assert [r["callednumber"] for r in by_user.records or []] == ["4012345", "4099999"]
    missed = await h.call(f"apientry=cdr&{ALICE}&days=lastweek&dir=in&type=notconnected")
    assert [r["callednumber"] for r in missed.records or []] == ["3630333"]
    per_day = await h.call(f"apientry=cdr&{ALICE}&days=lastweek&by=day")
    assert [(r["day"], r["calls"]) for r in per_day.records or []] == [("2027-01-12", 1), ("2027-01-15", 4)]
    # Visibility: bob's record is not alice's; rita (bob's reseller) sees it; admins see all.
    assert "4055555" not in str((await h.call(f"apientry=cdr&{ALICE}&days=today")).records)
    rita = await h.call(f"apientry=cdr&authkey={KEY}&authid=rita&authpwd=ritapw&days=today")
    assert [r["callednumber"] for r in rita.records or []] == ["4055555"]
    # Stable paging.
    page1 = await h.call(f"apientry=cdr&{ALICE}&days=lastmonth&maxcount=2&order=called")
    page2 = await h.call(f"apientry=cdr&{ALICE}&days=lastmonth&maxcount=2&order=called&offset=2")
    names = [r["callednumber"] for r in (page1.records or []) + (page2.records or [])]
    assert names == ["3630111", "3630222", "3630333", "4012345"]
    # Bad input.
    for query in ("days=yesterday", "dir=sideways", "type=x", "fields=some", "by=week", "order=cost", "maxcount=0",
                  "prefix=4a", "offset=-1"):
        answer = await h.call(f"apientry=cdr&{ALICE}&{query}")
        assert not answer.ok and answer.status == 412, (query, answer.text)
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_cdr_sqlite(tmp_path: Path) -> None:
    """The spec's CDR examples on SQLite."""
    await scenario(tmp_path, None)


@pytest_twisted.ensureDeferred
async def test_cdr_postgres(tmp_path: Path, pg_database: str) -> None:
    """The spec's CDR examples on PostgreSQL."""
    await scenario(tmp_path, pg_database)


@pytest_twisted.ensureDeferred
async def test_gencdr(tmp_path: Path) -> None:
    """gencdr writes priced test records for a user; admins only."""
    h = await make_harness(tmp_path)
    alice = await h.store.find_user("alice")
    assert alice is not None
    assert (await h.call(f"apientry=gencdr&count=25&userid={alice.id}&days=2", "127.0.0.1")).text == (
        "OK: 25 CDRs generated for alice"
    )
    assert (await h.db.run_query("x", "SELECT count(*) FROM tb_cdrs WHERE userid = ?", (alice.id,))).rows[0][0] == 25
    assert (await h.call(f"apientry=gencdr&{ALICE}&count=1", "10.0.0.2")).text == "ERROR: access denied"
    assert (await h.call("apientry=gencdr&count=0", "127.0.0.1")).status == 412
    await h.db.close()
