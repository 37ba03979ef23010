"""The rating engine: longest-prefix tariff match and exact call cost.

Tariffs (C{tb_tariffs}) are held in memory as one dict per plan, prefix ->
L{Tariff}.  A lookup normalises the dialled number (spaces, dashes, dots and
brackets dropped; a leading C{+} or C{00} removed) and probes the plan's
dict from the longest possible prefix down, so it costs at most as many dict
probes as the plan's longest prefix has digits.

A L{RatingTable} is immutable.  L{Rater} builds a new one off the reactor
thread (reading C{tb_tariffs} on its own blocking connection) and swaps it
in with one assignment, so a lookup never waits for a rebuild.

Cost of a call of N seconds (N > 0): connect fee + price per minute x
billed seconds / 60, where billed = max(N, mininterval) rounded up to a
multiple of the increment (C{interval}); rounded up to six decimals, so
rounding never undercharges.  An unanswered call (N = 0) costs nothing.
"""

from __future__ import annotations

import math
import sqlite3
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from typing import Any, Callable, Iterable, Mapping

from ..store.engines import QUANTUM, Engine, PostgresEngine, SqliteEngine

_DROP = str.maketrans("", "", " -.()/\t")


def normalise(number: str) -> str | None:
    """Digits of a dialled number without C{+}/C{00}; None if it has other characters."""
    text = number.strip().translate(_DROP)
    if text.startswith("+"):
        text = text[1:]
    elif text.startswith("00"):
        text = text[2:]
    if not text or not text.isdigit() or len(text) > 32:
        return None
    return text


@dataclass(frozen=True, slots=True)
class Tariff:
    """One destination of one plan; money as exact decimals."""

    tariffid: int
    prefix: str
    name: str
    price: Decimal
    connectfee: Decimal
    mininterval: int
    interval: int
    currency: str

    def cost(self, seconds: int) -> Decimal:
        """What a call of C{seconds} to this destination costs."""
        if seconds <= 0:
            return Decimal(0).quantize(QUANTUM)
        billed = max(seconds, self.mininterval)
        step = max(self.interval, 1)
        billed = math.ceil(billed / step) * step
        amount = self.connectfee + self.price * billed / 60
        return amount.quantize(QUANTUM, rounding=ROUND_CEILING)

    def billed_seconds(self, seconds: int) -> int:
        """The seconds a call of C{seconds} is charged for."""
        if seconds <= 0:
            return 0
        step = max(self.interval, 1)
        return math.ceil(max(seconds, self.mininterval) / step) * step


class RatingTable:
    """Tariffs of every plan, for longest-prefix lookups.  Immutable once built."""

    __slots__ = ("_plans", "_longest", "size")

    def __init__(self, tariffs: Iterable[Tariff]) -> None:
        plans: dict[int, dict[str, Tariff]] = {}
        for tariff in tariffs:
            plans.setdefault(tariff.tariffid, {})[tariff.prefix] = tariff
        self._plans = plans
        self._longest = {plan: max(map(len, prefixes)) for plan, prefixes in plans.items()}
        self.size = sum(len(p) for p in plans.values())

    def lookup(self, plan: int, number: str) -> Tariff | None:
        """The tariff of the longest prefix of C{number} in C{plan}, or None."""
        digits = normalise(number)
        if digits is None:
            return None
        prefixes = self._plans.get(plan)
        if prefixes is None:
            return None
        get = prefixes.get
        for length in range(min(len(digits), self._longest[plan]), 0, -1):
            tariff = get(digits[:length])
            if tariff is not None:
                return tariff
        return None

    def plans(self) -> Mapping[int, int]:
        """Number of prefixes per plan."""
        return {plan: len(prefixes) for plan, prefixes in self._plans.items()}


_SELECT = "SELECT tariffid, prefix, name, price, connectfee, mininterval, interval, currency FROM tb_tariffs"


def tariffs_from_rows(rows: Iterable[tuple[Any, ...]], engine: Engine) -> Iterable[Tariff]:
    """Tariffs from C{tb_tariffs} rows."""
    money = engine.money
    for row in rows:
        yield Tariff(int(row[0]), str(row[1]), row[2] or "", money(row[3]), money(row[4]), int(row[5]), int(row[6]), row[7])


def load_table(database: str) -> RatingTable:
    """Read every tariff on a blocking connection of its own and build the table.

    Runs in a worker thread: neither the reading nor the building touches
    the reactor thread.
    """
    if database.startswith(("postgresql://", "postgres://")):
        import psycopg2

        connection = psycopg2.connect(database)
        try:
            with connection.cursor() as cursor:
                cursor.execute(_SELECT)
                return RatingTable(tariffs_from_rows(cursor, PostgresEngine()))
        finally:
            connection.close()
    connection = sqlite3.connect(database)
    try:
        return RatingTable(tariffs_from_rows(connection.execute(_SELECT), SqliteEngine()))
    finally:
        connection.close()


class Rater:
    """The current L{RatingTable}, rebuilt in a thread and swapped in one step."""

    def __init__(self, database: str, reactor: Any, loader: Callable[[str], RatingTable] = load_table) -> None:
        self.database = database
        self.reactor = reactor
        self.loader = loader
        self.table = RatingTable(())
        self._rebuilding: Any = None

    def rebuild(self) -> Any:
        """Start a rebuild (or join the one running); fires with the new table."""
        from twisted.internet import defer
        from twisted.internet.threads import deferToThreadPool

        if self._rebuilding is not None:
            waiter: defer.Deferred[RatingTable] = defer.Deferred()
            self._rebuilding.append(waiter)
            return waiter
        self._rebuilding = []
        d = deferToThreadPool(self.reactor, self.reactor.getThreadPool(), self.loader, self.database)

        def swap(table: RatingTable) -> RatingTable:
            self.table = table
            return table

        def done(result: Any) -> Any:
            waiters, self._rebuilding = self._rebuilding, None
            for waiter in waiters:
                if isinstance(result, RatingTable):
                    waiter.callback(result)
                else:
                    waiter.errback(result)
            return result

        return d.addCallback(swap).addBoth(done)
