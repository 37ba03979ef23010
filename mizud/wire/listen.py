"""Listeners as services: a TCP or UDP port bound before privileges are dropped.

Twisted's C{StreamServerEndpointService} is close, but it raises a bind
failure only on its first start (later ones are logged), and once stopped it
does not listen again when restarted; C{sipreset} rebinds the SIP listeners
in place and must fail loudly.  So the listeners here call the reactor's
C{listenTCP} and C{listenUDP} directly, which bind at once and raise
L{CannotListenError}, and turn that into a L{StartupError} naming the port.
"""

from __future__ import annotations

import socket
from abc import ABC, abstractmethod
from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from ..errors import StartupError

log = Logger()


class Listener(Service, ABC):
    """A port bound in privilegedStartService (before privileges are dropped), or in startService
    when there was no privileged step; a port that cannot be bound is a L{StartupError}.
    Subclasses say how to listen."""

    def __init__(self, name: str, reactor: Any, address: str, port: int) -> None:
        self.name = name  # type: ignore[assignment, unused-ignore]
        self.reactor = reactor
        self.address = address
        self.port = port
        self.listening: Any = None  # an IListeningPort once bound

    def privilegedStartService(self) -> None:
        """Bind the port now."""
        super().privilegedStartService()
        self._bind()

    def startService(self) -> None:
        """Bind the port if the privileged step did not."""
        super().startService()
        self._bind()

    def _bind(self) -> None:
        if self.listening is None:
            try:
                self.listening = self._listen()
            except StartupError:
                raise
            except Exception as error:
                reason = error.socketError if isinstance(error, CannotListenError) else error
                raise StartupError(
                    f"cannot listen on {self.address}:{self.port}{self.kind} ({self.name}): {reason}"
                ) from None

    #: Said after the port in a bind failure (nothing for TCP).
    kind = ""

    @abstractmethod
    def _listen(self) -> Any:
        """Start listening; return the listening port."""

    def stopService(self) -> Any:
        """Stop listening."""
        super().stopService()
        listening, self.listening = self.listening, None
        return defer.maybeDeferred(listening.stopListening) if listening is not None else defer.succeed(None)


class ListenService(Listener):
    """Listens on one TCP port (IPv4 or IPv6, as the address says)."""

    def __init__(self, name: str, reactor: Any, address: str, port: int, factory: Any,
                 prepare: Callable[[], Any] | None = None) -> None:
        super().__init__(name, reactor, address, port)
        self.factory = factory
        #: Called before binding (loading a TLS certificate, say), so its failure stops the start.
        self.prepare = prepare

    def _listen(self) -> Any:
        if self.prepare is not None:
            self.prepare()
        return self.reactor.listenTCP(self.port, self.factory, interface=self.address)


class UdpListenService(Listener):
    """Listens on one UDP port with a large receive buffer."""

    RECEIVE_BUFFER = 4 * 1024 * 1024
    kind = " UDP"

    def __init__(self, name: str, reactor: Any, address: str, port: int, protocol: Any) -> None:
        super().__init__(name, reactor, address, port)
        self.protocol = protocol

    def _listen(self) -> Any:
        listening = self.reactor.listenUDP(self.port, self.protocol, interface=self.address)
        try:
            listening.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.RECEIVE_BUFFER)
        except OSError as error:
            log.warn("could not enlarge the UDP receive buffer: {error}", error=error)
        return listening
