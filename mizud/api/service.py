"""The API as a service: listeners bound early, the dispatcher ready after the store."""

from __future__ import annotations

import socket
from abc import ABC, abstractmethod
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.error import CannotListenError
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..config import Settings
from ..store.billing import BillingStore
from ..store.schema import StartupError
from ..store.database import background
from ..store.nodes import BEAT
from ..store.service import StoreService
from .dispatcher import Api
from .functions import build_registry

log = Logger()


class _Listener(Service, ABC):
    """A port bound in privilegedStartService (before privileges are dropped),
    or in startService when there was no privileged step; a port that cannot
    be bound is a L{StartupError}.  Subclasses say how to listen."""

    def __init__(self, name: str, reactor: Any, address: str, port: int) -> None:
        self.name = name  # type: ignore[assignment]
        self.reactor = reactor
        self.address = address
        self.port = port
        self.listening: Any = None  # an IListeningPort once bound

    def privilegedStartService(self) -> None:
        """Bind the port now."""
        super().privilegedStartService()
        self._bind()

    def startService(self) -> None:
        """Bind the port if the privileged step did not."""
        super().startService()
        self._bind()

    def _bind(self) -> None:
        if self.listening is None:
            self.listening = self._listen()

    @abstractmethod
    def _listen(self) -> Any:
        """Start listening; return the listening port."""

    def stopService(self) -> Any:
        """Stop listening."""
        super().stopService()
        listening, self.listening = self.listening, None
        return defer.maybeDeferred(listening.stopListening) if listening is not None else defer.succeed(None)


class ListenService(_Listener):
    """Listens on one TCP port."""

    def __init__(
        self, name: str, reactor: Any, address: str, port: int, factory: Any, prepare: Any = None
    ) -> None:
        super().__init__(name, reactor, address, port)
        self.factory = factory
        #: Called before binding (loading a TLS certificate, say), so its failure stops the start.
        self.prepare = prepare

    def _listen(self) -> Any:
        if self.prepare is not None:
            self.prepare()
        endpoint_type = TCP6ServerEndpoint if ":" in self.address else TCP4ServerEndpoint
        endpoint = endpoint_type(self.reactor, self.port, interface=self.address)
        outcome: list[Any] = []
        endpoint.listen(self.factory).addBoth(outcome.append)
        if isinstance(outcome[0], Failure):
            error = outcome[0].value
            reason = error.socketError if isinstance(error, CannotListenError) else error
            raise StartupError(f"cannot listen on {self.address}:{self.port} ({self.name}): {reason}")
        return outcome[0]


class UdpListenService(_Listener):
    """Listens on one UDP port with a large receive buffer."""

    RECEIVE_BUFFER = 4 * 1024 * 1024

    def __init__(self, name: str, reactor: Any, address: str, port: int, protocol: Any) -> None:
        super().__init__(name, reactor, address, port)
        self.protocol = protocol

    def _listen(self) -> Any:
        try:
            listening = self.reactor.listenUDP(self.port, self.protocol, interface=self.address)
        except CannotListenError as error:
            raise StartupError(f"cannot listen on {self.address}:{self.port} UDP ({self.name}): {error.socketError}")
        try:
            listening.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.RECEIVE_BUFFER)
        except OSError as error:
            log.warn("could not enlarge the UDP receive buffer: {error}", error=error)
        return listening


def every(reactor: Any, seconds: float, chore: Any, now: bool = False) -> LoopingCall:
    """Run an async chore every C{seconds}; a failure is logged and the chore goes on."""

    what = f"periodic {getattr(chore, '__qualname__', chore)}"
    loop = LoopingCall(lambda: defer.ensureDeferred(background(chore, what)))
    loop.clock = reactor
    loop.start(seconds, now=now)
    return loop


#: Seconds between reloads of the bans (so other nodes' bans reach this one).
BAN_REFRESH = 5.0
#: Seconds between expiries of old failed logins (and relearning which accounts have some).
LOCKOUT_CHORE = 30.0
HOUR = 3600.0
DAY = 86400.0
WEEK = 7 * DAY
MONTH = 30 * DAY

#: The listeners that carry only SIP (mainaport carries the API too, and is never reset).
SIP_LISTENERS = ("sipportudp", "sipport", "localtsport")


class ServiceOperations:
    """What admin functions may do to the running daemon's service tree: rebind the SIP listeners,
    restart the periodic chores, stop (for the service manager to start it again)."""

    def __init__(self, root: MultiService, reactor: Any) -> None:
        self.root = root
        self.reactor = reactor

    async def reset_sip(self) -> list[str]:
        """Close and bind again every SIP-only listener on the port it has now; what was rebound."""
        done = []
        for name in SIP_LISTENERS:
            try:
                service = self.root.getServiceNamed(name)
            except KeyError:
                continue
            assert isinstance(service, _Listener)
            if service.listening is not None:
                service.port = service.listening.getHost().port  # an ephemeral port stays the same
            await defer.maybeDeferred(service.stopService)
            try:
                service.startService()
            except StartupError as problem:
                raise StartupError(f"{problem}; the listener is closed until sipreset succeeds") from None
            done.append(f"{name} {service.address}:{service.port}")
        return done

    def restart_chores(self) -> int:
        """Stop and start again every periodic chore; how many."""
        api = self.root.getServiceNamed("api")
        assert isinstance(api, ApiService)
        return api.restart_chores()

    def stop(self) -> None:
        """Stop the reactor once the current answer has been written (twistd then exits with status 0)."""
        self.reactor.callLater(0.5, self.reactor.stop)


class ApiService(Service):
    """Builds the L{Api} once the store is open and loads the tb_api rules."""

    name = "api"  # type: ignore[assignment]

    def __init__(self, settings: Settings, store_service: StoreService, reactor: Any, logs: Any = None) -> None:
        self.settings = settings
        self.logs = logs
        self.store_service = store_service
        self.reactor = reactor
        self.registry = build_registry()
        self.api: Api | None = None
        self.ready: defer.Deferred[Api] = defer.Deferred()
        self._chores: list[LoopingCall] = []
        #: What admin functions may do to the service tree (set by the plugin that builds the tree).
        self.operations: ServiceOperations | None = None

    def _every(self, seconds: float, chore: Any) -> LoopingCall:
        return every(self.reactor, seconds, chore)

    def stopService(self) -> None:
        """Stop the periodic chores."""
        super().stopService()
        self._stop_chores()
        if self.api is not None and self.api.metrics is not None:
            self.api.metrics.stop()

    def current(self) -> Api | None:
        """The dispatcher, or None while the store is still opening."""
        return self.api

    def startService(self) -> None:
        """Wait for the store, then build the dispatcher."""
        super().startService()
        d = self.store_service.ready
        d.addCallback(lambda store: defer.ensureDeferred(self._start(store)))
        d.addErrback(lambda failure: log.failure("API not started", failure))

    async def _start(self, store: BillingStore) -> BillingStore:
        api = Api(self.settings, self.registry, store, self.reactor)
        api.logbuffer = self.logs
        api.node = self.store_service.node
        from ..metrics import Metrics

        metrics = Metrics(known=lambda name: self.registry.get(name) is not None)
        api.metrics = metrics
        api.db.running.observe = metrics.db_seconds.observe
        api.bans.counted = lambda kind: metrics.bans.labels(kind).inc()
        metrics.start_lag(self.reactor)
        notifications = self.store_service.notifications
        if notifications is not None:
            # Other nodes' changes to what this node keeps in memory.
            api.notifications = notifications
            notifications.subscribe("tariffs", api.rater.rebuild)
            notifications.subscribe("access", api.reload_access)
            notifications.subscribe("bans", api.bans.refresh)
            api.bans.changed = lambda: notifications.publish("bans")
        rules = await api.reload_access()
        table = await api.rater.rebuild()
        log.info("rating table loaded: {count} tariffs", count=table.size)
        await api.bans.refresh()
        api.operations = self.operations
        self.api = api
        self._start_chores()
        log.info("API ready: {count} functions, {rules} tb_api rules", count=len(self.registry), rules=rules)
        self.ready.callback(api)
        return store

    def _stop_chores(self) -> None:
        for loop in self._chores:
            if loop.running:
                loop.stop()
        self._chores = []

    def _start_chores(self) -> None:
        api, nodes = self.api, self.store_service.nodes
        assert api is not None
        beat_every = min(BEAT, max(1.0, self.settings.current.nodedeadafter / 3))

        async def heartbeat() -> None:
            if nodes is not None:
                await nodes.beat()
                # Never less than three beats: a node is not declared dead for missing one or two.
                released = await nodes.sweep(max(self.settings.current.nodedeadafter, 3 * beat_every))
                if released:
                    log.warn("released {count} holds of dead nodes", count=released)

        async def daily() -> None:
            await api.maintenance.daily()
            if self.settings.current.dailyreport:
                await api.maintenance.mail_report()

        self._chores = [
            # Beat often enough that a node is only declared dead after several missed beats.
            self._every(beat_every, heartbeat),
            self._every(BAN_REFRESH, api.bans.refresh),
            self._every(LOCKOUT_CHORE, api.lockout.chore),
            self._every(HOUR, api.maintenance.hourly),
            self._every(DAY, daily),
            self._every(WEEK, api.maintenance.weekly),
            self._every(MONTH, api.maintenance.monthly),
        ]

    def restart_chores(self) -> int:
        """Stop every periodic chore and start them again (their periods count from now); how many."""
        if self.api is None:
            return 0
        self._stop_chores()
        self._start_chores()
        return len(self._chores)
