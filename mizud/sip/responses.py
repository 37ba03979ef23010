"""What every SIP module answers with: the methods mizud serves, reason phrases, and L{response_to}.

Shared by the core and the method handlers (registrar, messages, presence,
calls, SMS), so that none of them has to import the core.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re

from .message import ParseError, SipMessage
from .transaction import Source

#: Methods this element knows (others: 501).
KNOWN = frozenset({"REGISTER", "OPTIONS", "MESSAGE", "INVITE", "ACK", "CANCEL", "BYE", "SUBSCRIBE",
                   "NOTIFY", "PUBLISH", "INFO", "UPDATE", "PRACK", "REFER"})
#: Methods it serves (known but others: 405 with Allow).
ALLOWED = ("REGISTER", "OPTIONS", "MESSAGE", "INVITE", "ACK", "CANCEL", "BYE", "PUBLISH", "UPDATE", "INFO")
ALLOW = ", ".join(ALLOWED)
#: Our name in Server and User-Agent headers, and the realm and host when none is configured.
SERVER = "mizud"
REASONS = {
    100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 183: "Session Progress", 200: "OK",
    202: "Accepted", 400: "Bad Request", 401: "Unauthorized", 402: "Payment Required", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 406: "Not Acceptable", 407: "Proxy Authentication Required",
    408: "Request Timeout", 412: "Conditional Request Failed", 413: "Request Entity Too Large",
    415: "Unsupported Media Type", 416: "Unsupported URI Scheme", 420: "Bad Extension", 423: "Interval Too Brief",
    480: "Temporarily Unavailable", 481: "Call/Transaction Does Not Exist", 482: "Loop Detected",
    483: "Too Many Hops", 484: "Address Incomplete", 486: "Busy Here", 487: "Request Terminated",
    488: "Not Acceptable Here", 489: "Bad Event", 500: "Server Internal Error", 501: "Not Implemented",
    502: "Bad Gateway", 503: "Service Unavailable", 504: "Server Time-out", 505: "Version Not Supported",
    513: "Message Too Large",
}


def response_to(request: SipMessage, status: int, reason: str = "", source: Source | None = None) -> SipMessage:
    """A response that mirrors the request's Via, From, To (with a tag), Call-ID and CSeq."""
    response = SipMessage(status=status, reason=reason or REASONS.get(status, "Unknown"))
    headers = response.headers
    for i, via in enumerate(request.all("via")):
        if i == 0 and source is not None:
            via = _received(via, request, source)
        headers.append(("via", via))
    to = request.get("to")
    if to and status > 100 and ";tag=" not in to.replace(" ", "").lower():
        to += ";tag=" + _tag_for(request)
    # A request missing some of these (RFC 4475 "insuf") still gets an answer with the rest.
    for name, value in (("from", request.get("from")), ("to", to), ("call-id", request.call_id),
                        ("cseq", request.get("cseq"))):
        if value:
            headers.append((name, value))
    headers.append(("server", SERVER))
    return response


#: Keys the To tags of this process: a tag must be the same for every response of one transaction
#: (retransmitted requests included) yet unguessable, or whoever forges a request could forge the ACK or
#: BYE of its dialog too.
_TAG_KEY = os.urandom(16)


def _tag_for(request: SipMessage) -> str:
    seed = request.get("via") + request.call_id + request.get("cseq")
    return hmac.new(_TAG_KEY, seed.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()[:16]


def _received(via: str, request: SipMessage, source: Source) -> str:
    """RFC 3261 18.2.1 received= and RFC 3581 rport= on the top Via."""
    try:
        parsed = request.top_via()
    except ParseError:
        return via
    rport = parsed.param("rport") == ""
    if rport:
        via = _RPORT.sub(f";rport={source.port}", via, count=1)
    if (rport or parsed.host != source.host) and parsed.param("received") is None:
        via += f";received={source.host}"
    return via


_RPORT = re.compile(r";\s*rport(?=\s*(?:;|$))", re.I)
