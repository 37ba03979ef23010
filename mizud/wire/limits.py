"""Limits every stream connection lives under: a cap per address, and back-pressure.

L{ConnectionBudget} counts the connections each source address (an IPv6
address by its /64) holds across all of mizud's stream listeners (the
shared port, TLS, the old interface, SIP over TCP and TLS, the console);
L{BudgetedFactory} wraps a listener's factory and closes at once a
connection from an address that already holds C{maxconnectionsperip} (0:
no cap), logging it (limited).  The C{trustedproxies} are not capped:
each carries the connections of many clients.
Together with the idle and request timeouts of each protocol, a thousand
idle connections from one address no longer take the service down.

L{Backpressure} stops reading from a connection while it owes too many
answers or while its peer does not read them (the transport's write
buffer is full: the transport tells its registered producer), and reads
again once they drain.  A client that pipelines 60 MB of requests without
reading an answer is thus held by TCP's own flow control, not by mizud's
memory.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from typing import Any, Callable

from twisted.internet.interfaces import IAddress, IPushProducer
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from zope.interface import implementer

from ..api.auth import in_networks
from ..config import Settings
from ..rejections import RejectionLog

#: Requests a connection may have in flight before mizud stops reading from it.
MAX_PENDING = 64


class ConnectionBudget:
    """Open connections per source address, shared by every stream listener."""

    def __init__(self, settings: Settings, clock: Any) -> None:
        self.settings = settings
        self.open: Counter[str] = Counter()
        self.log = RejectionLog(clock, "connections over maxconnectionsperip", per_source=1, total=20)

    def admit(self, host: str) -> str | None:
        """Count a new connection from C{host}; returns the key it is counted under (an IPv6 address's /64,
        since one subscriber has a whole /64), "" for a trusted proxy (not capped: it carries many clients),
        or None when that key holds its share already (refused)."""
        config = self.settings.current
        if in_networks(host, config.trustedproxies):
            return ""
        key = _key(host)
        most = config.maxconnectionsperip
        if most and self.open[key] >= most:
            self.log(key, "refused a connection from {source}: it holds {count} (maxconnectionsperip)",
                     count=self.open[key])
            return None
        self.open[key] += 1
        return key

    def release(self, key: str) -> None:
        """A connection counted under C{key} closed."""
        if not key:
            return
        self.open[key] -= 1
        if self.open[key] <= 0:
            del self.open[key]


def _key(host: str) -> str:
    """What a connection from C{host} counts under: the address, or an IPv6 address's /64."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address) and not address.ipv4_mapped:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else address)


class _Budgeted(ProtocolWrapper):
    """Gives its connection's place in the budget back when it closes."""

    key = ""

    def connectionLost(self, reason: Any = None) -> None:
        """Release the place, then tell the wrapped protocol."""
        factory: BudgetedFactory = self.factory
        factory.budget.release(self.key)
        super().connectionLost(reason)


class BudgetedFactory(WrappingFactory):
    """A listener's factory, under the per-address connection cap."""

    protocol = _Budgeted
    noisy = False

    def __init__(self, wrapped: Any, budget: ConnectionBudget) -> None:
        super().__init__(wrapped)
        self.budget = budget

    def buildProtocol(self, addr: IAddress | None) -> Any:
        """The wrapped factory's protocol, or None (the connection is closed) over the cap."""
        key = self.budget.admit(str(getattr(addr, "host", "")))
        if key is None:
            return None
        protocol: Any = super().buildProtocol(addr)
        if protocol is None:
            self.budget.release(key)
            return None
        protocol.key = key
        return protocol

    def logPrefix(self) -> str:
        """The wrapped factory's name in log lines."""
        return str(getattr(self.wrappedFactory, "logPrefix", lambda: "mizud")())


@implementer(IPushProducer)
class Backpressure:
    """Pauses reading while a connection owes L{MAX_PENDING} answers or its peer reads none.

    The protocol calls L{started} when it takes a request and L{finished}
    when the answer is written; C{pause} and C{resume} stop and restart its
    reading (for a LineReceiver: its own pauseProducing and
    resumeProducing, which also hold lines already buffered).  Registered
    as the transport's producer, it hears when the write buffer fills
    (L{pauseProducing}) and drains (L{resumeProducing}).
    """

    def __init__(self, transport: Any, pause: Callable[[], None], resume: Callable[[], None],
                 most: int = MAX_PENDING, drained: Callable[[], None] | None = None) -> None:
        self.pause = pause
        self.resume = resume
        #: Called when the write buffer has drained (answers may be written again), whether or not reading resumes.
        self.drained = drained
        self.most = most
        self.pending = 0
        self.blocked = False
        self.paused = False
        try:
            # An HTTP channel that handed its connection over to a WebSocket is registered still: replace it.
            transport.unregisterProducer()
        except RuntimeError:
            pass  # there was none
        transport.registerProducer(self, True)

    def started(self) -> None:
        """One more request in flight."""
        self.pending += 1
        self._update()

    def finished(self) -> None:
        """One answer written."""
        self.pending -= 1
        self._update()

    def pauseProducing(self) -> None:
        """The transport's write buffer is full: the peer does not read."""
        self.blocked = True
        self._update()

    def resumeProducing(self) -> None:
        """The transport's write buffer drained."""
        self.blocked = False
        self._update()
        if self.drained is not None:
            self.drained()

    def stopProducing(self) -> None:
        """The connection is going away: nothing to stop."""

    def _update(self) -> None:
        if not self.paused and (self.blocked or self.pending >= self.most):
            self.paused = True
            self.pause()
        elif self.paused and not self.blocked and self.pending <= self.most // 2:
            self.paused = False
            self.resume()
