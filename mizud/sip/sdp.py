"""The session descriptions mizud writes as a third-party call controller (RFC 3725, RFC 3264).

mizud never carries media: it hands each party's description to the
other.  Two things it writes itself:

  - L{hold_offer}, the first offer to leg A (RFC 3725 flow IV's "black
    hole"): one audio stream on the discard port with the codecs every
    phone has (G.711 u-law and A-law, G.722, and DTMF events),
    C{c=0.0.0.0} and C{a=inactive}, so no media flows until B is known.
    An offer without any media line, as flow IV allows, is refused by
    baresip and linphone (488), and so is one with no codec they have.
  - L{reorigin}: a party's description rewritten to come from mizud's
    session of the dialog it is sent in.  RFC 3264 8 wants one origin per
    session, its version one higher at each new offer or answer; phones
    that check it refuse B's own origin in A's dialog.
"""

from __future__ import annotations

import os

#: The codecs of the hold offer: G.711 (both laws), G.722, DTMF events.
HOLD_CODECS = ((0, "PCMU/8000"), (8, "PCMA/8000"), (9, "G722/8000"), (101, "telephone-event/8000"))


def new_session() -> int:
    """A random session id for an o= line."""
    return int.from_bytes(os.urandom(4), "big")


def _family(host: str) -> str:
    return "IP6" if ":" in host else "IP4"


def hold_offer(host: str, session: int) -> bytes:
    """The first offer to leg A: one inactive audio stream of common codecs, nowhere to send it."""
    family = _family(host)
    formats = " ".join(str(number) for number, _ in HOLD_CODECS)
    lines = ["v=0", f"o=mizud {session} 1 IN {family} {host}", "s=-",
             f"c=IN {family} {'::' if family == 'IP6' else '0.0.0.0'}", "t=0 0", f"m=audio 9 RTP/AVP {formats}",
             *(f"a=rtpmap:{number} {name}" for number, name in HOLD_CODECS), "a=fmtp:101 0-15", "a=inactive"]
    return ("\r\n".join(lines) + "\r\n").encode()


def reorigin(body: bytes, host: str, session: int, version: int) -> bytes:
    """C{body} with its o= line replaced by mizud's session C{session} at C{version} (the rest untouched)."""
    text = body.decode("utf-8")
    ending = "\r\n" if "\r\n" in text else "\n"
    lines = text.split(ending)
    origin = f"o=mizud {session} {version} IN {_family(host)} {host}"
    replaced = [origin if line.startswith("o=") else line for line in lines]
    if replaced == lines and lines and lines[0] == "v=0":
        replaced.insert(1, origin)
    return ending.join(replaced).encode("utf-8")
