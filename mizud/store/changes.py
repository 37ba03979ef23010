"""The change feed: which rows of the cached tables changed, told to the caches the moment it is known.

The caches of what every request reads (users, the tb_api rules, bans, routes
and traffic senders; on SQLite also each user's stored bindings and whether
messages wait for the user) are exact because every change to their tables
reaches this feed, however it was made:

  - SQLite (one process): temporary triggers on the writer's connection
    call back into Python for every changed row, so the store's own
    statements, the C{db} function and custom SQL are all seen; the writer
    hands the changes of a group to the reactor thread just before it
    answers the group's callers (L{SqliteDatabase}).  A backup restore or
    any other exclusive job counts as a change of everything.  Another
    program writing the file is not seen (SQLite is for one process):
    that includes, since the bindings and stored messages are cached
    too, registrations and messages written from outside.
  - PostgreSQL: triggers (schema delta 17) raise a NOTICE on the
    connection that made the change, read when its statement or
    transaction ends, so this node's own changes are seen before their
    caller is answered; and they send C{NOTIFY mizud_rows}, which every
    node's listener (L{mizud.store.notify}) passes to its feed, so changes
    by other nodes or by anyone's SQL arrive within milliseconds.  A
    node's NOTIFY of a change it was told by NOTICE is matched (by the
    changing transaction's id, delta 19) and not told again; one whose
    NOTICE never came (a session whose client_min_messages hides notices,
    say) is told when it arrives.  A TRUNCATE tells "every
    row" (delta 18).

On PostgreSQL a cache may only answer while the feed is I{confirmed}: the
listener asks the server a trivial question every L{CONFIRM_EVERY} seconds
on the listening connection, and an answer proves that every notification
committed before the question was asked has been delivered.  A cache
answers from memory only when the last confirmed question was asked less
than L{FRESH} seconds ago; otherwise it reads the database.  So a change
committed anywhere is visible everywhere within L{FRESH} seconds, or the
cache is not used at all.  After the listening connection is replaced,
everything counts as changed.

Caches never decide money: conditional updates stay in the database, and
on PostgreSQL a user's credit is not even notified (a NOTIFY per debit
would serialise every commit on the server's notification lock), so
L{ChangeFeed.credit} tells the store whether a cached balance may be shown.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from twisted.logger import Logger

from ..ratelimit import Clock

log = Logger()

#: The watched tables.
WATCHED = ("tb_users", "tb_api", "tb_banned", "tb_routing", "tb_registrations", "tb_messages")
#: The watched tables whose changes reach the feed on PostgreSQL (the triggers of deltas 17 to 19); the others
#: are told on SQLite only, so their caches answer from memory there only (L{ChangeFeed.tells}).
EVERY_ENGINE = ("tb_users", "tb_api", "tb_banned", "tb_routing")
#: The column a change of these tables is told by (their caches are by user): a user's bindings (which the
#: user's status and statusdate go with), and the messages stored for a user.
BY_USER = {"tb_registrations": "userid", "tb_messages": "touserid"}
#: tb_users columns whose change is told (the cached ones); tb_users.credit only on SQLite.
USER_COLUMNS = (
    "username", "password", "type", "currency", "postpaid", "creditlimit", "tariffid", "enabled",
    "temporarydisabled", "pin", "domain", "ip", "port", "proxy", "transport", "needauth", "serverrole",
)
#: The NOTIFY channel of row changes, and the prefix of the NOTICE telling the changing connection.
CHANNEL = "mizud_rows"
#: A confirmed feed is trusted for this long after the confirming question was asked (seconds).
FRESH = 0.1
#: Seconds between the listener's confirming questions.
CONFIRM_EVERY = 0.03
#: tb_users.type of rows that routing reads (traffic senders and SIP servers).
SERVER_TYPES = (5, 9)


@dataclass(frozen=True, slots=True)
class Change:
    """One changed row (C{id} None: possibly every row of C{table}); C{server} for a tb_users row that is
    (or was) a traffic sender or SIP server, which the routing caches read."""

    table: str
    id: int | None
    server: bool = False


def parse_told(payload: str) -> tuple[Change, int | None] | None:
    """A change and the id of the transaction that made it, from its trigger text: C{"table id"},
    C{"table id s"}, C{"table *"} (deltas 17 and 18), C{"table id s|- xid"} or C{"table * xid"} (delta
    19; C{*}: every row, a TRUNCATE); None for anything else (hostile text included: anyone who may
    NOTIFY can send some)."""
    parts = payload.split() if len(payload) <= 80 else []
    if len(parts) < 2 or parts[0] not in WATCHED:
        return None
    xid: int | None = None
    if parts[1] == "*":
        if len(parts) == 3 and _number(parts[2]):
            xid = int(parts[2])
        elif len(parts) != 2:
            return None
        return Change(parts[0], None, True), xid
    if not _number(parts[1]):
        return None
    if len(parts) == 2:
        return Change(parts[0], int(parts[1])), None
    if parts[2] not in ("s", "-") or len(parts) > 4 or (len(parts) == 3 and parts[2] != "s"):
        return None
    if len(parts) == 4:
        if not _number(parts[3]):
            return None
        xid = int(parts[3])
    return Change(parts[0], int(parts[1]), parts[2] == "s"), xid


def parse_change(payload: str) -> Change | None:
    """The change of a trigger text (L{parse_told}), without its transaction."""
    told = parse_told(payload)
    return told[0] if told is not None else None


def _number(text: str) -> bool:
    return text.isascii() and text.isdigit() and len(text) <= 19


class _Monotonic:
    """Seconds from the monotonic clock (a wall-clock step must not stretch the trust window)."""

    def seconds(self) -> float:
        """Monotonic seconds."""
        return time.monotonic()


#: The clock of the feeds' trust window and of the listener's questions.
MONOTONIC = _Monotonic()
#: How long a change told by its NOTICE waits for its own NOTIFY (which is then not told again).
ECHO_WAIT = 10.0


Listener = Callable[[Change], None]


class ChangeFeed:
    """Tells each table's listeners of its changed rows, synchronously, on the reactor thread."""

    def __init__(self, clock: Clock, confirmed: bool = True, credit: bool = True,
                 tables: Iterable[str] = EVERY_ENGINE) -> None:
        """C{confirmed} False: caches may not answer until L{confirm} is called (PostgreSQL); C{credit}
        False: changes of tb_users.credit are not told (PostgreSQL), so a cached balance is not current;
        C{tables}: the watched tables whose every change reaches this feed."""
        self.clock = clock
        self._tables = frozenset(tables)
        #: Whether changes of a user's credit are told (a cached balance is then current).
        self.credit = credit
        self._listeners: dict[str, list[Listener]] = {}
        self._after: dict[str, list[Callable[[], None]]] = {}
        self._needs_confirmation = not confirmed
        self._confirmed = float("-inf")
        #: How many changes have been told (tests, metrics).
        self.told = 0
        #: Changes told from a NOTICE, by (transaction id, change), and when: their NOTIFY is not told again.
        self._echoes: OrderedDict[tuple[int, Change], float] = OrderedDict()

    def tells(self, table: str) -> bool:
        """Whether every change of C{table} reaches this feed (else no cache of it may answer from memory)."""
        return table in self._tables

    def watch(self, table: str, listener: Listener) -> None:
        """Call C{listener(change)} for every change of C{table}."""
        if table not in WATCHED:
            raise ValueError(f"{table} is not watched")
        self._listeners.setdefault(table, []).append(listener)

    def after(self, table: str, callback: Callable[[], None]) -> None:
        """Call C{callback()} once after each telling that changed C{table} (to reload a whole table once
        for a group of changes)."""
        if table not in WATCHED:
            raise ValueError(f"{table} is not watched")
        self._after.setdefault(table, []).append(callback)

    def tell(self, changes: Iterable[Change]) -> None:
        """These rows changed: tell their listeners now (a failing listener is logged; the rest are told)."""
        tables = set()
        for change in changes:
            self.told += 1
            tables.add(change.table)
            for listener in self._listeners.get(change.table, ()):
                _safely(listener, change)
        for table in tables:
            for callback in self._after.get(table, ()):
                _safely(callback)

    def told_directly(self, told: Iterable[tuple[int, Change]]) -> None:
        """These changes, by the id of the transaction that made them, were told from its NOTICEs: their
        NOTIFYs need not be told again.  (An expectation whose NOTIFY never comes -- a transaction rolled
        back -- can only ever match that same transaction, and is forgotten after L{ECHO_WAIT}.)"""
        now = self.clock.seconds()
        echoes = self._echoes
        for key in told:
            echoes.pop(key, None)
            echoes[key] = now
        while echoes:
            oldest, when = next(iter(echoes.items()))
            if now - when < ECHO_WAIT and len(echoes) <= 100_000:
                break
            del echoes[oldest]

    def echo(self, xid: int, change: Change) -> bool:
        """Whether a NOTIFY of transaction C{xid} repeats a change already told from that transaction's
        NOTICE (then there is nothing to tell)."""
        return self._echoes.pop((xid, change), None) is not None

    def everything(self) -> None:
        """Anything may have changed (a restore, a lost listening connection); echoes expected so far are
        forgotten (their NOTIFYs may never come)."""
        self._echoes.clear()
        self.tell(Change(table, None, True) for table in WATCHED)

    def confirm(self, asked: float) -> None:
        """Every change committed before time C{asked} has been told (the listener's question answered)."""
        self._confirmed = max(self._confirmed, asked)

    def unconfirm(self) -> None:
        """The listening connection is gone: nothing is confirmed until it is back."""
        self._confirmed = float("-inf")

    def trusted(self) -> bool:
        """Whether a cache may answer from memory now."""
        return not self._needs_confirmation or self.clock.seconds() - self._confirmed < FRESH


def _safely(callback: Callable[..., Any], *args: Any) -> None:
    """Call a listener; its failure is logged and goes no further (the caller must still answer)."""
    try:
        callback(*args)
    except Exception:
        log.failure("a cache failed to take a change")


def sqlite_triggers(tables: Iterable[str]) -> list[str]:
    """The temporary triggers that tell a SQLite connection's function C{mizud_changed(table, id, server)}
    of every change to those of the watched tables that exist (C{tables})."""
    statements = []
    for table in WATCHED:
        if table not in tables:
            continue
        users = table == "tb_users"
        # A user's status (written by registrations) is not in the user cache: its change is told as a
        # change of the user's bindings (below), which the registrar's snapshot of them goes with.
        columns = f"OF {', '.join(('id', 'credit') + USER_COLUMNS)} " if users else ""
        server_new = "NEW.type IN (5, 9)" if users else "0"
        server_old = "OLD.type IN (5, 9)" if users else "0"
        key = BY_USER.get(table, "id")
        statements += [
            f"CREATE TEMP TRIGGER IF NOT EXISTS mizud_{table}_inserted AFTER INSERT ON main.{table} "
            f"BEGIN SELECT mizud_changed('{table}', NEW.{key}, {server_new}); END",
            f"CREATE TEMP TRIGGER IF NOT EXISTS mizud_{table}_updated AFTER UPDATE {columns}ON main.{table} "
            f"BEGIN SELECT mizud_changed('{table}', OLD.{key}, {server_old} OR {server_new}); "
            f"SELECT mizud_changed('{table}', NEW.{key}, {server_new}) WHERE NEW.{key} <> OLD.{key}; END",
            f"CREATE TEMP TRIGGER IF NOT EXISTS mizud_{table}_deleted AFTER DELETE ON main.{table} "
            f"BEGIN SELECT mizud_changed('{table}', OLD.{key}, {server_old}); END",
        ]
        if users and "tb_registrations" in tables:
            # Any way a user's status can change -- an UPDATE, a REPLACE (a delete and an insert), a user
            # deleted or inserted with an id that had bindings -- tells that user's bindings.
            statements += [
                "CREATE TEMP TRIGGER IF NOT EXISTS mizud_tb_users_status AFTER UPDATE OF id, status, statusdate "
                "ON main.tb_users BEGIN SELECT mizud_changed('tb_registrations', OLD.id, 0); "
                "SELECT mizud_changed('tb_registrations', NEW.id, 0) WHERE NEW.id <> OLD.id; END",
                "CREATE TEMP TRIGGER IF NOT EXISTS mizud_tb_users_status_inserted AFTER INSERT ON main.tb_users "
                "BEGIN SELECT mizud_changed('tb_registrations', NEW.id, 0); END",
                "CREATE TEMP TRIGGER IF NOT EXISTS mizud_tb_users_status_deleted AFTER DELETE ON main.tb_users "
                "BEGIN SELECT mizud_changed('tb_registrations', OLD.id, 0); END",
            ]
    return statements


__all__ = ["BY_USER", "CHANNEL", "Change", "ChangeFeed", "EVERY_ENGINE", "FRESH", "MONOTONIC", "USER_COLUMNS", "WATCHED", "parse_change", "parse_told", "sqlite_triggers"]
