"""Operator-written SQL: the customsql of tb_api rules and the sql custom actions.

The statements come from tb_api (only an admin can write them) with their
values bound as parameters by L{mizud.api.custom.bind}; here they run.
"""

from __future__ import annotations

from typing import Any, Sequence

from .database import Database


async def custom_query(db: Database, statement: str, params: Sequence[Any], limit: int) -> list[dict[str, Any]]:
    """At most C{limit} rows of a query, each a dict by column name."""
    result = await db.run_statement("custom_sql", f"SELECT * FROM ({statement}) AS custom_query LIMIT ?",
                                    [*params, int(limit)])
    return [dict(zip(result.columns, row)) for row in result.rows]


async def custom_statement(db: Database, statement: str, params: Sequence[Any], name: str = "custom_sql") -> int:
    """Run a statement that returns no rows; how many rows it changed (0 when the engine cannot tell)."""
    result = await db.run_statement(name, statement, params)
    return max(result.rowcount, 0)
