"""PUBLISH of presence (RFC 3903 with RFC 3863 PIDF), feeding the presence the API reports.

A registered phone (the Mizu webphone, for one) publishes its user's
presence; mizud keeps one publication per user: the status becomes what
C{presence_get} answers for that user (a PIDF C{<note>}, else C{online}
for a C{basic} of C{open} and C{offline} for C{closed}).  As RFC 3903
says: C{Event: presence} is required (489 otherwise); the publisher is
authenticated (401) and may publish only its own presence (403); a
publication gets an entity tag (C{SIP-ETag}) and a lifetime (C{Expires},
at most C{sipmaxexpires}, at least C{sipminexpires} or 423); a refresh or
a removal names the tag in C{SIP-If-Match} (412 when it is not the
current one); C{Expires: 0} removes the publication (the user is
offline).  The body is PIDF (C{application/pidf+xml}, 415 otherwise),
without a DTD or entities.
"""

from __future__ import annotations

import os
import re
from xml.etree import ElementTree

from .backend import Backend
from .ports import Authenticating
from .responses import response_to
from .message import SipMessage
from .transaction import Source

PIDF = "application/pidf+xml"
_DTD = re.compile(r"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)
#: The longest status text kept (as presence_set's).
MAX_STATUS = 200


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1].lower()


def pidf_status(body: bytes) -> str | None:
    """The presence status a PIDF document says: its first note, else online (open) or offline (closed);
    None if it is not a PIDF document."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if _DTD.search(text):
        return None
    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError:
        return None
    if _local(root.tag) != "presence":
        return None
    basic = note = ""
    for element in root.iter():
        name = _local(element.tag)
        if name == "basic" and not basic:
            basic = (element.text or "").strip().lower()
        elif name == "note" and not note:
            note = " ".join((element.text or "").split())
    if note:
        # presence_set's rules: no , : or line breaks (clients split the list on them).
        return "".join(" " if c in ",:" else c for c in note if c.isprintable())[:MAX_STATUS].strip() or "online"
    return "offline" if basic == "closed" else "online"


async def publish(core: Authenticating, request: SipMessage, source: Source, backend: Backend) -> SipMessage:
    """The response to one PUBLISH (see the module doc)."""

    event = request.get("event").split(";", 1)[0].strip().lower()
    if event != "presence":
        response = response_to(request, 489, source=source)
        response.add("Allow-Events", "presence")
        return response
    user = await core.authenticate(request, source, backend)
    if isinstance(user, SipMessage):
        return user
    target = request.request_uri().user or request.address("to").uri.user
    if target != user.username:
        return response_to(request, 403, "Only your own presence", source=source)
    config = core.settings.current
    expires_text = request.get("expires").strip()
    if expires_text and not (expires_text.isascii() and expires_text.isdigit()):
        return response_to(request, 400, "Malformed Expires", source=source)
    expires = min(int(expires_text[:9] or config.sipdefexpires), config.sipmaxexpires)
    presence = backend.store.presence
    given = request.get("sip-if-match").strip()
    current = await presence.etag(user.id)
    if given and given != current:
        return response_to(request, 412, source=source)
    if 0 < expires < config.sipminexpires:
        response = response_to(request, 423, source=source)
        response.add("Min-Expires", str(config.sipminexpires))
        return response
    if expires == 0:
        if not given:
            return response_to(request, 400, "A removal names the publication in SIP-If-Match", source=source)
        await presence.set(user.id, "offline")
        response = response_to(request, 200, source=source)
        response.add("Expires", "0")
        return response
    if request.body:
        if request.get("content-type").split(";", 1)[0].strip().lower() != PIDF:
            response = response_to(request, 415, source=source)
            response.add("Accept", PIDF)
            return response
        status = pidf_status(request.body)
        if status is None:
            return response_to(request, 400, "Not a PIDF document", source=source)
    elif given:
        status = await presence.status(user.id)  # a refresh keeps what was published
    else:
        return response_to(request, 400, "An initial publication needs a body", source=source)
    etag = os.urandom(8).hex()
    await presence.set(user.id, status, etag, expires)
    response = response_to(request, 200, source=source)
    response.add("SIP-ETag", etag)
    response.add("Expires", str(expires))
    return response
