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


@pytest_twisted.ensureDeferred
async def test_sip_over_websocket_is_handed_to_the_sip_layer(tmp_path: Any) -> None:
    """/mfstwebsock negotiates the "sip" subprotocol and hands each message to the SIP entry point."""
    from twisted.internet import reactor as global_reactor

    from mizud.wire.demux import DemuxFactory
    from mizud.app import make_site
    from test_api_dispatch import make_harness

    class Sip:
        def __init__(self) -> None:
            self.messages: list[bytes] = []

        def websocket_message(self, data: bytes, address: Any, send: Any, local: Any = None,
                              secure: bool = False) -> bool:
            self.messages.append(data)
            send(b"SIP/2.0 200 OK\r\n\r\n")
            return True

        def websocket_closed(self, address: Any) -> None:
            pass

    h = await make_harness(tmp_path)
    sip = Sip()
    site = make_site(h.api.settings, lambda: h.api, sip)
    port = global_reactor.listenTCP(0, DemuxFactory(site, lambda: h.api, h.api.settings, global_reactor),
                                    interface="127.0.0.1")
    factory = WebSocketClientFactory(f"ws://127.0.0.1:{port.getHost().port}/mfstwebsock", protocols=["sip"])
    factory.protocol = Client
    factory.outgoing = [(b"OPTIONS sip:x SIP/2.0\r\n\r\n", False)]  # type: ignore[attr-defined]
    factory.answers = []  # type: ignore[attr-defined]
    factory.expected = 1  # type: ignore[attr-defined]
    factory.done = defer.Deferred()  # type: ignore[attr-defined]
    connectWS(factory)
    await factory.done  # type: ignore[attr-defined]
    assert sip.messages == [b"OPTIONS sip:x SIP/2.0\r\n\r\n"]
    assert factory.answers == [b"SIP/2.0 200 OK\r\n\r\n"]  # type: ignore[attr-defined]
    await port.stopListening()
    await h.db.close()


@pytest_twisted.ensureDeferred
async def test_broken_websocket_frame_closes_only_that_connection(shared: Shared) -> None:  # noqa: F811
    """An unmasked client frame breaks the protocol: that connection is failed, others are served."""
    import socket

    from twisted.internet.threads import deferToThread

    def broken() -> bytes:
        with socket.create_connection(("127.0.0.1", shared.port), timeout=5) as conn:
            conn.sendall(b"GET /mvstwebsock/ HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
            reply = b""
            while b"\r\n\r\n" not in reply:
                reply += conn.recv(4096)
            conn.sendall(b"\x81\x05hello")  # unmasked: forbidden from a client
            rest = b""
            try:
                while True:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return rest
                    rest += chunk
            except ConnectionResetError:
                return rest + b"(reset)"

    closing = await deferToThread(broken)
    # The server fails the connection: a close frame and/or a reset, then the end.
    assert closing[:1] == b"\x88" or closing.endswith(b"(reset)")
    answers, _ = await exchange(shared.port, [(b"apientry=apitest1", False)], 1)
    assert answers == [b"OK: API test passed"]
