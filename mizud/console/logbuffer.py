"""The latest log events in memory, for the console's showlog and logsearch.

The console shows mizud's own log from memory rather than reading files:
it works however the log is written (a file, twistd's stdout, journald),
and no console command touches the file system.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Iterable

from twisted.application.service import Service
from twisted.logger import ILogObserver, formatEvent, formatTime, globalLogPublisher
from zope.interface import implementer

#: How many events are kept.
KEPT = 5000
#: Events from these namespaces make up the "sip" log.
SIP_NAMESPACES = ("mizud.sip",)


@implementer(ILogObserver)
class LogBuffer:
    """An observer keeping the last L{KEPT} events as formatted lines."""

    def __init__(self, kept: int = KEPT) -> None:
        self.lines: deque[tuple[str, str]] = deque(maxlen=kept)

    def __call__(self, event: dict[str, Any]) -> None:
        """Keep one event (never raises: a logging observer must not)."""
        try:
            text = formatEvent(event)
            if event.get("log_failure") is not None:
                text += "\n" + event["log_failure"].getTraceback()
            stamp = formatTime(event.get("log_time"), timeFormat="%Y-%m-%d %H:%M:%S")
            level = event.get("log_level")
            name = level.name if level is not None else "info"
            namespace = str(event.get("log_namespace", ""))
            self.lines.append((namespace, f"{stamp} [{name}] {namespace}: {text}"))
        except Exception:
            pass

    def tail(self, count: int, which: str = "main") -> list[str]:
        """The last C{count} lines of the main log, or of the SIP part of it."""
        lines: Iterable[tuple[str, str]] = list(self.lines)  # a snapshot: other threads log too
        if which == "sip":
            lines = [entry for entry in lines if entry[0].startswith(SIP_NAMESPACES)]
        chosen = list(lines)[-count:] if count > 0 else []
        return [line for _, line in chosen]

    def search(self, text: str, most: int) -> list[str]:
        """The latest lines containing C{text} (case-insensitive), oldest first, at most C{most}."""
        needle = text.lower()
        found = [line for _, line in list(self.lines) if needle in line.lower()]
        return found[-most:]


class LogBufferService(Service):
    """Keeps a L{LogBuffer} attached to the global log publisher while the daemon runs."""

    name = "logbuffer"  # type: ignore[assignment, unused-ignore]

    def __init__(self, buffer: LogBuffer) -> None:
        self.buffer = buffer

    def startService(self) -> None:
        """Start keeping events."""
        super().startService()
        globalLogPublisher.addObserver(self.buffer)  # type: ignore[arg-type]

    def stopService(self) -> None:
        """Stop keeping events."""
        super().stopService()
        globalLogPublisher.removeObserver(self.buffer)  # type: ignore[arg-type]
