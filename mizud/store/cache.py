"""Exact caches of what every request reads, kept right by the change feed (L{mizud.store.changes}).

Two shapes:

  - L{RowCache}: rows looked up by a key (a user by username or id), at
    most C{size} of them, least recently used dropped first.  A change of
    a row drops every key that leads to it.
  - L{SnapshotCache}: a whole small table (or a query over it) read at
    once and searched in memory (the routes, the traffic senders).  A
    relevant change drops the snapshot; the next reader reads it again.

Both are exact in the same way.  A value read from the database is kept
only if no change arrived while it was being read (a generation counter),
so a read that raced a change can never put the old row back.  While the
feed is not trusted (PostgreSQL, listener unconfirmed) nothing is answered
from memory and nothing is kept.  Nothing here decides money.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Awaitable, Callable, Generic, Hashable, TypeVar

from twisted.internet import defer

from .changes import Change, ChangeFeed
from .database import background

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class RowCache(Generic[K, V]):
    """Rows of one table by key, for at most C{size} keys (0: keep nothing)."""

    def __init__(self, feed: ChangeFeed, table: str, size: int, row_id: Callable[[V], int]) -> None:
        self.feed = feed
        self.size = size
        self._row_id = row_id
        self._entries: OrderedDict[K, V] = OrderedDict()
        self._keys: dict[int, set[K]] = {}
        self._generation = 0
        self.hits = 0
        self.misses = 0
        feed.watch(table, self.changed)

    async def get(self, key: K, read: Callable[[], Awaitable[V | None]]) -> V | None:
        """The row for C{key}: from memory when the feed allows, else C{read()} (kept if still current)."""
        entries = self._entries
        if key in entries and self.feed.trusted():
            self.hits += 1
            entries.move_to_end(key)
            return entries[key]
        self.misses += 1
        generation = self._generation
        value = await read()
        if value is not None and generation == self._generation and self.size and self.feed.trusted():
            self._keep(key, value)
        return value

    def _keep(self, key: K, value: V) -> None:
        entries = self._entries
        old = entries.pop(key, None)
        if old is not None:
            self._unindex(key, old)
        entries[key] = value
        self._keys.setdefault(self._row_id(value), set()).add(key)
        while len(entries) > self.size:
            dropped, row = entries.popitem(last=False)
            self._unindex(dropped, row)

    def _unindex(self, key: K, value: V) -> None:
        keys = self._keys.get(self._row_id(value))
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._keys[self._row_id(value)]

    def changed(self, change: Change) -> None:
        """A row changed (C{change.id} None: any row): forget it, and any read in flight."""
        self._generation += 1
        if change.id is None:
            self._entries.clear()
            self._keys.clear()
            return
        for key in self._keys.pop(change.id, ()):
            self._entries.pop(key, None)

    def forget(self) -> int:
        """Forget every row (and any read in flight); how many keys were kept."""
        count = len(self._entries)
        self.changed(Change("", None))
        return count

    def rows(self) -> list[V]:
        """The distinct rows kept, most recently used last."""
        seen: dict[int, V] = {}
        for value in self._entries.values():
            seen[self._row_id(value)] = value
        return list(seen.values())

    def __len__(self) -> int:
        return len(self._entries)


class SnapshotCache(Generic[V]):
    """One value computed from whole tables (C{read()}), dropped by every change that C{relevant} accepts."""

    def __init__(self, feed: ChangeFeed, tables: dict[str, Callable[[Change], bool]]) -> None:
        self.feed = feed
        self._value: V | None = None
        self._generation = 0
        #: The read in flight (its generation, and who waits for it), shared by concurrent callers.
        self._reading: tuple[int, list[defer.Deferred[V]]] | None = None
        for table, relevant in tables.items():
            feed.watch(table, self._listener(relevant))

    async def get(self, read: Callable[[], Awaitable[V]]) -> V:
        """The snapshot: from memory when the feed allows, else C{read()} (kept if still current).  Callers
        that come while a read is in flight and no change arrived since it began share its result."""
        if self._value is not None and self.feed.trusted():
            return self._value
        reading = self._reading
        if reading is not None and reading[0] == self._generation:
            waiter: defer.Deferred[V] = defer.Deferred()
            reading[1].append(waiter)
            return await waiter
        generation = self._generation
        waiters: list[defer.Deferred[V]] = []
        self._reading = (generation, waiters)
        try:
            value = await read()
        except Exception:
            for waiter in waiters:
                waiter.errback()
            raise
        finally:
            if self._reading is not None and self._reading[1] is waiters:
                self._reading = None
        if generation == self._generation and self.feed.trusted():
            self._value = value
        for waiter in waiters:
            waiter.callback(value)
        return value

    def _listener(self, relevant: Callable[[Change], bool]) -> Callable[[Change], None]:
        def changed(change: Change) -> None:
            if change.id is None or relevant(change):
                self._generation += 1
                self._value = None

        return changed


class Reload:
    """Reloads a whole in-memory copy (the bans, the tb_api rules) when its table changed: at once, and
    once more when asked again while it runs, so a burst of changes costs at most two reloads.

    On SQLite the reload's reads complete on the spot, so it is done before
    the change's caller is answered; on PostgreSQL it takes one round trip.
    """

    def __init__(self, work: Callable[[], Awaitable[object]], what: str) -> None:
        self.work = work
        self.what = what
        self.reloads = 0
        self._running = False
        self._again = False

    def __call__(self) -> None:
        """The table changed."""
        if self._running:
            self._again = True
            return
        defer.ensureDeferred(self._run())

    async def _run(self) -> None:
        self._running = True
        try:
            while True:
                self._again = False
                self.reloads += 1
                await background(self.work, self.what)
                if not self._again:
                    return
        finally:
            self._running = False


def always(change: Change) -> bool:
    """Every change of the table is relevant."""
    return True


__all__ = ["Reload", "RowCache", "SnapshotCache", "always"]
