"""The store as a twistd service: migrate before the reactor runs, open after."""

from __future__ import annotations

import os
from datetime import datetime, timezone
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger

from ..config import Config, node_name
from .billing import USER_ADMIN, BillingStore
from .database import Database, open_database
from .nodes import Nodes, release_own
from .notify import Notifications
from ..errors import StartupError
from .schema import migrate

log = Logger()


class StoreService(Service):
    """Owns the database and the L{BillingStore}.

    C{privilegedStartService} migrates the schema synchronously, so a bad
    database stops the start before anything listens; C{startService} opens
    the asynchronous connections and creates the bootstrap admin.  Other
    services wait for L{ready}, which fires with the L{BillingStore}.
    """

    name = "store"  # type: ignore[assignment, unused-ignore]

    def __init__(self, config: Config, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.config = config
        self.reactor = reactor
        self.database: Database | None = None
        self.store: BillingStore | None = None
        self.notifications: Notifications | None = None
        self.nodes: Nodes | None = None
        self.node = node_name(config)
        self.schema: tuple[int, int] | None = None
        self.ready: defer.Deferred[BillingStore] = defer.Deferred()

    def privilegedStartService(self) -> None:
        """Check and migrate the schema; raise L{StartupError} if impossible."""
        super().privilegedStartService()
        now = datetime.fromtimestamp(self.reactor.seconds(), timezone.utc).isoformat()
        if self.config.origins["database"] == "default":
            # Only the built-in default path gets its directory created; an
            # operator's own path must exist, so a typo fails instead of
            # scattering databases around the file system.
            os.makedirs(os.path.dirname(self.config.database), exist_ok=True)
        self.schema = migrate(self.config.database, now)
        before, after = self.schema
        if before != after:
            log.info("schema migrated from version {before} to {after}", before=before, after=after)

    def startService(self) -> None:
        """Open the database, then create the bootstrap admin if configured."""
        super().startService()
        if self.schema is None:
            # Started without the privileged step (e.g. in tests): migrate now.
            self.privilegedStartService()
        self.database = open_database(
            self.config.database, self.reactor, self.config.dbpoolsize, self.config.sqlitebatch
        )
        d = defer.ensureDeferred(self._open(self.database))
        d.addErrback(self._failed)

    async def _open(self, database: Database) -> None:
        await database.start()
        store = BillingStore(database, self.reactor, self.config.defaultcurrency, node=self.node,
                             cached_users=self.config.usercache)
        dsn = self.config.database if self.config.engine == "postgresql" else ""
        self.notifications = Notifications(database, self.reactor, dsn)
        self.notifications.start()
        self.nodes = Nodes(store, self.node)
        await self.nodes.beat()
        assert self.nodes.started is not None
        await release_own(store, self.node, self.nodes.started)
        if self.config.bootstrapadmin:
            username, password = self.config.bootstrapadmin
            if await store.find_user(username) is None:
                await store.create_user(username, password, type=USER_ADMIN)
                log.info("bootstrap admin {username} created", username=username)
        self.store = store
        self.ready.callback(store)

    def _failed(self, failure: Any) -> None:
        log.critical("mizud: cannot start: {error}", error=failure.getErrorMessage())
        if not self.ready.called:
            self.ready.errback(failure)
            self.ready.addErrback(lambda _: None)
        if self.reactor.running:
            self.reactor.stop()

    def stopService(self) -> defer.Deferred[None]:
        """Close the database after queued transactions finish."""
        super().stopService()
        if self.notifications is not None:
            self.notifications.stop()
        database, self.database = self.database, None
        if database is None:
            return defer.succeed(None)
        return database.close()


__all__ = ["StoreService", "StartupError"]
