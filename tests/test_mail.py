"""E-mail through a real (in-process) ESMTP server: STARTTLS, AUTH, sendmail and asendemail."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer
from twisted.internet import reactor as global_reactor
from twisted.internet.protocol import Factory
from twisted.internet.ssl import PrivateCertificate
from twisted.internet.task import deferLater
from twisted.mail import imap4, smtp
from zope.interface import implementer

from mizud.wire.tls import generate_self_signed
from test_api_dispatch import Harness, make_harness

ADMIN = "127.0.0.1"
USER = "authkey=apikey123&authid=alice&authpwd=alicepw"


@implementer(smtp.IMessage)
class _Message:
    def __init__(self, box: list[bytes]) -> None:
        self.box, self.lines = box, []  # type: list[bytes]

    def lineReceived(self, line: bytes) -> None:
        self.lines.append(line)

    def eomReceived(self) -> defer.Deferred[None]:
        self.box.append(b"\n".join(self.lines))
        return defer.succeed(None)

    def connectionLost(self) -> None:
        pass


@implementer(smtp.IMessageDelivery)
class _Delivery:
    def __init__(self, box: list[bytes]) -> None:
        self.box = box

    def receivedHeader(self, helo: Any, origin: Any, recipients: Any) -> bytes:
        return b"Received: by the test server"

    def validateFrom(self, helo: Any, origin: Any) -> Any:
        return origin

    def validateTo(self, user: Any) -> Any:
        return lambda: _Message(self.box)


@implementer(IRealm)
class _Realm:
    def __init__(self, box: list[bytes], logins: list[bytes]) -> None:
        self.box, self.logins = box, logins

    def requestAvatar(self, avatar: bytes, mind: Any, *interfaces: Any) -> Any:
        self.logins.append(avatar)
        return smtp.IMessageDelivery, _Delivery(self.box), lambda: None


class Server:
    """An ESMTP server offering STARTTLS and AUTH PLAIN/LOGIN; what it received."""

    def __init__(self, folder: Path, tls: bool = True) -> None:
        self.box: list[bytes] = []
        self.logins: list[bytes] = []
        self.tls_used: list[bool] = []
        self.pem = str(folder / "smtp.pem")
        generate_self_signed(self.pem)
        context = PrivateCertificate.loadPEM(Path(self.pem).read_bytes()).options() if tls else None
        checker = InMemoryUsernamePasswordDatabaseDontUse(mailer=b"s3cret")
        portal = Portal(_Realm(self.box, self.logins), [checker])
        server = self

        class Protocol(smtp.ESMTP):
            def __init__(self) -> None:
                super().__init__({b"LOGIN": imap4.LOGINCredentials, b"PLAIN": imap4.PLAINCredentials}, context)
                self.portal = portal

            def connectionLost(self, reason: Any) -> None:
                server.tls_used.append(bool(self.startedTLS))
                super().connectionLost(reason)

        self.port = global_reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")

    @property
    def address(self) -> str:
        """host:port for smtpserver."""
        return f"127.0.0.1:{self.port.getHost().port}"

    async def wait(self, count: int = 1) -> None:
        """Until C{count} messages arrived (or 10 s)."""
        for _ in range(200):
            if len(self.box) >= count:
                return
            await deferLater(global_reactor, 0.05, lambda: None)


async def harness(tmp_path: Path, server: Server, *sets: str) -> Harness:
    """A harness whose API mails through the server, trusting its certificate."""
    h = await make_harness(tmp_path, f"smtpserver={server.address}", "smtpuser=mailer", "smtppassword=s3cret",
                           f"smtpcafile={server.pem}", "smtpfrom=noreply@voip.example", *sets)
    h.rebuild(reactor=global_reactor)
    return h


@pytest_twisted.ensureDeferred
async def test_sendmail_uses_starttls_and_auth(tmp_path: Path) -> None:
    """An admin's sendmail goes through STARTTLS and AUTH and arrives with the right headers."""
    server = Server(tmp_path)
    h = await harness(tmp_path, server)
    answer = await h.call("apientry=sendmail&from=billing@voip.example&to=a@example.com,b@example.com"
                          "&subject=Invoice%20ready&message=Hello%0Athere", ADMIN)
    assert answer.text == "OK: sent to 2 of 2 recipients"
    await server.wait()
    text = server.box[0].decode()
    assert "From: billing@voip.example" in text and "To: a@example.com, b@example.com" in text
    assert "Subject: Invoice ready" in text and "Hello\nthere" in text.replace("\r", "")
    for _ in range(100):
        if server.tls_used:
            break
        await deferLater(global_reactor, 0.05, lambda: None)
    assert server.logins == [b"mailer"] and server.tls_used == [True]
    await server.port.stopListening()
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_users_cannot_relay(tmp_path: Path) -> None:
    """Users send from smtpfrom only, to at most five addresses; injected headers are refused."""
    server = Server(tmp_path)
    h = await harness(tmp_path, server)
    assert (await h.call(f"apientry=sendmail&to=a@example.com&subject=hi&message=x&{USER}")).text == \
        "OK: sent to 1 of 1 recipients"
    await server.wait()
    assert "From: noreply@voip.example" in server.box[0].decode()
    refused = {
        f"apientry=sendmail&from=ceo@bank.example&to=a@example.com&message=x&{USER}":
            "ERROR: only admins may choose the sender (leave from empty)",
        f"apientry=sendmail&to={','.join(f'u{i}@example.com' for i in range(6))}&message=x&{USER}":
            "ERROR: at most 5 recipients",
        f"apientry=sendmail&to=a@example.com%0ABcc:%20x@evil.example&message=x&{USER}":
            "ERROR: to is not an e-mail address: a@example.com\nBcc: x@evil.example",
        f"apientry=sendmail&to=a@example.com&subject=hi%0D%0ABcc:%20x@evil.example&message=x&{USER}":
            "ERROR: subject must be one line of at most 500 printable characters",
    }
    for query, expected in refused.items():
        h.clock.advance(2)  # past the function's rate limit
        assert (await h.call(query)).text == expected, query
    assert len(server.box) == 1
    await server.port.stopListening()
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_asendemail_and_failures(tmp_path: Path) -> None:
    """asendemail answers at once and delivers; require refuses a server without STARTTLS; no server, no mail."""
    server = Server(tmp_path)
    h = await harness(tmp_path, server)
    assert (await h.call("apientry=asendemail&to=ops@example.com&subject=s&message=m", ADMIN)).text == \
        "OK: queued for 1 recipients"
    await server.wait()
    assert "To: ops@example.com" in server.box[0].decode()
    await server.port.stopListening()
    await h.db.close()

    (tmp_path / "plain").mkdir()
    clear = Server(tmp_path / "plain", tls=False)
    h = await harness(tmp_path / "plain", clear, "smtptls=require")
    answer = await h.call("apientry=sendmail&to=a@example.com&message=x", ADMIN)
    assert answer.text == "ERROR: SMTP server refused: 502 Server does not support secure communication via TLS / SSL"
    assert clear.box == []
    await clear.port.stopListening()
    await h.db.close()

    (tmp_path / "none").mkdir()
    h = await make_harness(tmp_path / "none")
    assert (await h.call("apientry=sendmail&to=a@example.com&message=x", ADMIN)).text == \
        "ERROR: no smtpserver is configured"
    await h.db.close()
