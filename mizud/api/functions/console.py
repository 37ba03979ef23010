"""Console diagnostics: showlog, log, logsearch, threadlist, threads, threads2, locks, querylist.

They answer only on the admin console (adminport): they show the daemon's
insides (its log, threads, database activity), which the console's login
already restricts to admins and support users on allowed addresses.
"""

from __future__ import annotations

from dataclasses import dataclass
import threading
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from ..answer import ApiAnswer, error, ok
from ..invocation import Invocation
from ..registry import Functions, Category
from ..request import Origin, command_request, command_words
from ...store.introspect import lock_waits
from ...text import ascii_int

if TYPE_CHECKING:  # pragma: no cover
    from ...config import Settings
    from ...ratelimit import Clock
    from ...store.database import Database
    from ..registry import Registry
    from ..request import ApiRequest

MAX_LINES = 1000
MAX_MATCHES = 200


def _console_only(invocation: Invocation) -> ApiAnswer | None:
    if invocation.request.transport != "console":
        return error("only available on the admin console (adminport)", 406)
    return None


def _count(text: str, default: int) -> int:
    if not text:
        return default
    count = ascii_int(text, 0, 999_999)
    if count is None:
        raise ValueError(text)
    return min(count, MAX_LINES)


#: This module's API functions (registered by build_registry).
fn = Functions()


def _pool_state(reactor: Any) -> str:
    """The reactor's thread pool: workers, idle, queued (if the reactor has one)."""
    get = getattr(reactor, "getThreadPool", None)
    if get is None:
        return ""
    pool = get()
    return (f"{len(pool.threads)} workers (min {pool.min}, max {pool.max}), {len(pool.waiters)} idle, "
            f"{pool.q.qsize()} queued")


@dataclass(frozen=True, kw_only=True, eq=False)
class ConsoleFunctions:
    """The console's own functions: inner requests, the log, threads, queries and locks."""

    clock: Clock
    db: Database
    dispatch: Callable[[ApiRequest], Awaitable[ApiAnswer]]
    logbuffer: Any
    registry: Registry
    settings: Settings

    @fn("oop", Category.ADMIN, params=("txt",))
    async def oop(self, invocation: Invocation) -> ApiAnswer:
        """run a console operation: txt is a command line as typed on the admin console (function, then key=value or
        positional parameters), run for the same caller"""
        words = command_words(invocation.require("txt"))
        if not words:
            return error("txt holds no command", 421)
        name = words[0].lower()
        if name in ("oop", "close", "exit", "quit", "help"):
            return error(f"{name} is not an operation oop runs", 406)
        function = self.registry.get(name)
        inner = command_request(name, words[1:], function.params if function is not None else None,
                                invocation.request.source, invocation.request.transport,
                                self.settings.current.httpapiencryptkey)
        # The same caller, already proven; the operation's own access rule still applies.
        inner.origin = Origin(caller=invocation.caller)
        return await self.dispatch(inner)

    @fn("showlog", Category.ADMIN, params=("log", "lines"))
    async def showlog(self, invocation: Invocation) -> ApiAnswer:
        """the last lines of the main or the SIP log (console only)"""
        refused = _console_only(invocation)
        if refused:
            return refused
        which = (invocation.arg("log") or "main").lower()
        if which not in ("main", "sip"):
            return error("log must be main or sip (mizud keeps no gk, sh or tcp log)", 412)
        try:
            count = _count(invocation.arg("lines"), 50)
        except ValueError:
            return error(f"lines must be a number up to {MAX_LINES}", 412)
        buffer = self.logbuffer
        if buffer is None:
            return error("no log is kept in memory by this process", 412)
        lines = buffer.tail(count, which)
        return ok(f"{len(lines)} lines of the {which} log\n" + "\n".join(lines))

    @fn("log", Category.ADMIN, params=("log", "lines"))
    async def log_tail(self, invocation: Invocation) -> ApiAnswer:
        """the last lines of the main or the SIP log, like showlog (console only)"""
        invocation.request.params.setdefault("log", "main")
        return await self.showlog(invocation)

    @fn("logsearch", Category.ADMIN, params=("txt",))
    async def logsearch(self, invocation: Invocation) -> ApiAnswer:
        """the latest log lines containing a text (console only)"""
        refused = _console_only(invocation)
        if refused:
            return refused
        text = invocation.require("txt")
        buffer = self.logbuffer
        if buffer is None:
            return error("no log is kept in memory by this process", 412)
        found = buffer.search(text, MAX_MATCHES)
        return ok(f"{len(found)} lines\n" + "\n".join(found))

    async def threadlist(self, invocation: Invocation) -> ApiAnswer:
        """threadlist, threads, threads2 (console only): the process's threads and the reactor's thread pool."""
        refused = _console_only(invocation)
        if refused:
            return refused
        records: list[dict[str, Any]] = []
        for thread in threading.enumerate():
            records.append({"name": thread.name, "ident": thread.ident, "daemon": thread.daemon,
                            "role": "reactor" if thread is threading.main_thread() else ""})
        pool = _pool_state(self.clock)
        summary = f"{len(records)} threads" + (f"; reactor thread pool: {pool}" if pool else "")
        lines = [f"{r['name']} ({r['ident']}){' reactor' if r['role'] else ''}" for r in records]
        return ok(summary + "\n" + "\n".join(lines), records)

    for _name in ("threadlist", "threads", "threads2"):
        fn(_name, Category.ADMIN, "threads of the daemon and the reactor's thread pool (console only)")(threadlist)

    del _name

    @fn("querylist", Category.ADMIN)
    async def querylist(self, invocation: Invocation) -> ApiAnswer:
        """database transactions queued or running now (console only)"""
        refused = _console_only(invocation)
        if refused:
            return refused
        running = self.db.running.listing()
        records = [{"name": name, "seconds": round(seconds, 3)} for name, seconds in running]
        lines = [f"{r['name']} {r['seconds']:.3f}s" for r in records]
        return ok(f"{len(records)} transactions in flight" + ("\n" + "\n".join(lines) if lines else ""), records)

    @fn("locks", Category.ADMIN)
    async def locks(self, invocation: Invocation) -> ApiAnswer:
        """database locks being waited for (console only)"""
        refused = _console_only(invocation)
        if refused:
            return refused
        db = self.db
        waits = await lock_waits(db)
        if waits is None:
            waiting = len(db.running.now)
            return ok(f"SQLite has one writer: {waiting} transactions queued for it or running",
                      [{"queued": waiting}])
        records = [{"pid": w.pid, "locktype": w.locktype, "relation": w.relation, "mode": w.mode,
                    "seconds": w.seconds, "query": w.query} for w in waits]
        lines = [f"pid {r['pid']} waits {r['seconds']:.1f}s for {r['mode']} on {r['relation'] or r['locktype']}"
                 for r in records]
        return ok(f"{len(records)} locks waited for" + ("\n" + "\n".join(lines) if lines else ""), records)
