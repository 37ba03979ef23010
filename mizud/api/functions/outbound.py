"""E-mail, SMS and the JSONP forwarder: sendmail and asendemail; sms, sendsms(unicode)(sync),
asendsms(sync) and smsreceive; jppget.

E-mail goes through the configured smarthost: sendmail waits for the
result, asendemail queues.  SMS are sent by L{mizud.sip.sms}: the *sync
variants and sms wait for the gateway's answer, the others answer once the
cost is held and the message queued.

Users (not admins) cannot choose the sender: their mail goes out from
`smtpfrom` with their own address, when they have one, as Reply-To; they
may write to at most MAX_USER_RECIPIENTS addresses per request and one
request per second per source address, so the operator's smarthost is no
open relay.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from twisted.internet import defer
from twisted.logger import Logger

from ...mail import MailError, Mailer, check_address
from .. import forwarder
from ...sip.sms import SmsError
from ...store.money import format_money
from ..answer import ApiAnswer, error, ok
from ..invocation import Invocation
from ..registry import Functions, REQ_ADMINS, Category

if TYPE_CHECKING:  # pragma: no cover
    from ...config import Settings
    from ...store.billing import BillingStore
    from ...store.database import Database
    from ..request import ApiRequest

log = Logger()

MAX_USER_RECIPIENTS = 5
MAX_ADMIN_RECIPIENTS = 50
PARAMS = ("from", "to", "subject", "message")


def _recipients(invocation: Invocation) -> list[str]:
    # The request decoder files the spec's "from" and "to" under anum and bnum.
    given = invocation.arg("bnum") or invocation.require("to")
    names = [part.strip() for part in given.replace(";", ",").split(",") if part.strip()]
    most = MAX_ADMIN_RECIPIENTS if invocation.caller.level <= REQ_ADMINS else MAX_USER_RECIPIENTS
    if len(names) > most:
        raise MailError(f"at most {most} recipients")
    return [check_address(name, "to") for name in names]


def _sender(invocation: Invocation) -> str:
    given = (invocation.arg("anum") or invocation.arg("from")).strip()
    if invocation.caller.level <= REQ_ADMINS:
        return check_address(given, "from") if given else ""
    if given:
        raise MailError("only admins may choose the sender (leave from empty)")
    return ""


def _body(invocation: Invocation) -> str:
    # The request decoder files the spec's "message" under txt.
    return invocation.arg("txt") or invocation.arg("message")


def _own_ports(config: Any) -> set[int]:
    """The TCP ports this daemon listens on (the forwarder never fetches from them here)."""
    ports = {config.mainaport if config.usemainaport else 0, config.sslportmain, config.sslportweb,
             config.httpserver, config.adminport, config.sipport, config.localtsport}
    return ports - {0}


#: This module's API functions (registered by build_registry).
fn = Functions()


#: The commands an SMS from a user's proven number may carry (spec, "Transport protocols": SMS), and how
#: their words fill the function's parameters.  "sender" stands for the number the SMS came from.
SMS_COMMANDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "balance": ("balance", ()),
    "rating": ("rating", ("bnum",)),
    "charge": ("charge", ("pin",)),
    "recharge": ("charge", ("pin",)),
    # Not cli: a forged sender could prove a number of its own for the owner and call on their credit.
    "cb": ("callback", ("num",)),
    "callback": ("callback", ("num",)),
    "p2p": ("p2p", ("anum", "bnum")),
}


#: The longest SMS answer to a command (one GSM part).
GSM_REPLY = 160
SMS_PARAMS = ("anum", "bnum", "txt")
#: name -> (waits for the result, unicode, category)
SMS_FUNCTIONS = {
    "sms": (True, False, Category.USER),
    "sendsms": (False, False, Category.USER),
    "sendsmssync": (True, False, Category.USER),
    "sendsmsunicode": (False, True, Category.USER),
    "sendsmsunicodesync": (True, True, Category.USER),
    "asendsms": (False, False, Category.ADMIN),
    "asendsmssync": (True, False, Category.ADMIN),
}


def _sms_handler(wait: bool, unicode: bool) -> Any:
    """The handler of one SMS function: C{wait} for the gateway's answer or not, C{unicode} text or GSM."""

    async def send_sms(self: OutboundFunctions, invocation: Invocation) -> ApiAnswer:
        """Send an SMS for the caller (see L{SMS_FUNCTIONS})."""
        sip = self.sip
        if sip is None:
            return error("SIP is not running on this node", 412)
        try:
            outcome = await sip.sms.send(invocation.user(), invocation.arg("anum").strip(),
                                         invocation.require("bnum").strip(),
                                         invocation.require("txt"), unicode=unicode, wait=wait,
                                         admin=invocation.caller.level <= REQ_ADMINS)
        except SmsError as problem:
            return error(str(problem), 412)
        if outcome.status == "failed":
            return error(f"SMS {outcome.smsid} not delivered: {outcome.reason}", 412)
        if outcome.status == "queued":
            return ok(f"SMS {outcome.smsid} queued (held {format_money(outcome.cost)})")
        if outcome.route == "user":
            return ok(f"SMS {outcome.smsid} {'sent to' if outcome.status == 'sent' else 'stored for'} the user")
        return ok(f"SMS {outcome.smsid} delivered through {outcome.route} (cost {format_money(outcome.cost)})")

    return send_sms


@dataclass(frozen=True, kw_only=True, eq=False)
class OutboundFunctions:
    """What leaves the daemon: the JSONP forwarder, e-mail and SMS (and SMS received from gateways)."""

    db: Database
    dispatch: Callable[[ApiRequest], Awaitable[ApiAnswer]]
    reactor: Any
    settings: Settings
    sip: Any
    store: BillingStore

    async def _own_address(self, invocation: Invocation) -> str:
        """The calling user's own e-mail address, when it is a valid one (for Reply-To)."""
        user = invocation.caller.user
        if user is None:
            return ""
        email = await self.store.email_of(user.id)
        try:
            return check_address(email, "email") if email else ""
        except MailError:
            return ""

    @fn("jppget", Category.USER, params=("url", "callback"))
    async def jppget(self, invocation: Invocation) -> ApiAnswer:
        """JSONP forwarder (enablejsonp=2): a listed host's JSON wrapped as CALLBACK(json); for authenticated users
        only"""
        config = self.settings.current
        if config.enablejsonp != 2:
            return error("the JSONP forwarder is off (enablejsonp=2 turns it on)", 403)
        invocation.user()  # an authenticated user, never an address alone
        allowed = tuple(h.strip().lower() for h in config.jsonpforwardhosts.split(",") if h.strip())
        try:
            body = await forwarder.forward(invocation.require("url"), invocation.arg("callback", "callback"), allowed,
                                           _own_ports(config), self.reactor)
        except forwarder.ForwardRefused as problem:
            return error(str(problem), 403)
        answered = ok(f"forwarded {len(body)} bytes")
        return ApiAnswer(True, answered.message, raw=(body, "application/javascript; charset=utf-8"))

    @fn("sendmail", Category.USER, params=PARAMS, rate=1.0)
    async def sendmail(self, invocation: Invocation) -> ApiAnswer:
        """send an e-mail (from: admins only; empty uses smtpfrom) and wait for the SMTP server's answer"""
        try:
            recipients = _recipients(invocation)
            sender = _sender(invocation)
            reply_to = "" if invocation.caller.level <= REQ_ADMINS else await self._own_address(invocation)
            accepted = await Mailer(self.settings, self.reactor).send(
                recipients, invocation.arg("subject"), _body(invocation), sender, reply_to=reply_to)
        except MailError as problem:
            return error(str(problem), 412)
        return ok(f"sent to {accepted} of {len(recipients)} recipients")

    @fn("asendemail", Category.ADMIN, params=PARAMS)
    async def asendemail(self, invocation: Invocation) -> ApiAnswer:
        """queue an e-mail (from can be empty); failures are logged"""
        mailer = Mailer(self.settings, self.reactor)
        try:
            recipients = _recipients(invocation)
            sender = _sender(invocation)
            if not self.settings.current.smtpserver:
                raise MailError("no smtpserver is configured")
            mailer.check_content(invocation.arg("subject"), _body(invocation))
        except MailError as problem:
            return error(str(problem), 412)

        async def deliver() -> None:
            """Send the mail after the answer; a failure is logged."""
            try:
                await mailer.send(recipients, invocation.arg("subject"), _body(invocation), sender)
            except MailError as problem:
                log.warn("asendemail to {to} failed: {problem}", to=",".join(recipients), problem=problem)

        defer.ensureDeferred(deliver())
        return ok(f"queued for {len(recipients)} recipients")

    async def _sms_command(self, invocation: Invocation, sender: str, text: str) -> ApiAnswer | None:
        """Run an SMS command (the spec's SMS transport) for the user who proved the sender's number, answering by SMS;
        None when the SMS is no command or comes from no proven number."""
        from ...billing.rating import normalise
        from ...store.numbers import NumberClaims
        from ..credentials import LEVEL_BY_TYPE, Caller
        from ..registry import REQ_ALL
        from ..request import ApiRequest, Origin

        words = text.split()
        if not self.settings.current.smscommands or not words or words[0].lower() not in SMS_COMMANDS \
                or len(words) > 4:
            return None
        number = normalise(sender)
        if number is None:
            return None
        owner = await NumberClaims(self.db, self.store.now, "cli").owner(number)
        user = await self.store.get_user(owner) if owner is not None else None
        if user is None or not user.enabled or user.temporarydisabled or self.sip is None:
            return None
        function, names = SMS_COMMANDS[words[0].lower()]
        params = dict(zip(names, words[1:]))
        if function == "callback":
            params.setdefault("num", number)
        elif function == "p2p" and len(words) == 2:
            params = {"anum": number, "bnum": words[1]}
        inner = ApiRequest(function, params, invocation.request.source, transport="sms")
        # The sender proved this number (a code sent to it): the SMS speaks for that user, never above a user.
        inner.origin = Origin(caller=Caller(user, max(LEVEL_BY_TYPE.get(user.type, REQ_ALL), REQ_ALL), False,
                                            "sms from a proven number", proven=True))
        answered = await self.dispatch(inner)
        reply = answered.text[:GSM_REPLY]
        try:
            await self.sip.sms.send(user, "", number, reply, wait=False)
        except SmsError as problem:
            log.warn("SMS command {command} for {user}: the answer could not be sent: {problem}",
                     command=function, user=user.username, problem=problem)
            return ok(f"command {function} run for {user.username}; its answer was not sent ({problem}): {reply}")
        return ok(f"command {function} run for {user.username}, answered by SMS: {reply}")

    for _name, (_wait, _unicode, _category) in SMS_FUNCTIONS.items():
        fn(_name, _category, "send an SMS" + (" (Unicode)" if _unicode else "")
           + (" and wait for the gateway's answer" if _wait else " (queued; answers once the cost is held)"),
           SMS_PARAMS)(_sms_handler(_wait, _unicode))

    del _name, _wait, _unicode, _category

    @fn("smsreceive", Category.ADMIN, params=SMS_PARAMS)
    async def smsreceive(self, invocation: Invocation) -> ApiAnswer:
        """inbound SMS from a gateway: anum (from) to bnum (a username or DID), txt"""
        sip = self.sip
        if sip is None:
            return error("SIP is not running on this node", 412)
        target, text = invocation.require("bnum").strip(), invocation.require("txt")
        sender = invocation.arg("anum").strip() or "unknown"
        if len(text) > 4000 or len(sender) > 64 or not sender.isprintable():
            return error("txt must be at most 4000 characters and anum a printable number", 412)
        store = self.store
        recipient = await store.find_user(target) or await store.find_user_by_number(target)
        if recipient is None:
            command = await self._sms_command(invocation, sender, text)
            if command is not None:
                return command
            return error(f"no user for {target[:40]}", 404)
        await store.sms.received(recipient.id, sender, target, text)
        sent, _ = await sip.messenger.send(sender, [recipient], text)
        return ok(f"delivered to {recipient.username}" if sent else f"stored for {recipient.username} until online")
