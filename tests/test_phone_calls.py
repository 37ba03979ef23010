"""Calls from real phones through the daemon's B2BUA (mizud/sip/b2bua.py): baresip, linphonec and twinkle
as caller and callee, a sipp gateway billed to the cent, a sipp carrier calling a DID, forwarding, and a
caller without credit.  Everything on loopback, ephemeral ports (the carrier on 127.0.0.2, the gateways on
127.0.0.3)."""

from __future__ import annotations

import subprocess
import time
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterator

import pytest

from test_sipp import SCENARIOS, SIPP, register_from
from test_softphones import (BARESIP, LINPHONEC, TWINKLE, Baresip, Daemon, Linphone, RtpCounter, Twinkle,
                             free_udp_and_tcp_port, wait_for_calls, wait_registered)

needs_phones = pytest.mark.skipif(BARESIP is None or SIPP is None,
                                  reason="baresip and sipp (Debian packages) are not installed")


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    """A daemon with plan 1 (49: 0.60 a minute, 0.01 a second), users alice, bob and carol."""
    (tmp_path / "mizud").mkdir()
    running = Daemon(tmp_path / "mizud", "defaulttariff=1", "callsetuptimeout=3", "callringtimeout=20")
    try:
        csv = "prefix,name,price\n49,Germany,0.60\n"
        assert running.api(apientry="importtariffs", tariffid="1", csv=csv)["status"] == "OK"
        assert running.api(apientry="newuseri", u_username="carol", u_password="carol-password")["status"] == "OK"
        yield running
    finally:
        output = running.stop()
        assert "Traceback" not in output, output


def sql(daemon: Daemon, text: str) -> list[dict[str, Any]]:
    """The records of an admin db request."""
    answer = daemon.api(apientry="db", txt=text)
    assert answer["status"] == "OK", answer
    return answer.get("data") or []


def credit(daemon: Daemon, user: str, amount: str) -> None:
    """Set a user's balance (addcredit from 0)."""
    sql(daemon, f"UPDATE tb_users SET credit = 0 WHERE username = '{user}'")
    if Decimal(amount):
        assert daemon.api(apientry="addcredit", pin=user, credit=amount)["status"] == "OK"


def balance(daemon: Daemon, user: str) -> Decimal:
    """A user's balance as the API says."""
    return Decimal(daemon.api(apientry="balance", authid=user)["message"].split()[0])


def sipp(folder: Path, scenario: str, *args: str, ip: str = "127.0.0.1") -> tuple[subprocess.Popen[str], int]:
    """A sipp running one scenario once on its own port; (process, port)."""
    port = free_udp_and_tcp_port()
    process = subprocess.Popen(
        [SIPP or "sipp", "-sf", str(SCENARIOS / scenario), "-i", ip, "-p", str(port), "-mp",
         str(free_udp_and_tcp_port()), "-m", "1", "-nd", "-nostdin", "-timeout", "60s", "-timeout_error",
         "-trace_err", *args],
        cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(0.3)
    return process, port


def finished(process: subprocess.Popen[str]) -> str:
    """Wait for a sipp scenario's end; its output (failing the test if the scenario failed)."""
    try:
        output, _ = process.communicate(timeout=90)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output
    return output


#: Where the sipp gateways run: not the phones' address (a server added with addserver is known by its
#: address, so requests from there are the server's).
GATEWAY_IP = "127.0.0.3"


def add_gateway(daemon: Daemon, name: str, port: int, prefix: str) -> None:
    """addserver NAME at GATEWAY_IP:PORT routing PREFIX."""
    assert daemon.api(apientry="addserver", u_username=name, u_ip=f"{GATEWAY_IP}:{port}",
                      u_routing=name)["status"] == "OK"
    sql(daemon, f"UPDATE tb_routing SET prefix = '{prefix}' WHERE name = '{name}'")


def cdrs(daemon: Daemon) -> list[dict[str, Any]]:
    """Every CDR once no call is live."""
    wait_for_calls(daemon, None, 30)
    return sql(daemon, "SELECT c.leg, u.username, c.callerid, c.callednumber, c.duration, c.cost, c.direction, "
                       "c.gateway, c.disconnectreason FROM tb_cdrs c JOIN tb_users u ON u.id = c.userid ORDER BY c.id")


@needs_phones
def test_a_call_to_a_gateway_is_cut_at_the_credit_limit_and_billed_to_the_cent(daemon: Daemon,
                                                                              tmp_path: Path) -> None:
    """alice (0.10 USD, 10 s at 0.60 a minute) dials 4930123 on baresip: the sipp gateway gets her offer,
    answers; mizud hangs up both sides after 10 s; the CDR costs 0.10 and her balance is 0.00."""
    credit(daemon, "alice", "0.10")
    gateway, port = sipp(tmp_path, "uas_gateway_relayed.xml", ip=GATEWAY_IP)
    add_gateway(daemon, "gw", port, "49")
    alice = Baresip(tmp_path / "alice", daemon, "alice", 31000)
    try:
        wait_registered(daemon, "alice")
        alice.command("dial", "4930123")
        wait_for_calls(daemon, "connected")
        finished(gateway)
    finally:
        log = alice.stop()
    [record] = cdrs(daemon)
    assert (record["leg"], record["callednumber"], record["gateway"], record["disconnectreason"]) == (
        "A", "4930123", "gw", "credit limit"), record
    assert int(record["duration"]) == 10 and Decimal(record["cost"]) / 1_000_000 == Decimal("0.10"), record
    assert balance(daemon, "alice") == Decimal("0.00")
    assert "BYE sip:" in log  # mizud hung up the phone


@needs_phones
def test_a_caller_without_credit_is_refused_and_nothing_is_dialled(daemon: Daemon, tmp_path: Path) -> None:
    """alice with 0.00 dials 4930123: baresip gets 402 Insufficient credit, the gateway sees nothing."""
    credit(daemon, "alice", "0")
    gateway, port = sipp(tmp_path, "uas_gateway_relayed.xml", "-timeout", "8s", ip=GATEWAY_IP)
    add_gateway(daemon, "gw", port, "49")
    alice = Baresip(tmp_path / "alice", daemon, "alice", 31000)
    try:
        wait_registered(daemon, "alice")
        alice.command("dial", "4930123")
        time.sleep(3)
    finally:
        log = alice.stop()
        gateway.kill()
        output, _ = gateway.communicate(timeout=30)
    assert "402 Insufficient credit" in log, log[-3000:]
    assert "INVITE" not in output.split("Messages")[0] or "0 " in output
    assert not sql(daemon, "SELECT id FROM tb_cdrs") and not sql(daemon, "SELECT id FROM tb_holds")


@needs_phones
def test_a_carrier_calls_a_did_of_a_baresip_user(daemon: Daemon, tmp_path: Path) -> None:
    """A carrier known by its address (127.0.0.2, u_auth=1) calls 3612340000, a DID of bob: bob's baresip
    rings and answers, the carrier hangs up after 2 s; the CDR is bob's, direction in, free."""
    assert daemon.api(apientry="addserver", u_username="carrier", u_ip="127.0.0.2", u_type="5",
                      u_auth="1")["status"] == "OK"
    sql(daemon, "INSERT INTO tb_phonenumbers (number, userid, status, created) SELECT '3612340000', id, 1, "
                "'2026-01-01 00:00:00' FROM tb_users WHERE username = 'bob'")
    bob = Baresip(tmp_path / "bob", daemon, "bob", 32000)
    try:
        wait_registered(daemon, "bob")
        carrier, _ = sipp(tmp_path, "uac_gateway_call.xml", "-s", "3612340000", f"127.0.0.1:{daemon.sip}",
                          ip="127.0.0.2")
        finished(carrier)
    finally:
        bob.stop()
    [record] = cdrs(daemon)
    assert (record["username"], record["callerid"], record["callednumber"], record["direction"],
            record["gateway"], record["disconnectreason"]) == (
        "bob", "3620000000", "3612340000", "in", "carrier", "A hung up"), record
    assert int(record["cost"]) == 0


@needs_phones
def test_forward_always_and_on_no_answer_with_real_phones(daemon: Daemon, tmp_path: Path) -> None:
    """bob forwards always to carol: alice's call to bob rings carol's baresip, which answers. Then bob
    forwards on no answer after 3 s: his baresip (not answering) rings, is cancelled, and carol answers."""
    alice = Baresip(tmp_path / "alice", daemon, "alice", 31000)
    bob = Baresip(tmp_path / "bob", daemon, "bob", 32000, answer="manual")
    carol = Baresip(tmp_path / "carol", daemon, "carol", 33000)
    try:
        wait_registered(daemon, "alice", "bob", "carol")
        assert daemon.api(apientry="setfield", authid="bob", fieldname="forwardalways",
                          fieldvalue="carol")["status"] == "OK"
        alice.command("dial", "bob")
        calls = wait_for_calls(daemon, "connected")
        assert calls[0]["callee"] == "carol", calls
        alice.command("hangup")
        wait_for_calls(daemon, None)
        sql(daemon, "UPDATE tb_users SET forwardalways = '', forwardonnoanswer = 'carol', noanswertimeout = 3 "
                    "WHERE username = 'bob'")
        alice.command("dial", "bob")
        calls = wait_for_calls(daemon, "connected", 20)
        assert calls[0]["callee"] == "carol", calls
        alice.command("hangup")
    finally:
        logs = {name: phone.stop() for name, phone in (("alice", alice), ("bob", bob), ("carol", carol))}
    records = cdrs(daemon)
    assert [(r["leg"], r["username"], r["callednumber"]) for r in records] == [
        ("A", "alice", "bob"), ("B", "bob", "carol"), ("A", "alice", "bob"), ("B", "bob", "carol")], records
    assert "CANCEL sip:" in logs["bob"], logs["bob"][-3000:]


@needs_phones
def test_forward_on_busy_with_a_real_phone(daemon: Daemon, tmp_path: Path) -> None:
    """bob's device answers 486 (a sipp UAS registered as bob): with forwardonbusy=carol, carol's baresip
    rings and answers."""
    busy, port = sipp(tmp_path, "uas_busy.xml")
    assert register_from(daemon.sip, port, "bob", "bob-password") == 200
    sql(daemon, "UPDATE tb_users SET forwardonbusy = 'carol' WHERE username = 'bob'")
    alice = Baresip(tmp_path / "alice", daemon, "alice", 31000)
    carol = Baresip(tmp_path / "carol", daemon, "carol", 33000)
    try:
        wait_registered(daemon, "alice", "carol")
        alice.command("dial", "bob")
        calls = wait_for_calls(daemon, "connected")
        assert calls[0]["callee"] == "carol", calls
        finished(busy)
        alice.command("hangup")
    finally:
        alice.stop()
        carol.stop()
    assert [(r["leg"], r["callednumber"]) for r in cdrs(daemon)] == [("A", "bob"), ("B", "carol")]


PHONES: dict[str, Any] = {"baresip": Baresip, "linphone": Linphone, "twinkle": Twinkle}
MISSING = {"baresip": BARESIP, "linphone": LINPHONEC, "twinkle": TWINKLE}


@pytest.mark.parametrize("a, b", [("baresip", "linphone"), ("linphone", "twinkle"), ("twinkle", "baresip")])
def test_each_debian_phone_calls_and_is_called(daemon: Daemon, tmp_path: Path, a: str, b: str) -> None:
    """Each of baresip, linphonec and twinkle calls another through mizud once and is called once: the
    callee answers and RTP flows both ways."""
    for name in (a, b):
        if MISSING[name] is None:
            pytest.skip(f"{name} (Debian package) is not installed")
    callee = PHONES[b](tmp_path / "bob", daemon, "bob", 32000)
    caller = PHONES[a](tmp_path / "alice", daemon, "alice", 31000)
    try:
        wait_registered(daemon, "alice", "bob")
        counter = RtpCounter(caller.rtp, callee.rtp)
        dial(caller, "bob")
        wait_for_calls(daemon, "connected", 20)
        time.sleep(3)
        to_caller, to_callee = counter.stop()
        assert to_caller > 50 and to_callee > 50, (to_caller, to_callee)
        [call] = daemon.api(apientry="calls")["data"]
        assert daemon.api(apientry="discall", dbcallid=str(call["callid"]))["status"] == "OK"
    finally:
        logs = caller.stop() + callee.stop()
    assert "SIP/2.0 488" not in logs and "SIP/2.0 500" not in logs, logs[-3000:]


def dial(phone: Any, target: str) -> None:
    """Make a phone call C{target}: baresip through its control socket, linphonec and twinkle by command."""
    if isinstance(phone, Baresip):
        phone.command("dial", target)
    elif isinstance(phone, Linphone):
        phone.send(f"call sip:{target}@mizud.test")
    else:
        phone.send(f"call sip:{target}@mizud.test")


@needs_phones
def test_baresip_phones_call_each_other_over_tls(tmp_path: Path) -> None:
    """alice and bob register and call over SIP/TLS (localtsport, mizud's certificate trusted as their CA):
    the call connects and RTP flows both ways."""
    from test_twistd import free_port

    tls = free_port()
    (tmp_path / "mizud").mkdir()
    daemon = Daemon(tmp_path / "mizud", f"localtsport={tls}")
    try:
        certificates = sorted((tmp_path / "mizud" / "var").glob("*.pem"))
        assert certificates, list((tmp_path / "mizud" / "var").iterdir())
        cafile = str(certificates[0])
        alice = Baresip(tmp_path / "alice", daemon, "alice", 31000, transport="tls", port=tls, cafile=cafile)
        bob = Baresip(tmp_path / "bob", daemon, "bob", 32000, transport="tls", port=tls, cafile=cafile)
        try:
            wait_registered(daemon, "alice", "bob")
            counter = RtpCounter(alice.rtp, bob.rtp)
            alice.command("dial", "bob")
            wait_for_calls(daemon, "connected")
            time.sleep(3)
            to_alice, to_bob = counter.stop()
            assert to_alice > 50 and to_bob > 50, (to_alice, to_bob)
            alice.command("hangup")
            wait_for_calls(daemon, None)
        finally:
            logs = alice.stop() + bob.stop()
        assert "SIP/2.0 488" not in logs, logs[-3000:]
    finally:
        output = daemon.stop()
        assert "Traceback" not in output, output
