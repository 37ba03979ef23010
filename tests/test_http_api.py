"""The HTTP front end on a real socket, driven by curl."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, AsyncIterator

import pytest_twisted
from twisted.internet import reactor as global_reactor
from twisted.internet.utils import getProcessOutputAndValue
from urllib.parse import quote

from mizud.api.dispatcher import Dispatcher
from mizud.api.functions import build_registry
from mizud.config import Settings
from mizud.store.billing import BillingStore
from mizud.store.database import SqliteDatabase
from mizud.store.schema import migrate
from mizud.app import make_site
from test_twistd import free_port


class Server:
    """mizud's HTTP site on 127.0.0.1, an ephemeral port."""

    def __init__(self, port: int, api: Dispatcher) -> None:
        self.port = port
        self.api = api
        self.base = f"http://127.0.0.1:{port}"

    async def curl(self, *args: str) -> tuple[int, str, str]:
        """Run curl; returns (HTTP status of the last response, headers, body)."""
        out, err, code = await getProcessOutputAndValue(
            "curl", ["-s", "-S", "-D", "-", "--max-time", "20", *args], env={"PATH": "/usr/bin:/bin"}
        )
        assert code == 0, err
        text = out.decode("utf-8")
        head, _, body = text.rpartition("\r\n\r\n")
        status = int(head.rsplit("HTTP/1.1 ", 1)[1].split(" ", 1)[0])
        return status, head, body


async def start(tmp_path: Path, *sets: str) -> tuple[Server, object, SqliteDatabase]:
    """Start a server with the given options."""
    path = str(tmp_path / "h.sqlite")
    migrate(path, "2026-01-01")
    db = SqliteDatabase(path, global_reactor)
    await db.start()
    store = BillingStore(db, global_reactor)
    await store.create_user("alice", "alicepw")
    number = free_port()
    settings = Settings(None, ("apiv2key=k", f"mainaport={number}", *sets))
    api = Dispatcher(settings, build_registry(), store, global_reactor)
    port = global_reactor.listenTCP(number, make_site(settings, lambda: api), interface="127.0.0.1")
    return Server(number, api), port, db


@pytest_twisted.async_yield_fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    """A server with default options."""
    srv, port, db = await start(tmp_path)
    yield srv
    await port.stopListening()  # type: ignore[attr-defined]
    await db.close()


@pytest_twisted.ensureDeferred
async def test_get_answers_text(server: Server) -> None:
    """GET /mvapireq/?apientry=apitest1 answers OK in text."""
    status, head, body = await server.curl(f"{server.base}/mvapireq/?apientry=apitest1&now=555")
    assert (status, body) == (200, "OK: API test passed")
    assert "content-type: text/plain; charset=utf-8" in head.lower()


@pytest_twisted.ensureDeferred
async def test_any_path_containing_mvapireq(server: Server) -> None:
    """Any path containing /mvapireq is the API; other paths are 404."""
    assert (await server.curl(f"{server.base}/some/prefix/mvapireq?apientry=apitest1"))[2] == "OK: API test passed"
    assert (await server.curl(f"{server.base}/other"))[0] == 404


@pytest_twisted.ensureDeferred
async def test_post_json_mirrors_json(server: Server) -> None:
    """A JSON POST gets a JSON answer."""
    status, _, body = await server.curl(
        "-H", "Content-Type: application/json", "--data-binary", '{"apientry":"apitest","authkey":"k","authid":"alice","authpwd":"alicepw"}',
        f"{server.base}/mvapireq/",
    )
    assert json.loads(body) == {"code": 200, "status": "OK", "message": "API test passed (alice, password)"}


@pytest_twisted.ensureDeferred
async def test_post_form_and_xml(server: Server) -> None:
    """Form and XML bodies work; XML answers mirror XML."""
    assert (await server.curl("-d", "apientry=apitest1", f"{server.base}/mvapireq/"))[2] == "OK: API test passed"
    _, head, body = await server.curl(
        "-H", "Content-Type: text/xml", "--data-binary", "<r><apientry>apitest1</apientry></r>", f"{server.base}/mvapireq/"
    )
    assert body.endswith("<response><code>200</code><status>OK</status><message>API test passed</message></response>")


@pytest_twisted.ensureDeferred
async def test_keep_alive_serves_several_requests(server: Server) -> None:
    """HTTP/1.1 keep-alive: curl reuses one connection for several requests."""
    url = f"{server.base}/mvapireq/?apientry=apitest1"
    out, err, code = await getProcessOutputAndValue("curl", ["-s", "-v", url, url, url], env={"PATH": "/usr/bin:/bin"})
    assert code == 0
    assert out.decode() == "OK: API test passed" * 3
    assert err.decode().count("Re-using existing connection") == 2


@pytest_twisted.ensureDeferred
async def test_http_1_0(server: Server) -> None:
    """HTTP/1.0 requests are answered."""
    out, err, code = await getProcessOutputAndValue(
        "curl", ["-s", "-0", f"{server.base}/mvapireq/?apientry=apitest1"], env={"PATH": "/usr/bin:/bin"}
    )
    assert out == b"OK: API test passed"


@pytest_twisted.ensureDeferred
async def test_statuses_are_200_unless_strict(tmp_path: Path) -> None:
    """Failures answer HTTP 200 by default and their specific code when httpstrictrtspose is on."""
    srv, port, db = await start(tmp_path, "httpstrictrtspose=1", "trustlanip=0", "allowtrustedip=0")
    cases = [
        ("apientry=nosuch", 406),
        ("apientry=apitest&authkey=k&authid=alice&authpwd=x", 403),
        ("apientry=delbanned&authkey=k", 403),
        ("apientry=help&param1=nosuch", 406),
    ]
    for query, expected in cases:
        status, _, body = await srv.curl(f"{srv.base}/mvapireq/?{query}")
        assert status == expected, body
        assert body.startswith("ERROR: ")
    await port.stopListening()  # type: ignore[attr-defined]
    await db.close()
    (tmp_path / "b").mkdir()
    srv2, port2, db2 = await start(tmp_path / "b")
    assert (await srv2.curl(f"{srv2.base}/mvapireq/?apientry=nosuch"))[0] == 200
    await port2.stopListening()  # type: ignore[attr-defined]
    await db2.close()


@pytest_twisted.ensureDeferred
async def test_hostile_input_gets_clean_errors(server: Server, tmp_path: Path) -> None:
    """Malformed bodies, bad UTF-8 and oversized requests get ERROR answers, never tracebacks, and write nothing."""
    before = await table_counts(server)
    cases = [
        ("-H", "Content-Type: application/json", "--data-binary", "{bad json"),
        ("-H", "Content-Type: text/xml", "--data-binary", '<!DOCTYPE x [<!ENTITY a "b">]><x>&a;</x>'),
        ("--data-binary", "apientry=%ff%fe"),
    ]
    for args in cases:
        status, _, body = await server.curl(*args, f"{server.base}/mvapireq/")
        assert status == 200 and body.startswith("ERROR: ") and "Traceback" not in body
    status, _, body = await server.curl(f"{server.base}/mvapireq/?a={'x' * 9000}")
    assert body == "ERROR: request URL over 8192 characters"
    big = tmp_path / "big.txt"
    big.write_bytes(b"a=" + b"x" * (2 * 1024 * 1024))
    status, _, body = await server.curl("--data-binary", f"@{big}", f"{server.base}/mvapireq/")
    assert (status, body) == (413, "ERROR: request body over 1048576 bytes")
    status, _, body = await server.curl(
        "-H", "Transfer-Encoding: chunked", "--data-binary", f"@{big}", f"{server.base}/mvapireq/"
    )
    assert (status, body) == (413, "ERROR: request body over 1048576 bytes")
    assert (await server.curl(f"{server.base}/mvapireq/?apientry=apitest1"))[2] == "OK: API test passed"
    assert await table_counts(server) == before


async def table_counts(server: Server) -> list[int]:
    """Row counts of every table a request could write."""
    counts = []
    for table in ("tb_users", "tb_credits", "tb_moneyops", "tb_banned", "tb_nonceuse", "tb_authfailures", "tb_api"):
        counts.append((await server.api.db.run_query("count", f"SELECT count(*) FROM {table}")).rows[0][0])
    return counts


@pytest_twisted.ensureDeferred
async def test_trusted_proxy_forwarded_address(tmp_path: Path) -> None:
    """X-Forwarded-For is believed only from a listed proxy."""
    srv, port, db = await start(tmp_path, "trustedproxies=127.0.0.1", "allowtrustedip=1")
    forwarded = ("-H", "X-Forwarded-For: 9.9.9.9")
    assert (await srv.curl(*forwarded, f"{srv.base}/mvapireq/?apientry=version"))[2] == "ERROR: wrong authentication"
    await port.stopListening()  # type: ignore[attr-defined]
    await db.close()
    (tmp_path / "x").mkdir()
    srv, port, db = await start(tmp_path / "x", "allowtrustedip=1")
    assert (await srv.curl(*forwarded, f"{srv.base}/mvapireq/?apientry=version"))[2] == "OK: mizud 0.1.0"
    await port.stopListening()  # type: ignore[attr-defined]
    await db.close()


@pytest_twisted.ensureDeferred
async def test_old_interface_over_http(server: Server) -> None:
    """/xmapi/COMMAND answers on the same site; unknown paths stay 404."""
    status, _, body = await server.curl(f"{server.base}/xmapi/balance?usr=alice&pwd=alicepw&now")
    assert (status, body) == (200, "OK: 0.00 USD")
    assert (await server.curl(f"{server.base}/xmapi/balance?usr=alice&pwd=x"))[2] == "ERROR: wrong authentication"


@pytest_twisted.ensureDeferred
async def test_static_files_under_mvweb(tmp_path: Path) -> None:
    """Files under mvwebdir are served with their type, conditional GET works, and nothing escapes the folder."""
    web = tmp_path / "web"
    (web / "sub").mkdir(parents=True)
    (web / "index.html").write_text("<h1>hi</h1>")
    (web / "sub" / "app.js").write_text("var x = 1;")
    (tmp_path / "secret.txt").write_text("secret")
    srv, port, db = await start(tmp_path, f"mvwebdir={web}")
    status, head, body = await srv.curl(f"{srv.base}/mvweb/index.html")
    assert (status, body) == (200, "<h1>hi</h1>") and "content-type: text/html" in head.lower()
    status, head, _ = await srv.curl(f"{srv.base}/mvweb/sub/app.js")
    assert status == 200 and "javascript" in head.lower()
    modified = [line.split(": ", 1)[1] for line in head.splitlines() if line.lower().startswith("last-modified")][0]
    assert (await srv.curl("-H", f"If-Modified-Since: {modified}", f"{srv.base}/mvweb/sub/app.js"))[0] == 304
    (web / "escape.txt").symlink_to(tmp_path / "secret.txt")
    (web / "out").symlink_to(tmp_path)
    (web / "inside.txt").symlink_to(web / "index.html")
    for path in ("/mvweb/../secret.txt", "/mvweb/%2e%2e/secret.txt", "/mvweb/sub/", "/mvweb/nosuch",
                 "/mvweb/escape.txt", "/mvweb/out/secret.txt", "/mvweb/index.html%00", "/mvweb/index.html%00.js"):
        status, _, body = await srv.curl("--path-as-is", f"{srv.base}{path}")
        assert status in (400, 404) and "secret" not in body, path
    # A link that stays inside the folder is served.
    assert (await srv.curl(f"{srv.base}/mvweb/inside.txt"))[2] == "<h1>hi</h1>"
    await port.stopListening()  # type: ignore[attr-defined]
    await db.close()


@pytest_twisted.ensureDeferred
async def test_jsonp_forwarder(tmp_path: Path) -> None:
    """jppget fetches JSON only for an authenticated user, only with enablejsonp=2, only from listed hosts, and
    never from mizud itself or an internal address that is not listed by address."""
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    class Remote(Resource):
        isLeaf = True

        def render_GET(self, request: object) -> bytes:
            return b'{"rate": "0.02"}' if b"good" in request.path else b"not json"  # type: ignore[attr-defined]

    remote = global_reactor.listenTCP(0, Site(Remote()), interface="127.0.0.1")
    base = f"http://127.0.0.1:{remote.getHost().port}"
    named = f"http://localhost:{remote.getHost().port}"
    srv, port, db = await start(tmp_path, "enablejsonp=2", "jsonpforwardhosts=127.0.0.1,localhost")
    alice = "authkey=k&authid=alice&authpwd=alicepw"
    url = f"{srv.base}/mvapireq/jppget?{alice}&callback=show&url={quote(base + '/good')}"
    status, head, body = await srv.curl(url)
    assert body == 'show({"rate": "0.02"});' and "application/javascript" in head
    assert (await srv.curl(f"{srv.base}/mvapireq/jppget?{alice}&url={quote(base + '/bad')}"))[2] == (
        "ERROR: the remote document is not JSON"
    )
    other = await srv.curl(f"{srv.base}/mvapireq/jppget?{alice}&url={quote('http://example.com:1/x')}")
    assert other[2] == "ERROR: host example.com is not in jsonpforwardhosts"
    assert (await srv.curl(f"{srv.base}/mvapireq/jppget?{alice}&url=file:///etc/passwd"))[2] == (
        "ERROR: url must be an http or https URL"
    )
    # The attack: the forwarder used to fetch the daemon's own admin API and hand every password to anyone.
    own = quote(f"http://localhost:{srv.port}/mvapireq/?apientry=db&txt=select%20password%20from%20tb_users")
    for who in ("", alice):
        answered = (await srv.curl(f"{srv.base}/mvapireq/jppget?{who}&url={own}"))[2]
        assert "alicepw" not in answered and answered.startswith("ERROR"), answered
    listed_by_address = quote(f"http://127.0.0.1:{srv.port}/mvapireq/?apientry=apitest1")
    assert (await srv.curl(f"{srv.base}/mvapireq/jppget?{alice}&url={listed_by_address}"))[2] == (
        "ERROR: url leads to mizud itself"
    )
    # A listed name that resolves to loopback is refused unless that address itself is listed.
    assert (await srv.curl(f"{srv.base}/mvapireq/jppget?{alice}&url={quote(named + '/good')}"))[2] == (
        'callback({"rate": "0.02"});'
    )
    await port.stopListening()  # type: ignore[attr-defined]
    await db.close()
    (tmp_path / "name").mkdir()
    srv, port, db = await start(tmp_path / "name", "enablejsonp=2", "jsonpforwardhosts=localhost")
    refused = await srv.curl(f"{srv.base}/mvapireq/jppget?{alice}&url={quote(named + '/good')}")
    assert refused[2].startswith("ERROR: url resolves to an internal address (127.0.0.1)")
    anonymous = await srv.curl(f"{srv.base}/mvapireq/jppget?url={quote(named + '/good')}")
    assert anonymous[2] == "ERROR: this function needs authid (the user)"
    await port.stopListening()  # type: ignore[attr-defined]
    await db.close()
    (tmp_path / "off").mkdir()
    srv, port, db = await start(tmp_path / "off")
    off = await srv.curl(f"{srv.base}/mvapireq/jppget?{alice}&url={quote(base + '/good')}")
    assert off[2] == "ERROR: the JSONP forwarder is off (enablejsonp=2 turns it on)"
    await port.stopListening()  # type: ignore[attr-defined]
    await db.close()
    await remote.stopListening()


@pytest_twisted.ensureDeferred
async def test_portal_is_served(tmp_path: Path) -> None:
    """With webportal=1, /webvoip and /webvoipportal (any case) serve the portal page (with a strict
    content security policy), its assets and its configuration (the API key the browser needs), and the
    old root links (/?function=...) are sent there; by default it is off."""
    (tmp_path / "on").mkdir()
    server, on_port, on_db = await start(tmp_path / "on", "webportal=1")
    for path in ("/webvoip", "/webvoipportal/", "/webvoip/anything"):
        status, head, body = await server.curl(f"{server.base}{path}")
        assert status == 200 and "<main id=\"page\"" in body, (path, status)
        assert "content-security-policy: default-src 'self'" in head.lower()
    status, head, body = await server.curl(f"{server.base}/webvoip/config.js")
    assert status == 200 and '"authkey": "k"' in body
    status, head, body = await server.curl(f"{server.base}/webvoip/md5.js")
    assert status == 200 and "function digest" in body and "javascript" in head.lower()
    status, _, body = await server.curl(f"{server.base}/WebVoip")
    assert status == 200
    status, head, _ = await server.curl(f"{server.base}/?function=callhistory&username=x&md5=y&salt=z")
    assert status == 302 and "location: /webvoip?function=callhistory&username=x&md5=y&salt=z" in head.lower()
    await on_port.stopListening()  # type: ignore[attr-defined]
    await on_db.close()
    (tmp_path / "off").mkdir()
    off, port, db = await start(tmp_path / "off")
    try:
        status, _, body = await off.curl(f"{off.base}/webvoip")
        assert (status, body) == (404, "ERROR: the web portal is off (webportal=0)")
    finally:
        await port.stopListening()  # type: ignore[attr-defined]
        await db.close()

@pytest_twisted.ensureDeferred
async def test_jsonp_forwarder_gives_up_on_a_slow_body(tmp_path: Path, monkeypatch: Any) -> None:
    """A listed host that sends its headers and then its body a byte at a time is abandoned at the deadline
    for the whole exchange (treq's own timeout ends with the headers)."""
    from twisted.internet.task import LoopingCall
    from twisted.web.resource import Resource
    from twisted.web.server import NOT_DONE_YET, Site

    from mizud.api import forwarder

    class Slow(Resource):
        isLeaf = True

        def render_GET(self, request: Any) -> Any:
            request.setHeader(b"content-length", b"1000")
            request.write(b"{")
            LoopingCall(lambda: request.write(b" ")).start(0.2, now=False)
            return NOT_DONE_YET

    monkeypatch.setattr(forwarder, "TIMEOUT", 1.0)
    remote = global_reactor.listenTCP(0, Site(Slow()), interface="127.0.0.1")
    srv, port, db = await start(tmp_path, "enablejsonp=2", "jsonpforwardhosts=127.0.0.1")
    url = quote(f"http://127.0.0.1:{remote.getHost().port}/slow")
    import time

    started = time.monotonic()
    answered = await srv.curl(f"{srv.base}/mvapireq/jppget?authkey=k&authid=alice&authpwd=alicepw&url={url}")
    assert answered[2] == "ERROR: fetch failed: timed out" and time.monotonic() - started < 5
    await port.stopListening()  # type: ignore[attr-defined]
    await db.close()
    await remote.stopListening()


@pytest_twisted.ensureDeferred
async def test_dns_rebinding_gets_no_address_trust(tmp_path: Path) -> None:
    """A browser's request addressed to a foreign host name (the attacker's name re-pointed at 127.0.0.1) reads
    no passwords, by GET or POST; the operator's own names (httphostnames) and scripts keep their trust."""
    srv, port, db = await start(tmp_path)
    db_query = "apientry=db&txt=select%20username,password%20from%20tb_users&format=json"
    browser = ["-H", f"Host: evil.example:{srv.port}", "-H", "User-Agent: Mozilla/5.0",
               "-H", f"Referer: http://evil.example:{srv.port}/a.html"]
    status, _, body = await srv.curl(*browser, f"{srv.base}/mvapireq/?{db_query}")
    assert json.loads(body)["status"] == "ERROR" and "alicepw" not in body
    _, _, body = await srv.curl(*browser[:4], "-H", f"Origin: http://evil.example:{srv.port}",
                                "--data", db_query, f"{srv.base}/mvapireq/")
    assert json.loads(body)["status"] == "ERROR" and "alicepw" not in body
    _, _, body = await srv.curl(f"{srv.base}/mvapireq/?{db_query}")  # curl on this machine: trusted
    assert "alicepw" in body
    await port.stopListening()  # type: ignore[attr-defined]
    await db.close()
    (tmp_path / "named").mkdir()
    srv, port, db = await start(tmp_path / "named", "httphostnames=voip.example.com")
    named = ["-H", f"Host: voip.example.com:{srv.port}", "-H", "User-Agent: Mozilla/5.0",
             "-H", f"Referer: http://voip.example.com:{srv.port}/webvoip"]
    _, _, body = await srv.curl(*named, f"{srv.base}/mvapireq/?{db_query}")
    assert "alicepw" in body  # the operator's own name, same origin, from this machine
    await port.stopListening()  # type: ignore[attr-defined]
    await db.close()


async def raw_exchange(port: int, data: bytes, answers: int, seconds: float = 10.0) -> list[bytes]:
    """Send C{data} on one connection; read until C{answers} complete responses (by Content-Length)."""
    import socket

    from twisted.internet.task import deferLater

    sock = socket.create_connection(("127.0.0.1", port))
    sock.setblocking(False)
    sock.sendall(data)
    buffer, found = b"", []
    try:
        for _ in range(int(seconds / 0.005)):
            try:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buffer += chunk
            except BlockingIOError:
                await deferLater(global_reactor, 0.005, lambda: None)
            while b"\r\n\r\n" in buffer:
                head, _, rest = buffer.partition(b"\r\n\r\n")
                lowered = head.lower()
                length = int(lowered.split(b"content-length: ")[1].split(b"\r\n")[0]) \
                    if b"content-length: " in lowered else 0
                if len(rest) < length:
                    break
                found.append(head + b"\r\n\r\n" + rest[:length])
                buffer = rest[length:]
            if len(found) >= answers:
                break
    finally:
        sock.close()
    return found


@pytest_twisted.ensureDeferred
async def test_pipelined_requests_are_answered_in_order_on_the_lean_path(server: Server) -> None:
    """Three pipelined GETs in one segment, the first waiting on the database (a write) and the others not:
    three answers, in the order asked, each with its own Content-Length and a Date; Connection: close on
    the last closes after its answer."""
    key = "authkey=k&authid=alice&authpwd=alicepw"
    requests = (f"GET /mvapireq/?apientry=setfield&{key}&fieldname=email&fieldvalue=a%40b.c HTTP/1.1\r\nHost: x\r\n\r\n"
                f"GET /mvapireq/?apientry=balance&{key} HTTP/1.1\r\nHost: x\r\n\r\n"
                f"GET /mvapireq/?apientry=balance&{key} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    answers = await raw_exchange(server.port, requests.encode(), 3)
    assert len(answers) == 3
    bodies = [a.partition(b"\r\n\r\n")[2] for a in answers]
    assert bodies == [b"OK: email set", b"OK: 0.00 USD", b"OK: 0.00 USD"]
    assert all(b"\r\ndate: " in a.lower() for a in answers)
    assert b"connection: close" in answers[2].lower()


@pytest_twisted.ensureDeferred
async def test_a_request_the_lean_path_does_not_take_goes_to_twisted_web_after_the_lean_answers(
        server: Server) -> None:
    """A lean GET then a POST with a body on the same connection: the GET is answered first, the POST by
    twisted.web (which keeps the connection from then on), then another GET by twisted.web too."""
    key = "authkey=k&authid=alice&authpwd=alicepw"
    body = f"apientry=balance&{key}"
    requests = (f"GET /mvapireq/?apientry=balance&{key} HTTP/1.1\r\nHost: x\r\n\r\n"
                f"POST /mvapireq/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                f"Content-Length: {len(body)}\r\n\r\n{body}"
                f"GET /mvapireq/?apientry=balance&{key} HTTP/1.1\r\nHost: x\r\n\r\n")
    answers = await raw_exchange(server.port, requests.encode(), 3)
    assert [a.partition(b"\r\n\r\n")[2][:8] for a in answers] == [b"OK: 0.00"] * 3
    assert b"date: " in answers[0].lower()


@pytest_twisted.ensureDeferred
async def test_ambiguous_heads_are_never_answered_by_the_lean_path(server: Server) -> None:
    """Request smuggling material: bare LF line ends, a duplicated header, an obsolete folded header, a
    Transfer-Encoding, control characters: each goes to twisted.web (its answers carry its Server
    header, the lean path's do not), which answers or refuses it as it always did; none confuses the
    framing of the request after it."""
    key = "authkey=k&authid=alice&authpwd=alicepw"
    good = f"GET /mvapireq/?apientry=balance&{key} HTTP/1.1\r\nHost: x\r\n\r\n"
    for first in (f"GET /mvapireq/?apientry=balance&{key} HTTP/1.1\nHost: x\n\n",
                  f"GET /mvapireq/?apientry=balance&{key} HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
                  f"GET /mvapireq/?apientry=balance&{key} HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n b\r\n\r\n",
                  f"GET /mvapireq/?apientry=balance&{key} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                  "0\r\n\r\n",
                  f"GET /mvapireq/?apientry=balance&{key} HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n"):
        answers = await raw_exchange(server.port, (first + good).encode(), 2, seconds=5)
        assert answers and all(a.startswith(b"HTTP/1.1 ") for a in answers), first
        assert answers[-1].partition(b"\r\n\r\n")[2].startswith(b"OK: 0.00") or len(answers) == 1, first
        assert not any(b"date: " in a.lower() and a.startswith(b"HTTP/1.1 200") and b"server: " not in a.lower()
                       for a in answers[:1]), "the lean path answered an ambiguous head"


def test_the_lean_head_parser_refuses_what_it_cannot_be_sure_of() -> None:
    """parse_head takes only a plain GET HTTP/1.1 with a Host and single-valued, well-formed headers."""
    from mizud.wire.lean import head_end, parse_head

    ok = parse_head(b"GET /mvapireq/?a=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\nUser-Agent: curl")
    assert ok is not None and ok.close and ok.header("user-agent") == "curl" and ok.path == "/mvapireq/"
    for head in (b"POST /mvapireq/ HTTP/1.1\r\nHost: x", b"GET /mvapireq/ HTTP/1.0\r\nHost: x",
                 b"GET /mvapireq/ HTTP/1.1", b"GET /a b HTTP/1.1\r\nHost: x", b"GET /mvapireq/ HTTP/1.1\r\nHost x",
                 b"GET /mvapireq/ HTTP/1.1\r\nHost: x\r\nContent-Length: 0",
                 b"GET /mvapireq/ HTTP/1.1\r\nHost: x\r\nExpect: 100-continue",
                 b"GET /mvapireq/ HTTP/1.1\r\nHost: x\r\nUpgrade: websocket",
                 b"GET /mvapireq/ HTTP/1.1\r\nHost: x\r\nConnection: upgrade",
                 b"GET /mvapireq/ HTTP/1.1\r\nHost: x\r\nX\x7f: 1", b"GET /\xff HTTP/1.1\r\nHost: x"):
        assert parse_head(head) is None, head
    assert head_end(b"GET / HTTP/1.1\nHost: x\n\n") == -2 and head_end(b"GET / HTTP/1.1\r\nHo") == -1


@pytest_twisted.ensureDeferred
async def test_a_slow_answer_is_not_cut_by_the_idle_timeout(tmp_path: Path) -> None:
    """connectionidletimeout counts idleness, not a request's own work: an answer that takes longer than
    the idle timeout still arrives (on the lean path as on twisted.web's)."""
    from twisted.internet.task import deferLater

    server, port, db = await start(tmp_path, "connectionidletimeout=1s")
    real = server.api.dispatch

    async def slow(request: Any) -> Any:
        await deferLater(global_reactor, 1.6, lambda: None)
        return await real(request)

    server.api.dispatch = slow  # type: ignore[method-assign]
    try:
        key = "authkey=k&authid=alice&authpwd=alicepw"
        answers = await raw_exchange(server.port, f"GET /mvapireq/?apientry=balance&{key} HTTP/1.1\r\nHost: x\r\n\r\n"
                                     .encode(), 1, seconds=5)
        assert len(answers) == 1 and answers[0].partition(b"\r\n\r\n")[2] == b"OK: 0.00 USD"
    finally:
        await port.stopListening()  # type: ignore[attr-defined]
        await db.close()
