"""Cross-site attacks from a real browser (headless Chromium) on the machine mizud trusts by address.

A hostile page is served from another origin (another port on 127.0.0.1)
and tries every channel a page has: a JSONP <script>, an <img>, a form
POST, fetch (simple and no-cors) and a WebSocket to /mvstwebsock, each
asking for admin work (read every password with db, add credit).  The
browser runs on 127.0.0.1, which mizud trusts, yet none of them may get
anything that trust alone allows.  The same page, using credentials
(authkey and authmd5), still reads the balance over fetch and WebSocket:
credentialed use from any site keeps working.
"""

from __future__ import annotations

import hashlib
import json
import signal
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest

from test_portal import CHROMEDRIVER, CHROMIUM, browser  # noqa: F401  (the browser fixture)
from test_twistd import free_port, start_daemon

pytestmark = pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                                reason="chromium and chromium-driver (Debian packages) are not installed")

KEY = "site-key"
SALT = "site-salt"


def md5(text: str) -> str:
    """Hex MD5."""
    return hashlib.md5(text.encode()).hexdigest()


class Target:
    """The daemon under attack, on 127.0.0.1 (trusted), with alice holding 1.00."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.process, self.lines = start_daemon(
            folder, "listenaddress=127.0.0.1", f"mainaport={self.port}", "mainaportudp=0", "httpserver=0",
            "sslportmain=0", "sipport=0", "localtsport=0", "bootstrapadmin=admin:admin-password",
            f"apiv2key={KEY}", f"apiv2md5salt={SALT}", "ratelimitip=0")
        self.base = f"http://127.0.0.1:{self.port}"

    def trusted(self, **params: str) -> dict[str, Any]:
        """A request from this test (not a browser) on 127.0.0.1: trusted by address, no credentials."""
        query = urllib.parse.urlencode({**params, "format": "json"})
        with urllib.request.urlopen(f"{self.base}/mvapireq/?{query}", timeout=30) as answer:
            return json.loads(answer.read())  # type: ignore[no-any-return]

    def balance(self, user: str) -> str:
        """A user's balance, as the operator's own script on this machine reads it."""
        return str(self.trusted(apientry="balance", authid=user)["message"])

    def stop(self) -> str:
        """Stop the daemon; its output."""
        self.process.send_signal(signal.SIGTERM)
        rest, _ = self.process.communicate(timeout=30)
        return "".join(self.lines) + (rest or "")


def hostile_page(base: str) -> str:
    """The attacker's page: every channel at once; results collected in window.results."""
    db = urllib.parse.quote("select username,password from tb_users")
    ws = base.replace("http://", "ws://")
    authmd5 = md5("ck5Gp" + "alice" + "alice-password" + SALT + "s1")
    credentials = f"authkey={KEY}&authid=alice&authmd5={authmd5}&authsalt=s1"
    return f"""<!DOCTYPE html><html><head><meta charset="utf-8"><title>hostile</title></head><body>
<script>
window.results = {{}};
function steal(answer) {{ window.results.jsonp = JSON.stringify(answer); }}
</script>
<script src="{base}/mvapireq/?apientry=db&txt={db}&format=jsonp&callback=steal"></script>
<img src="{base}/mvapireq/?apientry=addcredit&pin=alice&credit=5" onerror="window.results.img='done'">
<iframe name="sink" style="display:none"></iframe>
<form id="f" method="POST" action="{base}/mvapireq/" target="sink">
  <input name="apientry" value="addcredit"><input name="pin" value="alice"><input name="credit" value="7">
</form>
<script>
document.getElementById('f').submit();
fetch("{base}/mvapireq/?apientry=db&txt={db}&format=json").then(r => r.text())
  .then(t => window.results.fetch = t, e => window.results.fetch = 'failed: ' + e);
fetch("{base}/mvapireq/?apientry=addcredit&pin=alice&credit=9", {{mode: 'no-cors', method: 'POST'}})
  .then(() => window.results.nocors = 'sent', e => window.results.nocors = 'failed: ' + e);
fetch("{base}/mvapireq/?apientry=balance&{credentials}")
  .then(r => r.text()).then(t => window.results.credentialed = t, e => window.results.credentialed = 'failed ' + e);
const socket = new WebSocket("{ws}/mvstwebsock");
const answers = [];
socket.onopen = () => {{
  socket.send("apientry=db&txt={db}&format=json");
  socket.send("apientry=addcredit&pin=alice&credit=11");
  socket.send("apientry=balance&{credentials}");
}};
socket.onmessage = (event) => {{ answers.push(event.data); if (answers.length === 3) window.results.ws = answers; }};
socket.onerror = () => {{ window.results.ws = 'error'; }};
</script></body></html>"""


class HostileSite:
    """The attacker's web server on another port of 127.0.0.1 (another origin)."""

    def __init__(self, page: str) -> None:
        body = page.encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("content-type", "text/html; charset=utf-8")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                """Quiet."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def target(tmp_path: Path) -> Iterator[Target]:
    """The daemon, with alice (password alice-password, 1.00 of credit)."""
    running = Target(tmp_path)
    try:
        created = running.trusted(apientry="newuseri", u_username="alice", u_password="alice-password", credit="1")
        assert created["status"] == "OK", created
        yield running
    finally:
        output = running.stop()
        assert "Traceback" not in output, output


def test_pages_of_other_sites_get_no_trust_by_address(target: Target, browser: Any) -> None:  # noqa: F811
    """JSONP, img, form POST, fetch and WebSocket from another origin run no admin function and read no
    password, while the same page's credentialed fetch and WebSocket requests work."""
    site = HostileSite(hostile_page(target.base))
    try:
        browser.get(site.url)
        deadline = time.monotonic() + 20
        results: dict[str, Any] = {}
        while time.monotonic() < deadline:
            results = browser.execute_script("return window.results") or {}
            if {"jsonp", "fetch", "nocors", "credentialed", "ws"} <= set(results):
                break
            time.sleep(0.2)
        time.sleep(1.0)  # the form POST and the image have no result to wait for
    finally:
        site.close()
    assert {"jsonp", "fetch", "nocors", "credentialed", "ws"} <= set(results), results
    # Nothing with the passwords came back, by any channel.
    assert "admin-password" not in json.dumps(results) and "alice-password" not in json.dumps(results)
    assert json.loads(results["jsonp"])["status"] == "ERROR"
    assert json.loads(results["fetch"])["status"] == "ERROR"
    denied, refused, balance = results["ws"]
    assert json.loads(denied)["status"] == "ERROR" and refused.startswith("ERROR")
    # No credit was added by the image, the form, the no-cors fetch or the WebSocket.
    assert target.balance("alice") == "1.00 USD"
    # Credentialed requests from the other site work and can be read.
    assert results["credentialed"] == "OK: 1.00 USD"
    assert balance == "OK: 1.00 USD"
    # The machine's own scripts are still trusted by address (not a browser).
    rows = target.trusted(apientry="db", txt="select username from tb_users order by id")
    assert rows["status"] == "OK" and [r["username"] for r in rows["data"]] == ["admin", "alice"]
