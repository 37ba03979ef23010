"""Bans of addresses and users: checked from memory, kept in the database for every node."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Callable

from ..ratelimit import Clock, utcnow
from ..store.authstate import Ban, BanRows


_EPOCH = datetime(1970, 1, 1)


def _seconds(when: datetime) -> float:
    """A naive UTC datetime as seconds since the epoch."""
    return (when - _EPOCH).total_seconds()


class Bans:
    """Bans of addresses and users, kept in the database, checked from memory.

    L{is_banned} reads an in-memory copy, so the check costs nothing on the
    request path.  L{refresh} reloads the copy from the database: the
    daemon runs it whenever tb_banned changes (the change feed of
    L{mizud.store.changes}: on another node, or by SQL) and every few seconds.
    A node sees its own bans at once.
    """

    def __init__(self, rows: BanRows, clock: Clock) -> None:
        self.rows = rows
        self.clock = clock
        self._until: dict[tuple[str, str], float] = {}
        #: Bans this node made lately: (until, when made), so a reload that raced them keeps them.
        self._made: dict[tuple[str, str], tuple[float, float]] = {}
        #: Called with the kind of each new ban (metrics).
        self.counted: Callable[[str], Any] | None = None

    def is_banned(self, kind: str, value: str) -> bool:
        """Whether C{value} (an address or a username) is banned now."""
        until = self._until.get((kind, value))
        return until is not None and until > self.clock.seconds()

    async def refresh(self) -> None:
        """Reload the active bans from the database (keeping bans this node made while it read)."""
        started = self.clock.seconds()
        fresh = {(b.kind, b.value): _seconds(b.until) for b in await self.active()}
        for key, (until, made) in list(self._made.items()):
            if made >= started:
                fresh[key] = until  # its row may not have been visible to the read
            elif made < started - 60:
                del self._made[key]
        self._until = fresh

    async def ban(self, kind: str, value: str, seconds: float, reason: str) -> None:
        """Ban C{value} for C{seconds}: in force on this node at once (before anything waits), then stored."""
        now = utcnow(self.clock)
        until = now + timedelta(seconds=seconds)
        self._until[(kind, value)] = _seconds(until)
        self._made[(kind, value)] = (_seconds(until), self.clock.seconds())
        if self.counted is not None:
            self.counted(kind)
        await self.rows.add(kind, value, reason, now, until)

    async def active(self) -> list[Ban]:
        """Every ban in force, soonest ending first."""
        return await self.rows.active(utcnow(self.clock))

    async def lift(self, value: str | None) -> int:
        """Lift the bans of an address or user (None: all); returns how many."""
        lifted = await self.rows.lift(value, utcnow(self.clock))
        if value is None:
            self._until.clear()
            self._made.clear()
        else:
            for key in [k for k in self._until if k[1] == value]:
                del self._until[key]
            for key in [k for k in self._made if k[1] == value]:
                del self._made[key]
        return lifted
