"""The enduser portal at /webvoip in a real browser (headless Chromium through chromedriver).

A daemon started by the test serves the portal; the browser signs up, logs
in, sees the balance, recharges with a PIN, finds generated CDRs in the
history, stores a forwarding number, uses an old md5 deep link, and visits
every page on a desktop and a phone-sized screen.  Screenshots of each page
go to artifacts/portal/ (or $MIZUD_ARTIFACTS/portal/).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from test_twistd import free_port, start_daemon

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif((CHROMIUM is None or CHROMEDRIVER is None) and not os.environ.get("CI"),
                                reason="chromium and chromium-driver (Debian packages) are not installed")
ARTIFACTS = Path(os.environ.get("MIZUD_ARTIFACTS") or Path(__file__).resolve().parent.parent / "artifacts") / "portal"


class Portal:
    """A running daemon with the portal, and an admin's view of its API."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.process, self.lines = start_daemon(
            folder, "listenaddress=127.0.0.1", f"mainaport={self.port}", "mainaportudp=0", "httpserver=0",
            "sslportmain=0", "sipport=0", "localtsport=0", "bootstrapadmin=admin:admin-password", "defaulttariff=1",
            "publictariffs=1", "apiv2key=portal-key", "apiv2md5salt=portal-salt", "webportal=1")
        self.url = f"http://127.0.0.1:{self.port}/webvoip"

    def api(self, **params: str) -> dict[str, Any]:
        """An admin request (from 127.0.0.1, with the admin's password); the JSON answer."""
        query = urllib.parse.urlencode({**params, "format": "json", "authkey": "portal-key", "authid": "admin",
                                        "authpwd": "admin-password"})
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/mvapireq/?{query}", timeout=30) as answer:
            return json.loads(answer.read())  # type: ignore[no-any-return]

    def stop(self) -> str:
        """Stop the daemon; its output."""
        self.process.send_signal(signal.SIGTERM)
        rest, _ = self.process.communicate(timeout=30)
        return "".join(self.lines) + (rest or "")


@pytest.fixture(scope="module")
def portal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Portal]:
    """The daemon, with plan 1 (36: Hungary) and a recharge PIN worth 5.00."""
    running = Portal(tmp_path_factory.mktemp("portal"))
    try:
        assert running.api(apientry="importtariffs", tariffid="1",
                           csv="prefix,name,price\n36,Hungary,0.60\n")["status"] == "OK"
        # SQLite keeps money as micro-units: 5000000 is 5.00.
        answer = running.api(apientry="db", txt="INSERT INTO tb_pins (pin, credit, currency, created) "
                                                 "VALUES ('4815162342', 5000000, 'USD', '2026-01-01 00:00:00')")
        assert answer["status"] == "OK", answer
        yield running
    finally:
        output = running.stop()
        assert "Traceback" not in output, output


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium driven by chromedriver (both from Debian)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM or "chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1280,900", "--no-first-run", "--disable-extensions"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER or "chromedriver"), options=options)
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver: Any, test: Any, what: str, timeout: float = 15) -> Any:
    """Poll C{test(driver)} until it is truthy; fail naming C{what} with the page's error box."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = test(driver)
        except Exception:
            found = None
        if found:
            return found
        time.sleep(0.1)
    error = driver.execute_script("return document.getElementById('error').textContent")
    raise AssertionError(f"{what} did not happen (page error: {error!r})")


def text_of(driver: Any, selector: str) -> str:
    """The text of the first element matching a CSS selector ("" if none)."""
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.CSS_SELECTOR, selector)
    return str(found[0].text) if found else ""


def fill(driver: Any, form: str, **values: str) -> None:
    """Type into a form's fields by name and submit it."""
    from selenium.webdriver.common.by import By

    for name, value in values.items():
        element = driver.find_element(By.CSS_SELECTOR, f"{form} [name={name}]")
        element.clear()
        element.send_keys(value)
    driver.find_element(By.CSS_SELECTOR, f"{form} button[type=submit]").click()


def shot(driver: Any, name: str) -> None:
    """Save a screenshot of the current page."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def visit(driver: Any, portal: Portal, page: str) -> None:
    """Open a page of the single-page portal."""
    driver.execute_script(f"location.hash = '{page}'")
    wait_for(driver, lambda d: d.execute_script("return document.getElementById('progress').hidden"), "loading")


def test_signup_login_balance_recharge_history_forwarding(portal: Portal, browser: Any) -> None:
    """The walk through the issue's list, in one browser session."""
    browser.get(portal.url)
    wait_for(browser, lambda d: text_of(d, "h2") == "Log in", "the login page")
    shot(browser, "01-login")
    browser.execute_script("location.hash = 'signup'")
    wait_for(browser, lambda d: text_of(d, "h2") == "Sign up", "the signup page")
    shot(browser, "02-signup")
    fill(browser, "#signup", u_username="webuser", u_password="Web-pass-123", u_name="Web User",
         u_email="web@example.com")
    wait_for(browser, lambda d: text_of(d, "#balance") == "0.00 USD", "the new account's balance")
    shot(browser, "03-dashboard")
    stored = browser.execute_script("return sessionStorage.getItem('mizud-session')")
    assert "Web-pass-123" not in stored and "inner" in stored  # the password is not kept

    # Log out, then in again; a wrong password is explained in plain words.
    browser.find_element("id", "logout").click()
    wait_for(browser, lambda d: text_of(d, "h2") == "Log in", "the login page after logout")
    fill(browser, "#login", username="webuser", password="wrong")
    wait_for(browser, lambda d: "username or password is wrong" in text_of(d, "#error"), "a login error")
    fill(browser, "#login", username="webuser", password="Web-pass-123")
    wait_for(browser, lambda d: text_of(d, "#balance") == "0.00 USD", "the balance after login")

    # Recharge with a PIN; the dashboard shows the new balance.
    visit(browser, portal, "recharge")
    shot(browser, "04-recharge")
    fill(browser, "#form-recharge", pin="4815162342")
    wait_for(browser, lambda d: "balance is now 5.00 USD" in text_of(d, "#result"), "the recharge")
    visit(browser, portal, "dashboard")
    wait_for(browser, lambda d: text_of(d, "#balance") == "5.00 USD", "the recharged balance")

    # Generated CDRs show up in the history (paged, with a CSV download).
    user = portal.api(apientry="getdetails", username="webuser", mode="min")
    userid = next(r["id"] for r in portal.api(apientry="listusers")["data"] if r["username"] == "webuser")
    assert user["status"] == "OK"
    answer = portal.api(apientry="gencdr", count="25", userid=str(userid), days="1")
    assert answer["status"] == "OK", answer
    visit(browser, portal, "history")
    wait_for(browser, lambda d: "25 calls" in text_of(d, "#calls"), "the generated calls in the history")
    assert "Page 1 of 2" in text_of(browser, "#pager")
    assert browser.find_element("id", "csv").is_enabled()
    shot(browser, "05-history")

    # A forwarding number is stored.
    visit(browser, portal, "forwarding")
    fill(browser, "#forwarding", anum="3612345")
    wait_for(browser, lambda d: text_of(d, "#result") == "Saved.", "the forwarding save")
    stored_forward = portal.api(apientry="getfield", retfieldname="forwardalways", filterfieldname="username",
                                filterfieldvalue="webuser")
    assert stored_forward["message"] == "3612345", stored_forward
    shot(browser, "06-forwarding")

    # Every other page renders without an error, on a desktop and on a phone-sized screen.
    for number, page in enumerate(("tariffs", "transfer", "sms", "calls", "details", "password"), 7):
        visit(browser, portal, page)
        wait_for(browser, lambda d: text_of(d, "h2") != "", f"the {page} page")
        assert not text_of(browser, "#error"), (page, text_of(browser, "#error"))
        shot(browser, f"{number:02d}-{page}")
    visit(browser, portal, "tariffs")
    wait_for(browser, lambda d: "Hungary" in text_of(d, "#rates"), "the tariff list")
    browser.set_window_size(375, 740)
    visit(browser, portal, "dashboard")
    wait_for(browser, lambda d: text_of(d, "#balance") == "5.00 USD", "the phone-sized dashboard")
    width = browser.execute_script("return document.documentElement.scrollWidth")
    assert width <= 375, width  # nothing sticks out sideways
    shot(browser, "13-dashboard-phone")
    browser.set_window_size(1280, 900)
    browser.find_element("id", "logout").click()


def test_old_deep_links(portal: Portal, browser: Any) -> None:
    """?function=callhistory&username=..&md5=MD5("C8y5:" user ":" password ":" salt)&salt=.. logs in and opens
    the history; the credentials leave the address bar; a wrong md5 says so."""
    assert portal.api(apientry="newuseri", u_username="linkuser", u_password="link-pw")["status"] == "OK"
    digest = hashlib.md5(b"C8y5:linkuser:link-pw:92624f").hexdigest()
    browser.get(f"{portal.url}?function=callhistory&username=linkuser&md5={digest}&salt=92624f")
    wait_for(browser, lambda d: text_of(d, "h2") == "Call history", "the deep-linked history")
    assert "md5" not in browser.current_url
    shot(browser, "14-deep-link")
    browser.find_element("id", "logout").click()
    browser.get(f"{portal.url}?function=mydetails&username=linkuser&md5=0123&salt=x")
    wait_for(browser, lambda d: "username or password is wrong" in text_of(d, "#error"), "the refused link")
    browser.get(f"{portal.url}#publictariffs")
    wait_for(browser, lambda d: "Hungary" in text_of(d, "#rates"), "the public tariffs")
    shot(browser, "15-public-tariffs")
