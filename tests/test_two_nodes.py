"""Two mizud nodes on one PostgreSQL database: what one node does, the other sees.

Each test runs two real daemons (twistd) on a fresh schema of the test
PostgreSQL database: users, passwords, registrations, lockouts and money are
shared; a node killed with funds on hold has them released by the other.
"""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.parse
import urllib.request
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterator

import pytest

from test_sipp import free_udp_and_tcp_port, register_from
from test_twistd import free_port, start_daemon


class Node:
    """One daemon of the pair."""

    def __init__(self, folder: Path, name: str, database: str, *options: str) -> None:
        folder.mkdir(exist_ok=True)
        self.name = name
        self.http = free_port()
        self.sip = free_udp_and_tcp_port()
        self.process, self.lines = start_daemon(
            folder, f"database={database}", f"nodename={name}", "listenaddress=127.0.0.1", f"mainaport={self.http}",
            "mainaportudp=0", "httpserver=0", "sslportmain=0", f"sipport={self.sip}", "localtsport=0",
            "bootstrapadmin=admin:admin-password", "ratelimitip=0", "ratelimituser=0", "sipratelimitip=0", *options)
        # Keep reading the output, so the daemon never blocks on a full pipe.
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    def call(self, query: str, source: str = "127.0.0.1", **params: str) -> dict[str, Any]:
        """One API request as JSON, from the loopback address C{source}; C{query} carries the credentials."""
        import http.client

        connection = http.client.HTTPConnection("127.0.0.1", self.http, timeout=60, source_address=(source, 0))
        try:
            connection.request("GET", f"/mvapireq/?{query}&format=json&{urllib.parse.urlencode(params)}")
            return json.loads(connection.getresponse().read())  # type: ignore[no-any-return]
        finally:
            connection.close()

    def admin(self, **params: str) -> dict[str, Any]:
        """An admin request."""
        return self.call("authid=admin&authpwd=admin-password", **params)

    def stop(self, kill: bool = False) -> str:
        """Stop (or kill) the daemon; its output."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        self.process.wait(timeout=30)
        return "".join(self.lines)


@pytest.fixture
def pair(tmp_path: Path, pg_database: str) -> Iterator[tuple[Node, Node]]:
    """Nodes A and B on one fresh database (a node is dead after 3 s without a heartbeat); their
    connections are named mizud-node, so a test can cut them."""
    database = pg_database + "&application_name=mizud-node"
    a = Node(tmp_path / "a", "node-a", database, "nodedeadafter=3s", "defaulttariff=1")
    b = Node(tmp_path / "b", "node-b", database, "nodedeadafter=3s", "defaulttariff=1")
    try:
        yield a, b
    finally:
        outputs = a.stop() + b.stop()
        assert "Traceback" not in outputs, outputs


def eventually(test: Any, seconds: float, what: str) -> Any:
    """Poll until C{test()} is truthy."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = test()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {seconds} s")


def test_users_passwords_registrations_and_lockouts_are_shared(pair: tuple[Node, Node]) -> None:
    """A user created on A logs in on B at once; a password changed on A stops working on B within a
    second; a registration made through A is listed on B; failed logins on both nodes count towards one
    lockout, which holds on both."""
    a, b = pair
    # Failed logins on both nodes add up: 2 on A and 2 on B ban nothing (each node alone is far from 5);
    # the fifth, on A, bans dora everywhere.  (A success would clear her count, so the check in between
    # only lists the bans.)
    assert a.admin(apientry="newuseri", u_username="dora", u_password="pw-d")["status"] == "OK"
    for node in (a, a, b, b):
        node.call("authid=dora&authpwd=wrong", source="127.0.0.2", apientry="balance")
    time.sleep(0.3)
    assert b.admin(apientry="bannedlist")["message"] == "0 banned"
    a.call("authid=dora&authpwd=wrong", source="127.0.0.2", apientry="balance")
    eventually(lambda: "banned" in b.call("authid=dora&authpwd=pw-d", apientry="balance")["message"], 1.0,
               "the shared count banning dora")
    assert a.admin(apientry="newuseri", u_username="carol", u_password="pw-one")["status"] == "OK"
    assert b.call("authid=carol&authpwd=pw-one", apientry="balance")["message"] == "0.00 USD"
    assert a.call("authid=carol&authpwd=pw-one", apientry="changepwd", newpassword="pw-two",
                  oldpassword="pw-one")["status"] == "OK"
    started = time.monotonic()
    eventually(lambda: b.call("authid=carol&authpwd=pw-one", apientry="balance")["status"] == "ERROR", 1.0,
               "the old password failing on B")
    assert time.monotonic() - started < 1.0
    assert b.call("authid=carol&authpwd=pw-two", apientry="balance")["status"] == "OK"
    # A SIP registration through A's registrar.
    assert register_from(a.sip, free_udp_and_tcp_port(), "carol", "pw-two") == 200
    listed = b.admin(apientry="reguser", usr="carol")
    assert listed["status"] == "OK" and "1 contacts" in listed["message"], listed
    # Wrong passwords spread over both nodes add up (authfailmax=5): the fifth, on A, bans carol, and
    # B refuses her right password within a second.
    # (The polls above may already have counted a failure or two, so either node may be the one to ban.)
    for node in (a, b, a, b, a):
        node.call("authid=carol&authpwd=wrong", apientry="balance")
    for node in (a, b):
        eventually(lambda: "banned" in node.call("authid=carol&authpwd=pw-two", apientry="balance")["message"],
                   1.0, f"the ban holding on {node.name}")



def test_concurrent_transfers_over_both_nodes_conserve_money(pair: tuple[Node, Node]) -> None:
    """200 transfers between four users, sent at once to both nodes: the total is exactly the same."""
    a, b = pair
    users = [f"u{i}" for i in range(4)]
    for user in users:
        assert a.admin(apientry="newuseri", u_username=user, u_password="pw")["status"] == "OK"
        assert b.admin(apientry="addcredit", pin=user, credit="10")["status"] == "OK"
    results: list[str] = []

    def transfer(index: int) -> None:
        node = (a, b)[index % 2]
        source, target = users[index % 4], users[(index * 3 + 1) % 4]
        if source == target:
            target = users[(index + 1) % 4]
        answer = node.call(f"authid={source}&authpwd=pw", apientry="transfercredit", username=target,
                           credit="0.37")
        results.append(answer["status"])

    threads = [threading.Thread(target=transfer, args=(i,)) for i in range(200)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 200 and results.count("OK") > 100, results.count("OK")
    rows = a.admin(apientry="db", txt="SELECT sum(credit) AS total FROM tb_users WHERE username IN "
                                      "('u0', 'u1', 'u2', 'u3')")["data"]
    assert Decimal(str(rows[0]["total"])) == Decimal("40.00"), rows
    assert b.admin(apientry="checkcredits")["status"] == "OK"


def test_a_dead_nodes_holds_are_released_by_the_other(pair: tuple[Node, Node]) -> None:
    """A holds the price of an SMS for a gateway that never answers, and is killed: B releases the hold
    once A's heartbeat is older than nodedeadafter."""
    a, b = pair
    csv = "prefix,name,price,smsprice\n36,Hungary,0.60,0.05\n"
    assert a.admin(apientry="importtariffs", tariffid="1", csv=csv)["status"] == "OK"
    assert a.admin(apientry="newuseri", u_username="dave", u_password="pw")["status"] == "OK"
    assert a.admin(apientry="addcredit", pin="dave", credit="1")["status"] == "OK"
    assert a.admin(apientry="addserver", u_username="silentgw", u_ip=f"127.0.0.1:{free_udp_and_tcp_port()}")["status"] == "OK"
    queued = a.call("authid=dave&authpwd=pw", apientry="sendsms", bnum="3612345", txt="hello")
    assert queued["message"].endswith("queued (held 0.05)"), queued
    a.stop(kill=True)
    eventually(lambda: b.call("authid=dave&authpwd=pw", apientry="balance")["message"] == "1.00 USD", 15,
               "B releasing the dead node's hold")
    sms = b.admin(apientry="db", txt="SELECT status, reason FROM tb_sms")["data"]
    assert sms == [{"status": "failed", "reason": "node node-a stopped before delivery"}], sms
    holds = b.admin(apientry="db", txt="SELECT status, node FROM tb_holds")["data"]
    assert holds == [{"status": 2, "node": "node-a"}] or holds == [{"status": "2", "node": "node-a"}], holds
    assert b.admin(apientry="checkcredits")["status"] == "OK"


def test_a_database_that_goes_away_mid_request(pair: tuple[Node, Node], pg_database: str) -> None:
    """Every connection of both nodes is cut (as when PostgreSQL restarts): requests meanwhile get a
    clear error or succeed, never an internal error; the nodes reconnect; a transfer repeated with its
    txid until it succeeds moves the money once."""
    import psycopg2

    a, b = pair
    for user in ("gail", "hank"):
        assert a.admin(apientry="newuseri", u_username=user, u_password="pw")["status"] == "OK"
    assert a.admin(apientry="addcredit", pin="gail", credit="10")["status"] == "OK"
    admin = psycopg2.connect(pg_database)
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'mizud-node'")
            assert cursor.rowcount > 0
    finally:
        admin.close()
    answers = []
    for node in (a, b, a, b):
        answer = node.call("authid=gail&authpwd=pw", apientry="transfercredit", username="hank", credit="1",
                           txid="cut-1")
        answers.append(answer["message"])
        assert answer["message"] != "internal error", answers
        if answer["status"] == "OK":
            break
        assert "database is unavailable" in answer["message"] or "PostgreSQL" in answer["message"], answers
        time.sleep(0.5)
    for node in (a, b):
        eventually(lambda: node.call("authid=hank&authpwd=pw", apientry="balance")["status"] == "OK", 20,
                   f"{node.name} reconnecting")
    while b.call("authid=gail&authpwd=pw", apientry="transfercredit", username="hank", credit="1",
                 txid="cut-1")["status"] != "OK":
        time.sleep(0.2)
    assert b.call("authid=hank&authpwd=pw", apientry="balance")["message"] == "1.00 USD"  # once, not twice
    assert a.call("authid=gail&authpwd=pw", apientry="balance")["message"] == "9.00 USD"
    assert a.admin(apientry="checkcredits")["status"] == "OK"
