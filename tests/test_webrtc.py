"""Two browsers running a WebRTC SIP phone (JsSIP over mizud's SIP WebSocket, /mfstwebsock) call each
other through mizud: ICE and DTLS-SRTP pass through untouched and the media connects between the browsers;
a WebRTC call to a plain gateway is refused with a clear reason.

JsSIP comes from the npm registry, bundled by .ci/run into tests/webrtc/jssip.js; the page
(tests/webrtc/phone.html) is served by mizud itself from mvwebdir, so the WebSocket is the page's own
site.  Chromium runs headless with fake audio devices.
"""

from __future__ import annotations

import os
import shutil
import time
import urllib.parse
from pathlib import Path
from typing import Any, Iterator

import pytest

from test_portal import CHROMEDRIVER, CHROMIUM
from test_softphones import Daemon
from test_twistd import free_port

PAGES = Path(__file__).resolve().parent / "webrtc"
JSSIP = PAGES / "jssip.js"
# CI installs both: there a missing one fails the tests instead of skipping them.
pytestmark = pytest.mark.skipif(
    (not JSSIP.exists() or CHROMIUM is None or CHROMEDRIVER is None) and os.environ.get("CI") != "true",
    reason="JsSIP (bundled by .ci/run) or Debian's chromium/chromedriver missing")


def serving_the_phone(folder: Path) -> Daemon:
    """The softphone tests' daemon (users alice and bob), also serving the phone page under /mvweb/."""
    web = folder / "web"
    web.mkdir(parents=True)
    for name in ("phone.html", "jssip.js"):
        shutil.copy(PAGES / name, web / name)
    return Daemon(folder, f"mvwebdir={web}", "defaulttariff=1")


def page(daemon: Daemon, user: str) -> str:
    """The phone page for a user, on the daemon's shared port (its SIP WebSocket the page's own site)."""
    ws = f"ws://127.0.0.1:{daemon.http}/mfstwebsock"
    return (f"http://127.0.0.1:{daemon.http}/mvweb/phone.html?"
            + urllib.parse.urlencode({"ws": ws, "user": user, "password": f"{user}-password"}))


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    """A running daemon."""
    running = serving_the_phone(tmp_path)
    try:
        yield running
    finally:
        output = running.stop()
        assert "Traceback" not in output, output


def chromium() -> Any:
    """Headless Chromium with fake audio devices, its media permission granted, real host candidates."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM or "chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--no-first-run", "--disable-extensions", "--use-fake-ui-for-media-stream",
                     "--use-fake-device-for-media-stream", "--disable-features=WebRtcHideLocalIpsWithMdns"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(CHROMEDRIVER or "chromedriver"), options=options)


def state(browser: Any) -> dict[str, Any]:
    """The phone page's state."""
    return browser.execute_script("return window.state") or {}  # type: ignore[no-any-return]


def until(browser: Any, test: Any, what: str, timeout: float = 20) -> dict[str, Any]:
    """Poll the page's state until C{test(state)}; fail naming C{what}."""
    deadline = time.monotonic() + timeout
    current: dict[str, Any] = {}
    while time.monotonic() < deadline:
        current = state(browser)
        if test(current):
            return current
        time.sleep(0.2)
    raise AssertionError(f"{what} did not happen: {current}")


def test_two_browsers_call_each_other_through_mizud(daemon: Daemon) -> None:
    """alice's browser calls bob's: both register over the WebSocket, bob's answers, both sessions are
    confirmed and ICE connects between the browsers (mizud relayed their SDP untouched, candidates and
    fingerprints included); calls lists the call; alice's hang-up ends it with one CDR."""
    alice, bob = chromium(), chromium()
    try:
        alice.get(page(daemon, "alice"))
        bob.get(page(daemon, "bob"))
        until(alice, lambda s: s.get("registered"), "alice's registration")
        until(bob, lambda s: s.get("registered"), "bob's registration")
        alice.execute_script("window.dial('bob')")
        until(bob, lambda s: s.get("incoming"), "the call reaching bob")
        until(alice, lambda s: s.get("confirmed"), "alice's session confirmed")
        until(alice, lambda s: s.get("ice") in ("connected", "completed"), "ICE on alice's side")
        until(bob, lambda s: s.get("ice") in ("connected", "completed"), "ICE on bob's side")
        calls = daemon.api(apientry="calls").get("data") or []
        assert len(calls) == 1 and calls[0]["state"] == "connected", calls
        alice.execute_script("window.hangup()")
        until(bob, lambda s: s.get("ended"), "the call ending on bob's side")
    finally:
        alice.quit()
        bob.quit()
    deadline = time.monotonic() + 10
    while daemon.api(apientry="calls").get("data") and time.monotonic() < deadline:
        time.sleep(0.2)
    records = daemon.api(apientry="cdr", fields="all", days="1")["data"]
    assert [(r["callerid"], r["callednumber"], r["disconnectreason"]) for r in records] == [
        ("alice", "bob", "A hung up")], records


def test_a_webrtc_call_to_a_plain_gateway_is_refused(daemon: Daemon) -> None:
    """A WebRTC offer towards a gateway that takes plain RTP (not in webrtcgateways) gets 488 with the
    reason, and nothing is dialled."""
    csv = "prefix,name,price\n49,Germany,0.60\n"
    assert daemon.api(apientry="importtariffs", tariffid="1", csv=csv)["status"] == "OK"
    assert daemon.api(apientry="addserver", u_username="gw", u_ip=f"127.0.0.3:{free_port()}",
                      u_auth="0")["status"] == "OK"
    assert daemon.api(apientry="addcredit", pin="alice", credit="5")["status"] == "OK"
    alice = chromium()
    try:
        alice.get(page(daemon, "alice"))
        until(alice, lambda s: s.get("registered"), "alice's registration")
        alice.execute_script("window.dial('4930123')")
        refused = until(alice, lambda s: s.get("failed"), "the refusal")
    finally:
        alice.quit()
    assert refused["status"] == 488, refused
    assert not daemon.api(apientry="cdr", fields="all", days="1").get("data")
