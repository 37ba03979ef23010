"""Real softphones from Debian against the real daemon: baresip.

The phones run headless (audio from a sine generator, none played),
configured in a temporary folder, on ephemeral loopback ports.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from test_twistd import free_port, free_udp_and_tcp_port, start_daemon

BARESIP = shutil.which("baresip")
needs_baresip = pytest.mark.skipif(BARESIP is None, reason="baresip (Debian package) is not installed")


class Daemon:
    """mizud with SIP on an ephemeral port and two users, alice and bob."""

    def __init__(self, folder: Path) -> None:
        self.http = free_port()
        self.sip = free_udp_and_tcp_port()
        self.process, self.lines = start_daemon(
            folder, "listenaddress=127.0.0.1", f"mainaport={self.http}", "mainaportudp=0", "httpserver=0",
            "sslportmain=0", f"sipport={self.sip}", "localtsport=0", "siprealm=mizud.test",
            "bootstrapadmin=admin:admin-password")
        threading.Thread(target=self._drain, daemon=True).start()
        for name in ("alice", "bob"):
            assert self.api(apientry="newuseri", u_username=name, u_password=f"{name}-password")["status"] == "OK"

    def _drain(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    def api(self, **params: str) -> dict[str, Any]:
        """An admin request from this machine; the JSON answer."""
        query = urllib.parse.urlencode({**params, "format": "json"})
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/mvapireq/?{query}", timeout=30) as answer:
            return json.loads(answer.read())  # type: ignore[no-any-return]

    def stop(self) -> str:
        """Stop it; its output."""
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=30)
        time.sleep(0.1)
        return "".join(self.lines)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    """A running daemon."""
    (tmp_path / "mizud").mkdir()
    running = Daemon(tmp_path / "mizud")
    try:
        yield running
    finally:
        output = running.stop()
        assert "Traceback" not in output, output


def baresip(folder: Path, account: str, seconds: int) -> str:
    """Run baresip headless for C{seconds} with one account line; its output with the SIP trace."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config").write_text(
        "module_path /usr/lib/baresip/modules\nmodule g711.so\nmodule ausine.so\nmodule_app account.so\n"
        f"sip_listen 127.0.0.1:{free_udp_and_tcp_port()}\naudio_player ausine,nil\naudio_source ausine,440\n")
    (folder / "accounts").write_text(account + "\n")
    done = subprocess.run([BARESIP or "baresip", "-f", str(folder), "-t", str(seconds), "-s"],
                          capture_output=True, text=True, timeout=seconds + 30)
    return done.stdout + done.stderr


@needs_baresip
def test_baresip_with_a_wrong_password_stops_and_locks_no_one_else_out(daemon: Daemon, tmp_path: Path) -> None:
    """baresip with a wrong password is challenged, then refused 403 for the same wrong credentials in its
    registration dialog, and stops (it used to spin until the address and user were banned); bob's
    baresip on the same address registers at once."""
    output = baresip(tmp_path / "wrong", f"<sip:alice@mizud.test;transport=udp>;outbound=\"sip:127.0.0.1:{daemon.sip}\""
                                          ";auth_pass=wrong;regint=60", 6)
    registers = output.count("REGISTER sip:")
    assert "403 Wrong credentials" in output and registers <= 3, output[-2000:]
    banned = daemon.api(apientry="bannedlist")
    assert banned["message"] == "0 banned", banned
    good = baresip(tmp_path / "bob", f"<sip:bob@mizud.test;transport=udp>;outbound=\"sip:127.0.0.1:{daemon.sip}\""
                                     ";auth_pass=bob-password;regint=60", 4)
    assert "200 OK" in good, good[-2000:]
    recent = {r["username"]: r["result"] for r in daemon.api(apientry="fastregusers", succ="all")["data"]}
    assert recent == {"alice": "failed", "bob": "ok"}, recent
