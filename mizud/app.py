"""The composition root: builds the daemon's service tree and its web site from the settings.

This is the only module that knows every part.  The front ends (L{mizud.wire},
L{mizud.console}, L{mizud.portal}) turn bytes into requests; the API
(L{mizud.api}) decides; SIP (L{mizud.sip}) and billing use the store
(L{mizud.store}).  None of them imports this module, and L{mizud.tap} only
reads the command line and calls L{make_service}.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from twisted.application.service import MultiService, Service
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.server import Site

from .api.auth import Trust
from .api.dispatcher import Dispatcher
from .api.functions import build_registry
from .api.openapi import render
from .api.sipbridge import backend_for
from .chores import every
from .config import Settings
from .console.logbuffer import LogBuffer, LogBufferService
from .console.protocol import Console, ConsoleFactory
from .errors import StartupError
from .metrics import Metrics, MetricsResource
from .portal import PortalResource
from .service import LogFileService, MizudService
from .sip.service import SipService
from .sip.transport import SipDatagramProtocol, SipStreamFactory
from .store.billing import BillingStore
from .store.cache import Reload
from .store.nodes import BEAT
from .store.service import StoreService
from .wire.demux import ApiDatagramProtocol, DemuxFactory, NoSip
from .wire.http import ApiResource, QuietSite, RootResource, client_address
from .wire.limits import BudgetedFactory, ConnectionBudget
from .wire.listen import Listener, ListenService, UdpListenService
from .wire.static import Generated, StaticFiles
from .wire.tls import TlsHandOff, TlsPortFactory, TlsProvider
from .wire.websocket import api_websocket_resource, sip_websocket_resource

log = Logger()

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
            assert isinstance(service, Listener)
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
    """Builds the L{Dispatcher} once the store is open: its metrics, the other nodes' notifications, the tb_api
    rules, the rating table and the bans; then starts the periodic chores and fires L{ready}."""

    name = "api"  # type: ignore[assignment, unused-ignore]

    def __init__(self, settings: Settings, store_service: StoreService, reactor: Any, logs: Any = None,
                 sip: SipService | None = None, operations: ServiceOperations | None = None) -> None:
        self.settings = settings
        self.logs = logs
        #: The SIP service whose element the dispatcher talks to, if any.
        self.sip = sip
        self.store_service = store_service
        self.reactor = reactor
        self.registry = build_registry()
        self.api: Dispatcher | None = None
        self.ready: defer.Deferred[Dispatcher] = defer.Deferred()
        self._chores: list[LoopingCall] = []
        #: What admin functions may do to the service tree.
        self.operations = operations

    def _every(self, seconds: float, chore: Any) -> LoopingCall:
        return every(self.reactor, seconds, chore)

    def stopService(self) -> None:
        """Stop the periodic chores."""
        super().stopService()
        self._stop_chores()
        if self.api is not None and self.api.metrics is not None:
            self.api.metrics.stop()

    def current(self) -> Dispatcher | None:
        """The dispatcher, or None while the store is still opening."""
        return self.api

    def startService(self) -> None:
        """Wait for the store, then build the dispatcher."""
        super().startService()
        d = self.store_service.ready
        d.addCallback(lambda store: defer.ensureDeferred(self._start(store)))
        d.addErrback(lambda failure: log.failure("API not started", failure))

    async def _start(self, store: BillingStore) -> BillingStore:
        metrics = Metrics(known=lambda name: self.registry.get(name) is not None)
        notifications = self.store_service.notifications
        api = Dispatcher(self.settings, self.registry, store, self.reactor, node=self.store_service.node,
                  sip=self.sip.core if self.sip is not None else None, logbuffer=self.logs, metrics=metrics,
                  notifications=notifications, operations=self.operations)
        api.db.running.observe = metrics.db_seconds.observe
        api.bans.counted = lambda kind: metrics.bans.labels(kind).inc()
        metrics.start_lag(self.reactor)
        if notifications is not None:
            # Other nodes' changes to what this node keeps in memory.
            notifications.subscribe("tariffs", api.rater.rebuild)
            notifications.subscribe("access", api.reload_access)
            notifications.subscribe("bans", api.bans.refresh)
        # Changes of tb_banned and tb_api, by this node, another one or anybody's SQL (mizud.store.changes).
        api.db.changes.after("tb_banned", Reload(api.bans.refresh, "reloading the bans"))
        api.db.changes.after("tb_api", Reload(api.reload_access, "reloading the tb_api rules"))
        rules = await api.reload_access()
        table = await api.rater.rebuild()
        log.info("rating table loaded: {count} tariffs", count=table.size)
        await api.bans.refresh()
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


def make_site(settings: Settings, dispatch: Callable[[], Any], sip: Any = None, reactor: Any = None) -> Site:
    """The HTTP site of the shared service port: the API, the old interface, both WebSockets, /mvweb, the portal,
    /metrics and /openapi.json; C{sip} is the SIP layer's entry point."""
    folder = settings.current.mvwebdir
    static = StaticFiles(folder) if folder and os.path.isdir(folder) else None
    site = QuietSite(
        RootResource(
            ApiResource(settings, dispatch),
            ApiResource(settings, dispatch, legacy=True),
            api_websocket_resource(dispatch, settings, reactor),
            static,
            sip_websocket_resource(sip or NoSip(), settings, reactor),
            PortalResource(settings) if settings.current.webportal else None,
            MetricsResource(lambda: getattr(dispatch(), "metrics", None),
                            lambda request: Trust(settings.current).trusted(client_address(request, settings))),
            Generated(lambda: render().encode("utf-8"), "application/json"),
        ),
        settings, reactor,
    )
    site.displayTracebacks = False
    site.noisy = False
    return site


def _link_sip(api: Dispatcher, sip: SipService) -> Dispatcher:
    """Once the dispatcher is ready: SIP gets its backend, the metrics SIP's figures."""
    metrics = api.metrics
    sip.attach(backend_for(api), metrics.registrations.set if metrics is not None else None)
    if metrics is not None:
        metrics.watch_sip(sip.core)
    return api


def make_service(settings: Settings, reactor: Any = None) -> MizudService:
    """Assemble the service tree; binds and opens nothing (the services do, when started)."""
    config = settings.current
    root = MizudService(settings)
    if config.logfile:
        # First, so that everything after it is logged to the file too.
        LogFileService(config.logfile).setServiceParent(root)
    # The latest log events, for the console's showlog and logsearch.
    logs = LogBuffer()
    LogBufferService(logs).setServiceParent(root)
    # The store starts before and stops after everything that uses it.
    store = StoreService(config, reactor)
    store.setServiceParent(root)
    reactor = store.reactor
    sip = SipService(settings, reactor)
    api = ApiService(settings, store, reactor, logs=logs, sip=sip, operations=ServiceOperations(root, reactor))
    api.setServiceParent(root)
    # SIP after the API (it stops first), listeners last, so they stop first and no request arrives after
    # the dispatcher or the store has gone.
    sip.setServiceParent(root)
    api.ready.addCallback(lambda dispatcher: _link_sip(dispatcher, sip))
    entry = sip.entry
    # One budget of connections per address over every stream listener (maxconnectionsperip).
    budget = ConnectionBudget(settings, reactor)

    def capped(factory: Any) -> BudgetedFactory:
        return BudgetedFactory(factory, budget)

    site = make_site(settings, api.current, sip=entry, reactor=reactor)
    tls = TlsProvider(config.tlscert, config.tlskey)
    # Decrypted TLS streams are demultiplexed again (without a second TLS layer).
    inner = DemuxFactory(site, api.current, settings, reactor, sip=entry)
    hand_off = TlsHandOff(tls, inner)
    if config.usemainaport and config.mainaport:
        demux = DemuxFactory(site, api.current, settings, reactor, sip=entry, tls=hand_off)
        ListenService("mainaport", reactor, config.listenaddress, config.mainaport, capped(demux)).setServiceParent(root)
        udp_port = config.mainaport if config.mainaportudp is None else config.mainaportudp
        if udp_port:
            UdpListenService(
                "mainaportudp", reactor, config.listenaddress, udp_port, ApiDatagramProtocol(api.current, settings, entry, reactor)
            ).setServiceParent(root)
    if config.sipport and not (config.usemainaport and config.sipport == config.mainaport):
        UdpListenService(
            "sipportudp", reactor, config.listenaddress, config.sipport, SipDatagramProtocol(sip.core)
        ).setServiceParent(root)
        ListenService(
            "sipport", reactor, config.listenaddress, config.sipport, capped(SipStreamFactory(sip.core, reactor))
        ).setServiceParent(root)
    if config.localtsport:
        sips = TlsPortFactory(TlsHandOff(tls, SipStreamFactory(sip.core, reactor, "tls")))
        ListenService(
            "localtsport", reactor, config.listenaddress, config.localtsport, capped(sips), prepare=tls.options
        ).setServiceParent(root)
    if config.sslportmain and not (config.usemainaport and config.sslportmain == config.mainaport):
        ListenService(
            "sslportmain", reactor, config.listenaddress, config.sslportmain, capped(TlsPortFactory(hand_off)),
            prepare=tls.options
        ).setServiceParent(root)
    if config.adminport:
        console = ConsoleFactory(Console(settings, api.current))
        ListenService("adminport", reactor, config.listenaddress, config.adminport, capped(console)).setServiceParent(root)
    if config.httpserver and not (config.usemainaport and config.httpserver == config.mainaport):
        # The old HTTP interface's own port (the same site: /xmapi/ and /mvapireq).
        ListenService("httpserver", reactor, config.listenaddress, config.httpserver, capped(site)).setServiceParent(root)
    return root
