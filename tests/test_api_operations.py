"""Running the daemon through the API (issue 16, item 15): maintenance runs, the daily report, backups and
restores, resets, restart, reloadapikeys, checkpins and normalizechk."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest_twisted
from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet import reactor as global_reactor
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock

from mizud.app import ServiceOperations
from mizud.wire.listen import ListenService, UdpListenService
from mizud.api.sipbridge import backend_for
from mizud.sip.core import SipCore
from mizud.sip.transport import SipDatagramProtocol
from test_api_admin import register_contact
from test_api_dispatch import KEY, make_harness
from test_mail import Server, harness as mail_harness

ADMIN = "127.0.0.1"


@pytest_twisted.ensureDeferred
async def test_each_maintenance_run_has_its_own_work(tmp_path: Path, database_option: str) -> None:
    """hourly expires, daily adds the statistics, weekly VACUUM, monthly the retention of old messages and
    SMS records (pending SMS, CDRs and the ledger stay)."""
    h = await make_harness(tmp_path, "retainmessages=30d", "retainsms=60d", database=database_option)
    now = h.store.now()
    for days in (40, 10):
        await h.db.run_statement("x", "INSERT INTO tb_messages (fromuser, touserid, tousername, body, created) "
                                      "VALUES ('bob', 1, 'alice', 'hi', ?)", (now - timedelta(days=days),))
    for days, finished in ((90, True), (90, False), (20, True)):
        await h.db.run_statement(
            "x", "INSERT INTO tb_sms (userid, bnum, body, created, finished) VALUES (1, '361', 'x', ?, ?)",
            (now - timedelta(days=days), now - timedelta(days=days) if finished else None))
    await h.db.run_statement("x", "INSERT INTO tb_cdrs (datum, userid, duration) VALUES (?, 1, 60)",
                             (now - timedelta(days=400),))
    assert (await h.call("apientry=dailymaint", ADMIN)).text.endswith(", optimized 1")
    weekly = (await h.call("apientry=weeklymaint", ADMIN)).text
    assert weekly.endswith("optimized 1, vacuumed 1")
    monthly = (await h.call("apientry=monthlymaint", ADMIN)).text
    assert monthly.endswith("vacuumed 1, messages 1, sms 1"), monthly
    assert (await h.db.run_query("x", "SELECT count(*) FROM tb_messages")).rows[0][0] == 1
    assert (await h.db.run_query("x", "SELECT count(*) FROM tb_sms")).rows[0][0] == 2
    assert (await h.db.run_query("x", "SELECT count(*) FROM tb_cdrs")).rows[0][0] == 1
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_retention_zero_keeps_everything(tmp_path: Path) -> None:
    """retainmessages=0 keeps every stored message."""
    h = await make_harness(tmp_path, "retainmessages=0")
    await h.db.run_statement("x", "INSERT INTO tb_messages (fromuser, touserid, tousername, body, created) "
                                  "VALUES ('bob', 1, 'alice', 'hi', ?)", (h.store.now() - timedelta(days=4000),))
    assert (await h.call("apientry=monthlymaint", ADMIN)).text.endswith("messages 0, sms 0")
    assert (await h.db.run_query("x", "SELECT count(*) FROM tb_messages")).rows[0][0] == 1
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_dailyreport_is_mailed_with_the_days_figures(tmp_path: Path) -> None:
    """dailyreport mails the last day's figures to adminemail through the smarthost; without adminemail or
    smtpserver it says what is missing."""
    server = Server(tmp_path)
    try:
        h = await mail_harness(tmp_path, server, "adminemail=ops@voip.example")
        alice = await h.store.find_user("alice")
        assert alice is not None
        await register_contact(h, "alice", "sip:alice@1.2.3.4", 10)
        await h.db.run_statement("x", "INSERT INTO tb_cdrs (datum, userid, duration, cost) VALUES (?, ?, 90, ?)",
                                 (h.store.now() - timedelta(hours=2), alice.id, Decimal("0.3")))
        await h.store.debit(alice.id, "0.3")
        answer = await h.call("apientry=dailyreport", ADMIN)
        assert answer.text == "OK: daily report sent to ops@voip.example", answer.text
        record = (answer.records or [{}])[0]
        assert (record["users"], record["calls"], record["seconds"], record["registered"]) == (2, 1, 90, 1)
        assert record["call_cost"] == "0.30" and record["balances_differing"] == 0
        await server.wait()
        mail = server.box[0].decode()
        assert "Subject: mizud daily report" in mail and "Calls: 1, 90 seconds, cost 0.30" in mail
        assert "debit: 1 changes, -0.30" in mail and "Balances: every balance equals its ledger" in mail
        await h.db.close()
    finally:
        await defer.maybeDeferred(server.port.stopListening)
    (tmp_path / "b").mkdir()
    h = await make_harness(tmp_path / "b")
    assert (await h.call("apientry=dailyreport", ADMIN)).text == "ERROR: report not sent: no adminemail is configured"
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_checkpins_finds_what_contradicts_the_ledger(tmp_path: Path, database_option: str) -> None:
    """checkpins counts PINs; a PIN redeemed through the store is consistent, one marked used behind the
    ledger's back and one credited without being marked used are both named."""
    h = await make_harness(tmp_path, database=database_option)
    alice = await h.store.find_user("alice")
    assert alice is not None
    for pin in ("1111", "2222", "3333"):
        await h.store.create_pin(pin, "2")
    await h.store.redeem_pin(alice.id, "1111")
    assert (await h.call("apientry=checkpins", ADMIN)).text == \
        "OK: 2 unused PINs worth 4.00, 1 used worth 2.00; no problems"
    now = h.store.now()
    await h.db.run_statement("x", "UPDATE tb_pins SET used = 1, usedby = ?, useddate = ? WHERE pin = '2222'",
                             (alice.id, now))
    third = (await h.db.run_query("x", "SELECT id FROM tb_pins WHERE pin = '3333'")).rows[0][0]
    await h.store.credit(alice.id, "2")
    await h.db.run_statement("x", "UPDATE tb_credits SET kind = 'pin', reference = ? WHERE id = "
                                  "(SELECT max(id) FROM tb_credits)", (f"pin:{third}",))
    answer = await h.call("apientry=checkpins", ADMIN)
    assert (answer.ok, answer.text) == (False, "ERROR: 1 unused PINs worth 2.00, 2 used worth 4.00; 2 problems")
    problems = {r["problem"] for r in answer.records or []}
    assert problems == {"used, with 0 ledger rows instead of one", "unused, but credited 1 times in the ledger"}
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_normalizechk_shows_numbers_as_rated(tmp_path: Path) -> None:
    """normalizechk shows the called and caller numbers as mizud rates them, with the tariff found."""
    h = await make_harness(tmp_path, "defaulttariff=1")
    await h.db.run_statement("x", "INSERT INTO tb_tariffs (tariffid, prefix, name, price) VALUES (1, '3620', "
                                  "'Hungary mobile', ?)", (Decimal("0.1"),))
    await h.api.rater.rebuild()
    answer = await h.call("apientry=normalizechk&called=%2B36%2020-123-4567&caller=0044%20(20)%201234", ADMIN)
    assert answer.text == "OK: called 36201234567, caller 44201234"
    assert (answer.records or [{}])[0]["destination"] == "Hungary mobile"
    assert (await h.call("apientry=normalizechk&called=abc", ADMIN)).text == "OK: called (not a number)"
    assert (await h.call("apientry=normalizechk", ADMIN)).text == "ERROR: missing called or caller"
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_reloadapikeys_reads_the_keys_again(tmp_path: Path) -> None:
    """reloadapikeys re-reads the configuration file: a changed key is in force for the next request."""
    config = tmp_path / "mizud.ini"
    config.write_text("[global]\napiv2key = first-key-123\n")
    h = await make_harness(tmp_path)
    from mizud.config import Settings

    h.rebuild(settings=Settings(str(config), ()))
    assert (await h.call("apientry=reloadapikeys", ADMIN)).text == "OK: keys changed: none; 0 tb_api rules loaded"
    config.write_text("[global]\napiv2key = second-key-456\n")
    assert (await h.call("apientry=reloadapikeys", ADMIN)).text == "OK: keys changed: apiv2key; 0 tb_api rules loaded"
    assert (await h.call("apientry=balance&authkey=first-key-123&authid=alice&authpwd=alicepw",
                         "203.0.113.9")).text.startswith("ERROR")
    assert (await h.call("apientry=balance&authkey=second-key-456&authid=alice&authpwd=alicepw",
                         "203.0.113.9")).text.startswith("OK")
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_backup_and_restore_through_the_api(tmp_path: Path, database_option: str) -> None:
    """dbbackup writes into backupdir and answers the path; dbrestore lists the backups without path, refuses
    a path outside the directory, and restores the content; requests meanwhile are refused."""
    folder = tmp_path / "backups"
    folder.mkdir()
    h = await make_harness(tmp_path, f"backupdir={folder}", database=database_option)
    h.rebuild(reactor=global_reactor)  # pg_dump runs as a process
    answer = await h.call("apientry=dbbackup&path=before", ADMIN)
    assert answer.text == f"OK: backup written to {folder / 'before'}", answer.text
    assert (await h.call("apientry=backupdb&path=before", ADMIN)).text.endswith("a backup never overwrites")
    alice = await h.store.find_user("alice")
    assert alice is not None
    await h.store.debit(alice.id, "5")
    listed = await h.call("apientry=dbrestore", ADMIN)
    assert [r["file"] for r in listed.records or []] == ["before"]
    assert (await h.call("apientry=dbrestore&path=../api.sqlite", ADMIN)).text.startswith("ERROR: restore failed: a")
    h.rebuild(sip=SimpleNamespace(calls=SimpleNamespace(live={7: object()})))
    assert (await h.call("apientry=dbrestore&path=before", ADMIN)).text == \
        "ERROR: restore refused: 1 calls are live on this node; end them (discall) first"
    h.rebuild(sip=None)
    h.api.pause("the database is being restored")
    assert (await h.call("apientry=balance&authid=alice&authpwd=alicepw", ADMIN)).text == \
        "ERROR: the database is being restored: try again in a minute"
    h.api.pause("")
    assert (await h.call("apientry=dbrestore&path=before", ADMIN)).text == \
        f"OK: database restored from {folder / 'before'}"
    assert await h.store.balance(alice.id) == Decimal("5")
    assert (await h.call(f"apientry=dbbackup&path=x&authkey={KEY}&authid=alice&authpwd=alicepw",
                         "203.0.113.9")).text == "ERROR: access denied"
    await h.db.close()
    (tmp_path / "b").mkdir()
    h = await make_harness(tmp_path / "b")
    assert (await h.call("apientry=backup", ADMIN)).text == \
        "ERROR: backup failed: no backup directory: set the backupdir option"
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_dbreset_replaces_the_connections(tmp_path: Path, database_option: str) -> None:
    """dbreset replaces the connections; requests before and after it succeed."""
    h = await make_harness(tmp_path, database=database_option)
    assert (await h.call("apientry=dbreset", ADMIN)).text.endswith("database connections replaced")
    assert (await h.call("apientry=balance&authid=alice&authpwd=alicepw", ADMIN)).text.startswith("OK")
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_sipreset_binds_the_sip_listeners_again(tmp_path: Path) -> None:
    """sipreset closes and binds again the SIP-only listeners on the ports they had; mizud then sends only
    through the new UDP socket (the old one's routes are forgotten), and it answers SIP after the reset."""
    h = await make_harness(tmp_path)
    backend = backend_for(h.api)
    core = SipCore(h.api.settings, lambda: backend, global_reactor)
    root = MultiService()
    udp = UdpListenService("sipportudp", global_reactor, "127.0.0.1", 0, SipDatagramProtocol(core))
    tcp = ListenService("sipport", global_reactor, "127.0.0.1", 0, Factory.forProtocol(Protocol))
    for service in (udp, tcp):
        service.setServiceParent(root)
    root.startService()
    try:
        ports = (udp.listening.getHost().port, tcp.listening.getHost().port)
        first = udp.listening
        assert (await h.call("apientry=sipreset", ADMIN)).text == \
            "ERROR: not supported: this dispatcher runs without the daemon's listeners"
        h.rebuild(operations=ServiceOperations(root, global_reactor))
        answer = await h.call("apientry=sipreset", ADMIN)
        assert answer.text == f"OK: bound again: sipportudp 127.0.0.1:{ports[0]}, sipport 127.0.0.1:{ports[1]}"
        assert udp.listening is not first
        assert (udp.listening.getHost().port, tcp.listening.getHost().port) == ports
        assert [write for write, _ in core.udp_sockets] == [udp.listening.write]
        heard: list[bytes] = []

        class Client(DatagramProtocol):
            def datagramReceived(self, datagram: bytes, address: Any) -> None:
                heard.append(datagram)

        client = cast(Any, global_reactor).listenUDP(0, Client(), interface="127.0.0.1")
        client.write(OPTIONS.format(port=ports[0]).encode(), ("127.0.0.1", ports[0]))
        for _ in range(100):
            if heard:
                break
            await deferLater(global_reactor, 0.02, lambda: None)
        await client.stopListening()
        assert heard and heard[0].startswith(b"SIP/2.0 200"), heard
        await h.db.close()
    finally:
        await defer.maybeDeferred(root.stopService)
    assert core.udp_sockets == []


OPTIONS = ("OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKreset1\r\n"
           "Max-Forwards: 70\r\nFrom: <sip:probe@127.0.0.1>;tag=1\r\nTo: <sip:127.0.0.1>\r\n"
           "Call-ID: reset1@probe\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")


@pytest_twisted.ensureDeferred
async def test_restart_stops_for_the_service_manager(tmp_path: Path) -> None:
    """restart what=service stops the reactor after answering; server and database are refused."""
    h = await make_harness(tmp_path)
    reactor = MemoryReactorClock()
    h.rebuild(operations=ServiceOperations(MultiService(), reactor))
    assert (await h.call("apientry=restart&what=server", ADMIN)).text.startswith("ERROR: not supported: restarting")
    assert (await h.call("apientry=restart&what=database", ADMIN)).text.startswith("ERROR: not supported: the data")
    assert (await h.call("apientry=restart&what=it", ADMIN)).text == "ERROR: what must be service, server or database"
    assert (await h.call(f"apientry=restart&what=service&authkey={KEY}&authid=alice&authpwd=alicepw",
                         "203.0.113.9")).text == "ERROR: access denied"
    assert (await h.call("apientry=restart&what=service", ADMIN)).text == \
        "OK: stopping; the service manager starts mizud again"
    assert not reactor.hasStopped
    reactor.advance(1)
    assert reactor.hasStopped
    await h.db.close()

