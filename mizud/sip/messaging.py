"""Instant messages (RFC 3428 MESSAGE) and presence, store and forward.

Every message is first written to tb_messages, then sent as a SIP MESSAGE
to each live contact of its recipient; the first 2xx from any of them
marks it delivered.  Undelivered messages stay stored: they are sent
again when the recipient registers, and handed over in the answers to
presence_get and presence_set (the spec's XOFFMESSAGE form) when it polls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.logger import Logger

from ..store.database import Txn
from ..store.registrations import Bindings
from .backend import Backend
from .responses import SERVER

if TYPE_CHECKING:
    from .core import SipCore

log = Logger()

#: The most stored messages handed over in one presence answer.
MAX_HANDED_OVER = 50
#: The longest instant message accepted.
MAX_TEXT = 4000
#: Delivery rounds a stored message gets at registrations; after that only a presence poll hands it over.
MAX_ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class Stored:
    """One stored message."""

    id: int
    fromuser: str
    body: str


class Messenger:
    """Stores and delivers instant messages for a L{SipCore}."""

    def __init__(self, core: SipCore) -> None:
        self.core = core
        #: Ids of messages whose delivery round is under way (not started twice at once).
        self.in_flight: set[int] = set()

    def _backend(self) -> Backend:
        backend = self.core.backend_of()
        if backend is None:
            raise RuntimeError("the API is not started")
        return backend

    async def send(self, fromuser: str, recipients: list[Any], text: str) -> tuple[int, int]:
        """Store a message for each recipient and try to deliver it; (sent to contacts, stored only)."""
        backend = self._backend()
        store = backend.store
        sent = stored = 0
        for recipient in recipients:
            result = await store.db.run_statement(
                "store_message",
                "INSERT INTO tb_messages (fromuser, touserid, tousername, body, created) VALUES (?, ?, ?, ?, ?) "
                "RETURNING id",
                (fromuser, recipient.id, recipient.username, text, store.now()),
            )
            message = Stored(int(result.rows[0][0]), fromuser, text)
            attempts = await self._deliver(recipient.id, recipient.username, [message])
            if attempts:
                sent += 1
            else:
                stored += 1
        self.core.stats["messages"] += len(recipients)
        return sent, stored

    async def deliver_pending(self, userid: int) -> int:
        """Send a user's stored messages to its contacts (after it registered); how many were sent."""
        backend = self._backend()
        pending = await self.pending(userid)
        if not pending:
            return 0
        user = await backend.store.get_user(userid)
        if user is None:
            return 0
        return await self._deliver(userid, user.username, pending)

    async def pending(self, userid: int, limit: int = MAX_HANDED_OVER) -> list[Stored]:
        """A user's undelivered messages still due a delivery round, oldest first."""
        result = await self._backend().db.run_query(
            "pending_messages",
            "SELECT id, fromuser, body FROM tb_messages WHERE touserid = ? AND delivered IS NULL AND attempts < ? "
            "ORDER BY id LIMIT ?",
            (userid, MAX_ATTEMPTS, limit),
        )
        return [Stored(int(row[0]), row[1], row[2]) for row in result.rows if int(row[0]) not in self.in_flight]

    async def hand_over(self, userid: int) -> list[Stored]:
        """Take a user's undelivered messages for a presence answer (marked delivered)."""
        backend = self._backend()

        async def hand_over_txn(txn: Txn) -> list[Stored]:
            rows = (await txn.execute(
                "SELECT id, fromuser, body FROM tb_messages WHERE touserid = ? AND delivered IS NULL ORDER BY id LIMIT ?",
                (userid, MAX_HANDED_OVER))).rows
            taken = []
            for row in rows:
                done = await txn.execute("UPDATE tb_messages SET delivered = ? WHERE id = ? AND delivered IS NULL",
                                         (backend.store.now(), row[0]))
                if done.rowcount:
                    taken.append(Stored(int(row[0]), row[1], row[2]))
            return taken

        return await backend.db.run_interaction("hand_over_messages", hand_over_txn)

    async def _deliver(self, userid: int, username: str, messages: list[Stored]) -> int:
        """Send messages to every live contact of a user; returns how many MESSAGEs went out."""
        backend = self._backend()
        core = self.core
        bindings = await Bindings(backend.db, backend.store.now).of_user(userid)
        sent = 0
        for message in messages:
            results = []
            for binding in bindings:
                # The domain the phone registered under (a host the phone knows), unless siprealm names one.
                realm = core.settings.current.siprealm or binding.domain or SERVER
                route = core.route(binding.transport, binding.address, binding.contact)
                if route is None:
                    continue
                send, local, reliable = route
                request = core.request(
                    "MESSAGE", binding.contact, f"sip:{message.fromuser}@{realm}", f"sip:{username}@{realm}",
                    local or SERVER, binding.transport,
                )
                request.add("Content-Type", "text/plain;charset=UTF-8")
                request.body = message.body.encode("utf-8")
                peer = binding.address.rpartition(":")[0].strip("[]")
                results.append(core.clients.start(request, send, reliable, peer=peer))
                sent += 1
            if results:
                self.in_flight.add(message.id)
                defer.ensureDeferred(self._settle(message, results))
        return sent

    async def _settle(self, message: Stored, results: list[defer.Deferred[Any]]) -> None:
        """Mark a message delivered once any contact accepted it."""
        backend = self._backend()
        statuses = []
        try:
            for result in results:
                response = await result
                statuses.append(response.status)
        finally:
            self.in_flight.discard(message.id)
        await backend.db.run_statement("message_attempt", "UPDATE tb_messages SET attempts = attempts + 1 WHERE id = ?",
                                   (message.id,))
        if any(200 <= status < 300 for status in statuses):
            await backend.db.run_statement(
                "message_delivered", "UPDATE tb_messages SET delivered = ? WHERE id = ? AND delivered IS NULL",
                (backend.store.now(), message.id))
            self.core.stats["messages_delivered"] += 1
        else:
            log.info("SIP MESSAGE {id} for a user not delivered (answers {statuses}); kept for later",
                     id=message.id, statuses=statuses)

