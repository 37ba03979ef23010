"""Dialogs of mizud's calls (RFC 3261 section 12): as user agent client, and as server.

A client dialog starts from a 2xx to mizud's INVITE. It knows the remote
target (the 2xx's Contact), the route set (its Record-Route, reversed),
both tags and the CSeq numbers, and builds the ACK for the 2xx (which may
carry the SDP answer, as third-party call control needs) and in-dialog
requests such as BYE.  A server dialog starts from the 2xx mizud sends to
a phone's INVITE (the caller's leg of a call mizud relays): its remote
target is the INVITE's Contact, its route set the INVITE's Record-Route.
The core hands each dialog the in-dialog requests the peer sends (BYE,
re-INVITE, UPDATE, INFO) and the ACKs of 2xx responses.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from .message import ParseError, SipMessage, parse_name_addr, parse_uri
from .transaction import Source, new_branch

#: Dialog identifiers: (Call-ID, local tag, remote tag).
DialogId = tuple[str, str, str]
#: What a dialog's owner says of a request in it: a status, or (later) the whole response.
Outcome = int | Awaitable[SipMessage]


@dataclass(eq=False)
class Dialog:
    """One confirmed dialog where mizud was the caller."""

    call_id: str
    local_tag: str
    remote_tag: str
    local: str  # From header value (with our tag)
    remote: str  # To header value (with theirs)
    remote_target: str
    route_set: list[str]
    local_cseq: int
    invite_cseq: int
    via_host: str
    transport: str
    #: Called with each in-dialog request the peer sends (BYE, re-INVITE) and where it came from; the
    #: status to answer it with, or an awaitable of the response (a request relayed to another dialog).
    on_request: Callable[[SipMessage, Source], Outcome] | None = None
    #: Called with the ACK of a 2xx this dialog's peer got from us (the peer's ACKs of our responses).
    on_ack: Callable[[SipMessage], None] | None = None
    remote_cseq: int = -1
    #: The hosts the peer's requests may come from (empty: any): knowing a dialog's Call-ID and tags is
    #: not enough to end or change someone's call.
    peers: tuple[str, ...] = ()
    ended: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def accepts(self, source: Source) -> bool:
        """Whether a request from C{source} may be the peer's."""
        return not self.peers or source.host.strip("[]") in self.peers

    @property
    def id(self) -> DialogId:
        """(Call-ID, local tag, remote tag)."""
        return (self.call_id, self.local_tag, self.remote_tag)

    @classmethod
    def from_2xx(cls, invite: SipMessage, response: SipMessage) -> Dialog:
        """The dialog a 2xx to our INVITE establishes (RFC 3261 12.1.2)."""
        contacts = response.all("contact")
        try:
            target = parse_name_addr(contacts[0]).uri if contacts else invite.request_uri()
        except ParseError:
            target = invite.request_uri()  # a malformed Contact: our requests follow the INVITE's path anyway
        routes = list(reversed(response.all("record-route")))
        via = invite.top_via()
        return cls(
            call_id=invite.call_id, local_tag=invite.address("from").tag, remote_tag=response.address("to").tag,
            local=invite.get("from"), remote=response.get("to"), remote_target=str(target), route_set=routes,
            local_cseq=invite.cseq()[0], invite_cseq=invite.cseq()[0], via_host=via.sent_by,
            transport=via.transport,
        )

    @classmethod
    def as_server(cls, invite: SipMessage, response: SipMessage, local: str, transport: str) -> Dialog:
        """The dialog our 2xx to a peer's INVITE establishes (RFC 3261 12.1.1): we are the To side; our
        requests go to the INVITE's Contact, from C{local} (our host:port as the peer reaches us)."""
        contacts = invite.all("contact")
        try:
            target = str(parse_name_addr(contacts[0]).uri) if contacts else str(invite.address("from").uri)
        except ParseError:
            target = str(invite.address("from").uri)
        return cls(
            call_id=invite.call_id, local_tag=response.address("to").tag, remote_tag=invite.address("from").tag,
            local=response.get("to"), remote=invite.get("from"), remote_target=target,
            route_set=list(invite.all("record-route")), local_cseq=0, invite_cseq=invite.cseq()[0],
            via_host=local, transport=transport.upper(), remote_cseq=invite.cseq()[0],
        )

    def _request(self, method: str, cseq: int) -> SipMessage:
        message = SipMessage(method=method, uri=self.remote_target)
        add = message.headers.append
        add(("via", f"SIP/2.0/{self.transport} {self.via_host};branch={new_branch()};rport"))
        for route in self.route_set:
            add(("route", route))
        add(("max-forwards", "70"))
        add(("from", self.local))
        add(("to", self.remote))
        add(("call-id", self.call_id))
        add(("cseq", f"{cseq} {method}"))
        return message

    def ack(self, body: bytes = b"", content_type: str = "application/sdp") -> SipMessage:
        """The ACK for the INVITE's 2xx (same CSeq number), with an SDP answer when given."""
        ack = self._request("ACK", self.invite_cseq)
        if body:
            ack.add("Content-Type", content_type)
            ack.body = body
        return ack

    def request(self, method: str, body: bytes = b"", content_type: str = "application/sdp") -> SipMessage:
        """A new in-dialog request (BYE, re-INVITE, ...) with the next CSeq."""
        self.local_cseq += 1
        message = self._request(method, self.local_cseq)
        if body:
            message.add("Content-Type", content_type)
            message.body = body
        return message


class Dialogs:
    """The dialogs alive on this node, found by the requests the peers send in them."""

    def __init__(self) -> None:
        self.live: dict[DialogId, Dialog] = {}

    def add(self, dialog: Dialog) -> None:
        """Remember a dialog."""
        self.live[dialog.id] = dialog

    def remove(self, dialog: Dialog) -> None:
        """Forget a dialog."""
        dialog.ended = True
        self.live.pop(dialog.id, None)

    def find(self, request: SipMessage) -> Dialog | None:
        """The dialog a request from a peer belongs to: the peer's From tag is our remote tag, its To tag ours."""
        return self.live.get((request.call_id, request.address("to").tag, request.address("from").tag))

    def incoming(self, request: SipMessage, source: Source) -> tuple[Dialog | None, Outcome]:
        """The dialog an incoming request belongs to and what to answer it with.

        481 when there is none; 500 for a CSeq below the last one (RFC
        3261 12.2.2); otherwise what the dialog's owner says (200 if it has
        no opinion). A BYE ends the dialog.
        """
        dialog = self.find(request)
        if dialog is None:
            return None, 481
        if not dialog.accepts(source):
            return dialog, 403
        number = request.cseq()[0]
        if dialog.remote_cseq >= 0 and number < dialog.remote_cseq:
            return dialog, 500
        dialog.remote_cseq = number
        outcome: Outcome = 200
        if dialog.on_request is not None:
            outcome = dialog.on_request(request, source)
        if request.method == "BYE":
            self.remove(dialog)
        return dialog, outcome

    def acknowledged(self, ack: SipMessage, source: Source) -> bool:
        """An ACK outside any transaction (the ACK of a 2xx) from C{source}: to its dialog's owner; False if
        there is none (or the ACK comes from elsewhere than the dialog's peer)."""
        dialog = self.find(ack)
        if dialog is None or dialog.ended or not dialog.accepts(source):
            return False
        if dialog.on_ack is not None:
            dialog.on_ack(ack)
        return True


def peer_hosts(peer: str, target: str) -> tuple[str, ...]:
    """The hosts a callee's in-dialog requests may come from: where we sent its INVITE, and the host of its
    2xx's Contact (a carrier may send BYE from another signalling address than its proxy's)."""
    try:
        host = parse_uri(target).host.strip("[]")
    except ParseError:
        host = ""
    return tuple(dict.fromkeys(h for h in (peer, host) if h))


def new_tag() -> str:
    """A fresh From/To tag."""
    return os.urandom(6).hex()
