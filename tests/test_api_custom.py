"""tb_api custom functions (customsql) and custom actions."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import pytest_twisted
from twisted.internet import reactor as global_reactor
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater
from twisted.logger import globalLogPublisher
from twisted.protocols.basic import LineReceiver

from mizud.api.custom import CustomError, Values, bind
from test_api_dispatch import KEY, Harness, make_harness

AUTH = f"authkey={KEY}&authid=alice&authpwd=alicepw"


async def eventually(h: Harness, query: str, expected: list[tuple[object, ...]], seconds: float = 10) -> bool:
    """Poll a query until it returns C{expected} (work done after an answer takes a moment)."""
    for _ in range(int(seconds / 0.05)):
        if (await h.db.run_query("x", query)).rows == expected:
            return True
        await deferLater(global_reactor, 0.05, lambda: None)
    return False


async def define(h: Harness, fname: str, customsql: str = "", action: int = 0, body: str = "") -> None:
    """Insert a tb_api row and reload the rules."""
    await h.db.run_statement(
        "x",
        "INSERT INTO tb_api (fname, req_key, customsql, custom_action, custom_action_body) VALUES (?, 1, ?, ?, ?)",
        (fname, customsql, action, body),
    )
    await h.api.reload_access()


@pytest_twisted.ensureDeferred
async def test_select_with_userid(tmp_path: Path) -> None:
    """A custom SELECT returns the caller's rows, with column names."""
    h = await make_harness(tmp_path)
    await define(h, "myaccount", "SELECT username, email FROM tb_users WHERE id = [USERID]")
    answer = await h.call(f"apientry=myaccount&{AUTH}")
    assert answer.text == "OK: 1 rows"
    assert answer.records == [{"username": "alice", "email": ""}]
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_hostile_values_stay_values(tmp_path: Path) -> None:
    """An injection attempt in a parameter is bound as a value: no extra rows, no damage."""
    h = await make_harness(tmp_path)
    await define(h, "lookup", "SELECT id FROM tb_users WHERE username = [SPARAM1]")
    hostile = quote("x' OR '1'='1")
    assert (await h.call(f"apientry=lookup&{AUTH}&sparam1={hostile}")).records == []
    await define(h, "setmail", "*UPDATE tb_users SET email = {newemail} WHERE id = [USERID]")
    evil = "a'; DROP TABLE tb_users; --"
    assert (await h.call(f"apientry=setmail&{AUTH}&newemail={quote(evil)}")).text == "OK: 1 rows affected"
    row = (await h.db.run_query("x", "SELECT email FROM tb_users WHERE username = 'alice'")).rows
    assert row == [(evil,)]
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_async_statement_runs_after_answer(tmp_path: Path) -> None:
    """Without *, the statement runs after the answer."""
    h = await make_harness(tmp_path)
    await define(h, "touchname", "UPDATE tb_users SET name = [SPARAM1] WHERE id = [USERID]")
    assert (await h.call(f"apientry=touchname&{AUTH}&sparam1=Alice")).text == "OK: queued"
    h.clock.advance(0)
    query = "SELECT name FROM tb_users WHERE username = 'alice'"
    assert await eventually(h, query, [("Alice",)])
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_at_most_100_rows_and_user_fields(tmp_path: Path) -> None:
    """SELECT returns at most 100 rows; {field} falls back to the caller's tb_users fields."""
    h = await make_harness(tmp_path)
    for i in range(150):
        await h.db.run_statement("x", "INSERT INTO tb_pins (pin, credit, created) VALUES (?, 1, '2026')", (f"p{i}",))
    await define(h, "pins", "SELECT pin FROM tb_pins WHERE currency = {currency}")
    answer = await h.call(f"apientry=pins&{AUTH}")
    assert len(answer.records or []) == 100
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_custom_sql_replaces_predefined(tmp_path: Path) -> None:
    """customsql on a predefined function replaces its behaviour."""
    h = await make_harness(tmp_path)
    await define(h, "apitest", "SELECT 'custom' AS answer")
    assert (await h.call(f"apientry=apitest&{AUTH}")).records == [{"answer": "custom"}]
    await h.db.close()


@pytest.mark.parametrize(
    "sql, message",
    [
        ("SELECT id FROM tb_users WHERE name LIKE '%[USERNAME]%'", "inside quoted strings"),
        ("SELECT id FROM tb_users WHERE id = ?", "not ?"),
        ("UPDATE tb_users SET name = 'x'; DELETE FROM tb_users", "one statement"),
        ("SELECT {nosuch}", "unknown placeholder"),
    ],
)
def test_refused_custom_sql(sql: str, message: str) -> None:
    """Custom SQL mizud cannot bind safely is refused."""
    with pytest.raises(CustomError, match=message):
        bind(sql, Values(None, {}, {}))


def test_bind_keeps_literals() -> None:
    """Literals stay; keywords and names become ? with their values in order."""
    statement, params = bind("SELECT ';', [SPARAM2], {x} FROM t WHERE a = 'it''s';", Values(None, {"sparam2": "v", "x": "w"}, {}))
    assert statement == "SELECT ';', ?, ? FROM t WHERE a = 'it''s'"
    assert params == ["v", "w"]


@pytest_twisted.ensureDeferred
async def test_sql_actions_on_success_and_failure(tmp_path: Path) -> None:
    """Action 8 runs SQL after a success; 58 after a failure; neither otherwise."""
    h = await make_harness(tmp_path)
    await define(h, "apitest", "", 8, "UPDATE tb_users SET name = 'ok-action' WHERE id = [USERID]")
    await define(h, "version", "", 58, "UPDATE tb_users SET phone = 'failed' WHERE username = 'alice'")
    assert (await h.call(f"apientry=apitest&{AUTH}")).ok
    assert not (await h.call(f"apientry=version&{AUTH}")).ok
    query = "SELECT name, phone FROM tb_users WHERE username = 'alice'"
    assert await eventually(h, query, [("ok-action", "failed")])
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_command_actions_need_the_option(tmp_path: Path) -> None:
    """A command action is refused (and logged) unless customactioncommands is on; then it runs, no shell."""
    marker = tmp_path / "ran"
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        h = await make_harness(tmp_path)
        await define(h, "apitest", "", 7, f"/usr/bin/touch {marker}")
        assert (await h.call(f"apientry=apitest&{AUTH}")).ok
        await deferLater(global_reactor, 0.3, lambda: None)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert not marker.exists()
    texts = [e["log_format"].format(**e) for e in events if "custom action" in e.get("log_format", "")]
    assert any("set customactioncommands=true" in t for t in texts)
    await h.db.close()
    (tmp_path / "b").mkdir()
    h = await make_harness(tmp_path / "b", "customactioncommands=true")
    h.api.actions.reactor = global_reactor
    await define(h, "apitest", "", 7, f"/usr/bin/touch {marker} {tmp_path}/semi;rm")
    assert (await h.call(f"apientry=apitest&{AUTH}")).ok
    for _ in range(200):
        # touch makes its files one after the other: wait for the last one too.
        if marker.exists() and (tmp_path / "semi;rm").exists():
            break
        await deferLater(global_reactor, 0.05, lambda: None)
    assert marker.exists()
    assert (tmp_path / "semi;rm").exists()  # one argument: no shell split it
    await h.db.close()


class FakeSmtp(LineReceiver):
    """Just enough SMTP to receive one message."""

    delimiter = b"\r\n"

    def connectionMade(self) -> None:
        self.data: list[bytes] | None = None
        self.sendLine(b"220 fake ESMTP")

    def lineReceived(self, line: bytes) -> None:
        if self.data is not None:
            if line == b".":
                self.factory.messages.append(b"\r\n".join(self.data))  # type: ignore[attr-defined]
                self.data = None
                self.sendLine(b"250 queued")
            else:
                self.data.append(line)
            return
        verb = line.split(b" ", 1)[0].upper()
        if verb == b"DATA":
            self.data = []
            self.sendLine(b"354 go ahead")
        elif verb == b"QUIT":
            self.sendLine(b"221 bye")
            self.transport.loseConnection()
        else:
            self.sendLine(b"250 ok")


@pytest_twisted.ensureDeferred
async def test_email_action(tmp_path: Path) -> None:
    """Action 1 sends an e-mail through smtpserver with placeholders filled in."""
    factory = Factory.forProtocol(FakeSmtp)
    factory.messages = []  # type: ignore[attr-defined]
    port = global_reactor.listenTCP(0, factory, interface="127.0.0.1")
    h = await make_harness(tmp_path, f"smtpserver=127.0.0.1:{port.getHost().port}", "adminemail=ops@example.com")
    h.api.actions.reactor = global_reactor
    await define(h, "apitest", "", 1, "***SUBJECT: login by [USERNAME]\nUser [USERNAME] ({email}) called the API.")
    assert (await h.call(f"apientry=apitest&{AUTH}")).ok
    for _ in range(200):
        if factory.messages:  # type: ignore[attr-defined]
            break
        await deferLater(global_reactor, 0.05, lambda: None)
    message = factory.messages[0].decode()  # type: ignore[attr-defined]
    assert "Subject: login by alice" in message
    assert "To: ops@example.com" in message
    assert "User alice () called the API." in message
    await port.stopListening()
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_request_values_cannot_add_mail_directives(tmp_path: Path) -> None:
    """A value substituted into an e-mail action (authid=nobody%0A***TO:...) neither redirects the mail
    nor adds a subject or a header: directives come from the tb_api body only."""
    factory = Factory.forProtocol(FakeSmtp)
    factory.messages = []  # type: ignore[attr-defined]
    port = global_reactor.listenTCP(0, factory, interface="127.0.0.1")
    h = await make_harness(tmp_path, f"smtpserver=127.0.0.1:{port.getHost().port}", "adminemail=ops@example.com")
    h.api.actions.reactor = global_reactor
    await define(h, "balance", "", 51, "***SUBJECT: failed login {sparam1}\nFailed login by {authid}.")
    hostile = quote("nobody\n***TO: attacker@evil.example\n***SUBJECT: owned")
    subject = quote("x\r\nBcc: attacker@evil.example")
    assert not (await h.call(f"apientry=balance&authkey={KEY}&authid={hostile}&authpwd=x&sparam1={subject}")).ok
    for _ in range(200):
        if factory.messages:  # type: ignore[attr-defined]
            break
        await deferLater(global_reactor, 0.05, lambda: None)
    message = factory.messages[0].decode()  # type: ignore[attr-defined]
    head, _, body = message.partition("\r\n\r\n")
    headers = head.split("\r\n")
    assert "To: ops@example.com" in headers and "owned" not in head
    assert not any(line.lower().startswith(("bcc:", "to: attacker")) for line in headers)
    assert "Subject: failed login x  Bcc: attacker@evil.example" in headers
    assert "Failed login by nobody ***TO: attacker@evil.example ***SUBJECT: owned." in body
    await port.stopListening()
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_callers_own_fields_win_over_request_parameters(tmp_path: Path) -> None:
    """SELECT ... WHERE id = {id} with &id=<another user> still reads the caller's own row."""
    h = await make_harness(tmp_path)
    await define(h, "myrow", "SELECT username, credit FROM tb_users WHERE id = {id}")
    root = await h.store.find_user("root")
    assert root is not None
    answered = await h.call(f"apientry=myrow&{AUTH}&id={root.id}&username=root")
    assert [r["username"] for r in answered.records or []] == ["alice"]
    # Parameters that are no column of tb_users still fill their placeholders.
    await define(h, "echo", "SELECT {colour} AS colour")
    assert (await h.call(f"apientry=echo&{AUTH}&colour=blue")).records == [{"colour": "blue"}]
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_command_action_value_is_one_argument(tmp_path: Path) -> None:
    """A substituted value with spaces (or quotes) stays one argument of the command: it adds none."""
    h = await make_harness(tmp_path, "customactioncommands=true")
    h.api.actions.reactor = global_reactor
    out = tmp_path / "args"
    script = tmp_path / "record.sh"
    script.write_text(f'#!/bin/sh\nfor a in "$@"; do printf "[%s]\\n" "$a"; done > {out}\n')
    script.chmod(0o755)
    await define(h, "apitest", "", 7, f"{script} fixed {{sparam1}} 'quoted [USERNAME]'")
    value = quote("a b' \"c\" --evil ; rm -rf /")
    assert (await h.call(f"apientry=apitest&{AUTH}&sparam1={value}")).ok
    for _ in range(200):
        if out.exists() and out.read_text():
            break
        await deferLater(global_reactor, 0.05, lambda: None)
    assert out.read_text().splitlines() == ["[fixed]", "[a b' \"c\" --evil ; rm -rf /]", "[quoted alice]"]
    await h.db.close()
