"""REGISTER (RFC 3261 section 10.3) with digest authentication against tb_users."""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from email.utils import formatdate
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from ..store.registrations import Binding, Bindings, Change, OutOfOrder, TooManyContacts
from .backend import Backend
from .ports import Registering
from .responses import response_to
from .message import ParseError, SipMessage, parse_name_addr
from .transaction import Source

log = Logger()

#: How many users' last registration outcomes this node remembers (fastregusers).
MAX_RECENT = 100_000
_DIGITS = frozenset("0123456789")


@dataclass(frozen=True, slots=True)
class Attempt:
    """The last REGISTER of one user seen by this node."""

    ok: bool
    when: float
    address: str
    transport: str
    contacts: int


def _seconds(text: str, maximum: int) -> int:
    text = text.strip()
    if not text or not set(text) <= _DIGITS:
        raise ParseError(f"malformed expires value {text[:20]!r}")
    # Absurdly long values (RFC 4475 scalar02) are simply the longest we grant.
    digits = text.lstrip("0")
    return maximum if len(digits) > 9 else min(int(digits or "0"), maximum)


_last_date: tuple[int, str] = (-1, "")


def http_date(seconds: float) -> str:
    """The Date header value (RFC 1123, GMT) of a time; the same second's text is made once."""
    global _last_date
    second = math.floor(round(seconds, 6))  # formatdate rounds to the microsecond, then drops the fraction
    if _last_date[0] != second:
        _last_date = (second, formatdate(second, usegmt=True))
    return _last_date[1]


class Registrar:
    """Handles REGISTER for a L{SipCore}."""

    def __init__(self, core: Registering) -> None:
        self.core = core
        self.recent: OrderedDict[str, Attempt] = OrderedDict()

    def bindings(self, backend: Backend) -> Bindings:
        """The bindings table of the API's store."""
        return backend.store.registrations

    def _note(self, username: str, attempt: Attempt) -> None:
        recent = self.recent
        recent.pop(username, None)
        recent[username] = attempt
        if len(recent) > MAX_RECENT:
            recent.popitem(last=False)

    async def register(self, request: SipMessage, source: Source, backend: Backend) -> SipMessage:
        """The response to one REGISTER."""

        core = self.core
        config = core.settings.current
        to = request.address("to")
        if not to.uri.is_sip or not to.uri.user:
            return response_to(request, 400, "To must be a SIP address of record", source=source)
        try:
            # A malformed Contact or Expires is a bad message, whoever sends it (RFC 4475 3.1.2.19) ...
            changes, wildcard = self._changes(request, config)
        except ParseError as error:
            return response_to(request, 400, error.reason[:80], source=source)
        # ... but RFC 3261 10.3 authenticates (step 3) and authorizes (4) before judging the expiry (7).
        user = await core.authenticate(request, source, backend)
        if isinstance(user, SipMessage):
            if user.status in (401, 403) and request.get("authorization"):
                self._note(to.uri.user, Attempt(False, core.clock.seconds(), source.address, source.transport, 0))
            return user
        if user.username != to.uri.user:
            return response_to(request, 403, "Not allowed to register this address", source=source)
        if any(0 < change.expires < config.sipminexpires for change in changes):
            response = response_to(request, 423, source=source)
            response.add("Min-Expires", str(config.sipminexpires))
            return response
        number, _ = request.cseq()
        try:
            bindings = await self.bindings(backend).register(
                user.id, user.username, changes, wildcard=wildcard, callid=request.call_id, cseq=number,
                most=config.sipmaxcontacts,
                address=source.address, transport=source.transport, useragent=request.get("user-agent"),
                domain=to.uri.host[:255],
            )
        except OutOfOrder:
            return response_to(request, 400, "Out of order CSeq", source=source)
        except TooManyContacts:
            return response_to(request, 403, f"At most {config.sipmaxcontacts} contacts per user", source=source)
        core.stats["registrations"] += 1
        core.remember(source)  # requests for this phone go back the way it came
        self._note(user.username, Attempt(True, core.clock.seconds(), source.address, source.transport, len(bindings)))
        response = response_to(request, 200, source=source)
        now = backend.store.now()
        for binding in bindings:
            left = max(0, int((binding.expires - now).total_seconds()))
            text = f"<{binding.contact}>;expires={left}"
            if binding.q != 1:
                text += f";q={binding.q.normalize()}"
            response.add("Contact", text)
        response.add("Date", http_date(core.clock.seconds()))
        if bindings and any(change.expires > 0 for change in changes):
            # Stored messages follow the 200, not precede it.
            userid = user.id
            core.after_response(request, lambda: defer.ensureDeferred(core.messenger.deliver_pending(userid)))
        return response

    def _changes(self, request: SipMessage, config: Any) -> tuple[list[Change], bool]:
        contacts = request.all("contact")
        header = request.get("expires")
        default = config.sipdefexpires
        if header:
            default = _seconds(header, config.sipmaxexpires)
        if any(value.strip() == "*" for value in contacts):
            if len(contacts) != 1 or not header or default != 0:
                raise ParseError("a wildcard Contact needs Expires: 0 and no other Contact")
            return [], True
        changes = []
        for value in contacts:
            address = parse_name_addr(value, "Contact")
            if not address.uri.is_sip:
                raise ParseError("Contact must be a SIP URI")
            given = address.param("expires")
            expires = default if given is None else _seconds(given, config.sipmaxexpires)
            q = Decimal(1)
            given_q = address.param("q")
            if given_q is not None:
                try:
                    q = Decimal(given_q)
                except InvalidOperation:
                    raise ParseError("malformed q value") from None
                if not q.is_finite() or not 0 <= q <= 1 or q.as_tuple().exponent < -3:  # type: ignore[operator]
                    raise ParseError("q must be from 0 to 1 with at most three decimals")
            changes.append(Change(str(address.uri), expires, q))
        return changes, False


def describe(binding: Binding, now: Any) -> dict[str, Any]:
    """A binding as an API record."""
    return {
        "username": binding.username, "contact": binding.contact, "address": binding.address,
        "transport": binding.transport, "useragent": binding.useragent, "q": str(binding.q.normalize()),
        "expires": max(0, int((binding.expires - now).total_seconds())),
        "registered": binding.created.isoformat(sep=" ", timespec="seconds"),
    }
