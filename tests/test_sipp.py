"""Real SIP clients against the real daemon: sipp scenarios over UDP and TCP, MESSAGE to a sipp UAS.

The daemon is `twistd -n mizud` with SIP on a free port; sipp (Debian
package sip-tester) plays the phones.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from sipkit import Phone
from mizud.sip.message import parse_datagram
from test_sip_rfc4475 import MESSAGES, raw
from test_twistd import TWISTD, environment, free_port, free_udp_and_tcp_port

SCENARIOS = Path(__file__).resolve().parent / "sipp"
SIPP = shutil.which("sipp")
pytestmark = pytest.mark.skipif(SIPP is None and not __import__("os").environ.get("CI"),
                                reason="sipp (Debian package sip-tester) is not installed")
USERS = [("sippa", "pw-a"), ("sippb", "pw-b"), ("sippc", "pw-c")]


class Daemon:
    """A running twistd mizud and its ports."""

    def __init__(self, folder: Path, *options: str) -> None:
        self.folder = folder
        self.http = free_port()
        self.sip = free_udp_and_tcp_port()
        self.process = subprocess.Popen(
            [*TWISTD, "mizud", "--set", "listenaddress=127.0.0.1", "--set", f"mainaport={self.http}",
             "--set", "mainaportudp=0", "--set", "httpserver=0", "--set", "sslportmain=0",
             "--set", f"sipport={self.sip}", "--set", "localtsport=0", "--set", "sipapi=1",
             "--set", "bootstrapadmin=admin:admin-password", "--set", "sipratelimitip=0",
             *(part for option in options for part in ("--set", option))],
            cwd=folder, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        assert self.process.stdout is not None
        self.lines: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            self.lines.append(line)
            if "API ready" in line:
                return
        self.stop()
        raise AssertionError("mizud did not start:\n" + "".join(self.lines))

    def api(self, query: str) -> str:
        """One API request as the admin (from 127.0.0.1)."""
        url = f"http://127.0.0.1:{self.http}/mvapireq/?{query}&authid=admin&authpwd=admin-password"
        with urllib.request.urlopen(url, timeout=30) as answer:
            return answer.read().decode()

    def stop(self) -> str:
        """Stop the daemon; its output."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        rest, _ = self.process.communicate(timeout=30)
        return "".join(self.lines) + (rest or "")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon for the module, with the sipp users created through the API."""
    running = Daemon(tmp_path_factory.mktemp("sipp"))
    try:
        for user, password in [*USERS, ("carol", "pw-c2")]:
            query = urllib.parse.urlencode({"apientry": "newuseri", "u_username": user, "u_password": password})
            assert running.api(query).startswith("OK"), running.lines
        yield running
    finally:
        output = running.stop()
        assert "Traceback" not in output, output


def users_file(folder: Path) -> Path:
    """A sipp injection file: user; password; the authentication keyword for that user."""
    path = folder / "users.csv"
    lines = ["SEQUENTIAL"] + [f"{u};{p};[authentication username={u} password={p}]" for u, p in USERS]
    path.write_text("\n".join(lines) + "\n")
    return path


def sipp(folder: Path, scenario: str, target: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run sipp to the end; its statistics land in the folder."""
    return subprocess.run(
        [SIPP or "sipp", "-sf", str(SCENARIOS / scenario), "-i", "127.0.0.1", "-p", str(free_udp_and_tcp_port()),
         "-timeout", "30s", "-timeout_error", "-nostdin", "-nd", *args, target],
        cwd=folder, capture_output=True, text=True, timeout=timeout,
    )


@pytest.mark.parametrize("transport", ["u1", "t1"])
def test_register_reregister_unregister_with_sipp(daemon: Daemon, tmp_path: Path, transport: str) -> None:
    """sipp REGISTERs three users with digest auth (401 then 200), re-REGISTERs and unregisters them."""
    result = sipp(tmp_path, "register_auth.xml", f"127.0.0.1:{daemon.sip}", "-t", transport,
                  "-inf", str(users_file(tmp_path)), "-m", str(len(USERS)), "-r", "10")
    assert result.returncode == 0, result.stdout + result.stderr
    fast = json.loads(daemon.api("apientry=fastregusers&format=json"))
    seen = {record["username"]: record for record in fast["data"]}
    assert all(seen[user]["result"] == "ok" and int(seen[user]["contacts"]) == 0 for user, _ in USERS), [(r["username"], r["contacts"], r["result"]) for r in fast["data"]]
    assert seen[USERS[0][0]]["transport"] == ("udp" if transport == "u1" else "tcp")
    assert daemon.api(f"apientry=reguser&usr={USERS[0][0]}") == f"ERROR: {USERS[0][0]} is not registered"


def test_options_with_sipp(daemon: Daemon, tmp_path: Path) -> None:
    """OPTIONS (the phones' keep-alive) is answered 200, over UDP and TCP."""
    for transport in ("u1", "t1"):
        result = sipp(tmp_path, "options.xml", f"127.0.0.1:{daemon.sip}", "-t", transport, "-m", "1")
        assert result.returncode == 0, result.stdout + result.stderr


def register_from(port: int, contact_port: int, user: str, password: str) -> int:
    """REGISTER a contact on 127.0.0.1:contact_port from our own UDP socket; the final status."""
    phone = Phone(user, password, host="127.0.0.1", port=contact_port, domain="127.0.0.1")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(10)
        s.bind(("127.0.0.1", 0))
        s.sendto(phone.register(), ("127.0.0.1", port))
        challenge = parse_datagram(s.recv(65535))
        s.sendto(phone.register(phone.answer(challenge, "REGISTER", "sip:127.0.0.1")), ("127.0.0.1", port))
        return parse_datagram(s.recv(65535)).status


def test_sendim_reaches_a_registered_sipp_uas(daemon: Daemon, tmp_path: Path) -> None:
    """sendim for a registered user is delivered as a SIP MESSAGE that a sipp UAS receives and accepts."""
    uas_port = free_udp_and_tcp_port()
    uas = subprocess.Popen(
        [SIPP or "sipp", "-sf", str(SCENARIOS / "uas_message.xml"), "-i", "127.0.0.1", "-p", str(uas_port),
         "-m", "1", "-nd", "-nostdin", "-timeout", "30s", "-timeout_error"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        time.sleep(0.5)
        assert register_from(daemon.sip, uas_port, "carol", "pw-c2") == 200
        answer = daemon.api("apientry=sendim&bnum=carol&txt=hello%20sipp")
        assert answer == "OK: message for 1 users: 1 sent to registered devices, 0 stored until online"
        output, _ = uas.communicate(timeout=40)
        assert uas.returncode == 0, output
    finally:
        if uas.poll() is None:
            uas.kill()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        delivered = daemon.api(urllib.parse.urlencode(
            {"apientry": "db", "txt": "SELECT count(*) FROM tb_messages WHERE delivered IS NOT NULL"}))
        if delivered.split("\n")[-1] == "1":
            break
        time.sleep(0.2)
    assert delivered.split("\n")[-1] == "1", delivered


def test_torture_messages_do_not_disturb_the_daemon(daemon: Daemon, tmp_path: Path) -> None:
    """Every RFC 4475 message sent to the daemon over UDP, then sipp still registers and pings."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for name in sorted(MESSAGES):
            s.sendto(raw(name), ("127.0.0.1", daemon.sip))
        s.sendto(b"\x00" * 3000 + b"INVITE garbage", ("127.0.0.1", daemon.sip))
        s.sendto(b"REGISTER sip:x SIP/2.0\r\nContent-Length: 99999999999999999999\r\n\r\n", ("127.0.0.1", daemon.sip))
    result = sipp(tmp_path, "options.xml", f"127.0.0.1:{daemon.sip}", "-m", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    result = sipp(tmp_path, "register_auth.xml", f"127.0.0.1:{daemon.sip}", "-inf", str(users_file(tmp_path)),
                  "-m", "1")
    assert result.returncode == 0, result.stdout + result.stderr
