"""Dialogs mizud creates as a caller: ACK for the 2xx, in-dialog requests, BYE from the peer."""

from __future__ import annotations

from pathlib import Path

import pytest_twisted

from mizud.sip.responses import response_to
from mizud.sip.dialog import Dialog
from mizud.sip.message import SipMessage, parse_datagram
from sipkit import Phone, make_rig


def established() -> tuple[SipMessage, SipMessage, Dialog]:
    """An INVITE of ours, the callee's 200 (with Contact and Record-Route), and the dialog it makes."""
    invite = parse_datagram(Phone("mizud", "x", host="192.0.2.1", port=5060).request(
        "INVITE", "sip:bob@example.com", ("Content-Type", "application/sdp"), body=b"v=0\r\n",
        to="sip:bob@example.com"))
    ok = response_to(invite, 200)
    ok.set("To", invite.get("to") + ";tag=bobtag")
    ok.add("Record-Route", "<sip:p1.example.com;lr>")
    ok.add("Record-Route", "<sip:p2.example.com;lr>")
    ok.add("Contact", "<sip:bob@192.0.2.20:5080;transport=udp>")
    return invite, ok, Dialog.from_2xx(invite, ok)


def test_ack_and_bye_follow_the_dialog() -> None:
    """The ACK goes to the Contact with the reversed route set and the INVITE's CSeq; BYE takes the next CSeq."""
    invite, ok, dialog = established()
    ack = dialog.ack(b"v=0 answer\r\n")
    assert ack.uri == "sip:bob@192.0.2.20:5080;transport=udp"
    assert ack.all("route") == ["<sip:p2.example.com;lr>", "<sip:p1.example.com;lr>"]
    assert ack.get("cseq") == f"{invite.cseq()[0]} ACK" and ack.body == b"v=0 answer\r\n"
    assert ack.get("to").endswith(";tag=bobtag") and ack.get("from") == invite.get("from")
    assert ack.top_via().branch != invite.top_via().branch  # a 2xx ACK is a new transaction
    bye = dialog.request("BYE")
    assert bye.get("cseq") == f"{invite.cseq()[0] + 1} BYE" and bye.call_id == invite.call_id
    assert dialog.request("BYE").cseq()[0] == invite.cseq()[0] + 2


@pytest_twisted.ensureDeferred
async def test_bye_from_the_peer_ends_the_dialog(tmp_path: Path) -> None:
    """A BYE in a live dialog is answered 200 and reported; out of any dialog it is 481."""
    rig = await make_rig(tmp_path)
    invite, ok, dialog = established()
    seen: list[str] = []
    dialog.on_request = lambda request, source: seen.append(request.method) or 200
    rig.core.dialogs.add(dialog)
    bye = (f"BYE sip:mizud@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.20:5080;branch=z9hG4bKbye1\r\n"
           f"From: {ok.get('to')}\r\nTo: {invite.get('from')}\r\nCall-ID: {invite.call_id}\r\n"
           f"CSeq: 1 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()
    answers = await rig.exchange(bye, rig.source("192.0.2.20", 5080))
    assert [a.status for a in answers] == [200] and seen == ["BYE"] and dialog.ended
    again = bye.replace(b"z9hG4bKbye1", b"z9hG4bKbye2")
    assert [a.status for a in await rig.exchange(again, rig.source("192.0.2.20", 5080))] == [481]
    await rig.h.db.close()
