"""Outgoing e-mail through the configured smarthost (twisted.mail's ESMTP client).

`smtptls` says how the connection is protected: "auto" upgrades with
STARTTLS whenever the server offers it (checking its certificate against
the system's trust store, or `smtpcafile`), "require" refuses to send
without it, "off" never tries. With `smtpuser` set the client must
authenticate (and never sends the password in clear: Twisted's client
only authenticates over TLS unless told otherwise).
"""

from __future__ import annotations

import re
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from io import BytesIO
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

log = Logger()

ADDRESS = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9.-]{0,253}[A-Za-z0-9])?\Z")
#: The largest message body accepted.
MAX_BODY = 64 * 1024
#: Seconds before a silent SMTP server counts as a failure.
TIMEOUT = 30


def _first_line(problem: Exception) -> str:
    # Twisted appends the whole SMTP dialogue to its errors; the answer needs the first line.
    lines = str(problem).splitlines()
    return lines[0][:200] if lines else ""


class MailError(Exception):
    """The e-mail cannot be sent; the message says why (fit for the API's answer)."""


def check_address(address: str, what: str) -> str:
    """An e-mail address, checked (no header injection, no display names)."""
    address = address.strip()
    if not ADDRESS.match(address):
        raise MailError(f"{what} is not an e-mail address: {address[:80]}")
    return address


def _smarthost(text: str) -> tuple[str, int]:
    """host and port of smtpserver (host, host:port, [v6], [v6]:port)."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":")
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, ""
    if port_text and not (port_text.isascii() and port_text.isdigit() and 0 < int(port_text) < 65536):
        raise MailError(f"smtpserver has a bad port: {text[:60]}")
    return host, int(port_text or 25)


class Mailer:
    """Sends e-mail with the live options of a L{mizud.config.Settings}."""

    def __init__(self, settings: Any, reactor: Any) -> None:
        self.settings = settings
        self.reactor = reactor

    @staticmethod
    def check_content(subject: str, body: str) -> None:
        """Raise L{MailError} unless the subject is one short line and the body within MAX_BODY."""
        if len(body) > MAX_BODY:
            raise MailError(f"message longer than {MAX_BODY} characters")
        if not subject.isprintable() or len(subject) > 500:
            raise MailError("subject must be one line of at most 500 printable characters")

    def compose(self, sender: str, recipients: list[str], subject: str, body: str, reply_to: str = "") -> bytes:
        """The message as bytes (headers encoded by the standard library: no injection)."""
        self.check_content(subject, body)
        message = EmailMessage()
        message["From"] = sender
        message["To"] = ", ".join(recipients)
        message["Subject"] = subject
        if reply_to:
            message["Reply-To"] = check_address(reply_to, "reply-to")
        message["Date"] = formatdate(self.reactor.seconds(), usegmt=True)
        message["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or None)
        message.set_content(body if body.endswith("\n") else body + "\n")
        return message.as_bytes()

    async def send(self, recipients: list[str], subject: str, body: str, sender: str = "", reply_to: str = "") -> int:
        """Send one message; returns how many recipients the server accepted. Raises L{MailError}."""
        from twisted.mail.smtp import ESMTPSenderFactory, SMTPClientError

        config = self.settings.current
        if not config.smtpserver:
            raise MailError("no smtpserver is configured")
        if not recipients:
            raise MailError("no recipient")
        sender = check_address(sender or config.smtpfrom, "from")
        recipients = [check_address(r, "to") for r in recipients]
        data = self.compose(sender, recipients, subject, body, reply_to)
        host, port = _smarthost(config.smtpserver)
        mode = config.smtptls
        try:
            context = None if mode == "off" else self._tls_options(host, config.smtpcafile)
        except (OSError, ValueError) as problem:
            raise MailError(f"smtpcafile cannot be used: {problem}") from None
        done: defer.Deferred[Any] = defer.Deferred()
        user = config.smtpuser.encode() if config.smtpuser else None
        password = config.smtppassword.encode() if config.smtpuser else None
        factory = ESMTPSenderFactory(
            user, password, sender, recipients, BytesIO(data), done, retries=0, timeout=TIMEOUT,
            contextFactory=context, heloFallback=True, requireAuthentication=bool(user),
            requireTransportSecurity=mode == "require", hostname=host if context is not None else None,
        )
        factory.noisy = False
        self.reactor.connectTCP(host, port, factory, timeout=TIMEOUT)
        try:
            accepted, _ = await done
        except SMTPClientError as problem:
            raise MailError(f"SMTP server refused: {_first_line(problem)}") from None
        except Exception as problem:
            raise MailError(f"SMTP failed: {_first_line(problem) or type(problem).__name__}") from None
        return int(accepted)

    @staticmethod
    def _tls_options(host: str, cafile: str) -> Any:
        from twisted.internet.ssl import Certificate, optionsForClientTLS

        if cafile:
            with open(cafile, "rb") as handle:
                return optionsForClientTLS(host, trustRoot=Certificate.loadPEM(handle.read()))
        return optionsForClientTLS(host)
