"""Running named transactions on SQLite or PostgreSQL, with one interface.

A transaction function is written once, as C{async def something_txn(txn,
...)}, and awaits nothing but C{txn.execute(sql, params)}.  Both databases
run it inside one transaction and fire the caller's L{Deferred} only after
the commit:

  - L{PostgresDatabase} runs it on a pooled txpostgres connection (truly
    asynchronous, many at once) and retries serialization failures and
    deadlocks.
  - L{SqliteDatabase} runs it on one writer thread that owns the connection.
    Its C{execute} completes synchronously, so the coroutine runs straight
    through without yielding.  Transactions that queue up while a commit is
    in progress are grouped: each runs inside its own SAVEPOINT (a failure
    rolls back only its own work), then one COMMIT makes the whole group
    durable with one fsync, and only then is every caller answered.
"""

from __future__ import annotations

import itertools
import queue
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Coroutine, Generator, Protocol, Sequence, TypeVar

from twisted.internet import defer
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from .changes import CHANNEL, EVERY_ENGINE, MONOTONIC, WATCHED, Change, ChangeFeed, parse_told, sqlite_triggers
from .engines import Engine, PostgresEngine, SqliteEngine, is_postgres

T = TypeVar("T")
log = Logger()
#: How a change trigger's NOTICE begins (the rest is the change, see L{parse_change}).
CHANGE_NOTICE = CHANNEL + " "


class DatabaseError(Exception):
    """The database could not be reached or refused a statement."""


@dataclass(frozen=True)
class Result:
    """What one statement returned: its rows (if any) and the row count."""

    rows: list[tuple[Any, ...]]
    rowcount: int
    #: Column names of a statement that returns rows (else empty).
    columns: tuple[str, ...] = ()

    def one(self) -> tuple[Any, ...] | None:
        """The first row, or None."""
        return self.rows[0] if self.rows else None


class Txn(Protocol):
    """The handle a transaction function receives."""

    engine: Engine

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Awaitable[Result]:
        """Run one statement written with C{?} placeholders."""


TxnFunction = Callable[..., Coroutine[Any, Any, T]]


class Database(Protocol):
    """A database that runs named transaction functions."""

    engine: Engine
    #: The transactions queued or running now (for the console's querylist).
    running: Running
    #: Every change to the cached tables (L{mizud.store.changes}).
    changes: ChangeFeed

    def run_interaction(self, name: str, func: TxnFunction[T], *args: Any) -> Awaitable[T]:
        """Run C{func(txn, *args)} in one transaction; complete after commit."""

    def run_statement(self, name: str, sql: str, params: Sequence[Any] = ()) -> Awaitable[Result]:
        """Run one statement, atomically and durably, in a single round trip if possible."""

    def run_query(self, name: str, sql: str, params: Sequence[Any] = ()) -> Awaitable[Result]:
        """Run one short read-only statement (an indexed lookup), as cheaply as the engine can."""

    def start(self) -> defer.Deferred[None]:
        """Open connections."""

    def close(self) -> defer.Deferred[None]:
        """Finish queued work and close connections."""

    def reset(self) -> Awaitable[int]:
        """Replace every connection by a fresh one (busy ones when they are free); the number replaced."""

    def run_outside(self, name: str, sql: str) -> Awaitable[None]:
        """Run one statement that cannot run inside a transaction (VACUUM)."""


class Running:
    """Transactions in flight: their names and since when (monotonic seconds)."""

    def __init__(self) -> None:
        self.now: dict[int, tuple[str, float]] = {}
        self._ids = itertools.count()
        #: Told each finished transaction's time in seconds (metrics).
        self.observe: Callable[[float], Any] | None = None

    def begin(self, name: str) -> int:
        """One more transaction; its key for L{end}."""
        key = next(self._ids)
        self.now[key] = (name, time.monotonic())
        return key

    def end(self, key: int) -> None:
        """It finished."""
        entry = self.now.pop(key, None)
        if entry is not None and self.observe is not None:
            self.observe(time.monotonic() - entry[1])

    def listing(self) -> list[tuple[str, float]]:
        """(name, seconds in flight), oldest first."""
        now = time.monotonic()
        return [(name, now - started) for name, started in sorted(self.now.values(), key=lambda v: v[1])]


# -- SQLite ------------------------------------------------------------------


class _Ready:
    """An awaitable that is already complete, so awaiting it never yields."""

    __slots__ = ("value",)

    def __init__(self, value: Result) -> None:
        self.value = value

    def __await__(self) -> Generator[Any, None, Result]:
        return self.value
        yield  # pragma: no cover - makes this a generator


class _SqliteTxn:
    engine: Engine

    def __init__(self, connection: sqlite3.Connection, engine: Engine) -> None:
        self.connection = connection
        self.engine = engine

    def execute(self, sql: str, params: Sequence[Any] = ()) -> _Ready:
        cursor = self.connection.execute(sql, self.engine.params(params))
        rows = cursor.fetchall()
        return _Ready(Result(rows, cursor.rowcount, _columns(cursor)))


def _columns(cursor: Any) -> tuple[str, ...]:
    return tuple(d[0] for d in cursor.description) if cursor.description else ()


def run_synchronously(coroutine: Coroutine[Any, Any, T]) -> T:
    """Drive a coroutine that must complete without suspending."""
    try:
        coroutine.send(None)
    except StopIteration as stop:
        result: T = stop.value
        return result
    coroutine.close()
    raise RuntimeError("a transaction function awaited something other than txn.execute")


def connect_sqlite(path: str) -> sqlite3.Connection:
    """Open a SQLite connection in autocommit mode (transactions are explicit)."""
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    connection.execute("PRAGMA foreign_keys = ON")
    return connection


@dataclass
class _Job:
    name: str
    func: TxnFunction[Any]
    args: tuple[Any, ...]
    deferred: defer.Deferred[Any]


@dataclass
class _Exclusive:
    """Work the writer runs alone, on its raw connection, outside any transaction."""

    func: Callable[["_Writer"], Any]
    deferred: defer.Deferred[Any]


class _Writer:
    """The writer thread's connection and transaction handle (only that thread touches them)."""

    def __init__(self, path: str, engine: Engine) -> None:
        self.path = path
        self.engine = engine
        #: The rows of cached tables changed since L{take} was last called.
        self.changed: list[Change] = []
        #: The schema versions (main, temp) the change triggers were made for.
        self.schema = (0, 0)
        self.connection = self.open()
        self.txn = _SqliteTxn(self.connection, engine)

    def open(self) -> sqlite3.Connection:
        """A writer connection: WAL, fully synced commits, every change of a cached table recorded."""
        connection = connect_sqlite(self.path)
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("PRAGMA synchronous = FULL")
        # A REPLACE that deletes a conflicting row fires its delete trigger too.
        connection.execute("PRAGMA recursive_triggers = ON")
        connection.create_function("mizud_changed", 3, self._record)
        self._install(connection)
        return connection

    def _install(self, connection: sqlite3.Connection) -> None:
        """Create the change triggers on the watched tables that exist now; note the schema's version."""
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        for statement in sqlite_triggers(tables):
            connection.execute(statement)
        self.schema = self._versions(connection)

    @staticmethod
    def _versions(connection: sqlite3.Connection) -> tuple[int, int]:
        return (connection.execute("PRAGMA main.schema_version").fetchone()[0],
                connection.execute("PRAGMA temp.schema_version").fetchone()[0])

    def schema_changed(self) -> bool:
        """Whether the schema changed since the triggers were made (a table rebuilt, or a trigger dropped,
        through the db function): if so they are made again, and the caller must count everything as
        changed."""
        if self._versions(self.connection) == self.schema:
            return False
        self._install(self.connection)
        return True

    def _record(self, table: str, rowid: Any, server: Any) -> None:
        """Called by the temporary triggers for each changed row (on this thread, inside the statement)."""
        self.changed.append(Change(table, int(rowid) if rowid is not None else None, bool(server)))

    def take(self) -> list[Change]:
        """The changes recorded since the last call."""
        changed, self.changed = self.changed, []
        return changed

    def reopen(self) -> None:
        """Open a new connection, then close the old one."""
        fresh = self.open()
        self.connection.close()
        self.connection, self.txn = fresh, _SqliteTxn(fresh, self.engine)


_STOP = object()


class SqliteDatabase:
    """SQLite with one writer thread and group commit (see the module doc).

    C{max_batch} caps how many queued transactions share one commit; 1 gives
    one synced commit per transaction (the benchmark's baseline).
    """

    def __init__(self, path: str, reactor: IReactorFromThreads, max_batch: int = 256) -> None:
        self.path = path
        self.engine: Engine = SqliteEngine()
        self._reactor = reactor
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stopped: defer.Deferred[None] | None = None
        self._reader: sqlite3.Connection | None = None
        self.commits = 0
        self.transactions = 0
        self.running = Running()
        self.changes = ChangeFeed(MONOTONIC, tables=WATCHED)

    def start(self) -> defer.Deferred[None]:
        """Open the connection (WAL, fully synced commits) and start the writer."""
        try:
            writer = _Writer(self.path, self.engine)
            self._reader = self._open_reader()
        except sqlite3.Error as error:
            return defer.fail(DatabaseError(f"cannot open SQLite database {self.path}: {error}"))
        self._stopped = defer.Deferred()
        self._thread = threading.Thread(
            target=self._writer, args=(writer,), name="mizud-sqlite-writer", daemon=True
        )
        self._thread.start()
        return defer.succeed(None)

    def run_interaction(self, name: str, func: TxnFunction[T], *args: Any) -> defer.Deferred[T]:
        """Queue C{func(txn, *args)}; the Deferred fires after its group commits."""
        if self._thread is None:
            return defer.fail(DatabaseError("the database is not open"))
        d: defer.Deferred[T] = defer.Deferred()
        key = self.running.begin(name)
        self._queue.put(_Job(name, func, args, d))
        d.addBoth(self._ended, key)
        return d

    def _ended(self, result: Any, key: int) -> Any:
        self.running.end(key)
        return result

    def _open_reader(self) -> sqlite3.Connection:
        reader = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        reader.execute("PRAGMA query_only = ON")
        return reader

    def run_exclusive(self, name: str, func: Callable[[sqlite3.Connection], T]) -> defer.Deferred[T]:
        """Run C{func(connection)} on the writer thread between transactions, outside any
        transaction (a backup, a restore, VACUUM): no write runs meanwhile."""
        return self._exclusive(name, lambda writer: func(writer.connection))

    def _exclusive(self, name: str, func: Callable[[_Writer], T]) -> defer.Deferred[T]:
        if self._thread is None:
            return defer.fail(DatabaseError("the database is not open"))
        d: defer.Deferred[T] = defer.Deferred()
        key = self.running.begin(name)
        self._queue.put(_Exclusive(func, d))
        d.addBoth(self._ended, key)
        return d

    def run_outside(self, name: str, sql: str) -> defer.Deferred[None]:
        """Run one statement outside a transaction on the writer (VACUUM)."""
        return self.run_exclusive(name, lambda connection: connection.execute(sql).close())

    async def reset(self) -> int:
        """Reopen the writer's and the reader's connections (the next transaction uses the new ones)."""
        await self._exclusive("reset", _Writer.reopen)
        if self._reader is not None:
            fresh = self._open_reader()
            self._reader.close()
            self._reader = fresh
        return 2

    def run_statement(self, name: str, sql: str, params: Sequence[Any] = ()) -> defer.Deferred[Result]:
        """Queue one statement as a transaction of its own."""
        return self.run_interaction(name, _one_statement, sql, params)

    def run_query(self, name: str, sql: str, params: Sequence[Any] = ()) -> defer.Deferred[Result]:
        """Run a short read on the reader connection, on the calling (reactor) thread.

        In WAL mode a reader never waits for the writer and sees every
        commit that has been answered, so an indexed lookup costs tens of
        microseconds here instead of a trip through the writer thread.  Only
        short, indexed reads belong here: a long query would hold up the
        reactor.  The reader refuses writes (query_only).
        """
        if self._reader is None:
            return defer.fail(DatabaseError("the database is not open"))
        try:
            cursor = self._reader.execute(sql, self.engine.params(params))
            return defer.succeed(Result(cursor.fetchall(), cursor.rowcount, _columns(cursor)))
        except Exception:
            return defer.fail()

    def close(self) -> defer.Deferred[None]:
        """Let queued transactions finish, then close the connection."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._thread is None or self._stopped is None:
            return defer.succeed(None)
        self._thread = None
        self._queue.put(_STOP)
        return self._stopped

    # The rest runs on the writer thread.

    def _writer(self, writer: _Writer) -> None:
        waiting: Any = None  # a job taken from the queue that the current batch must not include
        while True:
            first = waiting if waiting is not None else self._queue.get()
            waiting = None
            if first is _STOP:
                break
            if isinstance(first, _Exclusive):
                self._run_exclusive(writer, first)
                continue
            batch = [first]
            while len(batch) < self._max_batch:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is _STOP or isinstance(job, _Exclusive):
                    waiting = job
                    break
                batch.append(job)
            outcomes = self._run_batch(writer.connection, writer.txn, batch)
            changes: list[Change] | None = writer.take()
            if writer.schema_changed():
                changes = None  # everything
            # The caches hear of the group's changes before any of its callers is answered.
            self._reactor.callFromThread(self._deliver, batch, outcomes, changes)
        writer.connection.close()
        assert self._stopped is not None
        self._reactor.callFromThread(self._stopped.callback, None)

    def _run_exclusive(self, writer: _Writer, job: _Exclusive) -> None:
        try:
            outcome: Any = job.func(writer)
        except Exception:
            outcome = Failure()
        writer.take()
        self._reactor.callFromThread(self._deliver_exclusive, job.deferred, outcome)

    def _deliver(self, batch: list[_Job], outcomes: list[Any], changes: list[Change] | None) -> None:
        """On the reactor thread: tell the changes (None: everything), then answer the group's callers."""
        if changes is None:
            self.changes.everything()
        elif changes:
            self.changes.tell(changes)
        _deliver(batch, outcomes)

    def _deliver_exclusive(self, deferred: defer.Deferred[Any], outcome: Any) -> None:
        """On the reactor thread: an exclusive job (a restore, VACUUM) may have changed anything."""
        self.changes.everything()
        _deliver_one(deferred, outcome)

    def _run_batch(
        self, connection: sqlite3.Connection, txn: _SqliteTxn, batch: list[_Job]
    ) -> list[Any]:
        """Run a batch in one transaction; never raises (the writer must not die)."""
        try:
            connection.execute("BEGIN IMMEDIATE")
            outcomes: list[Any] = []
            for job in batch:
                connection.execute("SAVEPOINT job")
                try:
                    outcome: Any = run_synchronously(job.func(txn, *job.args))
                except Exception:
                    outcome = Failure()
                    connection.execute("ROLLBACK TO job")
                connection.execute("RELEASE job")
                outcomes.append(outcome)
            connection.execute("COMMIT")
        except Exception as error:
            # Only the database itself failing gets here (BEGIN, SAVEPOINT,
            # COMMIT): nothing of the batch is kept and every caller hears so.
            if connection.in_transaction:
                try:
                    connection.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            failure = Failure(DatabaseError(f"transaction failed: {error}"))
            return [failure] * len(batch)
        self.commits += 1
        self.transactions += len(batch)
        return outcomes


async def _one_statement(txn: Txn, sql: str, params: Sequence[Any]) -> Result:
    return await txn.execute(sql, params)


def _deliver_one(deferred: defer.Deferred[Any], outcome: Any) -> None:
    if isinstance(outcome, Failure):
        deferred.errback(outcome)
    else:
        deferred.callback(outcome)


def _deliver(batch: list[_Job], outcomes: list[Any]) -> None:
    for job, outcome in zip(batch, outcomes):
        _deliver_one(job.deferred, outcome)


# -- PostgreSQL -------------------------------------------------------------------


class _PgTxn:
    """A transaction on one txpostgres connection, begun lazily.

    psycopg2's asynchronous connections are in autocommit mode, so the
    transaction is opened explicitly; C{BEGIN} travels in the same message as
    the first statement, saving a round trip.
    """

    engine: Engine

    def __init__(self, cursor: Any, engine: Engine) -> None:
        self.cursor = cursor
        self.engine = engine
        self.begun = False

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> Result:
        prefix = ""
        if not self.begun:
            self.begun = True
            prefix = "BEGIN;"
        return await _pg_execute(self.cursor, self.engine, prefix + sql, params)


async def _pg_execute(cursor: Any, engine: Engine, sql: str, params: Sequence[Any]) -> Result:
    if params:
        await cursor.execute(engine.sql(sql), engine.params(params))
    else:
        await cursor.execute(sql)
    rows = cursor.fetchall() if cursor.description is not None else []
    return Result(rows, cursor.rowcount, _columns(cursor))


async def background(work: Callable[[], Awaitable[Any]], what: str) -> None:
    """Run background work (a chore, a notification handler) that nobody awaits: a database that is
    away is one warning line (it reconnects), anything else a logged failure; nothing escapes."""
    try:
        await work()
    except DatabaseError as problem:
        log.warn("{what}: {problem}", what=what, problem=problem)
    except Exception:
        log.failure("{what} failed", what=what)


def pg_connection(reactor: Any) -> Any:
    """A txpostgres connection that takes the server closing it quietly.

    txpostgres lets psycopg2's error escape from the reactor's read event
    when the server closes an idle connection (a restart, an administrator's
    pg_terminate_backend), which Twisted logs as an unhandled error with a
    traceback.  Here it is one warning line; the connection is closed, and
    the pool (or the listener) replaces it when it next tries to use it.
    """
    import psycopg2
    from txpostgres import txpostgres

    class QuietConnection(txpostgres.Connection):  # type: ignore[misc, unused-ignore]
        def capture_notices(self, sink: Notices) -> None:
            """Give the server's notices on this (connected) connection to C{sink}."""
            self._connection.notices = sink

        def checkForNotifies(self) -> None:
            """Tell the observers of each NOTIFY now, before the answer that came with it is delivered
            (txpostgres would tell them on a later turn of the reactor): the change feed relies on it."""
            raw = self._connection
            while raw.notifies:
                notify = raw.notifies.pop(0)
                for observer in self.getNotifyObservers():
                    try:
                        observer(notify)
                    except Exception:
                        log.failure("a NOTIFY observer failed")

        def doRead(self) -> None:
            try:
                super().doRead()
            except psycopg2.Error as error:
                log.warn("PostgreSQL closed a connection: {error}", error=_first_line(error))
                self.reactor.removeReader(self)
                try:
                    self._connection.close()
                except Exception:
                    pass

    return QuietConnection(reactor=reactor)


class Notices:
    """What the server told one connection besides its answers (psycopg2 appends each message here).

    The change triggers' NOTICEs (C{mizud_rows TABLE ID}) are kept until
    the statement or transaction that caused them has ended; anything else
    is logged at debug level.
    """

    def __init__(self) -> None:
        self.changes: list[tuple[Change, int | None]] = []

    def append(self, message: str) -> None:
        """One message, C{"NOTICE:  text"} (nothing escapes: psycopg2 would drop the rest of the batch)."""
        try:
            text = str(message).partition(":")[2].strip()
            if text.startswith(CHANGE_NOTICE):
                told = parse_told(text[len(CHANGE_NOTICE):])
                if told is not None:
                    self.changes.append(told)
                    return
            log.debug("PostgreSQL: {message}", message=str(message).strip()[:500])
        except Exception:
            log.failure("reading a PostgreSQL notice")

    def take(self) -> list[tuple[Change, int | None]]:
        """The changes (with their transactions' ids) kept since the last call."""
        changes, self.changes = self.changes, []
        return changes


#: Seconds a PostgreSQL transaction waits for a free pool connection before it is refused.
POOL_WAIT = 10.0


class PostgresDatabase:
    """PostgreSQL through a pool of txpostgres connections.

    A connection that breaks is closed and replaced by a fresh one; the
    transaction that saw it break fails with L{DatabaseError}.  Serialization
    failures and deadlocks are retried up to C{retries} times.
    """

    retries = 5

    def __init__(self, dsn: str, reactor: IReactorTime, pool_size: int = 8) -> None:
        self.dsn = dsn
        self.engine: Engine = PostgresEngine()
        self._reactor = reactor
        self._pool_size = pool_size
        self._idle: defer.DeferredQueue[Any] = defer.DeferredQueue()
        self._connections: set[Any] = set()
        self._closing = False
        #: Bumped by reset(); a connection opened under an older generation is replaced when released.
        self._generation = 0
        self._born: dict[Any, int] = {}
        self._notices: dict[Any, Notices] = {}
        self.running = Running()
        #: Trusted only while the listener (L{mizud.store.notify}) confirms it.
        self.changes = ChangeFeed(MONOTONIC, confirmed=False, credit=False, tables=EVERY_ENGINE)

    async def _connect(self) -> Any:
        connection = pg_connection(self._reactor)
        try:
            await connection.connect(self.dsn)
            # The change triggers tell the connection that made a change by a NOTICE (see mizud.store.changes).
            notices = self._notices[connection] = Notices()
            connection.capture_notices(notices)
            # (Notices shown, whatever the role's or server's client_min_messages says.)
            await connection.runOperation("SET mizud.capture = 'on'; SET client_min_messages = notice")
        except Exception as error:
            self._notices.pop(connection, None)
            try:
                connection.close()
            except Exception:
                pass
            raise DatabaseError(f"cannot connect to PostgreSQL: {_first_line(error)}") from None
        self._connections.add(connection)
        self._born[connection] = self._generation
        return connection

    def start(self) -> defer.Deferred[None]:
        """Open C{pool_size} connections; fail if any cannot be opened."""

        async def open_all() -> None:
            try:
                for _ in range(self._pool_size):
                    self._idle.put(await self._connect())
            except Exception:
                self._close_all()
                raise

        return defer.ensureDeferred(open_all())

    # These are coroutines rather than Deferreds: the store awaits them from
    # its own coroutines, and a native await chain is cheaper on this hot path.

    async def run_interaction(self, name: str, func: TxnFunction[T], *args: Any) -> T:
        """Run C{func(txn, *args)} in a transaction on a free connection, retrying conflicts."""
        return await self._run(name, lambda connection: self._transaction(connection, func, args))

    async def run_statement(self, name: str, sql: str, params: Sequence[Any] = ()) -> Result:
        """Run one statement in autocommit mode: atomic, one round trip."""
        return await self._run(name, lambda connection: _pg_execute(connection.cursor(), self.engine, sql, params))

    run_query = run_statement

    async def _run(self, name: str, work: Callable[[Any], Awaitable[T]]) -> T:
        if self._closing:
            raise DatabaseError("the database is closing")
        key = self.running.begin(name)
        try:
            return await self._attempts(name, work)
        finally:
            self.running.end(key)

    async def _attempts(self, name: str, work: Callable[[Any], Awaitable[T]]) -> T:
        attempt = 0
        while True:
            if not self._connections:
                # Every connection broke and none is back yet: say so now rather than wait.
                raise DatabaseError(f"{name}: PostgreSQL is unavailable (reconnecting)")
            waiting = self._idle.get()
            try:
                connection = await waiting.addTimeout(POOL_WAIT, self._reactor)
            except defer.TimeoutError:
                raise DatabaseError(f"{name}: no PostgreSQL connection became free in {POOL_WAIT:g} s") from None
            broken = False
            try:
                return await work(connection)
            except Exception as error:
                broken = isinstance(error, _RollbackFailed) or bool(connection.closed)
                if broken:
                    raise DatabaseError(f"{name}: {_first_line(error)}") from None
                if self.engine.is_retryable(error) and attempt < self.retries:
                    attempt += 1
                    log.debug("{name}: retrying after {error}", name=name, error=error)
                    continue
                raise
            finally:
                notices = self._notices.get(connection)
                if notices is not None and notices.changes:
                    # The statement or transaction has ended: the caches hear of it before its caller.
                    told = notices.take()
                    self.changes.tell([change for change, _ in told])
                    self.changes.told_directly([(xid, change) for change, xid in told if xid is not None])
                if broken and not self._closing:
                    self._replace(connection)
                else:
                    self._release(connection)

    async def _transaction(self, connection: Any, func: TxnFunction[T], args: tuple[Any, ...]) -> T:
        txn = _PgTxn(connection.cursor(), self.engine)
        try:
            result = await func(txn, *args)
        except BaseException:
            if txn.begun:
                try:
                    await txn.cursor.execute("ROLLBACK")
                except Exception as error:
                    raise _RollbackFailed(_first_line(error)) from None
            raise
        if txn.begun:
            await txn.cursor.execute("COMMIT")
        return result

    def _release(self, connection: Any) -> None:
        if self._closing:
            connection.close()
            self._forget(connection)
        elif self._born.get(connection, 0) < self._generation:
            self._forget(connection)
            connection.close()
            if len(self._connections) < self._pool_size:
                self._reconnect()
        else:
            self._idle.put(connection)

    def _forget(self, connection: Any) -> None:
        self._connections.discard(connection)
        self._born.pop(connection, None)
        self._notices.pop(connection, None)

    async def reset(self) -> int:
        """Replace every connection: idle ones now (each after its replacement has opened, so requests
        never find the pool empty), busy ones when their transaction ends.  The number replaced."""
        self._generation += 1
        count = len(self._connections)
        for stale in list(self._idle.pending):
            fresh = await self._connect()  # PostgreSQL unreachable: the rest stay until released
            if stale in self._idle.pending:
                self._idle.pending.remove(stale)
                self._forget(stale)
                stale.close()
                self._idle.put(fresh)
            else:
                # Taken meanwhile: its release replaces it, so this one would grow the pool.
                self._forget(fresh)
                fresh.close()
        return count

    async def run_outside(self, name: str, sql: str) -> None:
        """Run one statement in autocommit mode (VACUUM may not run in a transaction block)."""
        await self.run_statement(name, sql)

    def _replace(self, connection: Any) -> None:
        log.warn("replacing a broken PostgreSQL connection")
        self._forget(connection)
        try:
            connection.close()
        except Exception:
            pass
        self._reconnect()

    def _reconnect(self) -> None:
        """Open one new connection for the pool, retrying with back-off until it opens or the pool closes."""

        async def reconnect() -> None:
            delay = 0.5
            while not self._closing:
                try:
                    self._idle.put(await self._connect())
                    return
                except DatabaseError as error:
                    log.error("{error}; retrying in {delay}s", error=error, delay=delay)
                    await _sleep(self._reactor, delay)
                    delay = min(delay * 2, 30.0)

        defer.ensureDeferred(reconnect())

    def _close_all(self) -> None:
        for connection in list(self._connections):
            try:
                connection.close()
            except Exception:
                pass
            self._forget(connection)

    def close(self) -> defer.Deferred[None]:
        """Close idle connections now and busy ones when they are released."""
        self._closing = True
        while self._idle.pending:
            connection = self._idle.pending.pop()
            connection.close()
            self._forget(connection)
        if not self._connections:
            return defer.succeed(None)

        async def wait() -> None:
            while self._connections:
                await _sleep(self._reactor, 0.05)

        return defer.ensureDeferred(wait())


class _RollbackFailed(Exception):
    """ROLLBACK failed: the connection's state is unknown, so it is replaced."""


def _sleep(reactor: IReactorTime, seconds: float) -> defer.Deferred[None]:
    from twisted.internet.task import deferLater

    return deferLater(reactor, seconds, lambda: None)


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def open_database(database: str, reactor: Any, pool_size: int = 8, max_batch: int = 256) -> Database:
    """Build (without opening) the database for a C{database} option value."""
    if is_postgres(database):
        return PostgresDatabase(database, reactor, pool_size)
    return SqliteDatabase(database, reactor, max_batch)
