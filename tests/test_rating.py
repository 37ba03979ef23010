"""The rating engine: normalisation, longest prefix, cost, CSV import, and the API functions."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet import reactor as global_reactor
from urllib.parse import quote

from mizud.billing.rating import RatingTable, Tariff, normalise
from mizud.billing.tariffs import TariffError, parse_csv
from test_api_dispatch import KEY, make_harness

D = Decimal


def tariff(prefix: str, price: str = "0.06", fee: str = "0", minimum: int = 0, step: int = 1, plan: int = 1) -> Tariff:
    """A tariff for tests."""
    return Tariff(plan, prefix, f"dest {prefix}", D(price), D(fee), minimum, step, "EUR")


@pytest.mark.parametrize(
    "dialled, digits",
    [("+36 30 123-4567", "36301234567"), ("0036(30)1234567", "36301234567"), ("3630", "3630"), ("12a", None), ("", None), ("+", None)],
)
def test_normalise(dialled: str, digits: str | None) -> None:
    """+, 00, spaces and punctuation go; anything else that is not a digit makes it invalid."""
    assert normalise(dialled) == digits


def test_longest_prefix_wins_within_the_plan() -> None:
    """The longest matching prefix of the user's plan is chosen; other plans do not leak."""
    table = RatingTable([tariff("3"), tariff("36"), tariff("3630"), tariff("44", plan=2)])
    assert table.lookup(1, "36301234567").prefix == "3630"  # type: ignore[union-attr]
    assert table.lookup(1, "36201234567").prefix == "36"  # type: ignore[union-attr]
    assert table.lookup(1, "3").prefix == "3"  # type: ignore[union-attr]
    assert table.lookup(1, "44123") is None
    assert table.lookup(2, "44123").prefix == "44"  # type: ignore[union-attr]
    assert table.lookup(3, "36") is None
    assert table.size == 4


@pytest.mark.parametrize(
    "seconds, expected",
    [(0, "0"), (1, "0.04"), (30, "0.04"), (31, "0.046"), (36, "0.046"), (37, "0.052"), (3600, "3.61")],
)
def test_cost_rules(seconds: int, expected: str) -> None:
    """Connect fee + price per minute x max(N, minimum) rounded up to the increment."""
    t = tariff("36", price="0.06", fee="0.01", minimum=30, step=6)
    assert t.cost(seconds) == D(expected)


def test_cost_rounds_up_to_six_places() -> None:
    """A cost with more than six places is rounded up, never down."""
    t = tariff("1", price="0.000001", step=1)
    assert t.cost(1) == D("0.000001")  # 0.0000000166.. rounds up


CSV = "prefix,name,price,connectfee,mininterval,interval,currency\n36,Hungary,0.02,0,0,1,EUR\n+36 30,Hungary mobile,0.0456,0.01,30,6,EUR\n"


def test_parse_csv() -> None:
    """A valid file gives its tariffs, prefixes normalised, defaults filled in."""
    tariffs = parse_csv(CSV, 7, "USD")
    assert [(t.prefix, t.price, t.mininterval, t.interval, t.tariffid) for t in tariffs] == [
        ("36", D("0.02"), 0, 1, 7), ("3630", D("0.0456"), 30, 6, 7)
    ]
    short = parse_csv("prefix,price\n1,0.1\n", 1, "USD")[0]
    assert (short.name, short.connectfee, short.interval, short.currency) == ("", D(0), 1, "USD")


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "line 1: empty file"),
        ("prefix,cost\n", "line 1: unknown column 'cost'"),
        ("name,price\n", "line 1: the header needs a prefix column"),
        ("prefix,price\n1,0.1\n2,-0.1\n", "line 3: amount must not be negative"),
        ("prefix,price\n1,0.1\n1,0.2\n", "line 3: prefix 1 repeats line 2"),
        ("prefix,price\nabc,0.1\n", "line 2: prefix must be digits"),
        ("prefix,price,interval\n1,0.1,0\n", "line 2: interval must be a whole number"),
        ("prefix,price\n1,0.1234567\n", "line 2: amount has more than 6 decimal places"),
        ("prefix,price,currency\n1,0.1,euro\n", "line 2: currency must be a three-letter code"),
        ("prefix,price\n1,0.1,extra\n", "line 2: 3 fields, the header has 2"),
    ],
)
def test_parse_csv_refusals(text: str, message: str) -> None:
    """Any invalid row rejects the file, naming the line."""
    with pytest.raises(TariffError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_csv(text, 1, "USD")


async def rating_flow(tmp_path: Path, database: str | None) -> None:
    """Import a plan over the API, rate against it, refuse a bad file without changes."""
    h = await make_harness(tmp_path, "defaulttariff=7", database=database)
    imported = await h.call(f"apientry=importtariffs&tariffid=7&csv={quote(CSV)}", "127.0.0.1")
    assert imported.text == "OK: 2 tariffs imported into plan 7; 2 tariffs loaded"
    auth = f"authkey={KEY}&authid=alice&authpwd=alicepw"
    answer = await h.call(f"apientry=rating&{auth}&bnum=%2B3630123")
    assert answer.text == "OK: 0.0456 EUR 3630 Hungary mobile"
    assert answer.records == [{"prefix": "3630", "name": "Hungary mobile", "price": "0.0456", "currency": "EUR",
                               "connectfee": "0.01", "mininterval": 30, "interval": 6, "plan": 7}]
    assert (await h.call(f"apientry=rating&{auth}&bnum=44")).text == "ERROR: no tariff for 44 in plan 7"
    assert (await h.call(f"apientry=rating&{auth}&bnum=abc")).status == 421
    assert (await h.call(f"apientry=rating&{auth}")).text == "ERROR: missing parameter: bnum"
    bad = await h.call(f"apientry=importtariffs&tariffid=7&csv={quote('prefix,price' + chr(10) + '9,x')}", "127.0.0.1")
    assert bad.text.startswith("ERROR: tariff file refused: line 2:")
    assert (await h.call(f"apientry=rating&{auth}&bnum=36")).text == "OK: 0.02 EUR 36 Hungary"
    denied = await h.call(f"apientry=importtariffs&{auth}&tariffid=7&csv={quote(CSV)}")
    assert denied.text == "ERROR: access denied"
    await h.db.run_statement("x", "UPDATE tb_users SET tariffid = 9 WHERE username = 'alice'")
    assert (await h.call(f"apientry=rating&{auth}&bnum=36")).text == "ERROR: no tariff for 36 in plan 9"
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_rating_api_sqlite(tmp_path: Path) -> None:
    """Import and rating over the API, on SQLite."""
    await rating_flow(tmp_path, None)


@pytest_twisted.ensureDeferred
async def test_rating_api_postgres(tmp_path: Path, pg_database: str) -> None:
    """Import and rating over the API, on PostgreSQL."""
    await rating_flow(tmp_path, pg_database)


@pytest_twisted.ensureDeferred
async def test_concurrent_rebuilds_share_one_load(tmp_path: Path) -> None:
    """Rebuilds asked for while one runs wait for it instead of starting more."""
    from mizud.billing.rating import Rater

    loads: list[str] = []

    def loader(database: str) -> RatingTable:
        loads.append(database)
        return RatingTable([tariff("1")])

    rater = Rater("x", global_reactor, loader)
    tables = await defer.gatherResults([rater.rebuild(), rater.rebuild(), rater.rebuild()])
    assert len(loads) == 1 and all(t is tables[0] for t in tables)
    assert rater.table.lookup(1, "1") is not None


@pytest_twisted.ensureDeferred
async def test_rebuild_swaps_and_retires_the_old_table() -> None:
    """A rebuild swaps the new table in, leaves the collector enabled, and dismantles the old one."""
    import gc

    from mizud.billing.rating import Rater

    tables = iter([RatingTable([tariff("1")]), RatingTable([tariff("2")])])
    rater = Rater("x", global_reactor, lambda database: next(tables))
    first = await rater.rebuild()
    second = await rater.rebuild()
    assert rater.table is second and second.lookup(1, "2") is not None
    assert gc.isenabled()
    for _ in range(500):
        if first.lookup(1, "1") is None:
            break
        await _later()
    assert first.lookup(1, "1") is None  # dismantled in a worker thread


async def _later() -> None:
    """Yield to the reactor briefly."""
    from twisted.internet.task import deferLater

    await deferLater(global_reactor, 0.02, lambda: None)
