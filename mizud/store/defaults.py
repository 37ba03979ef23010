"""Schema delta 16: every column of mizud's tables that an INSERT may leave out gets a default.

The spec shows operators adding users by SQL (C{insert into tb_users (type, username, password, name,
email, credit, postpaid) values (0, ...)}), and operators' scripts insert PINs and numbers the same way;
before this delta such an INSERT failed on the first required column it did not name (C{created}).

The rule, one for both engines: a column that is C{NOT NULL} without a default gets one from its type:
the current UTC time for timestamps (naive, as mizud writes them), 0 for numbers and money, the empty text
for text.  Two columns get a default of their own: C{tb_banned.until} lasts for ever (a ban inserted by
hand stays until it is lifted) and C{tb_serverkeys.value} is a random 256-bit key (on PostgreSQL two random
UUIDs: 244 random bits).  Columns that identify a row keep no default, because a default there would invent
an identity: the primary key, every column of a unique constraint or index (C{username}, C{pin},
C{number}, ...) and every column that refers to another table (the user of a ledger row or a claim).

PostgreSQL alters each column.  SQLite cannot alter a column's default, but its documented procedure for
"adding, removing, or changing default values on a column" (the ALTER TABLE page, "other kinds of table
schema changes") edits the table's definition in C{sqlite_master} under C{writable_schema} and bumps
C{schema_version}; the file's data is untouched, and an integrity check follows.
"""

from __future__ import annotations

from typing import Any

from .engines import Engine, PostgresEngine
from ..errors import StartupError
from .deltafiles import own_tables, typed_columns

#: Defaults that the type alone would get wrong, per engine: (table, column) -> SQL expression.
SPECIAL = {
    "sqlite": {
        ("tb_banned", "until"): "'9999-12-31 23:59:59.000000'",
        ("tb_serverkeys", "value"): "(lower(hex(randomblob(32))))",
    },
    "postgresql": {
        ("tb_banned", "until"): "'9999-12-31 23:59:59'",
        ("tb_serverkeys", "value"): "(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''))",
    },
}
#: The current UTC time as each engine stores mizud's timestamps ('YYYY-MM-DD HH:MM:SS.ffffff' text on
#: SQLite, whose clock gives milliseconds; a naive TIMESTAMP on PostgreSQL).
NOW = {
    "sqlite": "(strftime('%Y-%m-%d %H:%M:%f', 'now') || '000')",
    "postgresql": "(now() AT TIME ZONE 'utc')",
}
_NUMBERS = ("int", "numeric", "real", "double", "decimal")


def default_for(engine: Engine, table: str, column: str, declared: str, times: frozenset[str]) -> str:
    """The default expression for C{table.column} of type C{declared} (C{times}: the table's timestamps)."""
    special = SPECIAL[engine.name].get((table, column))
    if special is not None:
        return special
    if column in times or declared.lower().startswith("timestamp"):
        return NOW[engine.name]
    if any(word in declared.lower() for word in _NUMBERS):
        return "0"
    if declared.lower() == "boolean":
        return "false"
    return "''"


def add_defaults(cursor: Any, engine: Engine) -> None:
    """Give every required, non-identifying column of mizud's tables a default (on the migration's cursor)."""
    times = typed_columns(":timestamp:")
    if isinstance(engine, PostgresEngine):
        _postgres(cursor, engine, times)
    else:
        _sqlite(cursor, engine, times)


def _postgres(cursor: Any, engine: Engine, times: dict[str, frozenset[str]]) -> None:
    for table in own_tables(engine):
        cursor.execute(
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
            "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s::regclass AND (i.indisunique OR i.indisprimary) "
            "UNION SELECT a.attname FROM pg_constraint c JOIN pg_attribute a ON a.attrelid = c.conrelid "
            "AND a.attnum = ANY(c.conkey) WHERE c.conrelid = %s::regclass AND c.contype = 'f'", (table, table))
        identifying = {row[0] for row in cursor.fetchall()}
        cursor.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = current_schema() "
            "AND table_name = %s AND is_nullable = 'NO' AND column_default IS NULL AND is_identity = 'NO' "
            "ORDER BY ordinal_position", (table,))
        for column, declared in cursor.fetchall():
            if column in identifying:
                continue
            expression = default_for(engine, table, column, declared, times.get(table, frozenset()))
            cursor.execute(f'ALTER TABLE {table} ALTER COLUMN "{column}" SET DEFAULT {expression}')


def _sqlite(cursor: Any, engine: Engine, times: dict[str, frozenset[str]]) -> None:
    changed: dict[str, str] = {}
    for table in own_tables(engine):
        identifying: set[str] = set()
        cursor.execute(f"PRAGMA index_list({table})")
        for index in cursor.fetchall():
            if index[2]:  # unique, including the primary key's and UNIQUE constraints' own indexes
                cursor.execute(f"PRAGMA index_info('{index[1]}')")
                identifying.update(row[2] for row in cursor.fetchall())
        cursor.execute(f"PRAGMA foreign_key_list({table})")
        identifying.update(row[3] for row in cursor.fetchall())
        cursor.execute(f"PRAGMA table_info({table})")
        wanted = {}
        for _, column, declared, notnull, default, key in cursor.fetchall():
            if notnull and default is None and not key and column not in identifying:
                wanted[column] = default_for(engine, table, column, declared, times.get(table, frozenset()))
        if not wanted:
            continue
        cursor.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,))
        changed[table] = with_defaults(cursor.fetchone()[0], wanted)
    if not changed:
        return
    cursor.execute("PRAGMA schema_version")
    version = int(cursor.fetchone()[0])
    cursor.execute("PRAGMA writable_schema = ON")
    try:
        for table, sql in changed.items():
            cursor.execute("UPDATE sqlite_master SET sql = ? WHERE type = 'table' AND name = ?", (sql, table))
        cursor.execute(f"PRAGMA schema_version = {version + 1}")
    finally:
        cursor.execute("PRAGMA writable_schema = OFF")
    cursor.execute("PRAGMA quick_check")
    problems = [row[0] for row in cursor.fetchall() if row[0] != "ok"]
    if problems:
        raise StartupError(f"the schema check after adding defaults failed: {problems[0]}")


def with_defaults(create: str, wanted: dict[str, str]) -> str:
    """The C{CREATE TABLE} statement C{create} with C{DEFAULT expression} added to each column of C{wanted}.

    The column definitions are the parts of the outermost parentheses split at commas outside
    parentheses and quotes; a definition belongs to the column its first word names.
    """
    start, end = create.index("("), create.rindex(")")
    parts, depth, quote, current = [], 0, "", ""
    for char in create[start + 1:end]:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(current)
            current = ""
            continue
        current += char
    parts.append(current)
    missing = set(wanted)
    for number, part in enumerate(parts):
        words = part.split()
        name = words[0].strip('"`[]') if words else ""
        if name in missing:
            parts[number] = part.rstrip() + f" DEFAULT {wanted[name]}" + part[len(part.rstrip()):]
            missing.discard(name)
    if missing:
        raise StartupError(f"cannot find the definition of column {sorted(missing)[0]} to give it a default")
    return create[:start + 1] + ",".join(parts) + create[end:]
