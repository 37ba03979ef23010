"""twistd plugin options and the service tree they build."""

from __future__ import annotations

import textwrap
from typing import Any

from twisted.python import usage

from .config import OPTIONS, ConfigError, Settings
from .console.logbuffer import LogBuffer, LogBufferService
from .console.protocol import Console, ConsoleFactory
from .service import LogFileService, MizudService
from .api.service import ApiService, ListenService, ServiceOperations, UdpListenService
from .store.service import StoreService
from .sip.service import SipService
from .sip.transport import SipDatagramProtocol, SipStreamFactory
from .wire.demux import ApiDatagramProtocol, DemuxFactory
from .wire.http import make_site
from .wire.limits import BudgetedFactory, ConnectionBudget
from .wire.tls import TlsHandOff, TlsPortFactory, TlsProvider


def _describe_options() -> str:
    lines = ["Global options (in the [global] section of --config, or with --set key=value):", ""]
    for opt in OPTIONS:
        names = ", ".join((opt.name, *opt.aliases))
        live = " (live)" if opt.live else ""
        lines.append(f"  {names} = {opt.default!s}{live}")
        lines.extend(textwrap.wrap(opt.doc, 74, initial_indent="      ", subsequent_indent="      "))
    return "\n".join(lines)


class Options(usage.Options):
    """Command line of C{twistd mizud}."""

    synopsis = "[--config FILE] [--set key=value ...]"
    optParameters = [["config", "c", None, "ini file whose [global] section sets options"]]

    def __init__(self) -> None:
        super().__init__()
        self["set"] = []
        self["settings"] = None

    def opt_set(self, assignment: str) -> None:
        """Set one global option, key=value (repeatable; wins over --config)."""
        self["set"].append(assignment)

    opt_s = opt_set

    def getUsage(self, width: int | None = None) -> str:
        """twistd's usage text followed by every global option, unwrapped."""
        return super().getUsage(width) + "\n" + _describe_options() + "\n"

    def postOptions(self) -> None:
        """Read and validate the configuration; a bad one ends the start here."""
        try:
            self["settings"] = Settings(self["config"], tuple(self["set"]))
        except ConfigError as error:
            raise SystemExit(f"mizud: config error: {error}") from None


def makeService(options: Options, reactor: Any = None) -> MizudService:
    """Assemble the service tree from the options; binds and opens nothing."""
    settings: Settings = options["settings"]
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
    api = ApiService(settings, store, store.reactor, logs=logs)
    api.operations = ServiceOperations(root, store.reactor)
    api.setServiceParent(root)
    # Listeners last, so they stop first and no request arrives after the
    # dispatcher or the store has gone.
    reactor = store.reactor
    sip = SipService(settings, api, reactor)
    sip.setServiceParent(root)
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
