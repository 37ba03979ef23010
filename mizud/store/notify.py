"""Telling the other nodes that something they cache changed: PostgreSQL LISTEN/NOTIFY.

A node that changes what the others keep in memory (the rating table, the
tb_api access rules, the bans) publishes a topic on the channel C{mizud};
every node, itself included, runs that topic's handlers.  Handlers run at
most once per L{COALESCE} seconds per topic however many notifications
arrive, so a NOTIFY storm costs one reload.  On SQLite there is one node:
publishing runs the handlers locally.

The listening connection is a dedicated txpostgres connection.  When it
breaks, it reconnects with backoff, and every handler then runs once: what
changed meanwhile is reloaded.

The same connection listens on C{mizud_rows}, where the change triggers
tell every node which rows of the cached tables changed; each arrives at
the database's change feed (L{mizud.store.changes}) at once, and the
listener confirms the feed by a trivial question every
L{mizud.store.changes.CONFIRM_EVERY} seconds (caches answer from memory
only while it is confirmed).
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from twisted.internet import defer
from twisted.logger import Logger

from .changes import CHANNEL as ROWS_CHANNEL, CONFIRM_EVERY, parse_told
from .database import Database, background

log = Logger()

CHANNEL = "mizud"
#: Seconds a topic's handlers wait after a notification, collecting further ones.
COALESCE = 0.1
#: Seconds a question on the listening connection may go unanswered before the connection counts as broken.
WATCH = 5.0
#: The longest backoff between reconnection attempts (seconds).
MAX_BACKOFF = 30.0
#: The topic that tells every node that anything may have changed (a restore).
EVERYTHING = "everything"
TOPICS = frozenset({"tariffs", "access", "bans", EVERYTHING})


class Notifications:
    """Publish topics to every node; run handlers when one arrives."""

    def __init__(self, db: Database, reactor: Any, dsn: str = "") -> None:
        self.db = db
        self.reactor = reactor
        self.dsn = dsn
        self.handlers: dict[str, list[Callable[[], Awaitable[Any]]]] = {}
        self.received = 0
        self._pending: dict[str, Any] = {}
        self._connection: Any = None
        self._stopping = False

    def subscribe(self, topic: str, handler: Callable[[], Awaitable[Any]]) -> None:
        """Run C{handler()} whenever C{topic} is published (by any node)."""
        self.handlers.setdefault(topic, []).append(handler)

    async def publish(self, topic: str) -> None:
        """Tell every node (this one included) that C{topic} changed."""
        if topic not in TOPICS:
            raise ValueError(topic)
        if not self.dsn:
            self._arrived(topic)
            return
        try:
            await self.db.run_statement("notify", "SELECT pg_notify(?, ?)", (CHANNEL, topic))
        except Exception as error:
            log.warn("could not notify the other nodes of {topic}: {error}", topic=topic, error=error)
            self._arrived(topic)

    def _arrived(self, topic: str) -> None:
        """One notification: run the topic's handlers soon, once however many more come meanwhile."""
        self.received += 1
        if topic == EVERYTHING:
            self.db.changes.everything()
            return
        if topic not in self.handlers or topic in self._pending:
            return
        self._pending[topic] = self.reactor.callLater(COALESCE, self._run, topic)

    def _run(self, topic: str) -> None:
        self._pending.pop(topic, None)
        for handler in self.handlers.get(topic, []):
            defer.ensureDeferred(background(handler, f"handling the {topic} notification"))

    # -- PostgreSQL ---------------------------------------------------------------

    def start(self) -> None:
        """Start listening (PostgreSQL only)."""
        if self.dsn:
            defer.ensureDeferred(self._listen(0.5))

    async def _listen(self, delay: float) -> None:
        from .database import pg_connection

        while not self._stopping:
            connection = pg_connection(self.reactor)
            try:
                await connection.connect(self.dsn)
                connection.addNotifyObserver(self._notified)
                await connection.runOperation(f"LISTEN {CHANNEL}; LISTEN {ROWS_CHANNEL}")
            except Exception as error:
                log.warn("LISTEN {channel} failed ({error}); retrying in {delay}s", channel=CHANNEL,
                         error=str(error).splitlines()[0] if str(error) else type(error).__name__, delay=delay)
                try:
                    connection.close()
                except Exception:
                    pass
                from twisted.internet.task import deferLater

                await deferLater(self.reactor, delay, lambda: None)
                delay = min(delay * 2, MAX_BACKOFF)
                continue
            if self._stopping:
                _close(connection)
                return
            self._connection = connection
            log.info("listening for changes from other nodes")
            self.db.changes.everything()  # whatever changed while nobody listened
            for topic in self.handlers:
                self._arrived(topic)
            lost: defer.Deferred[None] = defer.Deferred()
            self._watch(connection, lost)
            await lost
            _close(connection)  # never leave a half-alive LISTEN connection behind
            self._connection = None
            delay = 0.5

    def _watch(self, connection: Any, lost: defer.Deferred[None]) -> None:
        """Confirm the change feed, and notice when the listening connection breaks: a trivial question
        every L{CONFIRM_EVERY} seconds.

        Its answer proves that every notification committed before it was
        asked has arrived (the server sends them first), so the feed is
        confirmed up to the time it was asked.  A question not answered in
        L{WATCH} seconds means the connection is broken; it is abandoned,
        never cancelled: cancelling makes libpq block the reactor (PQcancel)
        on a network that stopped passing traffic.
        """
        from twisted.internet.task import LoopingCall

        feed = self.db.changes
        clock = feed.clock  # monotonic: a step of the wall clock neither stretches nor breaks the trust
        pending: list[float] = []

        def broken(_: Any = None) -> None:
            feed.unconfirm()
            if loop.running:
                loop.stop()
            if not lost.called:
                log.warn("the LISTEN connection broke; reconnecting")
                lost.callback(None)

        def answered(_: Any, asked: float) -> None:
            pending.clear()
            feed.confirm(asked)

        def check() -> None:
            now = clock.seconds()
            if self._stopping or (pending and now - pending[0] > WATCH):
                broken()  # stopping, or the question was never answered
                return
            if pending:
                return
            pending.append(now)
            d = connection.runQuery("SELECT 1")
            d.addCallbacks(answered, broken, callbackArgs=(now,))

        loop = LoopingCall(check)
        loop.clock = self.reactor
        loop.start(CONFIRM_EVERY, now=True)

    def _notified(self, notify: Any) -> None:
        payload = getattr(notify, "payload", "")
        if getattr(notify, "channel", "") == ROWS_CHANNEL:
            told = parse_told(str(payload))
            if told is not None and (told[1] is None or not self.db.changes.echo(told[1], told[0])):
                self.db.changes.tell((told[0],))
        elif payload == EVERYTHING:
            self.db.changes.everything()  # another node restored the database
        elif payload in TOPICS:
            self._arrived(payload)

    def stop(self) -> None:
        """Stop listening."""
        self._stopping = True
        self.db.changes.unconfirm()
        for call in self._pending.values():
            if call.active():
                call.cancel()
        self._pending.clear()
        if self._connection is not None:
            try:
                self._connection.close()
            except Exception:
                pass
            self._connection = None


def _close(connection: Any) -> None:
    """Close a connection, whatever state it is in."""
    try:
        connection.close()
    except Exception:
        pass
