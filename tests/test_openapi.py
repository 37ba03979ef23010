"""The OpenAPI document: current in docs/, served at /openapi.json, and used to fuzz the live API.

The fuzzer reads the document the daemon serves and sends every operation
with no parameters and with hostile values, then Hypothesis-chosen
operations with generated values, as the admin and anonymously. No answer
may be a server error: no HTTP 5xx, always a well-formed JSON answer, never
the dispatcher's "internal error", and no traceback in the daemon's log.
"""

from __future__ import annotations

import http.client
import json
import signal
import urllib.parse
from pathlib import Path
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mizud.api import openapi
from test_twistd import free_port, start_daemon

ROOT = Path(__file__).resolve().parent.parent
HOSTILE = ["", "0", "-1", "99999999999999999999", "1e400", "NaN", "' OR 1=1 --", "\x00", "\u202e\ufeff", "%00",
           "../../etc/passwd", "<script>x</script>", "a" * 5000, "sip:x@[::1]:99999", "all", "-0.000001"]


def test_document_is_current_and_complete() -> None:
    """docs/openapi.json is what the registry generates, with one operation per function."""
    assert (ROOT / "docs" / "openapi.json").read_text() == openapi.render(), \
        "run: python -m mizud.api.openapi > docs/openapi.json"
    document = openapi.document()
    from mizud.api.functions import build_registry

    assert len(document["paths"]) == len(list(build_registry()))
    balance = document["paths"]["/mvapireq/balance"]["get"]
    assert balance["operationId"] == "balance" and document["openapi"].startswith("3.")


class Live:
    """A daemon and a keep-alive HTTP connection to it."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.process, self.lines = start_daemon(
            folder, "listenaddress=127.0.0.1", f"mainaport={self.port}", "mainaportudp=0", "httpserver=0",
            "sslportmain=0", "sipport=0", "localtsport=0", "bootstrapadmin=admin:admin-password", "ratelimitip=0",
            "ratelimituser=0", "ratelimitglobal=0", "authfailmax=1000")
        self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        self.sent = 0

    def get(self, path: str) -> tuple[int, bytes]:
        """One GET on the kept-alive connection (a new one when the server closed it, as servers may)."""
        for attempt in range(2):
            try:
                self.connection.request("GET", path)
                response = self.connection.getresponse()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.connection.close()
                self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
                if attempt:
                    raise
        self.sent += 1
        return response.status, response.read()

    def check(self, path: str, params: dict[str, str]) -> None:
        """Send one request; fail on anything that looks like a server error."""
        query = urllib.parse.urlencode({**params, "format": "json"})
        status, body = self.get(f"{path}?{query}")
        assert status < 500, (path, params, status)
        if len(path) + len(query) > 8190 and (body.startswith(b"ERROR: request URL over") or status in (400, 414)):
            return  # refused before it could be decoded (so before format=json was read): a clear error
        try:
            answer = json.loads(body)
        except ValueError:
            raise AssertionError(f"not JSON: {path} {params!r:.300} -> {status} {body[:300]!r}") from None
        assert answer["status"] in ("OK", "ERROR") and isinstance(answer["message"], str), (path, params, answer)
        assert answer["message"] != "internal error", (path, params)

    def stop(self) -> str:
        """Stop the daemon; its output."""
        self.connection.close()
        self.process.send_signal(signal.SIGTERM)
        rest, _ = self.process.communicate(timeout=60)
        return "".join(self.lines) + rest


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """The daemon under fuzz; its log must stay free of tracebacks."""
    daemon = Live(tmp_path_factory.mktemp("fuzz"))
    try:
        yield daemon
    finally:
        output = daemon.stop()
        assert "Traceback" not in output, output[-5000:]


def operations(live: Live) -> list[tuple[str, list[str]]]:
    """(path, parameter names) of every operation in the document the daemon serves."""
    status, body = live.get("/openapi.json")
    assert status == 200
    document = json.loads(body)
    found = []
    for path, item in document["paths"].items():
        names = [p["name"] for p in item["get"]["parameters"] if "name" in p]
        found.append((path, names))
    return found


ADMIN = {"authid": "admin", "authpwd": "admin-password"}


def test_every_operation_survives_hostile_values(live: Live) -> None:
    """Every operation, with no parameters and with each hostile value in all its parameters, as admin
    and anonymously: no server error."""
    for path, names in operations(live):
        for credentials in (ADMIN, {}):
            live.check(path, dict(credentials))
            for value in HOSTILE:
                live.check(path, {**{name: value for name in names}, **credentials})


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_generated_requests(live: Live, data: Any) -> None:
    """Hypothesis picks operations and values (any text, numbers, long strings): no server error."""
    path, names = data.draw(st.sampled_from(operations(live)))
    chosen = data.draw(st.lists(st.sampled_from(names), unique=True, max_size=len(names))) if names else []
    values = st.one_of(st.text(max_size=300), st.integers().map(str), st.decimals(allow_nan=False).map(str),
                       st.sampled_from(HOSTILE))
    params = {name: data.draw(values) for name in chosen}
    if data.draw(st.booleans()):
        params.update(ADMIN)
    live.check(path, params)


def test_the_served_document_is_made_once_and_has_no_children() -> None:
    """/openapi.json is made on its first request and kept; HEAD gets its length and no body; a path below it
    is not found (as twisted.web's Data resource)."""
    from twisted.web.resource import getChildForRequest
    from twisted.web.test.requesthelper import DummyRequest

    from mizud.wire.static import Generated

    made: list[int] = []

    def make() -> bytes:
        made.append(1)
        return b'{"openapi": "3.1.0"}'

    document = Generated(make, "application/json")
    assert document.render(DummyRequest([b""])) == b'{"openapi": "3.1.0"}'
    head = DummyRequest([b""])
    head.method = b"HEAD"
    assert document.render(head) == b""
    assert head.responseHeaders.getRawHeaders(b"content-length") == [b"20"]
    assert made == [1]
    below = DummyRequest([b"anything"])
    assert getChildForRequest(document, below) is not document
