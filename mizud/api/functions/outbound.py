"""E-mail through the configured smarthost: sendmail (waits for the result) and asendemail (queues).

Users (not admins) cannot choose the sender: their mail goes out from
`smtpfrom` with their own address, when they have one, as Reply-To; they
may write to at most MAX_USER_RECIPIENTS addresses per request and one
request per second per source address, so the operator's smarthost is no
open relay.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.logger import Logger

from ...mail import MailError, Mailer, check_address
from ..answer import ApiAnswer, error, ok
from ..dispatcher import Call
from ..registry import REQ_ADMINS, Category, Registry

log = Logger()

MAX_USER_RECIPIENTS = 5
MAX_ADMIN_RECIPIENTS = 50
PARAMS = ("from", "to", "subject", "message")


def _recipients(call: Call) -> list[str]:
    # The request decoder files the spec's "from" and "to" under anum and bnum.
    given = call.arg("bnum") or call.require("to")
    names = [part.strip() for part in given.replace(";", ",").split(",") if part.strip()]
    most = MAX_ADMIN_RECIPIENTS if call.caller.level <= REQ_ADMINS else MAX_USER_RECIPIENTS
    if len(names) > most:
        raise MailError(f"at most {most} recipients")
    return [check_address(name, "to") for name in names]


def _sender(call: Call) -> str:
    given = (call.arg("anum") or call.arg("from")).strip()
    if call.caller.level <= REQ_ADMINS:
        return check_address(given, "from") if given else ""
    if given:
        raise MailError("only admins may choose the sender (leave from empty)")
    return ""


def _body(call: Call) -> str:
    # The request decoder files the spec's "message" under txt.
    return call.arg("txt") or call.arg("message")


def register(registry: Registry) -> None:
    """Register this module's handlers."""
    fn = registry.function

    @fn("sendmail", Category.USER, "send an e-mail (from: admins only; empty uses smtpfrom) and wait for the "
        "SMTP server's answer", PARAMS, rate=1.0)
    async def sendmail(call: Call) -> ApiAnswer:
        try:
            recipients = _recipients(call)
            sender = _sender(call)
            accepted = await Mailer(call.api.settings, call.api.reactor).send(
                recipients, call.arg("subject"), _body(call), sender)
        except MailError as problem:
            return error(str(problem), 412)
        return ok(f"sent to {accepted} of {len(recipients)} recipients")

    @fn("asendemail", Category.ADMIN, "queue an e-mail (from can be empty); failures are logged", PARAMS)
    async def asendemail(call: Call) -> ApiAnswer:
        mailer = Mailer(call.api.settings, call.api.reactor)
        try:
            recipients = _recipients(call)
            sender = _sender(call)
            if not call.api.settings.current.smtpserver:
                raise MailError("no smtpserver is configured")
            mailer.compose(sender or "x@x", recipients, call.arg("subject"), _body(call))  # checks sizes
        except MailError as problem:
            return error(str(problem), 412)

        async def deliver() -> None:
            try:
                await mailer.send(recipients, call.arg("subject"), _body(call), sender)
            except MailError as problem:
                log.warn("asendemail to {to} failed: {problem}", to=",".join(recipients), problem=problem)

        defer.ensureDeferred(deliver())
        return ok(f"queued for {len(recipients)} recipients")
