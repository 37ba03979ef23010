"""The pool of phone numbers (tb_phonenumbers) as users see it: the free numbers, and a reservation of
one (C{getphonenumbers}, C{lockphonenumbers}).  A number is free while its status is 0 and no user
holds it."""

from __future__ import annotations

from datetime import datetime

from .database import Database


async def free_numbers(db: Database, count: int) -> list[str]:
    """At most C{count} free numbers of the pool, oldest first."""
    result = await db.run_query(
        "free_numbers", "SELECT number FROM tb_phonenumbers WHERE status = 0 AND userid = 0 ORDER BY id LIMIT ?",
        (count,))
    return [str(row[0]) for row in result.rows]


async def first_free(db: Database) -> tuple[int, str] | None:
    """(id, number) of the oldest free number of the pool, or None when none is free."""
    row = (await db.run_query(
        "free_number", "SELECT id, number FROM tb_phonenumbers WHERE status = 0 AND userid = 0 "
        "ORDER BY id LIMIT 1")).one()
    return (int(row[0]), str(row[1])) if row is not None else None


async def first_free_of(db: Database, number: str, normalised: str) -> tuple[int, str] | None:
    """(id, number) of the free number of the pool written C{number} or C{normalised} (the oldest, if
    both are), or None when neither is free."""
    row = (await db.run_query(
        "free_number", "SELECT id, number FROM tb_phonenumbers WHERE status = 0 AND userid = 0 "
        "AND number IN (?, ?) ORDER BY id LIMIT 1", (number, normalised))).one()
    return (int(row[0]), str(row[1])) if row is not None else None


async def lock_number(db: Database, numberid: int, userid: int, until: datetime) -> bool:
    """Reserve the number C{numberid} for C{userid} until C{until} if it is still free; whether it was
    (False: another caller took it first)."""
    taken = await db.run_statement(
        "lock_number",
        "UPDATE tb_phonenumbers SET userid = ?, status = 1, lockeduntil = ? WHERE id = ? AND status = 0 AND userid = 0",
        (userid, until, numberid),
    )
    return taken.rowcount == 1
