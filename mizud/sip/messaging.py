"""Instant messages (RFC 3428 MESSAGE) and presence, store and forward.

Every message is first written to tb_messages, then sent as a SIP MESSAGE
to each live contact of its recipient; the first 2xx from any of them
marks it delivered.  Undelivered messages stay stored: they are sent
again when the recipient registers, and handed over in the answers to
presence_get and presence_set (the spec's XOFFMESSAGE form) when it polls.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from ..store.messages import MessageRows, Stored
from .backend import Backend
from .ports import Sending
from .responses import SERVER

log = Logger()

#: The most stored messages handed over in one presence answer.
MAX_HANDED_OVER = 50
#: The longest instant message accepted.
MAX_TEXT = 4000
#: Delivery rounds a stored message gets at registrations; after that only a presence poll hands it over.
MAX_ATTEMPTS = 5


class Messenger:
    """Stores and delivers instant messages for a L{SipCore}."""

    def __init__(self, core: Sending) -> None:
        self.core = core
        #: Ids of messages whose delivery round is under way (not started twice at once).
        self.in_flight: set[int] = set()

    def _backend(self) -> Backend:
        backend = self.core.backend_of()
        if backend is None:
            raise RuntimeError("the API is not started")
        return backend

    def _rows(self) -> MessageRows:
        backend = self._backend()
        return backend.store.messages

    async def send(self, fromuser: str, recipients: list[Any], text: str) -> tuple[int, int]:
        """Store a message for each recipient and try to deliver it; (sent to contacts, stored only)."""
        rows = self._rows()
        sent = stored = 0
        for recipient in recipients:
            message = await rows.store(fromuser, recipient.id, recipient.username, text)
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
        return [message for message in await self._rows().pending(userid, MAX_ATTEMPTS, limit)
                if message.id not in self.in_flight]

    async def hand_over(self, userid: int) -> list[Stored]:
        """Take a user's undelivered messages for a presence answer (marked delivered)."""
        return await self._rows().hand_over(userid, MAX_HANDED_OVER)

    async def _deliver(self, userid: int, username: str, messages: list[Stored]) -> int:
        """Send messages to every live contact of a user; returns how many MESSAGEs went out."""
        backend = self._backend()
        core = self.core
        bindings = await backend.store.registrations.of_user(userid)
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
        rows = self._rows()
        statuses = []
        try:
            for result in results:
                response = await result
                statuses.append(response.status)
        finally:
            self.in_flight.discard(message.id)
        await rows.attempted(message.id)
        if any(200 <= status < 300 for status in statuses):
            await rows.delivered(message.id)
            self.core.stats["messages_delivered"] += 1
        else:
            log.info("SIP MESSAGE {id} for a user not delivered (answers {statuses}); kept for later",
                     id=message.id, statuses=statuses)

