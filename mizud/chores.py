"""Periodic chores: async work run every so often, whose failures are logged and never stop it."""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from twisted.internet import defer
from twisted.internet.task import LoopingCall

from .store.database import background


def every(reactor: Any, seconds: float, chore: Callable[[], Awaitable[Any]], now: bool = False) -> LoopingCall:
    """Run an async chore every C{seconds} on C{reactor}'s clock (at once too, with C{now});
    a failure is logged and the chore goes on."""

    what = f"periodic {getattr(chore, '__qualname__', chore)}"
    loop = LoopingCall(lambda: defer.ensureDeferred(background(chore, what)))
    loop.clock = reactor
    loop.start(seconds, now=now)
    return loop
