"""The SIP service: the core, its chores, and the live calls ended before the daemon stops."""

from __future__ import annotations

from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from ..chores import every
from ..config import Settings
from ..store.database import background
from .backend import Backend
from .core import SipCore
from .transport import SipEntry

log = Logger()

#: Seconds between sweeps of expired registrations.
SWEEP = 15.0
#: Seconds between writes of the refreshes that are due (see L{mizud.store.registrations.Bindings.flush}).
FLUSH = 1.0


class SipService(Service):
    """Owns the L{SipCore}; serves once L{attach} gives it its L{Backend}, then sweeps expired bindings."""

    name = "sip"  # type: ignore[assignment, unused-ignore]

    def __init__(self, settings: Settings, reactor: Any) -> None:
        self.settings = settings
        self.reactor = reactor
        #: What SIP uses of the rest of the daemon; None until the store is open (requests get 503).
        self.backend: Backend | None = None
        self.core = SipCore(settings, lambda: self.backend, reactor)
        self.entry = SipEntry(self.core, reactor)
        self._sweep: LoopingCall | None = None
        self._lag: LoopingCall | None = None
        self._flush: LoopingCall | None = None
        self._trigger: Any = None

    def startService(self) -> None:
        """End live calls first when the daemon stops."""
        super().startService()
        # Registered now, before twistd registers the services' stop: live calls are hung up and
        # billed while the listeners and the database are still there.
        self._trigger = self.reactor.addSystemEventTrigger("before", "shutdown", self.core.calls.shutdown)
        self._lag = self.core.watch_lag()  # admission control (sipoverloadlag)

    def attach(self, backend: Backend, registrations: Callable[[int], Any] | None = None) -> None:
        """Start serving with C{backend}, and sweeping expired registrations (telling C{registrations}
        how many are stored after each sweep)."""
        self.backend = backend
        bindings = backend.store.registrations

        async def sweep_registrations() -> None:
            removed = await bindings.expire()
            if removed:
                log.info("SIP: {count} registrations expired", count=removed)
            if registrations is not None:
                registrations(await bindings.count())

        self._sweep = every(self.reactor, SWEEP, sweep_registrations, now=True)
        # Unchanged refreshes are written shortly before their stored expiry (mizud.store.registrations).
        self._flush = every(self.reactor, FLUSH, bindings.flush)

    def stopService(self) -> Any:
        """Stop sweeping; end live calls (if the shutdown trigger has not)."""
        super().stopService()
        for loop in (self._sweep, self._lag, self._flush):
            if loop is not None and loop.running:
                loop.stop()
        if self._trigger is not None:
            try:
                self.reactor.removeSystemEventTrigger(self._trigger)
            except (ValueError, KeyError):
                pass
            self._trigger = None
        ending = defer.maybeDeferred(self.core.calls.shutdown)
        if self.backend is None:
            return ending
        bindings = self.backend.store.registrations
        # The refreshes not yet written (the database closes after this service has stopped).
        flushing = defer.ensureDeferred(background(lambda: bindings.flush(everything=True),
                                                   "writing the last refreshes"))
        return defer.gatherResults([ending, flushing])
