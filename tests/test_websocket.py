"""The API over WebSocket (/mvstwebsock) with autobahn's client, through the shared port."""

from __future__ import annotations

from typing import Any

import pytest_twisted
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol, connectWS
from twisted.internet import defer

from test_demux import Shared, shared  # noqa: F401  (the fixture)


class Client(WebSocketClientProtocol):
    """Sends the factory's messages on open; collects answers and the close code."""

    def onOpen(self) -> None:
        for message, binary in self.factory.outgoing:  # type: ignore[attr-defined]
            self.sendMessage(message, isBinary=binary)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        factory: Any = self.factory
        factory.answers.append(payload)
        if len(factory.answers) == factory.expected:
            self.sendClose(1000)

    def onClose(self, wasClean: bool, code: int, reason: str) -> None:
        factory: Any = self.factory
        if not factory.done.called:
            factory.done.callback(code)


async def exchange(port: int, outgoing: list[tuple[bytes, bool]], expected: int) -> tuple[list[bytes], int]:
    """Connect, send, and wait for the close; (answers, close code)."""
    factory = WebSocketClientFactory(f"ws://127.0.0.1:{port}/mvstwebsock/")
    factory.protocol = Client
    factory.outgoing = outgoing  # type: ignore[attr-defined]
    factory.answers = []  # type: ignore[attr-defined]
    factory.expected = expected  # type: ignore[attr-defined]
    factory.done = defer.Deferred()  # type: ignore[attr-defined]
    connectWS(factory)
    code = await factory.done  # type: ignore[attr-defined]
    return factory.answers, code  # type: ignore[attr-defined]


@pytest_twisted.ensureDeferred
async def test_messages_answered_in_order(shared: Shared) -> None:  # noqa: F811
    """Each text message is one request; answers come back in order."""
    answers, code = await exchange(
        shared.port,
        [(b"/mvapireq/?apientry=apitest1", False), (b"apientry=nosuch&format=json", False), (b"apientry=apitest1", False)],
        3,
    )
    assert answers == [b"OK: API test passed",
                       b'{"code":499,"status":"ERROR","message":"unknown function: nosuch"}', b"OK: API test passed"]
    assert code == 1000


@pytest_twisted.ensureDeferred
async def test_binary_and_oversized_messages_close(shared: Shared) -> None:  # noqa: F811
    """A binary message closes with 4003, an oversized one with 1009; the port keeps serving."""
    assert (await exchange(shared.port, [(b"\x00\x01", True)], 1))[1] == 4003
    assert (await exchange(shared.port, [(b"a" * 70000, False)], 1))[1] in (1006, 1009)  # failed by the server
    answers, _ = await exchange(shared.port, [(b"apientry=apitest1", False)], 1)
    assert answers == [b"OK: API test passed"]
