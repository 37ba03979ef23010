"""The telnet admin console: login, commands as API requests, diagnostics, limits, remoteadmin.

Unit tests drive the protocol over StringTransport with a fake clock; the
integration tests run `twistd -n mizud` with an adminport and talk to it with
the real `telnet` program through a pty (pexpect).
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import pytest_twisted
from twisted.internet import reactor as global_reactor
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport

from mizud.api.auth import Trust
from mizud.config import Settings
from mizud.console.logbuffer import LogBuffer
from mizud.console.protocol import MAX_NEGOTIATIONS, Console, ConsoleTransport, allowed
from test_api_dispatch import Harness, make_harness
from test_twistd import free_port, start_daemon

TELNET = shutil.which("telnet")


class Session:
    """One console connection over a StringTransport."""

    def __init__(self, harness: Harness, peer: str = "127.0.0.1", clock: Clock | None = None,
                 console: Console | None = None) -> None:
        self.console = console or Console(harness.api.settings, lambda: harness.api)
        self.protocol = ConsoleTransport(self.console)
        self.clock = clock or Clock()
        self.protocol.callLater = self.clock.callLater  # type: ignore[method-assign]
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", peer, 40000),
                                         hostAddress=IPv4Address("TCP", "127.0.0.1", 2323))
        self.protocol.makeConnection(self.transport)

    def output(self) -> str:
        """Everything written so far, as text (telnet commands and escapes included)."""
        return self.transport.value().decode("utf-8", "replace")

    async def send(self, data: bytes, expect: str = "", timeout: float = 5.0) -> str:
        """Feed bytes; wait until C{expect} shows up after them; the output since."""
        mark = len(self.transport.value())
        self.protocol.dataReceived(data)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            new = self.transport.value()[mark:].decode("utf-8", "replace")
            if expect in new and (expect or self.transport.value()):
                return new
            await deferLater(global_reactor, 0.01, lambda: None)
        raise AssertionError(f"{expect!r} not in {self.transport.value()[mark:]!r}")

    async def login(self, username: str = "root", password: str = "rootpw") -> str:
        """Log in; the output up to the prompt."""
        assert "Username: " in self.output()
        await self.send(username.encode() + b"\r\n", "Password: ")
        return await self.send(password.encode() + b"\r\n", "mizud> ")


def test_remoteadmin_modes() -> None:
    """0 nobody; 1 loopback; 2 this machine (loopback or its own address); 3 trusted; 4 LAN; 5 all."""
    trust = Trust(Settings(None, ("trustediplist=198.51.100.7",)).current)
    local = "192.0.2.1"
    cases = {
        "127.0.0.1": (False, True, True, True, True, True),
        "192.0.2.1": (False, False, True, False, True, True),
        "10.1.2.3": (False, False, False, True, True, True),
        "198.51.100.7": (False, False, False, True, False, True),
        "203.0.113.9": (False, False, False, False, False, True),
    }
    for peer, expected in cases.items():
        assert tuple(allowed(mode, peer, local, trust) for mode in range(6)) == expected, peer


@pytest_twisted.ensureDeferred
async def test_login_commands_and_help(tmp_path: Path) -> None:
    """A login (the password with the server echoing), then balance, reguser, positional and named
    parameters, help and help NAME, an unknown command, close."""
    h = await make_harness(tmp_path)
    session = Session(h)
    assert session.output().startswith("mizud admin console\r\nUsername: ")
    prompt = await session.send(b"root\r\n", "Password: ")
    assert prompt.endswith("Password: ") and b"\xff\xfb\x01" in session.transport.value()  # IAC WILL ECHO
    await session.send(b"rootpw\r\n", "mizud> ")
    assert "OK: 0.00 USD" in await session.send(b"balance\r\n", "mizud> ")
    assert "OK: 0 registered users" in await session.send(b"reguser\r\n", "mizud> ")
    # Positional: rating's first parameter is bnum; named: key=value.
    assert "ERROR: no tariff for 3612345 in plan 0" in await session.send(b"rating 3612345\r\n", "mizud> ")
    named = await session.send(b"getdetails mode=min\r\n", "mizud> ")
    assert "OK: root\r\nid\tusername\tcredit\tcurrency\r\n" in named
    listing = await session.send(b"help\r\n", "mizud> ")
    assert "balance" in listing and "close" in listing and "showlog" in listing
    assert "cccharge" not in listing  # not supported: not listed
    assert "rating bnum\r\n  price per minute" in await session.send(b"help rating\r\n", "mizud> ")
    assert "ERROR: unknown function: nosuch" in await session.send(b"nosuch 1 2\r\n", "mizud> ")
    assert "ERROR: No closing quotation" in await session.send(b'rating "36\r\n', "mizud> ")
    session.protocol.dataReceived(b"quit\r\n")
    for _ in range(100):
        if session.transport.disconnecting:
            break
        await deferLater(global_reactor, 0.01, lambda: None)
    assert session.transport.disconnecting
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_wrong_passwords_users_and_addresses(tmp_path: Path) -> None:
    """A wrong password, an enduser, then a third failure closes the connection; failures are logged as
    the API logs them and feed the same lockout; remoteadmin=1 refuses a LAN address outright."""
    from twisted.logger import globalLogPublisher

    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    h = await make_harness(tmp_path, "authfailmax=5")
    try:
        session = Session(h)
        await session.send(b"root\r\n", "Password: ")
        assert "Authentication failed" in await session.send(b"wrong\r\n", "Username: ")
        await session.send(b"alice\r\n", "Password: ")
        assert "Authentication failed" in await session.send(b"alicepw\r\n", "Username: ")
        await session.send(b"root\r\n", "Password: ")
        await session.send(b"nope\r\n", "Authentication failed")
        assert session.transport.disconnecting
        failures = [e for e in events if "authentication failure" in e.get("log_format", "")]
        assert [e["reason"] for e in failures] == ["wrong console username or password", "not an enabled admin or support user",
                                                   "wrong console username or password"]
        refused = Session(h, peer="10.0.0.5")
        assert refused.output() == "access denied: remote administration is not allowed from this address\r\n"
        assert refused.transport.disconnecting
    finally:
        globalLogPublisher.removeObserver(events.append)
        await h.db.close()


@pytest_twisted.ensureDeferred
async def test_apitrustfromconsole_modes(tmp_path: Path) -> None:
    """0: each command brings its own credentials (from an untrusted address nothing else counts);
    2 (the default, tested above): commands run as the logged-in admin."""
    h = await make_harness(tmp_path, "apitrustfromconsole=0", "remoteadmin=5", "allowtrustedip=1")
    session = Session(h, peer="203.0.113.9")
    await session.login()
    assert "ERROR: access denied" in await session.send(b"listusers\r\n", "mizud> ")
    answer = await session.send(b"balance authkey=apikey123 authid=alice authpwd=alicepw\r\n", "mizud> ")
    assert "OK: 5.00 USD" in answer
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_hostile_input(tmp_path: Path) -> None:
    """Binary garbage and a very long line get a one-line error or nothing, the session goes on; a
    malformed telnet command or a negotiation flood closes the connection; idle connections close;
    other sessions are not disturbed."""
    h = await make_harness(tmp_path)
    clock = Clock()
    good = Session(h, clock=clock)
    await good.login()
    noisy = Session(h, clock=clock)
    await noisy.login()
    answer = await noisy.send(bytes(range(1, 32)).replace(b"\r", b"").replace(b"\n", b"") + b"\x80\xfe\r\n", "mizud> ")
    assert "ERROR" in answer or answer.endswith("mizud> ")
    await noisy.send(b"a" * 20000 + b"\r\n", "mizud> ")  # capped at 8192 characters, then an unknown command
    assert "OK: 0.00 USD" in await noisy.send(b"balance\r\n", "mizud> ")
    noisy.protocol.dataReceived(b"\xff\x07")  # IAC followed by no telnet command
    assert noisy.transport.disconnecting and "malformed telnet command" in noisy.output()
    flood = Session(h, clock=clock)
    flood.protocol.dataReceived(b"\xff\xfd\x27" * (MAX_NEGOTIATIONS + 5))  # DO NEW-ENVIRON, again and again
    assert flood.transport.disconnecting and "too many telnet negotiations" in flood.output()
    long_login = Session(h, clock=clock)
    long_login.protocol.dataReceived(b"x" * 1000)
    assert long_login.transport.disconnecting
    assert "OK: 0.00 USD" in await good.send(b"balance\r\n", "mizud> ")
    clock.advance(15 * 60 + 1)
    assert good.transport.disconnecting and "idle timeout" in good.output()
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_console_only_diagnostics(tmp_path: Path, database_option: str) -> None:
    """showlog, logsearch, threads, querylist and locks answer on the console (on both engines) and are
    refused over HTTP."""
    h = await make_harness(tmp_path, database=database_option)
    buffer = LogBuffer()
    h.rebuild(logbuffer=buffer)
    for index in range(5):
        buffer({"log_format": "line {n}", "n": index, "log_namespace": "mizud.api", "log_time": 1.0})
    buffer({"log_format": "REGISTER from {who}", "who": "x", "log_namespace": "mizud.sip.registrar",
            "log_time": 2.0})
    session = Session(h)
    await session.login()
    shown = await session.send(b"showlog main 3\r\n", "mizud> ")
    assert "OK: 3 lines of the main log" in shown and "line 4" in shown and "line 2" not in shown
    assert "REGISTER from x" in await session.send(b"showlog sip\r\n", "mizud> ")
    assert "ERROR: log must be main or sip" in await session.send(b"showlog gk\r\n", "mizud> ")
    assert "OK: 1 lines" in await session.send(b"logsearch register\r\n", "mizud> ")
    threads = await session.send(b"threads\r\n", "mizud> ")
    assert "threads" in threads and "reactor" in threads
    assert "transactions in flight" in await session.send(b"querylist\r\n", "mizud> ")
    locks = await session.send(b"locks\r\n", "mizud> ")
    assert ("SQLite has one writer" if h.db.engine.name == "sqlite" else "OK: 0 locks waited for") in locks
    over_http = await h.call("apientry=showlog", "127.0.0.1")
    assert over_http.text == "ERROR: only available on the admin console (adminport)"
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_review_findings(tmp_path: Path) -> None:
    """Commands piped right after the password run (and are not taken for logins); a demoted admin is
    out at the next command; targetuser works as over HTTP; mode 1 keeps a support user a support user;
    an empty password never logs in; control characters in answers are shown, not sent to the terminal;
    a key=value word that is no parameter is a positional value."""
    from twisted.logger import globalLogPublisher

    from mizud.store.billing import USER_SUPPORT

    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    h = await make_harness(tmp_path, "apitrustfromconsole=1")
    try:
        await h.store.create_user("helper", "helperpw", type=USER_SUPPORT)
        await h.store.create_user("blank", "", type=15)
        session = Session(h)
        await session.send(b"root\r\n", "Password: ")
        piped = await session.send(b"rootpw\r\nbalance authid=alice\r\nreguser\r\n", "registered users")
        assert "OK: 5.00 USD" in piped
        assert not [e for e in events if "authentication failure" in e.get("log_format", "")]
        assert "OK: 5.00 USD" in await session.send(b"balance targetuser=alice\r\n", "mizud> ")
        found = await session.send(b"logsearch a=b\r\n", "mizud> ")
        assert "ERROR: missing parameter" not in found
        h.rebuild(logbuffer=LogBuffer())
        h.api.logbuffer({"log_format": "SIP: bad algorithm {a}", "a": "\x1b]0;owned\x07", "log_time": 1.0})
        shown = await session.send(b"showlog main 1\r\n", "mizud> ")
        assert "\x1b]0;" not in shown and "bad algorithm \\x1b]0;owned\\x07" in shown
        await h.db.run_statement("x", "UPDATE tb_users SET type = 0 WHERE username = 'root'")
        assert "ERROR: your account may no longer use the console" in await session.send(b"balance\r\n", "console")
        assert session.transport.disconnecting
        support = Session(h)
        await support.login("helper", "helperpw")
        assert "ERROR: access denied" in await support.send(b"deluser u_username=alice\r\n", "mizud> ")
        blank = Session(h)
        await blank.send(b"blank\r\n", "Password: ")
        assert "Authentication failed" in await blank.send(b"\r\n", "Username: ")
    finally:
        globalLogPublisher.removeObserver(events.append)
        await h.db.close()


@pytest_twisted.ensureDeferred
async def test_floods_and_slow_clients(tmp_path: Path) -> None:
    """A client that does not read stops being read (its commands wait) and is cut off far behind; an
    endless escape sequence, window-size floods and control bytes neither grow memory nor the log;
    history is trimmed; empty usernames, slow logins and too many sessions are refused."""
    from twisted.logger import globalLogPublisher

    from mizud.console import protocol

    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    h = await make_harness(tmp_path)
    clock = Clock()
    try:
        session = Session(h, clock=clock)
        await session.login()
        session.protocol.pauseProducing()  # the client's receive window is full
        mark = len(session.transport.value())
        session.protocol.dataReceived(b"balance\r\n")
        await deferLater(global_reactor, 0.1, lambda: None)
        assert b"OK: 0.00 USD" not in session.transport.value()[mark:]
        session.protocol.resumeProducing()
        for _ in range(100):
            if b"OK: 0.00 USD" in session.transport.value()[mark:]:
                break
            await deferLater(global_reactor, 0.01, lambda: None)
        assert b"OK: 0.00 USD" in session.transport.value()[mark:]
        await session.send(b"\x1b[" + b"1" * 100_000 + b"\r\n", "mizud> ")  # dropped, the rest typed (and capped)
        terminal = session.protocol.protocol.protocol
        assert len(getattr(terminal, "escBuf", [])) <= protocol.MAX_ESCAPE
        assert "OK: 0.00 USD" in await session.send(b"balance\r\n", "mizud> ")
        session.protocol.dataReceived(b"\xff\xfa\x1f\x00\x50\x00\x18\xff\xf0" * (protocol.MAX_NEGOTIATIONS + 1))  # NAWS, again
        assert session.transport.disconnecting  # counted as negotiations
        quiet = Session(h, clock=clock)
        await quiet.login()
        before = len(events)
        await quiet.send(bytes(range(1, 8)) + b"\x80\x81" + b"\r\n", "mizud> ")
        assert not [e for e in events[before:] if "unhandled keyID" in e.get("log_format", "")]
        shell = quiet.protocol.protocol.protocol.terminalProtocol
        for number in range(protocol.MAX_HISTORY + 20):
            shell.lineBuffer = [bytes([c]) for c in b"x%d" % number]
            shell.handle_RETURN()
        assert len(shell.historyLines) == protocol.MAX_HISTORY
        quiet.protocol.pauseProducing()  # the client reads nothing more
        quiet.protocol.write(b"x" * (protocol.MAX_BUFFERED // 2))
        assert not quiet.transport.disconnecting
        quiet.protocol.resumeProducing()  # it read
        quiet.protocol.pauseProducing()
        quiet.protocol.write(b"x" * (protocol.MAX_BUFFERED // 2))
        assert not quiet.transport.disconnecting
        quiet.protocol.write(b"x" * (protocol.MAX_BUFFERED // 2 + 1))
        assert quiet.transport.disconnecting
        empties = Session(h, clock=clock)
        empties.protocol.dataReceived(b"\r\n" * (protocol.MAX_EMPTY_USERNAMES + 1))
        assert empties.transport.disconnecting
        slow = Session(h, clock=clock)
        clock.advance(protocol.LOGIN_TIMEOUT + 1)
        assert slow.transport.disconnecting and "login timeout" in slow.output()
        console = Console(h.api.settings, lambda: h.api)
        crowd = [Session(h, clock=clock, console=console) for _ in range(protocol.MAX_SESSIONS + 1)]
        assert "too many console sessions" in crowd[-1].output()
    finally:
        globalLogPublisher.removeObserver(events.append)
        await h.db.close()


# -- a real telnet client against the real daemon -------------------------------------


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """twistd mizud with the console on a free port (remoteadmin from an ini file), and the file."""
    port = free_port()
    ini = tmp_path / "mizud.ini"
    ini.write_text(f"[global]\nadminport = {port}\nremoteadmin = 1\n")
    process, lines = start_daemon(
        tmp_path, "listenaddress=127.0.0.1", f"mainaport={free_port()}", "mainaportudp=0", "httpserver=0",
        "sslportmain=0", "sipport=0", "localtsport=0", "bootstrapadmin=admin:admin-password", config=ini)
    try:
        yield port, ini
    finally:
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=30)
        assert "Traceback" not in "".join(lines) + rest, "".join(lines) + rest


def telnet(port: int, password: str = "admin-password", expect: str = "mizud> ") -> Any:
    """The telnet program connected to the console, logged in as admin with C{password}, once
    C{expect} has been seen."""
    import pexpect

    child = pexpect.spawn(TELNET or "telnet", ["127.0.0.1", str(port)], encoding="utf-8", timeout=20)
    child.expect("Username: ")
    child.sendline("admin")
    child.expect("Password: ")
    child.sendline(password)
    child.expect(expect)
    return child


def run(child: Any, command: str, answer: str) -> None:
    """Type a command; expect its answer and the next prompt."""
    child.sendline(command)
    child.expect(answer)
    child.expect("mizud> ")


@pytest.mark.skipif(TELNET is None and not os.environ.get("CI"), reason="no telnet client installed")
def test_real_telnet_session(daemon: tuple[int, Path]) -> None:
    """The telnet program logs in (the password is not echoed), runs balance, reguser and help, fails a
    login, and after remoteadmin=0 (reload) is refused."""
    import pexpect

    port, ini = daemon
    child = telnet(port)
    try:
        assert "admin-password" not in child.before
        run(child, "balance", r"OK: 0\.00 USD")
        run(child, "reguser", "OK: 0 registered users")
        run(child, "help balance", "credit request|balance")
        child.sendline("quit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    telnet(port, "not-the-password", "Authentication failed").close(force=True)
    # The operator switches the console off for everyone: the ini file, then reload.
    ini.write_text(ini.read_text().replace("remoteadmin = 1", "remoteadmin = 0"))
    admin = telnet(port)
    try:
        run(admin, "reload", "changed: remoteadmin")
    finally:
        admin.close(force=True)
    refused = pexpect.spawn(TELNET or "telnet", ["127.0.0.1", str(port)], encoding="utf-8", timeout=20)
    try:
        refused.expect("access denied: remote administration is not allowed from this address")
        refused.expect(pexpect.EOF)
    finally:
        refused.close(force=True)
