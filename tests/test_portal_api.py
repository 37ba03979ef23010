"""The API functions and the login the web portal adds: tariffs, publictariffs and portalmd5."""

from __future__ import annotations

import hashlib
from decimal import Decimal
from pathlib import Path

import pytest_twisted

from test_api_dispatch import make_harness

ALICE = "authkey=apikey123&authid=alice&authpwd=alicepw"


@pytest_twisted.ensureDeferred
async def test_tariff_listings(tmp_path: Path) -> None:
    """tariffs lists the caller's plan (by prefix, capped by maxcount); publictariffs the published plan,
    and only when one is published."""
    for published in ("0", "2"):
        folder = tmp_path / published
        folder.mkdir()
        await _tariffs(await make_harness(folder, "defaulttariff=1", f"publictariffs={published}"), published)


async def _tariffs(h: object, published: str) -> None:
    from test_api_dispatch import Harness

    assert isinstance(h, Harness)
    for plan, prefix, name, price in ((1, "36", "Hungary", "0.60"), (1, "3620", "Hungary mobile", "0.90"),
                                      (1, "49", "Germany", "0.30"), (2, "1", "USA", "0.01")):
        await h.db.run_statement(
            "x", "INSERT INTO tb_tariffs (tariffid, prefix, name, price, currency) VALUES (?, ?, ?, ?, 'USD')",
            (plan, prefix, name, Decimal(price)))
    mine = await h.call(f"apientry=tariffs&{ALICE}")
    assert mine.text == "OK: 3 tariffs in plan 1" and [r["prefix"] for r in mine.records] == ["36", "3620", "49"]
    assert mine.records[1]["price"] == "0.90"
    assert [r["name"] for r in (await h.call(f"apientry=tariffs&prefix=36&maxcount=1&{ALICE}")).records] == ["Hungary"]
    assert (await h.call(f"apientry=tariffs&prefix=3x&{ALICE}")).text == "ERROR: prefix must be digits"
    public = await h.call("apientry=publictariffs&authkey=apikey123")
    if published == "0":
        assert public.text == "ERROR: no public tariffs are published (publictariffs=0)"
    else:
        assert public.text == "OK: 1 tariffs in plan 2" and public.records[0]["name"] == "USA"
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_portal_md5_login(tmp_path: Path) -> None:
    """portalmd5 = MD5("C8y5:" username ":" password ":" portalsalt) authenticates any function; a wrong
    one fails like a wrong password, even from a trusted address."""
    h = await make_harness(tmp_path)
    digest = hashlib.md5(b"C8y5:alice:alicepw:s4lt").hexdigest()
    answer = await h.call(f"apientry=balance&authkey=apikey123&authid=alice&portalmd5={digest}&portalsalt=s4lt")
    assert answer.text == "OK: 5.00 USD"
    upper = await h.call(f"apientry=balance&authkey=apikey123&authid=alice&portalmd5={digest.upper()}&portalsalt=s4lt")
    assert upper.ok
    for source in ("203.0.113.5", "127.0.0.1"):
        wrong = await h.call(f"apientry=balance&authkey=apikey123&authid=alice&portalmd5={digest}&portalsalt=other",
                             source)
        assert wrong.text == "ERROR: wrong authentication"
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_portal_md5_with_nonces_and_stale_nonces(tmp_path: Path) -> None:
    """With a nonce the link's md5 is proven as MD5(md5 + authsalt2 + serversalt + nonce), once per
    value; an unknown or expired nonce gets a new one and is not counted as a failed login."""
    import re

    h = await make_harness(tmp_path)
    nonce = re.search("is:(.*)EOF", (await h.call("apientry=preauth")).text).group(1)  # type: ignore[union-attr]
    link = hashlib.md5(b"C8y5:alice:alicepw:s4lt").hexdigest()
    proof = hashlib.md5(f"{link}x1srvsalt{nonce}".encode()).hexdigest()
    query = f"apientry=balance&authkey=apikey123&authid=alice&portalmd5={proof}&portalsalt=s4lt&authsalt2=x1&nonce={nonce}"
    assert (await h.call(query)).text == "OK: 5.00 USD"
    assert (await h.call(query)).text.startswith("ERROR: new nonce is:")  # a replay: refused, not counted
    for _ in range(8):
        stale = await h.call("apientry=balance&authkey=apikey123&authid=alice&authmd5=x&authsalt2=y&nonce=0123456789abcdef")
        assert stale.text.startswith("ERROR: new nonce is:")
    assert (await h.call(f"apientry=balance&{ALICE}")).text == "OK: 5.00 USD"  # not locked out
    await h.db.close()
