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

import struct
from typing import Any, Callable

from twisted.conch.insults import insults
from twisted.conch.recvline import HistoricRecvLine
from twisted.conch.telnet import ECHO, LINEMODE, NAWS, SGA, TelnetBootstrapProtocol, TelnetProtocol, TelnetTransport
from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from ..api.answer import encode, error
from ..api.auth import Trust, is_loopback, is_private, secret_equal
from ..security.lockout import loggable
from ..api.request import ApiRequest, Origin, RequestError, command_request, command_words
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
#: Command lines kept for the up-arrow history.
MAX_HISTORY = 500
#: Empty lines at the username prompt before the connection is closed.
MAX_EMPTY_USERNAMES = 10
#: Seconds to complete the login.
LOGIN_TIMEOUT = 60.0
#: Console connections open at once (more are refused).
MAX_SESSIONS = 32
#: Output waiting for a client that does not read: beyond this the connection is closed.
MAX_BUFFERED = 4 * 1024 * 1024
#: The longest terminal escape sequence kept (a longer one is dropped).
MAX_ESCAPE = 64
#: Parameters every function accepts, so C{name=value} with them is always a named parameter.
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


@implementer(IPushProducer)
class ConsoleTransport(TelnetTransport, TimeoutMixin):
    """Telnet framing with limits: idle timeout, negotiation flood, malformed commands, and output
    backpressure (a client that does not read stops being read, and is closed when far behind)."""

    negotiations = 0
    paused = False
    #: Bytes written since the transport last said its buffer is full (L{pauseProducing}).
    unread = 0
    transport: Any

    def __init__(self, console: Console) -> None:
        super().__init__(LoginProtocol, console)
        self.console = console
        self._writable: list[defer.Deferred[None]] = []

    def connectionMade(self) -> None:
        """Start the idle timer, watch the output buffer, then the login."""
        self.setTimeout(self.console.settings.current.consoleidletimeout)
        self.transport.registerProducer(self, True)
        super().connectionMade()

    def pauseProducing(self) -> None:
        """The client is not reading our output: stop reading its input (and running its commands)."""
        self.paused = True
        self.unread = 0
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        """It reads again."""
        self.paused = False
        self.transport.resumeProducing()
        waiting, self._writable = self._writable, []
        for waiter in waiting:
            waiter.callback(None)

    def stopProducing(self) -> None:
        """The connection is going away."""
        self.resumeProducing()

    async def writable(self) -> None:
        """Until the client has read enough of our output to take more."""
        if self.paused:
            waiter: defer.Deferred[None] = defer.Deferred()
            self._writable.append(waiter)
            await waiter

    def write(self, data: bytes) -> None:
        """Telnet output; a client far behind in reading is disconnected."""
        super().write(data)
        self.check_buffer(len(data))

    def check_buffer(self, written: int) -> None:
        """Count C{written} bytes while the transport's buffer is full (it paused us, the producer); close
        the connection once more than L{MAX_BUFFERED} wait unread beyond it.  Only the producer interface
        is used: the transport's own buffer is not ours to read."""
        if not self.paused:
            return
        self.unread += written
        if self.unread > MAX_BUFFERED and not self.disconnecting:
            log.warn("console: {peer} does not read its output; closing", peer=getattr(self.getPeer(), "host", ""))
            self.transport.abortConnection()

    def negotiate(self, data: Any) -> None:
        """A subnegotiation (window size and such) counts towards the negotiation limit."""
        self.negotiations += 1
        if self.negotiations > MAX_NEGOTIATIONS:
            self.close_with(b"ERROR: too many telnet negotiations")
            return
        super().negotiate(data)

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
        self.console.sessions.discard(self)
        waiting, self._writable = self._writable, []
        for waiter in waiting:
            waiter.callback(None)
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
        self.empty = 0
        self.checking = False
        self.deadline: Any = None

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
        api = self.console.dispatcher_of()
        if api is not None and api.lockout.address_banned(self.peer):
            self.transport.write(b"banned: too many failed authentications\n")
            self.transport.loseConnection()
            return
        if len(self.console.sessions) >= MAX_SESSIONS:
            self.transport.write(b"busy: too many console sessions\n")
            self.transport.loseConnection()
            return
        self.console.sessions.add(self.transport)
        self.deadline = self.transport.callLater(LOGIN_TIMEOUT, self._too_slow)
        self.transport.write(b"mizud admin console\nUsername: ")

    def _too_slow(self) -> None:
        self.transport.close_with(b"login timeout: closing")

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Stop the login timer."""
        if self.deadline is not None and self.deadline.active():
            self.deadline.cancel()

    def dataReceived(self, data: bytes) -> None:
        """Collect lines (a login line is short: a longer one closes the connection)."""
        self.buffer += data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\0", b"")
        while b"\n" in self.buffer and not self.checking and self.transport.protocol is self:
            line, _, self.buffer = self.buffer.partition(b"\n")
            self.line_received(line.decode("utf-8", "replace"))
        if self.transport.protocol is not self:
            return
        if len(self.buffer.rpartition(b"\n")[2]) > MAX_LOGIN_LINE or len(self.buffer) > 16 * MAX_LOGIN_LINE:
            self.transport.write(b"\nERROR: line too long\n")
            self.transport.loseConnection()

    def line_received(self, line: str) -> None:
        """The username, then the password."""
        if self.username is None:
            line = line.strip()
            if not line:
                self.empty += 1
                if self.empty > MAX_EMPTY_USERNAMES:
                    self.transport.loseConnection()
                    return
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
        d.addErrback(self._login_broke)

    def _login_broke(self, failure: Failure) -> None:
        log.failure("console login failed", failure)
        self.checking = False
        if self.transport is not None and not self.transport.disconnecting:
            self.transport.close_with(b"ERROR: the login cannot be checked now (server error)")

    def _logged_in(self, user: User | None) -> None:
        self.checking = False
        if self.transport is None or self.transport.disconnecting:
            return
        if user is None:
            self.attempts += 1
            self.transport.wont(ECHO).addErrback(_ignore)  # the next username is echoed again
            self.transport.write(b"Authentication failed\n")
            if self.attempts >= MAX_LOGIN_ATTEMPTS:
                self.transport.loseConnection()
                return
            self.transport.write(b"Username: ")
            self.dataReceived(b"")  # a line typed meanwhile
            return
        if self.deadline is not None and self.deadline.active():
            self.deadline.cancel()
        log.info("console: {user} logged in from {peer}", user=user.username, peer=self.peer)
        shell = ShellBootstrap(BoundedTerminal, ConsoleShell, self.console, user, self.peer)
        transport = self.transport
        transport.protocol = shell
        shell.makeConnection(transport)
        pending, self.buffer = self.buffer, b""
        if pending:
            transport.applicationDataReceived(pending.replace(b"\n", b"\r"))


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
        escaped = data.replace(b"\xff", b"\xff\xff")
        self.transport.transport.write(escaped)
        self.transport.check_buffer(len(escaped))

    def telnet_NAWS(self, data: Any) -> None:
        """A window size: used when well formed and new, else ignored (no log line, no redraw)."""
        if len(data) != 4:
            return
        size = struct.unpack("!HH", b"".join(data))
        if size != getattr(self, "_size", None):
            self._size = size
            self.protocol.terminalProtocol.terminalSize(*size)


class BoundedTerminal(insults.ServerProtocol):
    """The terminal layer with a cap on the escape sequences it collects."""

    def dataReceived(self, data: bytes) -> None:
        """Keystrokes; an endless escape sequence is dropped instead of buffered."""
        for start in range(0, len(data), MAX_ESCAPE):
            super().dataReceived(data[start:start + MAX_ESCAPE])
            if len(getattr(self, "escBuf", ())) > MAX_ESCAPE:
                self.escBuf = []
                self.state = b"data"


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

    def keystrokeReceived(self, keyID: Any, modifier: Any) -> None:
        """A key: editing keys as usual, any other byte from a space up (UTF-8 included) typed,
        control bytes dropped without a word (RecvLine would log each one)."""
        handler = self.keyHandlers.get(keyID)
        if handler is not None:
            handler()
        elif isinstance(keyID, bytes) and len(keyID) == 1 and keyID >= b" " and keyID != b"\x7f":
            self.characterReceived(keyID, False)

    def handle_RETURN(self) -> None:
        """The line is run; the history keeps the latest L{MAX_HISTORY} lines."""
        super().handle_RETURN()
        if len(self.historyLines) > MAX_HISTORY:
            del self.historyLines[:-MAX_HISTORY]
            self.historyPosition = len(self.historyLines)

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
                await self.telnet.writable()
                if self.terminal is None or not self.queue:
                    return
                text = self.queue.pop(0)
                try:
                    answer, close = await self.console.run(text, self.user, self.peer)
                except Exception:
                    log.failure("console command {text!r} failed", text=text[:80])
                    answer, close = "ERROR: internal error", False
                if self.terminal is None:
                    return
                if answer:
                    self.show(answer)
                if close:
                    self.terminal.loseConnection()
                    return
        finally:
            self.running = False
        if self.terminal is not None:
            self.drawInputLine()

    @property
    def telnet(self) -> ConsoleTransport:
        """The telnet connection under the terminal."""
        telnet: ConsoleTransport = self.terminal.transport.transport
        return telnet

    def show(self, text: str) -> None:
        """Write an answer, line by line (CR LF: the terminal is in character mode), with control
        characters made visible: logged text from peers must not drive the admin's terminal."""
        for line in text.splitlines() or [""]:
            self.terminal.write(_visible(line).encode("utf-8", "replace"))
            self.terminal.nextLine()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Log the end of the session."""
        log.info("console: {user} from {peer} disconnected", user=self.user.username, peer=self.peer)
        self.queue.clear()
        super().connectionLost(reason)


class Console:
    """What the console needs from the daemon: the settings and the API dispatcher."""

    def __init__(self, settings: Settings, dispatcher_of: Callable[[], Any]) -> None:
        self.settings = settings
        self.dispatcher_of = dispatcher_of
        #: The open connections (L{MAX_SESSIONS} at most).
        self.sessions: set[Any] = set()

    async def login(self, username: str, password: str, peer: str) -> User | None:
        """The admin or support user these credentials prove, or None (a failure is counted and logged)."""
        api = self.dispatcher_of()
        if api is None:
            return None
        request = ApiRequest("console login", {"authid": username}, peer, transport="console")
        lockout = api.lockout
        user: User | None = await api.store.find_user(username)
        if lockout.address_banned(peer) or lockout.account_banned(username):
            log.info("console: login for {user} from {peer} refused: banned", user=loggable(username), peer=peer)
            return None
        if user is None or not password or not secret_equal(password, user.password):
            await api.failed_login(request, "wrong console username or password", username)
            return None
        if not _console_user(user):
            await api.failed_login(request, "not an enabled admin or support user", username)
            return None
        await lockout.succeeded(user.username, peer)
        return user

    async def run(self, text: str, user: User, peer: str) -> tuple[str, bool]:
        """One command line's answer, and whether to close the connection after it."""
        try:
            words = command_words(text)
        except RequestError as problem:
            return f"ERROR: {problem.message}", False
        if not words:
            return "", False
        name = words[0].lower()
        if name in ("close", "exit", "quit"):
            return "", True
        api = self.dispatcher_of()
        if api is None:
            return "ERROR: the server is starting", False
        # The account is read again for every command: a disabled or demoted admin is out at once.
        current = await api.store.get_user(user.id)
        if current is None or not _console_user(current):
            log.warn("console: {user} is no longer an enabled admin or support user; closing", user=user.username)
            return "ERROR: your account may no longer use the console", True
        if name == "help":
            return self.help(api, words[1].lower() if len(words) > 1 else ""), False
        try:
            request = self.request(name, words[1:], peer, api)
        except RequestError as problem:
            return f"ERROR: {problem.message}", False
        request.origin = Origin(console=(current, self.settings.current.apitrustfromconsole))
        answer = await api.dispatch(request)
        body, _ = encode(answer, "text")
        return body.decode("utf-8", "replace"), False

    def request(self, name: str, words: list[str], peer: str, api: Any) -> ApiRequest:
        """An API request from a command's words: C{key=value} by name when the function has a
        parameter C{key} (or it is a general one such as authid), the rest by position."""
        function = api.registry.get(name)
        return command_request(name, words, function.params if function is not None else None, peer, "console",
                               self.settings.current.httpapiencryptkey)

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
            status = "" if function.implemented else f" [not supported: {function.unsupported}]"
            return f"{function.name} {params}\n  {function.summary}{status}"
        lines = [f"{n:<22} {summary}" for n, summary in SHELL_COMMANDS.items()]
        for function in api.registry:
            if function.implemented:
                lines.append(f"{function.name:<22} {function.summary}")
        lines.append("Commands: name value1 value2 ... (in the order help NAME shows) or name key=value ...")
        return "\n".join(lines)


def _console_user(user: User) -> bool:
    """An enabled admin or support user."""
    return user.type in (USER_ADMIN, USER_SUPPORT) and user.enabled and not user.temporarydisabled


def _visible(text: str) -> str:
    """Control characters (C0, DEL, C1; not tab) shown as \\xNN."""
    return "".join(ch if ch == "\t" or not (ord(ch) < 32 or 127 <= ord(ch) < 160) else f"\\x{ord(ch):02x}"
                   for ch in text)


class ConsoleFactory(Factory):
    """Makes a L{ConsoleTransport} per connection."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def buildProtocol(self, addr: Any) -> ConsoleTransport:
        """A telnet connection that starts with the login."""
        protocol = ConsoleTransport(self.console)
        protocol.factory = self
        return protocol
