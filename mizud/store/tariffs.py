"""The tariffs (tb_tariffs): read whole into the rating table, and one plan replaced at a time.

The reading runs in a worker thread on a blocking connection of its own
(neither the query nor the building of the table touches the reactor
thread); what the rows become is L{mizud.billing.rating}'s business.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, TypeVar

from .database import Database, Txn
from .engines import Engine, PostgresEngine, SqliteEngine, is_postgres

T = TypeVar("T")

#: The columns of a tariff row, in the order L{read_tariffs} gives them and L{replace_plan} takes them.
_SELECT = ("SELECT tariffid, prefix, name, price, connectfee, mininterval, interval, currency, smsprice "
           "FROM tb_tariffs")


def read_tariffs(database: str, build: Callable[[Iterable[tuple[Any, ...]], Engine], T]) -> T:
    """Read every tariff row of the C{database} option on a blocking connection and return what C{build}
    makes of the rows (tariffid, prefix, name, price, connectfee, mininterval, interval, currency, smsprice)
    and the engine that reads their values; the connection is closed after."""
    if is_postgres(database):
        import psycopg2

        connection = psycopg2.connect(database)
        try:
            with connection.cursor() as cursor:
                cursor.execute(_SELECT)
                return build(cursor, PostgresEngine())
        finally:
            connection.close()
    # Read-only: closing it never checkpoints the WAL, which could hold the
    # interpreter for a long moment after a big import.
    lite = sqlite3.connect(Path(database).absolute().as_uri() + "?mode=ro", uri=True)
    try:
        return build(lite.execute(_SELECT), SqliteEngine())
    finally:
        lite.close()


async def tariff_listing(db: Database, plan: int, prefix: str, most: int) -> list[tuple[Any, ...]]:
    """Up to C{most} tariffs of C{plan} whose prefix starts with C{prefix}, in prefix order: (prefix, name, price,
    connectfee, mininterval, interval, currency, smsprice), money as Decimals."""
    result = await db.run_query(
        "tariff_listing",
        "SELECT prefix, name, price, connectfee, mininterval, interval, currency, smsprice FROM tb_tariffs "
        "WHERE tariffid = ? AND substr(prefix, 1, ?) = ? ORDER BY prefix LIMIT ?",
        (plan, len(prefix), prefix, most))
    money = db.engine.money
    return [(r[0], r[1], money(r[2]), money(r[3]), int(r[4]), int(r[5]), r[6], money(r[7])) for r in result.rows]


async def replace_plan(db: Database, plan: int, rows: Sequence[tuple[Any, ...]]) -> int:
    """Replace every tariff of C{plan} with C{rows} (prefix, name, price, connectfee, mininterval, interval,
    currency, smsprice), in one transaction; how many."""

    async def replace_plan_txn(txn: Txn) -> int:
        await txn.execute("DELETE FROM tb_tariffs WHERE tariffid = ?", (plan,))
        for row in rows:
            await txn.execute(
                "INSERT INTO tb_tariffs (tariffid, prefix, name, price, connectfee, mininterval, interval, currency, "
                "smsprice) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", (plan, *row))
        return len(rows)

    return await db.run_interaction("replace_tariff_plan", replace_plan_txn)
