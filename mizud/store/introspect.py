"""What the database says about itself: its tables and columns (for setfield/getfield and the db
function's checks) and the locks being waited for (the console's locks command)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .database import Database
from .identifiers import identifier


async def table_columns(db: Database) -> dict[str, set[str]]:
    """Every table of the schema (SQLite: the tb_ tables) and its columns."""
    tables: dict[str, set[str]] = {}
    if db.engine.name == "postgresql":
        result = await db.run_query(
            "schema", "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = current_schema()"
        )
        for table, column in result.rows:
            tables.setdefault(table, set()).add(column)
        return tables
    names = await db.run_query("schema", "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'tb_%'")
    for (table,) in names.rows:
        columns = await db.run_query("schema", "SELECT name FROM pragma_table_info(?)", (table,))
        tables[table] = {c[0] for c in columns.rows}
    return tables


class Columns:
    """The tables and their columns as L{table_columns} reads them, read once and kept until L{forget}
    (the db function runs arbitrary SQL, which may change them)."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._known: dict[str, set[str]] | None = None

    async def tables(self) -> dict[str, set[str]]:
        """Every table and its columns, from memory after the first read."""
        if self._known is None:
            self._known = await table_columns(self._db)
        return self._known

    def forget(self) -> None:
        """Read them again next time."""
        self._known = None


@dataclass(frozen=True)
class LockWait:
    """A lock a PostgreSQL session waits for."""

    pid: int
    locktype: str
    relation: str
    mode: str
    seconds: float
    query: str


async def lock_waits(db: Database) -> list[LockWait] | None:
    """The locks being waited for in this database, longest wait first; None on SQLite (one writer, no
    lock table: what waits is the writer's queue)."""
    if db.engine.name != "postgresql":
        return None
    result = await db.run_query(
        "locks",
        "SELECT l.pid, l.locktype, coalesce(l.relation::regclass::text, ''), l.mode, "
        "coalesce(extract(epoch FROM now() - a.query_start), 0), left(coalesce(a.query, ''), 200) "
        "FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid WHERE NOT l.granted "
        "AND (l.database IS NULL OR l.database = (SELECT oid FROM pg_database WHERE datname = current_database())) "
        "ORDER BY 5 DESC")
    return [LockWait(int(r[0]), r[1], r[2], r[3], float(r[4]), r[5]) for r in result.rows]


async def set_field(db: Database, table: str, column: str, value: Any, rowid: int, *, only_if_empty: bool = False
                    ) -> int:
    """Set one field of one row by id (setfield); with C{only_if_empty}, only while it is NULL or empty.
    How many rows changed (0 or 1)."""
    table, column = identifier(table), identifier(column)
    condition = f" AND ({column} IS NULL OR {column} = '')" if only_if_empty else ""
    result = await db.run_statement("setfield", f"UPDATE {table} SET {column} = ? WHERE id = ?{condition}",
                                    (value, rowid))
    return result.rowcount


async def get_field(db: Database, table: str, wanted: str, column: str, value: Any) -> tuple[bool, Any]:
    """The field C{wanted} of the first row (by id) whose C{column} equals C{value} (getfield):
    (found, the value)."""
    table, wanted, column = identifier(table), identifier(wanted), identifier(column)
    result = await db.run_query("getfield", f"SELECT {wanted} FROM {table} WHERE {column} = ? ORDER BY id LIMIT 1",
                                (value,))
    return (True, result.rows[0][0]) if result.rows else (False, None)
