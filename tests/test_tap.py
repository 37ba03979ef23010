"""The twistd plugin: options, and the service tree makeService builds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.application.service import IServiceCollection, IServiceMaker
from twisted.internet import reactor as global_reactor
from twisted.plugin import getPlugins

from mizud.config import OPTIONS
from mizud.app import ApiService
from mizud.wire.listen import ListenService, UdpListenService
from mizud.service import LogFileService, MizudService, describe, redact_database
from mizud.store.billing import USER_ADMIN
from mizud.store.service import StoreService
from mizud.sip.service import SipService
from mizud.console.logbuffer import LogBufferService
from mizud.tap import Options, makeService


def options(*argv: str) -> Options:
    """Parse a twistd mizud command line."""
    opts = Options()
    opts.parseOptions(list(argv))
    return opts


def test_plugin_is_discoverable() -> None:
    """twistd finds the mizud ServiceMaker through the plugin system."""
    from twisted import plugins

    makers = {p.tapname: p for p in getPlugins(IServiceMaker, plugins)}
    assert "mizud" in makers
    assert makers["mizud"].options is not None


def test_make_service_builds_tree_without_binding() -> None:
    """makeService returns store, API and listener children and opens nothing."""
    root = makeService(options("--set", "database=/nonexistent/dir/x.sqlite", "--set", "mainaport=8123"))
    assert isinstance(root, MizudService)
    children = list(IServiceCollection(root))
    assert [type(c) for c in children] == [
        LogBufferService, StoreService, ApiService, SipService, ListenService, UdpListenService, UdpListenService,
        ListenService, ListenService, ListenService, ListenService,
    ]
    store = IServiceCollection(root).getServiceNamed("store")
    assert isinstance(store, StoreService)
    assert store.database is None and not store.running
    listener = children[4]
    assert isinstance(listener, ListenService)
    assert (listener.address, listener.port, listener.listening) == ("0.0.0.0", 8123, None)
    names = [(c.name, c.port) for c in children[5:]]
    assert names == [("mainaportudp", 8123), ("sipportudp", 5060), ("sipport", 5060), ("localtsport", 5061),
                     ("sslportmain", 443), ("httpserver", 8084)]
    assert children[8].prepare is not None and children[9].prepare is not None  # certificates load before binding
    console = makeService(options("--set", "mainaport=0", "--set", "httpserver=0", "--set", "sslportmain=0",
                                  "--set", "sipport=0", "--set", "localtsport=0", "--set", "adminport=2323"))
    assert [(c.name, c.port) for c in IServiceCollection(console) if isinstance(c, ListenService)] == [("adminport", 2323)]


def test_main_port_can_be_turned_off() -> None:
    """usemainaport=false or mainaport=0 leaves the shared port unbound."""
    for setting in ("usemainaport=false", "mainaport=0"):
        root = makeService(options("--set", setting, "--set", "httpserver=0", "--set", "sslportmain=0", "--set", "sipport=0", "--set", "localtsport=0"))
        kinds = [type(c) for c in IServiceCollection(root)]
        assert ListenService not in kinds and UdpListenService not in kinds
    root = makeService(options("--set", "mainaport=8123", "--set", "mainaportudp=0", "--set", "httpserver=0",
                               "--set", "sslportmain=0", "--set", "sipport=0", "--set", "localtsport=0"))
    assert UdpListenService not in [type(c) for c in IServiceCollection(root)]
    root = makeService(options("--set", "mainaport=8123", "--set", "mainaportudp=9123", "--set", "httpserver=0",
                               "--set", "sslportmain=0", "--set", "sipport=0", "--set", "localtsport=0"))
    assert [c.port for c in IServiceCollection(root) if isinstance(c, UdpListenService)] == [9123]


def test_logfile_service_comes_first(tmp_path: Path) -> None:
    """With logfile set, the log file service precedes the store."""
    root = makeService(options("--set", f"logfile={tmp_path / 'm.log'}", "--set", "mainaport=0", "--set", "httpserver=0",
                               "--set", "sslportmain=0", "--set", "sipport=0", "--set", "localtsport=0"))
    assert [type(c) for c in IServiceCollection(root)] == [LogFileService, LogBufferService, StoreService, ApiService,
                                                           SipService]
    assert not (tmp_path / "m.log").exists()


def test_config_file_and_sets(tmp_path: Path) -> None:
    """--config and repeated --set (or -s) both reach the config."""
    ini = tmp_path / "m.ini"
    ini.write_text("[global]\napiv2key = k1\nhttpserver = 8000\n")
    opts = options("--config", str(ini), "--set", "apiv2key=k2", "-s", "adminport=2323")
    cfg = opts["settings"].current
    assert (cfg.apiv2key, cfg.httpserver, cfg.adminport) == ("k2", 8000, 2323)


@pytest.mark.parametrize(
    "argv, message",
    [
        (("--set", "mainaport=x"), "mizud: config error: --set: mainaport: expected an integer"),
        (("--set", "bogus=1"), "mizud: config error: --set: bogus: unknown option"),
    ],
)
def test_bad_config_exits_with_one_line(argv: tuple[str, ...], message: str) -> None:
    """A bad option ends parsing with SystemExit carrying one line naming the key."""
    with pytest.raises(SystemExit) as caught:
        options(*argv)
    assert str(caught.value.code).startswith(message)
    assert "\n" not in str(caught.value.code)


def test_help_documents_every_option() -> None:
    """The --help text names every option, its default and its aliases."""
    text = str(Options())
    for opt in OPTIONS:
        assert f"  {', '.join((opt.name, *opt.aliases))} = {opt.default}" in text


def test_start_line_redacts_password() -> None:
    """The start line names engine, database and ports, never the DB password."""
    cfg = options("--set", "database=postgresql://mizud:s3cret@db.local:5432/m").get("settings").current
    line = describe(cfg)
    assert "s3cret" not in line
    assert "database=postgresql://mizud:***@db.local:5432/m" in line
    assert "engine=postgresql" in line and "mainaport=80" in line
    assert redact_database("var/x.sqlite") == "var/x.sqlite"


@pytest_twisted.ensureDeferred
async def test_store_service_bootstraps_admin_once(tmp_path: Path) -> None:
    """Starting twice creates the bootstrap admin once, with admin type."""
    db = str(tmp_path / "m.sqlite")
    for _ in range(2):
        cfg = options("--set", f"database={db}", "--set", "bootstrapadmin=root:longenough").get("settings").current
        service = StoreService(cfg, global_reactor)
        service.privilegedStartService()
        service.startService()
        store = await service.ready
        user = await store.find_user("root")
        assert user is not None and user.type == USER_ADMIN and user.password == "longenough"
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_root_stops_children_in_reverse(tmp_path: Path) -> None:
    """The root stops children last-first, awaiting each before the next."""
    from twisted.application.service import Service
    from twisted.internet import defer

    order: list[str] = []

    class Slow(Service):
        def __init__(self, name: str, delay: float) -> None:
            self.name = name
            self.delay = delay

        def stopService(self) -> Any:
            order.append(f"{self.name} begins")
            d: defer.Deferred[None] = defer.Deferred()
            global_reactor.callLater(self.delay, lambda: (order.append(f"{self.name} ends"), d.callback(None)))
            return d

    root = MizudService(options()["settings"])
    Slow("first", 0.01).setServiceParent(root)
    Slow("second", 0.05).setServiceParent(root)
    root.running = True
    await root.stopService()
    assert order == ["second begins", "second ends", "first begins", "first ends"]


def test_logfile_service_writes_the_log(tmp_path: Path) -> None:
    """While running, log events are appended to the configured file; after stop, not."""
    from twisted.logger import Logger

    path = tmp_path / "mizud.log"
    service = LogFileService(str(path))
    service.privilegedStartService()
    service.startService()
    Logger(namespace="test").info("hello {who}", who="operator")
    service.stopService()
    Logger(namespace="test").info("after stop")
    text = path.read_text()
    assert "[test#info] hello operator" in text
    assert "after stop" not in text


def test_logfile_unwritable_is_a_startup_error(tmp_path: Path) -> None:
    """A log file that cannot be opened stops the start with one line."""
    from mizud.errors import StartupError

    service = LogFileService(str(tmp_path / "missing" / "m.log"))
    with pytest.raises(StartupError, match="cannot open logfile"):
        service.privilegedStartService()


def test_bad_tls_files_stop_the_start(tmp_path: Path) -> None:
    """A certificate that cannot be loaded is a startup error naming the problem."""
    from mizud.errors import StartupError
    from mizud.wire.tls import TlsProvider

    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    with pytest.raises(StartupError, match="cannot load the TLS certificate or key"):
        TlsProvider(str(bad), str(bad)).options()


def test_busy_ports_stop_the_start() -> None:
    """A TCP or UDP port already in use is a startup error naming the port."""
    import socket

    from twisted.internet.protocol import DatagramProtocol, Factory
    from twisted.internet import reactor as global_reactor

    from mizud.errors import StartupError

    with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        udp.bind(("127.0.0.1", 0))
        busy_tcp, busy_udp = tcp.getsockname()[1], udp.getsockname()[1]
        with pytest.raises(StartupError, match=f"cannot listen on 127.0.0.1:{busy_tcp} \\(mainaport\\)"):
            ListenService("mainaport", global_reactor, "127.0.0.1", busy_tcp, Factory()).privilegedStartService()
        with pytest.raises(StartupError, match=f"cannot listen on 127.0.0.1:{busy_udp} UDP"):
            UdpListenService("mainaportudp", global_reactor, "127.0.0.1", busy_udp, DatagramProtocol()).privilegedStartService()
    # Any other failure to bind is the same one-line error (here the socket module's own refusal).
    with pytest.raises(StartupError, match="cannot listen on 127.0.0.1:70000 \\(adminport\\): bind"):
        ListenService("adminport", global_reactor, "127.0.0.1", 70000, Factory()).privilegedStartService()
