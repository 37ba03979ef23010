"""Custom functions (tb_api.customsql) and custom actions (tb_api.custom_action).

Custom SQL placeholders -- C{[USERID]}, C{[USERNAME]}, C{[SPARAM1]} ..
C{[SPARAM99]} and C{{name}} (a field of the caller's tb_users row, else a
request parameter: the caller's own fields always win, so C{&id=3} cannot
stand in for the caller's C{{id}}) -- become bound parameters, never text
pasted into the SQL.  So a hostile value stays a value.  Placeholders
inside quoted literals are refused (write C{'%' || [USERNAME]} instead),
and so is more than one statement.

A statement prefixed with C{*} runs before the answer, which reports its
result or failure; without it the statement runs after the answer (errors
are logged).  SELECT (or WITH) statements always run before the answer and
return at most L{MAX_ROWS} rows.

Actions run after the answer: on success codes 1..8, on failure 51..58.
E-mail (1/51) goes through C{smtpserver}: its C{***TO} and C{***SUBJECT}
directive lines are read from the body as written in tb_api, before any
value is substituted, and substituted values never break a line, so a
request value can neither add a directive nor redirect the mail.  SQL
(8/58) is bound like custom SQL.  SMS (2/52) has no gateway yet and is
refused.  Restart (4/54), reboot (6/56) and command lines (7/57) run only
with C{customactioncommands} enabled (off by default): a command line is
split into arguments as written, like a shell would, and a substituted
value is always exactly one argument (or part of one), never a shell.
"""

from __future__ import annotations

import re
import shlex
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.logger import Logger

from ..store.custom import custom_query, custom_statement
from ..text import one_line
from .answer import ApiAnswer, error, ok
from .registry import Access

if TYPE_CHECKING:  # pragma: no cover
    from ..config import Settings
    from ..store.database import Database

log = Logger()

MAX_ROWS = 100

_TOKENS = re.compile(
    r"'(?:[^']|'')*'"  # a quoted literal
    r"|\[(USERID|USERNAME|SPARAM[1-9][0-9]?)\]"  # [KEYWORD]
    r"|\{([A-Za-z_][A-Za-z0-9_]{0,63})\}"  # {name}
    r"|(\?)|(;)",
    re.IGNORECASE,
)
_IN_LITERAL = re.compile(r"\[(USERID|USERNAME|SPARAM\d+)\]|\{[A-Za-z_]\w*\}", re.IGNORECASE)


class CustomError(Exception):
    """A custom function or action is written in a way mizud refuses to run."""


class Values:
    """Resolves placeholder names for one call: keywords, parameters, user fields."""

    def __init__(self, user: Any, params: dict[str, str], user_fields: dict[str, Any] | None) -> None:
        self.user = user
        self.params = params
        self.user_fields = user_fields or {}

    def get(self, keyword: str | None, name: str | None) -> Any:
        """The value of C{[KEYWORD]} or C{{name}}."""
        if keyword:
            word = keyword.upper()
            if word == "USERID":
                return self.user.id if self.user else None
            if word == "USERNAME":
                return self.user.username if self.user else ""
            return self.params.get(word.lower(), "")
        assert name is not None
        key = name.lower()
        if key in self.user_fields:
            if key in self.params and str(self.params[key]) != str(self.user_fields[key]):
                log.info("custom function: {{{name}}} is the caller's own field; the request's {name}= is ignored "
                         "(name the parameter otherwise, or use [SPARAMn])", name=key)
            return self.user_fields[key]
        if key in self.params:
            return self.params[key]
        raise CustomError(f"unknown placeholder {{{name}}}")


def needs_user_fields(text: str) -> bool:
    """Whether the text has C{{name}} placeholders (the caller's fields, which win over parameters)."""
    return any(m.group(2) for m in _TOKENS.finditer(text))


def bind(sql: str, values: Values) -> tuple[str, list[Any]]:
    """Replace placeholders with bound parameters; returns (statement, parameters)."""
    bound: list[Any] = []

    def replace(match: re.Match[str]) -> str:
        literal, keyword, name, question, semicolon = (match.group(0), *match.groups())
        if question:
            raise CustomError("write [SPARAMn] or {name} placeholders, not ?")
        if semicolon:
            raise CustomError("one statement only")
        if keyword or name:
            bound.append(values.get(keyword, name))
            return "?"
        if _IN_LITERAL.search(literal):
            raise CustomError("placeholders inside quoted strings are not supported; use || to join")
        return literal

    statement = _TOKENS.sub(replace, sql.strip().rstrip(";").strip())
    return statement, bound


def substitute(text: str, values: Values) -> str:
    """Textual substitution of placeholders (for e-mail bodies and command arguments, never for SQL).

    A substituted value never breaks the line it lands in: its line breaks become spaces.
    """

    def replace(match: re.Match[str]) -> str:
        keyword, name = match.group(1), match.group(2)
        if not (keyword or name):
            return match.group(0)
        try:
            value = values.get(keyword, name)
        except CustomError:
            return match.group(0)
        return "" if value is None else one_line(str(value))

    return _TOKENS.sub(replace, text)


def mail_from_template(template: str, values: Values) -> tuple[str, str, str]:
    """(recipient, subject, body) of an e-mail action: directives as written in the template, then values.

    C{***TO} and C{***SUBJECT} lines are found in the template itself; only
    then are placeholders replaced, so no value can create a directive.
    Empty recipient or subject means "the default".
    """
    recipient, subject, lines = "", "", []
    for line in template.splitlines():
        if line.startswith("***TO"):
            recipient = substitute(line[5:], values).lstrip(": ").strip()
        elif line.startswith("***SUBJECT"):
            subject = substitute(line[10:], values).lstrip(": ").strip()
        else:
            lines.append(substitute(line, values))
    return recipient, subject, "\n".join(lines)


def command_from_template(template: str, values: Values) -> list[str]:
    """The argument list of a command action: split as written, then each argument substituted alone."""
    return [substitute(word, values) for word in shlex.split(template)]


def is_query(sql: str) -> bool:
    """Whether the statement returns rows (SELECT or WITH)."""
    first = sql.lstrip("*( \t\r\n").split(None, 1)
    return bool(first) and first[0].lower() in ("select", "with")


async def run_custom_sql(db: Database, rule: Access, values: Values, reactor: Any) -> ApiAnswer:
    """Run a function's customsql and answer with its rows or its outcome."""
    text = rule.customsql.strip()
    synchronous = text.startswith("*")
    if synchronous:
        text = text[1:]
    try:
        statement, params = bind(text, values)
    except CustomError as problem:
        return error(f"custom function refused: {problem}", 412)
    if is_query(statement):
        try:
            records = await custom_query(db, statement, params, MAX_ROWS)
        except Exception as problem:
            return error(f"custom query failed: {_first_line(problem)}", 412)
        return ok(f"{len(records)} rows", records)
    if synchronous:
        try:
            changed = await custom_statement(db, statement, params)
        except Exception as problem:
            return error(f"custom statement failed: {_first_line(problem)}", 412)
        return ok(f"{changed} rows affected")

    async def later() -> None:
        try:
            await custom_statement(db, statement, params)
        except Exception as problem:
            log.error("custom statement failed after answering: {problem}", problem=_first_line(problem))

    reactor.callLater(0, lambda: defer.ensureDeferred(later()))
    return ok("queued")


def _first_line(problem: BaseException) -> str:
    return (str(problem).strip().splitlines() or [type(problem).__name__])[0]


SUCCESS_ACTIONS = {1: "email", 2: "sms", 4: "restart", 6: "reboot", 7: "command", 8: "sql"}
FAILURE_ACTIONS = {code + 50: name for code, name in SUCCESS_ACTIONS.items()}


class Actions:
    """Runs tb_api custom actions after an answer (see the module doc)."""

    def __init__(self, settings: Settings, db: Database, reactor: Any) -> None:
        self.settings = settings
        self.db = db
        self.reactor = reactor

    def action_for(self, rule: Access, answered: ApiAnswer) -> str | None:
        """The action this answer triggers, if any."""
        table = SUCCESS_ACTIONS if answered.ok else FAILURE_ACTIONS
        return table.get(rule.custom_action)

    async def run(self, rule: Access, answered: ApiAnswer, values: Values) -> None:
        """Run the triggered action; failures and refusals are logged."""
        action = self.action_for(rule, answered)
        if action is None:
            return
        config = self.settings.current
        try:
            if action == "email":
                await self.email(*mail_from_template(rule.custom_action_body, values))
            elif action == "sql":
                statement, params = bind(rule.custom_action_body, values)
                await custom_statement(self.db, statement, params, "custom_action")
            elif action == "sms":
                raise CustomError("SMS actions need an SMS gateway, which mizud does not have yet")
            elif not config.customactioncommands:
                raise CustomError(f"{action} actions are disabled; set customactioncommands=true to allow them")
            elif action == "command":
                self.command(command_from_template(rule.custom_action_body, values))
            elif action == "reboot":
                self.command(["/sbin/reboot"])
            elif action == "restart":
                log.warn("custom action: stopping so that the service manager restarts mizud")
                self.reactor.callLater(0, self.reactor.stop)
        except Exception as problem:
            log.error("custom action {action} refused or failed: {problem}", action=action, problem=_first_line(problem))

    def command(self, argv: list[str]) -> None:
        """Run a program with arguments, no shell; its exit is logged."""
        if not argv:
            raise CustomError("empty command line")
        from twisted.internet.protocol import ProcessProtocol

        class Logged(ProcessProtocol):
            def processEnded(self, reason: Any) -> None:
                log.info("custom action command {argv} ended: {reason}", argv=argv, reason=reason.getErrorMessage())

        self.reactor.spawnProcess(Logged(), argv[0], argv, env=None)

    async def email(self, recipient: str, subject: str, body: str) -> None:
        """Send an e-mail through smtpserver (empty recipient: adminemail; empty subject: a default)."""
        from ..mail import Mailer, MailError

        config = self.settings.current
        recipient = recipient or config.adminemail
        if not recipient:
            raise CustomError("no recipient: set adminemail or a ***TO line")
        try:
            await Mailer(self.settings, self.reactor).send([recipient], subject or "mizud API action", body)
        except MailError as problem:
            raise CustomError(str(problem)) from None
