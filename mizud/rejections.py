"""Log lines about rejected input, limited so that junk cannot flood the log.

A flood of junk (845,000 datagrams in five seconds, say, each from a
forged source) must not write a line each: the log would grow by
megabytes a second and push the events that matter out of the console's
C{showlog}.  L{RejectionLog} writes at most C{per_source} lines per source
and C{total} lines in all per C{interval}; what it holds back it counts,
and one summary line per interval says how much was suppressed, from how
many sources, and which sent most.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from twisted.logger import Logger

log = Logger()

#: Sources whose suppressed lines are counted one by one (beyond: counted together).
MAX_COUNTED_SOURCES = 10_000


class RejectionLog:
    """Rate-limited info lines about rejections, with a periodic summary (see the module doc)."""

    def __init__(self, clock: Any, what: str, per_source: int = 5, total: int = 50, interval: float = 60.0) -> None:
        self.clock = clock
        self.what = what
        self.per_source = per_source
        self.total = total
        self.interval = interval
        self._written: Counter[str] = Counter()
        self._suppressed: Counter[str] = Counter()
        self._others = 0
        self._window: Any = None

    def __call__(self, source: str, text: str, **fields: Any) -> None:
        """Log C{text} (a twisted.logger format) about C{source}, unless its share is used up."""
        if self._window is None:
            self._window = self.clock.callLater(self.interval, self._summarise)
        if self._written[source] < self.per_source and sum(self._written.values()) < self.total:
            self._written[source] += 1
            log.info(text, source=source, **fields)
            return
        if source in self._suppressed or len(self._suppressed) < MAX_COUNTED_SOURCES:
            self._suppressed[source] += 1
        else:
            self._others += 1

    def _summarise(self) -> None:
        self._window = None
        count = sum(self._suppressed.values()) + self._others
        if count:
            top = ", ".join(f"{source} ({n})" for source, n in self._suppressed.most_common(3))
            log.warn("suppressed {count} log lines about {what} from {sources} sources in the last {seconds:.0f} s "
                     "(most from {top})", count=count, what=self.what,
                     sources=len(self._suppressed) + (1 if self._others else 0), seconds=self.interval, top=top)
        self._written.clear()
        self._suppressed.clear()
        self._others = 0

    def stop(self) -> None:
        """Cancel the pending summary (at shutdown, or the end of a test)."""
        if self._window is not None and self._window.active():
            self._window.cancel()
        self._window = None
