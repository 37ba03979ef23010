"""addserver and routingtest: SIP servers, traffic senders and the routing table, on both engines."""

from __future__ import annotations

from pathlib import Path

import pytest_twisted

from sipkit import Phone, make_rig
from test_api_dispatch import Harness, make_harness

ADMIN = "127.0.0.1"


async def add(h: Harness, query: str) -> str:
    """addserver as the trusted admin; the answer line."""
    return (await h.call(f"apientry=addserver&{query}", ADMIN)).text


async def server_row(h: Harness, username: str) -> tuple[object, ...]:
    """The server's tb_users fields."""
    row = (await h.db.run_query(
        "x", "SELECT type, domain, ip, port, transport, needauth, serverrole, proxy, tariffid FROM tb_users "
             "WHERE username = ?", (username,))).one()
    assert row is not None
    return tuple(row)


@pytest_twisted.ensureDeferred
async def test_addserver_stores_the_server_and_a_default_route(tmp_path: Path, database_option: str) -> None:
    """The spec's simple example (u_name, u_domain) makes a SIP server with a default route."""
    h = await make_harness(tmp_path, database=database_option)
    answer = await h.call("apientry=addserver&u_name=Carrier%20One&u_domain=sip.carrier.example", ADMIN)
    assert answer.text.endswith("; routing entry Carrier_One prefix '' priority 0")
    assert answer.records and len(answer.records[0]["password"]) >= 16  # generated
    assert await server_row(h, "Carrier_One") == (9, "sip.carrier.example", "", 5060, "udp", 1, 0, "", 0)
    tested = await h.call("apientry=routingtest&called=%2B36%201%20234%205678", ADMIN)
    assert tested.text == "OK: 1 routes: Carrier_One sip:3612345678@sip.carrier.example"
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_routing_order_prefixes_priorities_and_failover(tmp_path: Path, database_option: str) -> None:
    """Longest prefix first, then lower priority; disabled servers and senders are never routes."""
    h = await make_harness(tmp_path, database=database_option)
    assert (await add(h, "u_username=gwa&u_ip=192.0.2.1:5080&u_transport=tcp&u_routing=hungary&u_routingpriority=5"
                         "&fieldname0=tariffid&fieldval0=3&u_auth=2")).startswith("OK")
    assert (await add(h, "u_username=gwb&u_ip=192.0.2.2&u_routing=hungary&u_routingpriority=1")).startswith("OK")
    assert (await add(h, "u_username=gwc&u_domain=default.example&u_routingpriority=9")).startswith("OK")
    assert await add(h, "u_username=sender&u_type=5&u_ip=198.51.100.7") == "OK: 6"  # a sender gets no route
    assert await server_row(h, "gwa") == (9, "", "192.0.2.1", 5080, "tcp", 2, 0, "", 3)
    await h.db.run_statement("x", "UPDATE tb_routing SET prefix = '36' WHERE name = 'hungary'")
    tested = await h.call("apientry=routingtest&ip=198.51.100.7&caller=alice&called=3612345", ADMIN)
    assert tested.text == ("OK: 3 routes (from traffic sender sender): gwb sip:3612345@192.0.2.2, "
                           "gwa sip:3612345@192.0.2.1:5080;transport=tcp, gwc sip:3612345@default.example")
    assert [r["priority"] for r in tested.records or []] == [1, 5, 9]
    other = await h.call("apientry=routingtest&called=4412345", ADMIN)
    assert other.text == "OK: 1 routes: gwc sip:4412345@default.example"
    await h.db.run_statement("x", "UPDATE tb_users SET enabled = 0 WHERE username = 'gwc'")
    assert (await h.call("apientry=routingtest&called=4412345", ADMIN)).text == "ERROR: no route to 4412345"
    assert (await h.call("apientry=routingtest&called=not%20a%20number", ADMIN)).text.startswith("ERROR: no route")
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_a_user_is_routed_to_its_registered_contacts(tmp_path: Path) -> None:
    """A called username (or DID) goes to that user's registrations, not to a gateway."""
    rig = await make_rig(tmp_path)
    h = rig.h
    await add(h, "u_username=gw&u_domain=gw.example")
    assert (await h.call("apientry=routingtest&called=alice", ADMIN)).text == "ERROR: no route to alice"
    await rig.register(Phone("alice", "alicepw"))
    tested = await h.call("apientry=routingtest&called=alice", ADMIN)
    assert tested.text == "OK: 1 routes: alice sip:alice@192.0.2.10:5062"
    assert (tested.records or [{}])[0]["kind"] == "user"
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_addserver_refuses_bad_input(tmp_path: Path) -> None:
    """Missing or malformed parameters, protected extra fields, duplicates: clear errors, nothing stored."""
    h = await make_harness(tmp_path)
    cases = {
        "u_domain=x.example": "ERROR: u_name or u_username is needed (letters, digits and _ . @ + -)",
        "u_name=a": "ERROR: u_domain or u_ip is needed",
        "u_name=a&u_ip=example.com": "ERROR: u_ip is not an IP address: example.com",
        "u_name=a&u_domain=bad_host!": "ERROR: u_domain is not a host name or IP address: bad_host!",
        "u_name=a&u_domain=x.example&u_transport=sctp": "ERROR: u_transport must be udp, tcp or tls",
        "u_name=a&u_domain=x.example&u_port=70000": "ERROR: u_port has a bad port: 70000",
        "u_name=a&u_domain=x.example&u_type=3": "ERROR: u_type must be 0 (both), 5 (traffic sender) or 9 (SIP server)",
        "u_name=a&u_domain=x.example&fieldname1=credit&fieldval1=100":
            "ERROR: fieldname1: not a settable tb_users column: credit",
        "u_name=a&u_domain=x.example&fieldname1=nosuch&fieldval1=1":
            "ERROR: fieldname1: not a settable tb_users column: nosuch",
        "u_name=a&u_domain=x.example&u_routing=77": "ERROR: no routing entry with id 77",
        "u_username=alice&u_domain=x.example": "ERROR: username already exists: alice",
        "u_name=a&u_domain=x.example&u_port=%C2%B2": "ERROR: u_port has a bad port: ²",
        "u_name=a&u_domain=x.example&u_auth=%C2%B2": "ERROR: u_auth must be a number (1: by IP address)",
        "u_name=a&u_domain=x.example&fieldname0=port&fieldval0=abc":
            "ERROR: fieldname0: not a settable tb_users column: port",
        "u_name=a&u_domain=x.example&fieldname0=smsurl&fieldval0=file:///etc/passwd":
            "ERROR: fieldval0: smsurl must be an http(s) URL template",
    }
    for query, expected in cases.items():
        assert await add(h, query) == expected, query
    assert (await h.db.run_query("x", "SELECT count(*) FROM tb_routing")).rows[0][0] == 0
    assert await add(h, "u_name=nr&u_domain=x.example&u_routing=null") == "OK: 3"
    assert (await h.db.run_query("x", "SELECT count(*) FROM tb_routing")).rows[0][0] == 0
    user = "authkey=apikey123&authid=alice&authpwd=alicepw"
    assert (await h.call(f"apientry=addserver&u_name=z&u_domain=z.example&{user}")).text == "ERROR: access denied"
    assert await add(h, "u_name=v6&u_ip=%5B2001:db8::1%5D:5070&u_routing=v6") == "OK: 4; routing entry v6 prefix '' priority 0"
    assert (await h.call("apientry=routingtest&called=4412", ADMIN)).text == "OK: 1 routes: v6 sip:4412@[2001:db8::1]:5070"
    await h.db.close()
