"""The top-level mizud service: start/stop log lines, log file, startup errors."""

from __future__ import annotations

from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

from twisted.application.service import MultiService, Service
from twisted.internet import defer
from twisted.logger import (
    ILogObserver,
    Logger,
    globalLogPublisher,
    textFileLogObserver,
)

from . import __version__
from .config import Config, Settings
from .errors import StartupError

log = Logger()

#: The port options named in the start line.
PORT_OPTIONS = ("mainaport", "sslportmain", "httpserver", "sipport", "localtsport", "adminport")


def redact_database(database: str) -> str:
    """The database option with any password replaced by C{***}."""
    if "://" not in database:
        return database
    parts = urlsplit(database)
    if parts.password is None:
        return database
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def describe(config: Config) -> str:
    """One line naming the version, the engine, the database and the ports."""
    ports = " ".join(f"{name}={config[name]}" for name in PORT_OPTIONS)
    from .config import node_name

    return (
        f"mizud {__version__} node={node_name(config)} engine={config.engine} "
        f"database={redact_database(config.database)} {ports}"
    )


class LogFileService(Service):
    """Appends the log to the file named by the C{logfile} option while running."""

    name = "logfile"  # type: ignore[assignment, unused-ignore]

    def __init__(self, path: str) -> None:
        self.path = path
        self._file: IO[str] | None = None
        self._observer: ILogObserver | None = None

    def privilegedStartService(self) -> None:
        """Open the file before privileges are dropped."""
        super().privilegedStartService()
        self._open()

    def _open(self) -> None:
        if self._file is None:
            try:
                self._file = open(self.path, "a", encoding="utf-8")
            except OSError as error:
                raise StartupError(f"cannot open logfile {self.path}: {error.strerror}") from None
            observer: ILogObserver = textFileLogObserver(self._file)  # type: ignore[assignment]
            self._observer = observer
            globalLogPublisher.addObserver(observer)

    def startService(self) -> None:
        """Start logging to the file (opening it if the privileged step did not)."""
        super().startService()
        self._open()

    def stopService(self) -> None:
        """Stop logging to the file and close it."""
        super().stopService()
        if self._observer is not None:
            globalLogPublisher.removeObserver(self._observer)
            self._observer = None
        if self._file is not None:
            self._file.close()
            self._file = None


#: The open-files soft limit mizud asks for (within the hard limit): each connection is a descriptor.
WANTED_FILES = 65536


def raise_file_limit() -> int:
    """Raise the soft limit of open files towards L{WANTED_FILES} (never above the hard limit); the new limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = WANTED_FILES if hard == resource.RLIM_INFINITY else min(WANTED_FILES, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError) as error:
            log.warn("could not raise the open-files limit to {wanted}: {error}", wanted=wanted, error=error)
    return int(soft)


class MizudService(MultiService):
    """The root of the service tree.

    Children start in the order they were added (the store first) and stop
    in reverse order, each stop awaited (MultiService does both).  A
    L{StartupError} while starting becomes one line on stderr and exit
    status 1.
    """

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.settings = settings

    @property
    def config(self) -> Config:
        """The current configuration."""
        return self.settings.current

    def privilegedStartService(self) -> None:
        """Raise the open-files limit, run the children's privileged steps; turn a startup error into an exit."""
        raise_file_limit()
        try:
            super().privilegedStartService()
        except StartupError as error:
            self._refuse(error)

    def startService(self) -> None:
        """Log the start line, then start the children."""
        log.info("starting {line}", line=describe(self.config))
        try:
            super().startService()
        except StartupError as error:
            self._refuse(error)

    def stopService(self) -> Any:
        """Stop the children one at a time in reverse order, then log the stop line.

        Each child's stop is awaited before the next begins, so the store
        closes only after everything that uses it has stopped.
        """
        Service.stopService(self)
        return defer.ensureDeferred(self._stop_children())

    async def _stop_children(self) -> None:
        for child in reversed(list(self)):
            try:
                await defer.maybeDeferred(child.stopService)
            except Exception:
                log.failure("error stopping {name}", name=child.name)
        log.info("stopped mizud {version}", version=__version__)

    def _refuse(self, error: StartupError) -> None:
        # twistd has already redirected stderr into the log, so one log line
        # is the one line the operator sees (stdout with -n, else twistd.log).
        log.critical("mizud: cannot start: {error}", error=str(error))
        raise SystemExit(1)
