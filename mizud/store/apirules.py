"""The access rules of tb_api, as rows (the dispatcher lays them over its built-in defaults)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from .database import Database


@dataclass(frozen=True)
class ApiRule:
    """One tb_api row (docs/schema.md names the columns)."""

    fname: str
    req_key: int
    req_ip: int
    req_user: int
    req_user_mode: int
    req_user_credit: Decimal
    req_user_register: int | None
    req_user_login: int | None
    customsql: str
    custom_action: int
    custom_action_body: str
    enabled: bool


async def load_rules(db: Database) -> list[ApiRule]:
    """Every row of tb_api."""
    result = await db.run_query(
        "load_tb_api",
        "SELECT fname, req_key, req_ip, req_user, req_user_mode, req_user_credit, req_user_register, "
        "req_user_login, customsql, custom_action, custom_action_body, enabled FROM tb_api",
    )
    return [ApiRule(str(row[0]), int(row[1]), int(row[2]), int(row[3]), int(row[4]), db.engine.money(row[5]),
                    None if row[6] is None else int(row[6]), None if row[7] is None else int(row[7]),
                    row[8] or "", int(row[9]), row[10] or "", bool(row[11]))
            for row in result.rows]
