"""Prometheus metrics at /metrics: counted where things happen, shown to trusted sources only."""

from __future__ import annotations

from pathlib import Path

import pytest_twisted
from twisted.internet import reactor as global_reactor
from twisted.internet.task import Clock

from mizud.metrics import Metrics
from test_http_api import start


@pytest_twisted.ensureDeferred
async def test_metrics_endpoint(tmp_path: Path) -> None:
    """Requests by function, transport and result, authentication failures and database time appear in
    the text format; an untrusted address (behind a trusted proxy) is refused."""
    server, port, db = await start(tmp_path, "trustedproxies=127.0.0.1", "trustlanip=false")
    metrics = Metrics(known=lambda name: server.api.registry.get(name) is not None)
    server.api.metrics = metrics
    db.running.observe = metrics.db_seconds.observe
    try:
        await server.curl(f"{server.base}/mvapireq/?apientry=apitest1")
        await server.curl(f"{server.base}/mvapireq/?apientry=balance&authkey=k&authid=alice&authpwd=wrong")
        await server.curl(f"{server.base}/mvapireq/?apientry=nosuchthing")
        status, head, body = await server.curl(f"{server.base}/metrics")
        assert status == 200 and "content-type: text/plain; version=" in head.lower()
        assert 'mizud_api_requests_total{function="apitest1",result="ok",transport="http"} 1.0' in body
        assert 'mizud_api_requests_total{function="balance",result="error",transport="http"} 1.0' in body
        assert 'mizud_api_requests_total{function="unknown",result="error",transport="http"} 1.0' in body
        assert "mizud_auth_failures_total 1.0" in body and "mizud_db_transaction_seconds_count" in body
        status, _, body = await server.curl("-H", "X-Forwarded-For: 203.0.113.7", f"{server.base}/metrics")
        assert (status, body) == (403, "ERROR: metrics are for trusted sources only")
    finally:
        await port.stopListening()  # type: ignore[attr-defined]
        await db.close()


def test_reactor_lag_and_sip_figures() -> None:
    """The lag gauge reports how late the 1 s timer fired; SIP figures are read at each scrape."""
    clock = Clock()
    metrics = Metrics()
    metrics.start_lag(clock)
    clock.advance(1.0)
    clock.advance(1.25)  # this timer fired 0.25 s late (the reactor was busy)
    assert "mizud_reactor_lag_seconds 0.25" in metrics.exposition().decode()

    class Live:
        live = {1: None, 2: None}

    class Core:
        calls = transactions = clients = Live

    metrics.watch_sip(Core())
    text = metrics.exposition().decode()
    assert "mizud_calls_active 2.0" in text and "mizud_sip_transactions 4.0" in text
    metrics.stop()
    assert global_reactor is not None


@pytest_twisted.ensureDeferred
async def test_function_in_the_path(tmp_path: Path) -> None:
    """/mvapireq/NAME runs NAME (percent-decoded); an apientry naming another function is refused."""
    server, port, db = await start(tmp_path)
    try:
        status, _, body = await server.curl(f"{server.base}/mvapireq/apitest1")
        assert (status, body) == (200, "OK: API test passed")
        status, _, body = await server.curl(f"{server.base}/mvapireq/api%74est1")
        assert body == "OK: API test passed"
        status, _, body = await server.curl(f"{server.base}/mvapireq/apitest1?apientry=newuseri")
        assert body == "ERROR: apientry and the path name different functions (apitest1)"
    finally:
        await port.stopListening()  # type: ignore[attr-defined]
        await db.close()
