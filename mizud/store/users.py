"""tb_users rows the user functions read and change on their own: call forwarding (C{callforward}) and
the user search (C{search})."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from .database import Database
from .identifiers import identifier

#: The forwarding columns of tb_users: always, on busy, on no answer.
FORWARD_COLUMNS = ("forwardalways", "forwardonbusy", "forwardonnoanswer")


async def set_forwards(db: Database, userid: int, numbers: Mapping[str, str]) -> None:
    """Set forwarding columns (of L{FORWARD_COLUMNS}) of the user to the numbers given (an empty one
    clears it), in one statement.  Raises L{ValueError} for another column, or none."""
    if not numbers:
        raise ValueError("no forwarding column to set")
    for column in numbers:
        if identifier(column) not in FORWARD_COLUMNS:
            raise ValueError(f"not a forwarding column: {column[:40]!r}")
    assignments = ", ".join(f"{column} = ?" for column in numbers)
    await db.run_statement("callforward", f"UPDATE tb_users SET {assignments} WHERE id = ?",
                           (*numbers.values(), userid))


@dataclass(frozen=True)
class UserMatch:
    """A user an admin's search found."""

    id: int
    username: str
    name: str
    email: str
    phone: str


async def search_users(db: Database, text: str) -> list[UserMatch]:
    """The first 100 users (by id) with C{text} in their username, name, e-mail or phone, ignoring case
    (C{%}, C{_} and C{\\} in C{text} are themselves)."""
    pattern = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    condition = " OR ".join(f"lower({c}) LIKE lower(?) ESCAPE '\\'" for c in ("username", "name", "email", "phone"))
    result = await db.run_statement(
        "search", f"SELECT id, username, name, email, phone FROM tb_users WHERE {condition} ORDER BY id LIMIT 100",
        (pattern,) * 4,
    )
    return [UserMatch(row[0], row[1], row[2], row[3], row[4]) for row in result.rows]


async def users_named(db: Database, text: str) -> list[tuple[str, str]]:
    """(username, name) of the first 10 users (by id) whose username or phone is exactly C{text}."""
    result = await db.run_query(
        "search", "SELECT username, name FROM tb_users WHERE username = ? OR phone = ? ORDER BY id LIMIT 10",
        (text, text),
    )
    return [(row[0], row[1]) for row in result.rows]
