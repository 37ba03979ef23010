"""Prometheus metrics: /metrics on the shared port, for trusted sources only.

The figures come from where things happen: the dispatcher counts requests
(by function, transport and result), authentication failures and bans; the
database reports each transaction's time; the SIP layer its live
transactions, calls and registrations; a timer measures the reactor's lag.
Labels are bounded: functions are the registry's names (anything else is
counted as "unknown"), transports and results are fixed words.
"""

from __future__ import annotations

from typing import Any, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from twisted.internet.task import LoopingCall
from twisted.web.resource import Resource
from twisted.web.server import Request

#: Seconds between reactor lag samples.
LAG_INTERVAL = 1.0


class Metrics:
    """One node's metrics, in a registry of their own."""

    def __init__(self, known: Callable[[str], bool] = lambda name: True) -> None:
        self.registry = CollectorRegistry()
        self.known = known
        registry = self.registry
        self.requests = Counter("mizud_api_requests", "API requests answered", ["function", "transport", "result"],
                                registry=registry)
        self.auth_failures = Counter("mizud_auth_failures", "Failed authentications (API, SIP, console)",
                                     registry=registry)
        self.bans = Counter("mizud_bans", "Bans of addresses or users", ["kind"], registry=registry)
        self.db_seconds = Histogram("mizud_db_transaction_seconds", "Database transaction time, queue included",
                                    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
                                    registry=registry)
        self.reactor_lag = Gauge("mizud_reactor_lag_seconds", "How late the last 1 s timer fired", registry=registry)
        self.registrations = Gauge("mizud_sip_registrations", "Live SIP registrations (bindings) in the database",
                                   registry=registry)
        self.calls = Gauge("mizud_calls_active", "Calls this node keeps up", registry=registry)
        self.sip_transactions = Gauge("mizud_sip_transactions", "Live SIP transactions (server and client)",
                                      registry=registry)
        self._lag: LoopingCall | None = None

    def request(self, function: str, transport: str, ok: bool) -> None:
        """One answered API request."""
        name = function if function and self.known(function) else "unknown"
        self.requests.labels(name, transport or "http", "ok" if ok else "error").inc()

    def watch_sip(self, core: Any) -> None:
        """Read the SIP layer's live figures at each scrape."""
        self.calls.set_function(lambda: len(core.calls.live))
        self.sip_transactions.set_function(lambda: len(core.transactions.live) + len(core.clients.live))

    def start_lag(self, clock: Any) -> None:
        """Sample the reactor's lag: how late a 1 s timer fires."""
        state = {"due": clock.seconds() + LAG_INTERVAL}

        def sample() -> None:
            now = clock.seconds()
            self.reactor_lag.set(max(0.0, now - state["due"]))
            state["due"] = now + LAG_INTERVAL

        self._lag = LoopingCall(sample)
        self._lag.clock = clock
        self._lag.start(LAG_INTERVAL, now=False)

    def stop(self) -> None:
        """Stop sampling."""
        if self._lag is not None and self._lag.running:
            self._lag.stop()

    def exposition(self) -> bytes:
        """The Prometheus text format."""
        return generate_latest(self.registry)


class MetricsResource(Resource):
    """GET /metrics: the exposition, for trusted sources only (403 otherwise)."""

    isLeaf = True

    def __init__(self, metrics: Callable[[], Metrics | None], allowed: Callable[[Request], bool]) -> None:
        super().__init__()
        self.metrics = metrics
        self.allowed = allowed

    def render_GET(self, request: Request) -> bytes:
        """The figures, or why not."""
        request.setHeader(b"cache-control", b"no-store")
        if not self.allowed(request):
            request.setResponseCode(403)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"ERROR: metrics are for trusted sources only"
        metrics = self.metrics()
        if metrics is None:
            request.setResponseCode(503)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"ERROR: starting"
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        return metrics.exposition()
