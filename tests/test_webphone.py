"""The Mizu webphone's wire behaviour, against the real daemon.

The webphone itself (Mizutech's browser softphone) cannot be shipped; these
tests speak to mizud as it does (issue 16 describes it):
  - the API over C{new WebSocket("ws://HOST:PORT/mvstwebsock?requestid=N", "api")}: each text frame the
    whole request URL with C{mvapireq} rewritten to C{mvstwebsock/mvapireq}, plus CRLF, with
    C{format=txt&requestid=N} added, the query XOR+Base64 encrypted as C{mcrfs=} with the key built into
    Mizu's clients; answers matched by order;
  - SIP over C{new WebSocket(".../mfstwebsock?requestid=N", "sip")}: REGISTER with
    C{Contact: <sip:alice@RANDOM.invalid;transport=ws>}, MESSAGE, PUBLISH of presence, and the keep-alive
    text C{mrtcping} answered C{mrtcpong}.
The XOR+Base64 scheme and every digest are computed here from the spec, not with mizud's code.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import signal
import socket
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from test_portal import browser  # noqa: F401  (the browser fixture)
from test_twistd import free_port, start_daemon

CLIENT_KEY = "aJ6aqK4Nah3hnP7aht"


def md5(text: str) -> str:
    """Hex MD5."""
    return hashlib.md5(text.encode()).hexdigest()


def encrypt(text: str, key: str = CLIENT_KEY) -> str:
    """The spec's XOR + Base64, with '=' -> '-', '+' -> '_', '/' -> '.'."""
    data = bytes(b ^ key.encode()[i % len(key)] for i, b in enumerate(text.encode()))
    return base64.b64encode(data).decode().replace("=", "-").replace("+", "_").replace("/", ".")


class WebSocket:
    """A small blocking WebSocket client (text frames, masked as a client must)."""

    def __init__(self, port: int, path: str, protocol: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {protocol}\r\n\r\n"
            .encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)
            assert chunk, head
            head += chunk
        self.head = head.decode()
        self.buffer = b""

    def send(self, text: str) -> None:
        """One text frame."""
        data = text.encode()
        mask = os.urandom(4)
        size = len(data)
        header = bytes([0x81, 0x80 | size]) if size < 126 else bytes([0x81, 0xFE]) + size.to_bytes(2, "big")
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def _read(self, count: int) -> bytes:
        while len(self.buffer) < count:
            chunk = self.sock.recv(65536)
            assert chunk, "the server closed the WebSocket"
            self.buffer += chunk
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def receive(self, timeout: float = 10) -> str:
        """The next text frame."""
        self.sock.settimeout(timeout)
        first, second = self._read(2)
        size = second & 0x7F
        if size == 126:
            size = int.from_bytes(self._read(2), "big")
        elif size == 127:
            size = int.from_bytes(self._read(8), "big")
        payload = self._read(size)
        assert first & 0x0F == 1, f"not a text frame: {first:#x}"
        return payload.decode()

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


class Daemon:
    """mizud with users alice (10.00 of credit) and bob; the API and SIP WebSockets on the shared port."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.process, self.lines = start_daemon(
            folder, "listenaddress=127.0.0.1", f"mainaport={self.port}", "mainaportudp=0", "httpserver=0",
            "sslportmain=0", "sipport=0", "localtsport=0", "bootstrapadmin=admin:admin-password",
            "apiv2key=webkey", "apiv2md5salt=websalt", "ratelimitip=0")
        threading.Thread(target=self._drain, daemon=True).start()
        for name, credit in (("alice", "10"), ("bob", "0")):
            created = self.api(apientry="newuseri", u_username=name, u_password=f"{name}-password", credit=credit)
            assert created["status"] == "OK", created

    def _drain(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    def api(self, **params: str) -> dict[str, Any]:
        """A request from this machine (a script: trusted); the JSON answer."""
        query = urllib.parse.urlencode({**params, "format": "json"})
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/mvapireq/?{query}", timeout=30) as answer:
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
    running = Daemon(tmp_path)
    try:
        yield running
    finally:
        output = running.stop()
        assert "Traceback" not in output and "internal error" not in output, output


def webphone_request(port: int, query: str, requestid: int) -> str:
    """A request as the webphone frames it: the whole URL, mvstwebsock/mvapireq, mcrfs, format=txt, CRLF."""
    return (f"http://127.0.0.1:{port}/mvstwebsock/mvapireq/?mcrfs={encrypt(query)}&format=txt"
            f"&requestid={requestid}\r\n")


def credentials(user: str) -> str:
    """authkey + authid + authmd5 (the simplified form) with a client salt."""
    salt = os.urandom(4).hex()
    return f"authkey=webkey&authid={user}&authmd5={md5('ck5Gp' + user + user + '-password' + 'websalt' + salt)}" \
           f"&authsalt={salt}"


def test_the_api_websocket_as_the_webphone_uses_it(daemon: Daemon) -> None:
    """The "api" subprotocol is accepted; encrypted requests with the clients' key are answered in order;
    wsuser records the client for reguser and endpoints; wsload tells this node's load."""
    ws = WebSocket(daemon.port, "/mvstwebsock?requestid=1", "api")
    assert ws.head.startswith("HTTP/1.1 101") and "sec-websocket-protocol: api" in ws.head.lower()
    ws.send(webphone_request(daemon.port, f"apientry=balance&{credentials('alice')}", 2))
    ws.send(webphone_request(daemon.port, f"apientry=wsuser&{credentials('alice')}&brandname=Mizu%20Webphone"
                                          "&companyname=Acme&sessionid=s-42&version=4.2.2025", 3))
    ws.send(webphone_request(daemon.port, "apientry=wsload", 4))
    assert ws.receive() == "OK: 10.00 USD"
    assert ws.receive() == "OK: wsuser alice session s-42"
    assert re.fullmatch(r"OK: ws load: \d+ type: sip", ws.receive())
    listed = daemon.api(apientry="reguser", usr="alice")
    assert listed["status"] == "OK" and "1 web sessions" in listed["message"], listed
    assert [r["contact"] for r in listed["data"]] == ["websession s-42"]
    endpoints = daemon.api(apientry="endpoints")
    assert any(r["useragent"] == "Mizu Webphone 4.2.2025" and r["users"] == "alice" for r in endpoints["data"])
    ws.close()


class SipWs:
    """The webphone's SIP WebSocket: requests built here, digest answered from the spec (RFC 2617)."""

    def __init__(self, daemon: Daemon, user: str) -> None:
        self.ws = WebSocket(daemon.port, "/mfstwebsock?requestid=5", "sip")
        assert "sec-websocket-protocol: sip" in self.ws.head.lower()
        self.user = user
        self.password = f"{user}-password"
        self.host = f"{os.urandom(4).hex()}.invalid"
        self.call_id = os.urandom(8).hex()
        self.cseq = 0

    def request(self, method: str, uri: str, headers: list[str], body: str = "", auth: str = "") -> str:
        """Send one request; returns its final response (after answering a digest challenge)."""
        self.cseq += 1
        lines = [f"{method} {uri} SIP/2.0", f"Via: SIP/2.0/WSS {self.host};branch=z9hG4bK{os.urandom(5).hex()}",
                 "Max-Forwards: 70", f"From: <sip:{self.user}@mizud.test>;tag={os.urandom(3).hex()}",
                 f"Call-ID: {self.call_id}", f"CSeq: {self.cseq} {method}", *headers]
        if auth:
            lines.append(auth)
        lines += [f"Content-Length: {len(body.encode())}", "", body]
        self.ws.send("\r\n".join(lines))
        while True:
            answer = self.ws.receive()
            status = int(answer.split(" ", 2)[1]) if answer.startswith("SIP/2.0 ") else 0
            if status >= 200:
                break
        if status in (401, 407) and not auth:
            challenge = re.search(r'nonce="([^"]+)".*?', answer)
            realm = re.search(r'realm="([^"]+)"', answer)
            assert challenge and realm, answer
            ha1 = md5(f"{self.user}:{realm.group(1)}:{self.password}")
            ha2 = md5(f"{method}:{uri}")
            response = md5(f"{ha1}:{challenge.group(1)}:00000001:c0ffee:auth:{ha2}")
            header = "Authorization" if status == 401 else "Proxy-Authorization"
            return self.request(method, uri, headers, body, (
                f'{header}: Digest username="{self.user}", realm="{realm.group(1)}", nonce="{challenge.group(1)}", '
                f'uri="{uri}", response="{response}", algorithm=MD5, qop=auth, nc=00000001, cnonce="c0ffee"'))
        return answer

    def register(self) -> str:
        """REGISTER as the webphone does."""
        return self.request("REGISTER", "sip:mizud.test", [
            f"To: <sip:{self.user}@mizud.test>", f"Contact: <sip:{self.user}@{self.host};transport=ws>",
            "Expires: 600"])


PIDF = ('<?xml version="1.0" encoding="UTF-8"?><presence xmlns="urn:ietf:params:xml:ns:pidf" '
        'entity="sip:alice@mizud.test"><tuple id="t1"><status><basic>open</basic></status></tuple>'
        '<note>In a meeting</note></presence>')


def test_the_sip_websocket_as_the_webphone_uses_it(daemon: Daemon) -> None:
    """REGISTER with a .invalid contact, mrtcping keep-alives, PUBLISH of presence feeding presence_get,
    requests to the phone naming the domain it registered under, and p2p to it without an internal error."""
    alice = SipWs(daemon, "alice")
    registered = alice.register()
    assert registered.startswith("SIP/2.0 200"), registered
    alice.ws.send("mrtcping")
    assert alice.ws.receive() == "mrtcpong"
    published = alice.request("PUBLISH", "sip:alice@mizud.test", [
        "To: <sip:alice@mizud.test>", "Event: presence", "Expires: 600", "Content-Type: application/pidf+xml"], PIDF)
    assert published.startswith("SIP/2.0 200") and "SIP-ETag: " in published, published
    etag = re.search(r"SIP-ETag: (\S+)", published).group(1)  # type: ignore[union-attr]
    bob = credentials("bob")
    listed = daemon.api(apientry="presence_get", userusername="alice", **dict(urllib.parse.parse_qsl(bob)))
    assert listed["message"] == "puserlist: alice:In a meeting", listed
    refreshed = alice.request("PUBLISH", "sip:alice@mizud.test", [
        "To: <sip:alice@mizud.test>", "Event: presence", "Expires: 600", f"SIP-If-Match: {etag}"])
    assert refreshed.startswith("SIP/2.0 200"), refreshed
    stale = alice.request("PUBLISH", "sip:alice@mizud.test", [
        "To: <sip:alice@mizud.test>", "Event: presence", "Expires: 600", f"SIP-If-Match: {etag}"])
    assert stale.startswith("SIP/2.0 412"), stale  # the refresh gave a new tag
    wrong = alice.request("PUBLISH", "sip:alice@mizud.test", ["To: <sip:alice@mizud.test>", "Event: dialog"])
    assert wrong.startswith("SIP/2.0 489"), wrong
    # A message for alice arrives on her WebSocket, From and To in the domain she registered under.
    sent = daemon.api(apientry="sendim", bnum="alice", txt="hello", **dict(urllib.parse.parse_qsl(bob)))
    assert sent["status"] == "OK", sent
    message = alice.ws.receive()
    assert message.startswith("MESSAGE sip:alice@") and "From: <sip:bob@mizud.test>" in message, message
    assert re.search(r"^Via: SIP/2.0/WS 127\.0\.0\.1:\d+;", message, re.M), message
    alice.ws.send("SIP/2.0 200 OK\r\n" + "\r\n".join(
        line for line in message.split("\r\n") if line.split(":")[0] in ("Via", "From", "To", "Call-ID", "CSeq"))
        + "\r\nContent-Length: 0\r\n\r\n")
    # p2p to users registered over WebSocket: the INVITE reaches alice (it used to be an internal error).
    bob_phone = SipWs(daemon, "bob")
    assert bob_phone.register().startswith("SIP/2.0 200")
    placed = daemon.api(apientry="p2p", anum="alice", bnum="bob", **dict(urllib.parse.parse_qsl(credentials("alice"))))
    assert placed["status"] == "OK", placed
    invite = alice.ws.receive()
    assert invite.startswith("INVITE sip:alice@") and "To: <sip:alice@mizud.test>" in invite, invite
    assert re.search(r"^Via: SIP/2.0/WS 127\.0\.0\.1:\d+;", invite, re.M), invite
    busy = "SIP/2.0 486 Busy Here\r\n" + "\r\n".join(
        line + (";tag=busy" if line.startswith("To:") else "") for line in invite.split("\r\n")
        if line.split(":")[0] in ("Via", "From", "To", "Call-ID", "CSeq")) + "\r\nContent-Length: 0\r\n\r\n"
    alice.ws.send(busy)
    ack = alice.ws.receive()
    assert ack.startswith("ACK sip:alice@"), ack
    alice.ws.close()
    bob_phone.ws.close()


def test_a_browser_opens_the_api_websocket_with_the_api_subprotocol(daemon: Daemon, browser: Any) -> None:
    """Chromium drops a handshake that ignores the subprotocol it asked for: with "api" accepted, a page opening
    the API WebSocket as the webphone does gets its answers."""
    from test_cross_site import HostileSite

    query = webphone_request(daemon.port, f"apientry=balance&{credentials('alice')}", 7)
    page = f"""<!DOCTYPE html><html><body><script>
    window.results = [];
    const socket = new WebSocket("ws://127.0.0.1:{daemon.port}/mvstwebsock?requestid=6", "api");
    socket.onopen = () => socket.send({json.dumps(query)});
    socket.onmessage = (event) => window.results.push(socket.protocol + " " + event.data);
    socket.onerror = () => window.results.push("error");
    </script></body></html>"""
    site = HostileSite(page)
    try:
        browser.get(site.url)
        deadline = time.monotonic() + 15
        results: list[str] = []
        while time.monotonic() < deadline and not results:
            results = browser.execute_script("return window.results") or []
            time.sleep(0.1)
    finally:
        site.close()
    assert results == ["api OK: 10.00 USD"]
