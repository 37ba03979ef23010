"""The narrow interfaces the SIP method handlers are given, instead of the whole core.

The core (L{mizud.sip.core.SipCore}) provides all of them; each handler is
typed against only what it uses, so the type checker keeps a handler from
reaching further into the core:

 - L{Authenticating}: the digest check of a request (and the settings and
   statistics around it): presence (PUBLISH);
 - L{Sending}: requests of our own (MESSAGE, INVITE, BYE): how to reach a
   peer, a new request, the client transactions, an answer to a challenge,
   and the backend: messages;
 - L{Registering}: what the registrar needs: the authenticator, where to
   send a phone's requests, work to run after the 200, and the messenger that
   hands over stored messages;
 - L{Texting}: SMS: sending, and the messenger for SMS to users of ours;
 - L{Calling}: what the call control needs: sending, and the dialog table;
 - L{Bridging}: what relaying a phone's call needs besides: the caller's
   digest check (407), provisional responses and CANCELs of the INVITE
   being served, work after its final response, our address towards a peer.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any, Callable, Protocol

from ..config import Settings
from ..store.billing import User
from .backend import Backend
from .dialog import Dialogs
from .message import SipMessage
from .routing import Route
from .transaction import ClientTransactions, Source

if TYPE_CHECKING:  # pragma: no cover
    from .messaging import Messenger


class Authenticating(Protocol):
    """The digest check, with the settings and statistics around it."""

    settings: Settings
    clock: Any
    stats: Counter[str]

    async def authenticate(self, request: SipMessage, source: Source, backend: Backend) -> User | SipMessage:
        """The user the request's credentials prove, or the response to send instead."""


class Sending(Protocol):
    """Requests of our own: where a peer is, a new request, the client transactions, challenges answered."""

    settings: Settings
    clock: Any
    stats: Counter[str]
    clients: ClientTransactions
    backend_of: Callable[[], Backend | None]

    def route(self, transport: str, address: str, contact: str) -> tuple[Callable[[bytes], None], str, bool] | None:
        """How to send to a registered contact (its connection or the socket it used), if we can."""

    async def destination(self, route: Route) -> tuple[Callable[[bytes], None], str, bool, str]:
        """How to send to a route's target: (send, our address, reliable, peer host)."""

    def request(self, method: str, uri: str, from_uri: str, to_uri: str, local: str, transport: str) -> SipMessage:
        """A new out-of-dialog request from us."""

    def authorised(self, request: SipMessage, response: SipMessage, account: tuple[str, str]) -> SipMessage | None:
        """The request again with credentials answering the response's challenge, or None."""


class Registering(Authenticating, Protocol):
    """What the registrar needs beyond the digest check."""

    messenger: Messenger

    def remember(self, source: Source) -> None:
        """Send this peer's requests back the way its REGISTER came."""

    def after_response(self, request: SipMessage, work: Callable[[], Any]) -> None:
        """Run C{work} once the request's response has been sent."""


class Texting(Sending, Protocol):
    """What SMS need: sending, and the messenger (an SMS to a user of ours becomes an instant message)."""

    messenger: Messenger


class Calling(Sending, Protocol):
    """What the call control needs: sending, and the dialog table that routes in-dialog requests to it."""

    dialogs: Dialogs


class Bridging(Calling, Protocol):
    """What relaying a phone's call needs beyond placing calls (L{mizud.sip.b2bua})."""

    async def authenticate(self, request: SipMessage, source: Source, backend: Backend,
                           proxy: bool = False) -> User | SipMessage:
        """The user the request's credentials prove, or the response to send instead (407 with C{proxy})."""

    def progress(self, request: SipMessage, response: SipMessage) -> None:
        """Send a provisional response to the request being served."""

    def on_cancel(self, request: SipMessage, hook: Callable[[], None]) -> None:
        """Call C{hook} when the peer CANCELs the INVITE being served."""

    def after_response(self, request: SipMessage, work: Callable[[], Any]) -> None:
        """Run C{work} once the request's final response has been sent."""

    def reachable(self, local: str, peer: str) -> str:
        """Our host:port as the peer reaches it (a wildcard listen address made concrete)."""
