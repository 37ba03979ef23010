"""The telnet admin console on adminport: a login, then a shell whose commands are API requests.

The console is one more front end of the dispatcher.  A connection is
first filtered by C{remoteadmin}; then C{Username:} and C{Password:} are
asked (the password with the server echoing, so the client shows nothing);
only admin and support users get in, a failed login counts towards the same
lockout as the API and is logged with the same line.  After the login the
shell (conch's L{HistoricRecvLine}: line editing, history with the arrow
keys) reads commands: C{name value1 value2 ...} (in the function's documented
parameter order) or C{name key=value ...}, quoted like a shell.  Answers are
in the API's text format.  C{help}, C{close}/C{exit}/C{quit} are the shell's
own; everything else is dispatched.

Hostile input: lines are capped, a telnet option negotiation flood or a
malformed telnet command closes the connection, and an idle connection is
closed after C{consoleidletimeout}.
"""

from __future__ import annotations

import shlex
from typing import Any, Callable

from twisted.conch.insults import insults
from twisted.conch.recvline import HistoricRecvLine
from twisted.conch.telnet import ECHO, LINEMODE, NAWS, SGA, TelnetBootstrapProtocol, TelnetProtocol, TelnetTransport
from twisted.internet import defer
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure

from ..api.answer import encode, error
from ..api.auth import Trust, is_loopback, is_private, secret_equal
from ..api.request import ApiRequest, RequestError, normalise
from ..config import Settings
from ..store.billing import USER_ADMIN, USER_SUPPORT, User

log = Logger()

PROMPT = b"mizud> "
#: The longest command line (characters) and login line (bytes).
MAX_LINE = 8192
MAX_LOGIN_LINE = 256
#: Telnet option negotiations one connection may send before it is closed.
MAX_NEGOTIATIONS = 200
#: Failed logins on one connection before it is closed.
MAX_LOGIN_ATTEMPTS = 3
#: Commands waiting while one runs.
MAX_QUEUED = 16
SHELL_COMMANDS = {
    "help": "list the commands; help NAME shows one command's parameters",
    "close": "close this connection (also exit, quit)",
}


def allowed(mode: int, peer: str, local: str, trust: Trust) -> bool:
    """Whether C{remoteadmin}=C{mode} lets C{peer} (connected to our C{local} address) in.

    0 nobody; 1 localhost; 2 this machine (localhost, or any of its own
    addresses, which is then also the address it connected to); 3 trusted
    sources (as the API trusts them); 4 the LAN (private addresses) and this
    machine; 5 everyone.
    """
    if mode <= 0:
        return False
    if mode >= 5:
        return True
    if is_loopback(peer):
        return True
    if mode == 1:
        return False
    if mode == 2:
        return peer == local
    if mode == 3:
        return trust.trusted(peer)
    return is_private(peer) or peer == local


class ConsoleTransport(TelnetTransport, TimeoutMixin):
    """Telnet framing with limits: idle timeout, negotiation flood, malformed commands."""

    negotiations = 0

    def __init__(self, console: Console) -> None:
        super().__init__(LoginProtocol, console)
        self.console = console

    def connectionMade(self) -> None:
        """Start the idle timer, then the login."""
        self.setTimeout(self.console.settings.current.consoleidletimeout)
        super().connectionMade()

    def dataReceived(self, data: bytes) -> None:
        """Telnet bytes; a command the telnet parser cannot make sense of closes the connection."""
        self.resetTimeout()
        try:
            super().dataReceived(data)
        except ValueError:
            self.close_with(b"ERROR: malformed telnet command")

    def commandReceived(self, command: bytes, argument: bytes | None) -> None:
        """An option negotiation; too many of them close the connection."""
        self.negotiations += 1
        if self.negotiations > MAX_NEGOTIATIONS:
            self.close_with(b"ERROR: too many telnet negotiations")
            return
        super().commandReceived(command, argument)

    def close_with(self, message: bytes) -> None:
        """Say why, then close."""
        if not self.disconnecting:
            self.write(b"\n" + message + b"\n")
            self.loseConnection()

    def timeoutConnection(self) -> None:
        """Idle for too long."""
        self.close_with(b"idle timeout: closing")

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Stop the timer; tell the protocol."""
        self.setTimeout(None)
        super().connectionLost(reason)


def _ignore(_: Any) -> None:
    """Swallow the outcome of an option negotiation the client may refuse or never answer."""


class LoginProtocol(TelnetProtocol):
    """Asks for a username and a password; hands the connection to the shell on success."""

    transport: Any

    def __init__(self, console: Console) -> None:
        self.console = console
        self.buffer = b""
        self.username: str | None = None
        self.attempts = 0
        self.checking = False

    def connectionMade(self) -> None:
        """Refuse excluded addresses; else ask for the username."""
        peer, local = self.transport.getPeer(), self.transport.getHost()
        self.peer = getattr(peer, "host", "")
        config = self.console.settings.current
        if not allowed(config.remoteadmin, self.peer, getattr(local, "host", ""), Trust(config)):
            log.warn("console: refused {peer} (remoteadmin={mode})", peer=self.peer, mode=config.remoteadmin)
            self.transport.write(b"access denied: remote administration is not allowed from this address\n")
            self.transport.loseConnection()
            return
        api = self.console.api_of()
        if api is not None and api.bans.is_banned("ip", self.peer):
            self.transport.write(b"banned: too many failed authentications\n")
            self.transport.loseConnection()
            return
        self.transport.write(b"mizud admin console\nUsername: ")

    def dataReceived(self, data: bytes) -> None:
        """Collect lines (a login line is short: a longer one closes the connection)."""
        self.buffer += data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        while b"\n" in self.buffer and not self.checking:
            line, _, self.buffer = self.buffer.partition(b"\n")
            self.line_received(line.decode("utf-8", "replace").strip())
        if len(self.buffer) > MAX_LOGIN_LINE:
            self.transport.write(b"\nERROR: line too long\n")
            self.transport.loseConnection()

    def line_received(self, line: str) -> None:
        """The username, then the password."""
        if self.username is None:
            if not line:
                self.transport.write(b"Username: ")
                return
            self.username = line[:128]
            self.transport.will(ECHO).addErrback(_ignore)  # the client stops echoing the password
            self.transport.write(b"Password: ")
            return
        username, self.username = self.username, None
        self.transport.write(b"\n")
        self.checking = True
        d = defer.ensureDeferred(self.console.login(username, line, self.peer))
        d.addCallback(self._logged_in)
        d.addErrback(lambda failure: log.failure("console login failed", failure))

    def _logged_in(self, user: User | None) -> None:
        self.checking = False
        if self.transport is None or self.transport.disconnecting:
            return
        if user is None:
            self.attempts += 1
            self.transport.write(b"Authentication failed\n")
            if self.attempts >= MAX_LOGIN_ATTEMPTS:
                self.transport.loseConnection()
                return
            self.transport.write(b"Username: ")
            self.dataReceived(b"")  # a line typed meanwhile
            return
        log.info("console: {user} logged in from {peer}", user=user.username, peer=self.peer)
        shell = ShellBootstrap(insults.ServerProtocol, ConsoleShell, self.console, user, self.peer)
        transport = self.transport
        transport.protocol = shell
        shell.makeConnection(transport)
        if self.buffer:
            transport.applicationDataReceived(self.buffer)


class ShellBootstrap(TelnetBootstrapProtocol):
    """TelnetBootstrapProtocol without re-asking for ECHO (the login already has it) and without
    logging the refusals of clients that do not negotiate."""

    transport: Any
    protocol: Any

    def connectionMade(self) -> None:
        """Ask for character mode and the window size; start the terminal and the shell."""
        transport = self.transport
        transport.negotiationMap[NAWS] = self.telnet_NAWS
        transport.negotiationMap[LINEMODE] = self.telnet_LINEMODE
        for option in (LINEMODE, NAWS, SGA):
            transport.do(option).addErrback(_ignore)
        if transport.getOptionState(ECHO).us.state != "yes":
            transport.will(ECHO).addErrback(_ignore)
        self.protocol = self.protocolFactory(*self.protocolArgs, **self.protocolKwArgs)
        self.protocol.makeConnection(self)

    def write(self, data: bytes) -> None:
        """Terminal output, whose line ends the terminal layer already made CR LF: only IAC is escaped
        (the telnet transport's own LF to CR LF would double the CR)."""
        self.transport.transport.write(data.replace(b"\xff", b"\xff\xff"))


class ConsoleShell(HistoricRecvLine):
    """The command line: each line is one API request, answered in text."""

    ps = (PROMPT, b"... ")

    def __init__(self, console: Console, user: User, peer: str) -> None:
        super().__init__()
        self.console = console
        self.user = user
        self.peer = peer
        self.queue: list[str] = []
        self.running = False

    def characterReceived(self, ch: bytes, moreCharactersComing: bool) -> None:
        """Type a character, unless the line is already at its limit."""
        if len(self.lineBuffer) >= MAX_LINE:
            self.terminal.write(b"\x07")
            return
        super().characterReceived(ch, moreCharactersComing)

    def initializeScreen(self) -> None:
        """The prompt, in insert mode (without clearing the client's screen)."""
        self.terminal.write(self.ps[self.pn])
        self.setInsertMode()

    def lineReceived(self, line: bytes) -> None:
        """Queue one command line (commands run one at a time, in order)."""
        text = line.decode("utf-8", "replace").strip()
        if not text:
            self.drawInputLine()
            return
        if len(self.queue) >= MAX_QUEUED:
            self.show("ERROR: busy: the previous commands are still running")
            return
        self.queue.append(text)
        if not self.running:
            defer.ensureDeferred(self._run_queue())

    def drawInputLine(self) -> None:
        """The prompt, only when no command is running."""
        if not self.running:
            super().drawInputLine()

    async def _run_queue(self) -> None:
        self.running = True
        try:
            while self.queue and self.terminal is not None:
                text = self.queue.pop(0)
                try:
                    answer = await self.console.run(text, self.user, self.peer)
                except Exception:
                    log.failure("console command {text!r} failed", text=text[:80])
                    answer = "ERROR: internal error"
                if answer is None:  # close
                    self.terminal.loseConnection()
                    return
                self.show(answer)
        finally:
            self.running = False
        if self.terminal is not None:
            self.drawInputLine()

    def show(self, text: str) -> None:
        """Write an answer, line by line (CR LF: the terminal is in character mode)."""
        for line in text.splitlines() or [""]:
            self.terminal.write(line.encode("utf-8", "replace"))
            self.terminal.nextLine()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Log the end of the session."""
        log.info("console: {user} from {peer} disconnected", user=self.user.username, peer=self.peer)
        self.queue.clear()
        super().connectionLost(reason)


class Console:
    """What the console needs from the daemon: the settings and the API dispatcher."""

    def __init__(self, settings: Settings, api_of: Callable[[], Any]) -> None:
        self.settings = settings
        self.api_of = api_of

    async def login(self, username: str, password: str, peer: str) -> User | None:
        """The admin or support user these credentials prove, or None (a failure is counted and logged)."""
        api = self.api_of()
        if api is None:
            return None
        request = ApiRequest("console login", {"authid": username}, peer, transport="console")
        if api.bans.is_banned("ip", peer) or api.bans.is_banned("user", username):
            await api.failed_login(request, "banned", username)
            return None
        user = await api.store.find_user(username)
        if user is None or not secret_equal(password, user.password):
            await api.failed_login(request, "wrong console username or password", username)
            return None
        if user.type not in (USER_ADMIN, USER_SUPPORT) or not user.enabled:
            await api.failed_login(request, "not an admin or support user", username)
            return None
        api.failures.clear(("user", username))
        return user  # type: ignore[no-any-return]

    async def run(self, text: str, user: User, peer: str) -> str | None:
        """One command line's answer; None to close the connection."""
        try:
            words = shlex.split(text)
        except ValueError as problem:
            return f"ERROR: {problem}"
        if not words:
            return ""
        name = words[0].lower()
        if name in ("close", "exit", "quit"):
            return None
        api = self.api_of()
        if api is None:
            return "ERROR: the server is starting"
        if name == "help":
            return self.help(api, words[1].lower() if len(words) > 1 else "")
        try:
            request = self.request(name, words[1:], peer, api)
        except RequestError as problem:
            return f"ERROR: {problem.message}"
        request.context["console"] = (user, self.settings.current.apitrustfromconsole)
        answer = await api.dispatch(request)
        body, _ = encode(answer, "text")
        return body.decode("utf-8", "replace")

    def request(self, name: str, words: list[str], peer: str, api: Any) -> ApiRequest:
        """An API request from a command's words: key=value pairs by name, the rest by position."""
        pairs = []
        position = 0
        for word in words:
            key, equals, value = word.partition("=")
            if equals and key.isidentifier():
                pairs.append((key.lower(), value))
            else:
                position += 1
                pairs.append((f"param{position}", word))
        params = normalise(pairs, self.settings.current.httpapiencryptkey)
        return ApiRequest(name, params, peer, transport="console", fmt="text")

    def help(self, api: Any, name: str) -> str:
        """Every command in one line each, or one command's parameters."""
        if name:
            if name in SHELL_COMMANDS:
                return f"{name}: {SHELL_COMMANDS[name]}"
            function = api.registry.get(name)
            if function is None:
                body, _ = encode(error(f"unknown command: {name[:64]}"), "text")
                return body.decode()
            params = " ".join(function.params) or "(no parameters)"
            status = "" if function.handler is not None else f" [not supported: {function.unsupported}]"
            return f"{function.name} {params}\n  {function.summary}{status}"
        lines = [f"{n:<22} {summary}" for n, summary in SHELL_COMMANDS.items()]
        for function in api.registry:
            if function.handler is not None:
                lines.append(f"{function.name:<22} {function.summary}")
        lines.append("Commands: name value1 value2 ... (in the order help NAME shows) or name key=value ...")
        return "\n".join(lines)


class ConsoleFactory(Factory):
    """Makes a L{ConsoleTransport} per connection."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def buildProtocol(self, addr: Any) -> ConsoleTransport:
        """A telnet connection that starts with the login."""
        protocol = ConsoleTransport(self.console)
        protocol.factory = self
        return protocol
