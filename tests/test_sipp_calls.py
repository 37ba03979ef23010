"""Real calls: the daemon (twistd mizud) places p2p and callback calls between sipp user agents.

Leg A is a sipp UAS registered as a user (a phone, free), leg B a sipp UAS
added with addserver (a gateway, 0.60 a minute). The scenarios check the SIP
each side sees (flow IV: A's media-less offer, B's offer in A's re-INVITE,
A's answer in B's ACK); the tests check the API's answers, the CDRs and the
money after each outcome.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
from decimal import Decimal
from pathlib import Path
from typing import Iterator

import pytest

from test_sipp import SCENARIOS, SIPP, Daemon, free_udp_and_tcp_port, register_from

pytestmark = pytest.mark.skipif(SIPP is None and not __import__("os").environ.get("CI"),
                                reason="sipp (Debian package sip-tester) is not installed")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A daemon with plan 1 (49: 0.60 a minute), short setup and ring timeouts, and the users."""
    running = Daemon(tmp_path_factory.mktemp("calls"), "defaulttariff=1", "callsetuptimeout=2",
                     "callringtimeout=5")
    try:
        csv = "prefix,name,price\n49,Germany,0.60\n"
        assert running.api(urllib.parse.urlencode({"apientry": "importtariffs", "tariffid": "1", "csv": csv})).startswith("OK")
        for user, password in (("phonea", "pw-a"), ("payer", "pw-p"), ("poor", "pw-poor")):
            query = urllib.parse.urlencode({"apientry": "newuseri", "u_username": user, "u_password": password})
            assert running.api(query).startswith("OK"), running.lines
        assert running.api("apientry=addcredit&pin=payer&credit=5").startswith("OK")
        assert running.api("apientry=addcredit&pin=poor&credit=0.03").startswith("OK")
        yield running
    finally:
        output = running.stop()
        assert "Traceback" not in output, output


class Uas:
    """A sipp UAS running one scenario once, on its own port."""

    def __init__(self, folder: Path, scenario: str) -> None:
        self.port = free_udp_and_tcp_port()
        self.process = subprocess.Popen(
            [SIPP or "sipp", "-sf", str(SCENARIOS / scenario), "-i", "127.0.0.1", "-p", str(self.port),
             "-mp", str(free_udp_and_tcp_port()), "-m", "1", "-nd", "-nostdin", "-timeout", "40s",
             "-timeout_error", "-trace_err"],
            cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        time.sleep(0.3)

    def finished(self) -> str:
        """Wait for the scenario's end; its output (the test fails if the scenario failed)."""
        try:
            output, _ = self.process.communicate(timeout=60)
        finally:
            if self.process.poll() is None:
                self.process.kill()
        assert self.process.returncode == 0, output
        return output


def gateway(daemon: Daemon, name: str, port: int, prefix: str, priority: int = 1, password: str = "") -> None:
    """addserver NAME at 127.0.0.1:PORT, routing PREFIX."""
    extra = f"&u_password={password}" if password else ""
    assert daemon.api(f"apientry=addserver&u_username={name}&u_ip=127.0.0.1:{port}&u_routing={name}"
                      f"&u_routingpriority={priority}{extra}").startswith("OK")
    answer = daemon.api(urllib.parse.urlencode(
        {"apientry": "db", "txt": f"UPDATE tb_routing SET prefix = '{prefix}' WHERE name = '{name}'"}))
    assert answer.startswith("OK"), answer


def rows(daemon: Daemon, sql: str) -> list[dict[str, str]]:
    """The records of a db query."""
    answer = json.loads(daemon.api(urllib.parse.urlencode({"apientry": "db", "txt": sql, "format": "json"})))
    return answer["data"]  # type: ignore[no-any-return]


def cdrs(daemon: Daemon, callid: int) -> list[dict[str, str]]:
    """The CDRs of one call, A first, once they are written."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        found = rows(daemon, f"SELECT leg, duration, cost, disconnectreason, gateway FROM tb_cdrs WHERE callid = {callid} "
                             "ORDER BY leg")
        if found and not rows(daemon, f"SELECT id FROM tb_calls WHERE id = {callid}"):
            return found
        time.sleep(0.2)
    raise AssertionError(f"call {callid} was not billed")


def money(stored: str) -> Decimal:
    """An amount as the db function shows it: the daemon runs on SQLite, which stores micro-units."""
    return Decimal(stored) / 1_000_000


def balance(daemon: Daemon, user: str) -> Decimal:
    """A user's balance."""
    return money(rows(daemon, f"SELECT credit FROM tb_users WHERE username = '{user}'")[0]["credit"])


def call_id(answer: str) -> int:
    """The call id in an answer like `OK: call 3 connected ...`."""
    return int(answer.split("call ", 1)[1].split()[0])


def test_p2p_connects_phone_and_gateway(daemon: Daemon, tmp_path: Path) -> None:
    """A registered phone and a gateway are joined (the SDP of each reaches the other); the gateway hangs
    up after 2 s; the phone gets BYE; B's seconds are charged, A's (a user) are free."""
    a, b = Uas(tmp_path, "uas_leg_a.xml"), Uas(tmp_path, "uas_leg_b.xml")
    assert register_from(daemon.sip, a.port, "phonea", "pw-a") == 200
    gateway(daemon, "gwb", b.port, "4930")
    before = balance(daemon, "payer")
    answer = daemon.api("apientry=p2p&username=payer&anum=phonea&bnum=4930123&waitfor=2")
    assert answer.startswith("OK: call ") and "connected (max 5.00 USD held)" in answer, answer
    b.finished()
    a.finished()
    legs = cdrs(daemon, call_id(answer))
    assert [(r["leg"], r["disconnectreason"], r["gateway"]) for r in legs] == [("A", "B hung up", "phonea"),
                                                                            ("B", "B hung up", "gwb")]
    seconds = int(legs[1]["duration"])
    assert 1 <= seconds <= 4 and money(legs[0]["cost"]) == 0
    assert money(legs[1]["cost"]) == Decimal("0.01") * seconds
    assert balance(daemon, "payer") == before - Decimal("0.01") * seconds
    assert daemon.api("apientry=checkcredits").startswith("OK")


def test_busy_gateway_ends_the_call_for_free(daemon: Daemon, tmp_path: Path) -> None:
    """B busy: the phone is hung up after its answer, nothing is charged, both CDRs say why."""
    a, b = Uas(tmp_path, "uas_leg_a.xml"), Uas(tmp_path, "uas_busy.xml")
    assert register_from(daemon.sip, a.port, "phonea", "pw-a") == 200
    gateway(daemon, "gwbusy", b.port, "4931")
    before = balance(daemon, "payer")
    answer = daemon.api("apientry=p2p&username=payer&anum=phonea&bnum=4931123&waitfor=2")
    assert answer.split("\n")[0].endswith("failed: B not reached: 486 Busy Here"), answer
    b.finished()
    a.finished()
    legs = cdrs(daemon, call_id(answer))
    assert [(r["leg"], r["duration"], r["disconnectreason"]) for r in legs] == [
        ("A", "0", "B not reached: 486 Busy Here"), ("B", "0", "486 Busy Here")]
    assert balance(daemon, "payer") == before


def test_failover_past_a_dead_gateway_to_one_that_challenges(daemon: Daemon, tmp_path: Path) -> None:
    """The first gateway never answers (nothing listens): after callsetuptimeout the second is tried; it
    challenges (401), mizud answers with the gateway's account, and the call connects."""
    a, b = Uas(tmp_path, "uas_leg_a.xml"), Uas(tmp_path, "uas_challenge.xml")
    assert register_from(daemon.sip, a.port, "phonea", "pw-a") == 200
    gateway(daemon, "gwdead", free_udp_and_tcp_port(), "4940", priority=1)
    gateway(daemon, "gwauth", b.port, "4940", priority=2, password="gwsecret")
    answer = daemon.api("apientry=p2p&username=payer&anum=phonea&bnum=4940123&waitfor=2")
    assert " connected (max " in answer.split("\n")[0], answer
    b.finished()
    a.finished()
    legs = cdrs(daemon, call_id(answer))
    assert [(r["leg"], r["gateway"], r["disconnectreason"]) for r in legs] == [("A", "phonea", "B hung up"),
                                                                            ("B", "gwauth", "B hung up")]


def test_call_cut_at_the_credit_limit(daemon: Daemon, tmp_path: Path) -> None:
    """poor has 0.03: 3 s at 0.01 a second; mizud hangs up both legs then and charges exactly 0.03."""
    a, b = Uas(tmp_path, "uas_leg_a.xml"), Uas(tmp_path, "uas_leg_b_wait.xml")
    assert register_from(daemon.sip, a.port, "phonea", "pw-a") == 200
    gateway(daemon, "gwcut", b.port, "4932")
    answer = daemon.api("apientry=p2p&username=poor&anum=phonea&bnum=4932123&waitfor=2")
    assert "connected (max 0.03 USD held)" in answer, answer
    b.finished()
    a.finished()
    legs = cdrs(daemon, call_id(answer))
    assert [(r["leg"], r["duration"], money(r["cost"]), r["disconnectreason"]) for r in legs] == [
        ("A", "3", 0, "credit limit"), ("B", "3", Decimal("0.03"), "credit limit")]
    assert balance(daemon, "poor") == 0


def test_callback_to_a_number_that_does_not_answer(daemon: Daemon, tmp_path: Path) -> None:
    """callback rings the phone, then the number, which rings until callringtimeout: mizud CANCELs it
    (the callee answers 487, mizud ACKs) and hangs up the phone; nothing is charged."""
    a, b = Uas(tmp_path, "uas_leg_a.xml"), Uas(tmp_path, "uas_noanswer.xml")
    assert register_from(daemon.sip, a.port, "phonea", "pw-a") == 200
    gateway(daemon, "gwring", b.port, "4950")
    before = balance(daemon, "payer")
    answer = daemon.api("apientry=callback&username=payer&num=phonea&bnum=4950123&waitfor=2")
    assert answer.split("\n")[0].endswith("failed: B not reached: no answer"), answer
    b.finished()
    a.finished()
    legs = cdrs(daemon, call_id(answer))
    assert [(r["leg"], r["disconnectreason"]) for r in legs] == [("A", "B not reached: no answer"),
                                                               ("B", "no answer")]
    assert balance(daemon, "payer") == before
