"""The SIP service: the core, its chores, and its place in the API."""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from ..api.service import every
from ..config import Settings
from .bindings import Bindings
from .core import SipCore
from .transport import SipEntry

log = Logger()

#: Seconds between sweeps of expired registrations.
SWEEP = 15.0


class SipService(Service):
    """Owns the L{SipCore}; once the API is ready, links them and sweeps expired bindings."""

    name = "sip"  # type: ignore[assignment]

    def __init__(self, settings: Settings, api_service: Any, reactor: Any) -> None:
        self.settings = settings
        self.api_service = api_service
        self.reactor = reactor
        self.core = SipCore(settings, api_service.current, reactor)
        self.entry = SipEntry(self.core, reactor)
        self._sweep: LoopingCall | None = None
        self._trigger: Any = None

    def startService(self) -> None:
        """Link to the API when it is ready; end live calls first when the daemon stops."""
        super().startService()
        self.api_service.ready.addCallback(self._ready)
        # Registered now, before twistd registers the services' stop: live calls are hung up and
        # billed while the listeners and the database are still there.
        self._trigger = self.reactor.addSystemEventTrigger("before", "shutdown", self.core.calls.shutdown)

    def _ready(self, api: Any) -> Any:
        api.sip = self.core
        bindings = Bindings(api.db, api.store.now)

        if api.metrics is not None:
            api.metrics.watch_sip(self.core)

        async def sweep_registrations() -> None:
            removed = await bindings.expire()
            if removed:
                log.info("SIP: {count} registrations expired", count=removed)
            if api.metrics is not None:
                live = await api.db.run_query("count_registrations", "SELECT count(*) FROM tb_registrations")
                api.metrics.registrations.set(int(live.rows[0][0]))

        self._sweep = every(self.reactor, SWEEP, sweep_registrations, now=True)
        return api

    def stopService(self) -> Any:
        """Stop sweeping; end live calls (if the shutdown trigger has not)."""
        super().stopService()
        if self._sweep is not None and self._sweep.running:
            self._sweep.stop()
        if self._trigger is not None:
            try:
                self.reactor.removeSystemEventTrigger(self._trigger)
            except (ValueError, KeyError):
                pass
            self._trigger = None
        return self.core.calls.shutdown()
