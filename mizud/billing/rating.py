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

import gc
import math
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from typing import Any, Callable, Iterable, Mapping

from ..store.engines import QUANTUM, Engine
from ..store.tariffs import read_tariffs
from ..text import ascii_digits

_DROP = str.maketrans("", "", " -.()/\t")


def normalise(number: str) -> str | None:
    """Digits of a dialled number without C{+}/C{00}; None if it has other characters."""
    if ascii_digits(number) and not number.startswith("00") and len(number) <= 32:
        return number  # the common case, already clean
    text = number.strip().translate(_DROP)
    if text.startswith("+"):
        text = text[1:]
    elif text.startswith("00"):
        text = text[2:]
    if not ascii_digits(text) or len(text) > 32:
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
    #: The price of one SMS (one part) to this destination (delta 09).
    smsprice: Decimal = Decimal(0)

    def cost(self, seconds: int) -> Decimal:
        """What a call of C{seconds} to this destination costs."""
        if seconds <= 0:
            return Decimal(0).quantize(QUANTUM)
        billed = max(seconds, self.mininterval)
        step = max(self.interval, 1)
        billed = math.ceil(billed / step) * step
        amount = self.connectfee + self.price * billed / 60
        return amount.quantize(QUANTUM, rounding=ROUND_CEILING)


class RatingTable:
    """Tariffs of every plan, for longest-prefix lookups.  Immutable once built.

    Each plan keeps one dict per prefix length, longest first, so a lookup
    probes only the lengths the plan has, and no single dict grows so large
    that resizing it would hold up the interpreter for long.
    """

    __slots__ = ("_plans", "size")

    def __init__(self, tariffs: Iterable[Tariff]) -> None:
        by_length: dict[int, dict[int, dict[str, Tariff]]] = {}
        size = 0
        for tariff in tariffs:
            lengths = by_length.get(tariff.tariffid)
            if lengths is None:
                lengths = by_length[tariff.tariffid] = {}
            prefixes = lengths.get(len(tariff.prefix))
            if prefixes is None:
                prefixes = lengths[len(tariff.prefix)] = {}
            if tariff.prefix not in prefixes:
                size += 1
            prefixes[tariff.prefix] = tariff
        self._plans = {
            plan: tuple(sorted(lengths.items(), reverse=True)) for plan, lengths in by_length.items()
        }
        self.size = size

    def lookup(self, plan: int, number: str) -> Tariff | None:
        """The tariff of the longest prefix of C{number} in C{plan}, or None."""
        digits = normalise(number)
        if digits is None:
            return None
        lengths = self._plans.get(plan)
        if lengths is None:
            return None
        available = len(digits)
        for length, prefixes in lengths:
            if length <= available:
                tariff = prefixes.get(digits[:length])
                if tariff is not None:
                    return tariff
        return None

    def plans(self) -> Mapping[int, int]:
        """Number of prefixes per plan."""
        return {plan: sum(len(p) for _, p in lengths) for plan, lengths in self._plans.items()}

    def dismantle(self) -> None:
        """Free a retired table entry by entry.

        Dropping a million-entry dict at once frees everything inside one
        interpreter step, holding every other thread (the reactor) until it
        is done; popping entries one by one lets the reactor in between.
        Only for a table no one looks up any more.
        """
        plans, self._plans = self._plans, {}
        for lengths in plans.values():
            for _, prefixes in lengths:
                while prefixes:
                    prefixes.popitem()


def longest(cost: Callable[[int], Decimal], budget: Decimal, most: int) -> int:
    """The largest whole number of seconds up to C{most} whose C{cost} stays within C{budget} (0 if none)."""
    if cost(1) > budget:
        return 0
    low, high = 1, most
    while low < high:
        middle = (low + high + 1) // 2
        if cost(middle) <= budget:
            low = middle
        else:
            high = middle - 1
    return low


def leg_cost(tariff: Tariff | None, seconds: int) -> Decimal:
    """What one leg costs for C{seconds} (a leg to a registered user is free)."""
    return tariff.cost(seconds) if tariff is not None else Decimal(0)


def tariffs_from_rows(rows: Iterable[tuple[Any, ...]], engine: Engine) -> Iterable[Tariff]:
    """Tariffs from C{tb_tariffs} rows.

    Equal prices, names and currencies share one object: real tariff lists
    repeat them across many prefixes, and a million-prefix table then takes
    a fraction of the memory.
    """
    money = engine.money
    amounts: dict[Any, Decimal] = {}
    texts: dict[str, str] = {}

    def amount(stored: Any) -> Decimal:
        value = amounts.get(stored)
        if value is None:
            value = amounts[stored] = money(stored)
        return value

    for row in rows:
        name = row[2] or ""
        yield Tariff(
            int(row[0]), str(row[1]), texts.setdefault(name, name), amount(row[3]), amount(row[4]),
            int(row[5]), int(row[6]), texts.setdefault(row[7], row[7]), amount(row[8]),
        )


def load_table(database: str) -> RatingTable:
    """Read every tariff on a blocking connection of its own and build the table.

    Runs in a worker thread: neither the reading nor the building touches
    the reactor thread.
    """
    return read_tariffs(database, lambda rows, engine: RatingTable(tariffs_from_rows(rows, engine)))


def _build_quietly(loader: Callable[[str], RatingTable], database: str) -> RatingTable:
    """Build a table in a worker thread without stalling the reactor thread.

    A full cyclic garbage collection over a million new objects holds the
    interpreter for hundreds of milliseconds, whichever thread triggers it.
    So the collector is paused while building, and afterwards everything
    alive is frozen out of its scans (gc.freeze): tariffs hold no cycles, so
    reference counting still frees a retired table.
    """
    paused = gc.isenabled()
    gc.disable()
    try:
        table = loader(database)
        gc.freeze()
        return table
    finally:
        if paused:
            gc.enable()


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
        d = deferToThreadPool(self.reactor, self.reactor.getThreadPool(), _build_quietly, self.loader, self.database)

        def swap(table: RatingTable) -> RatingTable:
            retired, self.table = self.table, table
            # Freeing a million tariffs takes a while: a worker thread does it,
            # a little at a time (see RatingTable.dismantle).
            self.reactor.callInThread(retired.dismantle)
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
