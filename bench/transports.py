"""The same authenticated `balance` over HTTP keep-alive, a TCP line, UDP and WebSocket.

    python bench/transports.py [--seconds 5] [--connections 16]

One `twistd -n mizud` on SQLite; one closed-loop client (this script, the
same code for every transport) keeps C{connections} requests in flight and
counts answers per second.  UDP receive-buffer errors are read from the
kernel (`nstat UdpRcvbufErrors`, or /proc/net/snmp) before and after the UDP
run.  Goals: TCP line >= 2x HTTP, UDP >= 1.3x HTTP, WebSocket >= 60% of
TCP, no UDP receive-buffer errors.  Issue 19's baselines run in the same
script: a bare Twisted LineReceiver and a bare DatagramProtocol answering a
constant (its own process, the same clients); goal: mizud's TCP line and
UDP `balance` at least 70% of them.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import platform
import selectors
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from http_api import free_port, wait_for  # noqa: E402

BARE = """
import sys
from twisted.internet import reactor
from twisted.internet.protocol import DatagramProtocol, Factory
from twisted.protocols.basic import LineReceiver

class Line(LineReceiver):
    def lineReceived(self, line):
        self.sendLine(b"OK: 12.34")

class Datagram(DatagramProtocol):
    def datagramReceived(self, data, addr):
        self.transport.write(b"OK: 12.34", addr)

reactor.listenTCP(int(sys.argv[1]), Factory.forProtocol(Line), interface="127.0.0.1")
reactor.listenUDP(int(sys.argv[1]), Datagram(), interface="127.0.0.1")
reactor.run()
"""

USER, PASSWORD, KEY, SALT = "bench", "benchpassword", "benchkey", "4711"
DIGEST = hashlib.md5(("ck5Gp" + USER + PASSWORD + "srv" + SALT).encode()).hexdigest()
QUERY = f"apientry=balance&authkey={KEY}&authid={USER}&authmd5={DIGEST}&authsalt={SALT}"


def udp_errors() -> int:
    """The kernel's UDP receive-buffer error count."""
    with open("/proc/net/snmp") as snmp:
        lines = [line.split() for line in snmp if line.startswith("Udp:")]
    header, values = lines[0], lines[1]
    return int(values[header.index("RcvbufErrors")])


def closed_loop(make: Callable[[], tuple[socket.socket, bytes, Callable[[bytes], int]]], seconds: float,
                connections: int) -> float:
    """Answers per second with C{connections} requests in flight.

    C{make} opens one connection and returns (socket, request bytes, a
    function giving how many answers a buffer holds and how much to keep).
    """
    selector = selectors.DefaultSelector()
    state = {}
    for _ in range(connections):
        sock, request, complete = make()
        sock.setblocking(False)
        sock.send(request)
        state[sock] = [request, complete, b""]
        selector.register(sock, selectors.EVENT_READ)
    done = 0
    started = time.perf_counter()
    stop = started + seconds
    while time.perf_counter() < stop:
        for key, _ in selector.select(timeout=1):
            sock = key.fileobj
            entry = state[sock]  # type: ignore[index]
            entry[2] += sock.recv(65536)  # type: ignore[union-attr]
            used = entry[1](entry[2])
            if used:
                entry[2] = entry[2][used:]
                done += 1
                sock.send(entry[0])  # type: ignore[union-attr]
    elapsed = time.perf_counter() - started
    for sock in state:
        sock.close()
    return done / elapsed


def http_client(port: int) -> tuple[socket.socket, bytes, Callable[[bytes], int]]:
    """A keep-alive HTTP connection."""
    request = f"GET /mvapireq/?{QUERY} HTTP/1.1\r\nHost: x\r\n\r\n".encode()

    def complete(buffer: bytes) -> int:
        head, sep, rest = buffer.partition(b"\r\n\r\n")
        if not sep:
            return 0
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        return len(head) + 4 + length if len(rest) >= length else 0

    return socket.create_connection(("127.0.0.1", port)), request, complete


def line_client(port: int) -> tuple[socket.socket, bytes, Callable[[bytes], int]]:
    """A raw TCP API line connection."""
    return (socket.create_connection(("127.0.0.1", port)), f"/mvapireq/?{QUERY}\r\n".encode(),
            lambda buffer: buffer.find(b"\r\n") + 2 if b"\r\n" in buffer else 0)


def udp_client(port: int) -> tuple[socket.socket, bytes, Callable[[bytes], int]]:
    """A connected UDP socket (one datagram, one answer)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(("127.0.0.1", port))
    return sock, f"/mvapireq/?{QUERY}".encode(), lambda buffer: len(buffer)


def websocket_client(port: int) -> tuple[socket.socket, bytes, Callable[[bytes], int]]:
    """A WebSocket connection after the opening handshake; requests are masked text frames."""
    sock = socket.create_connection(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /mvstwebsock/ HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    reply = b""
    while b"\r\n\r\n" not in reply:
        reply += sock.recv(4096)
    payload = QUERY.encode()
    mask = os.urandom(4)
    frame = bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))

    def complete(buffer: bytes) -> int:
        if len(buffer) < 2:
            return 0
        length = buffer[1] & 0x7F
        header = 2
        if length == 126:
            if len(buffer) < 4:
                return 0
            length, header = struct.unpack("!H", buffer[2:4])[0], 4
        return header + length if len(buffer) >= header + length else 0

    return sock, frame, complete


def paced_udp(port: int, rate: float, seconds: float) -> tuple[int, int]:
    """Send datagrams at C{rate} per second (open loop); (sent, answered)."""
    import threading

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    sock.connect(("127.0.0.1", port))
    sock.settimeout(1.0)
    answered = [0]
    running = [True]

    def read() -> None:
        while running[0]:
            try:
                sock.recv(65536)
                answered[0] += 1
            except OSError:
                pass

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    request = f"/mvapireq/?{QUERY}".encode()
    sent = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        due = int((time.perf_counter() - started) * rate)
        while sent < due:
            sock.send(request)
            sent += 1
        time.sleep(0.001)
    time.sleep(1.0)
    running[0] = False
    reader.join()
    sock.close()
    return sent, answered[0]


def main() -> None:
    """Start mizud, measure each transport, print a report."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="mizud-transports-"))
    port = free_port()
    daemon = subprocess.Popen(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=", "mizud",
         "--set", f"database={folder / 'bench.sqlite'}", "--set", f"mainaport={port}", "--set", "sslportmain=0", "--set", "sipport=0", "--set", "localtsport=0",
         "--set", "httpserver=0", "--set", "listenaddress=127.0.0.1", "--set", f"apiv2key={KEY}",
         "--set", "apiv2md5salt=srv", "--set", f"bootstrapadmin={USER}:{PASSWORD}", "--set", "ratelimitip=0",
         "--set", "ratelimituser=0", "--set", "ratelimitglobal=0", "--set", "allowtrustedip=0"],
        cwd=folder, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    bare_port = free_port()
    bare = subprocess.Popen([sys.executable, "-c", BARE, str(bare_port)])
    try:
        wait_for(port, f"/mvapireq/?{QUERY}", b"OK: 0.00 USD")
        results = {}
        time.sleep(1)  # the bare server's start
        results["bare tcp"] = closed_loop(lambda: line_client(bare_port), args.seconds, args.connections)
        results["bare udp"] = closed_loop(lambda: udp_client(bare_port), args.seconds, args.connections)
        for name, client in (("http", http_client), ("tcp", line_client), ("websocket", websocket_client)):
            results[name] = closed_loop(lambda c=client: c(port), args.seconds, args.connections)
        before = udp_errors()
        results["udp"] = closed_loop(lambda: udp_client(port), args.seconds, args.connections)
        udp_lost = udp_errors() - before
        before = udp_errors()
        paced_rate = 0.8 * results["udp"]
        sent, answered = paced_udp(port, paced_rate, args.seconds)
        paced_lost = udp_errors() - before
    finally:
        daemon.terminate()
        daemon.wait()
        bare.terminate()
        bare.wait()
        shutil.rmtree(folder)
    http = results["http"]
    print(f"# transports {time.strftime('%Y-%m-%d %H:%M:%S')} on {platform.node()} {platform.machine()} "
          f"{os.cpu_count()} cores, Python {platform.python_version()}; {args.connections} requests in flight, "
          f"{args.seconds:.0f}s each")
    print("| transport | balance answers/s | ratio | goal |")
    print("|---|---|---|---|")
    print(f"| HTTP keep-alive | {http:.0f} | 1.00 | baseline |")
    for name, goal, base, label in (("tcp", 2.0, http, "HTTP"), ("udp", 1.3, http, "HTTP"),
                                    ("websocket", 0.6, results["tcp"], "TCP")):
        ratio = results[name] / base
        print(f"| {name} | {results[name]:.0f} | {ratio:.2f} of {label} | >= {goal}: {'met' if ratio >= goal else 'MISSED'} |")
    for name, label in (("tcp", "a bare LineReceiver"), ("udp", "a bare DatagramProtocol")):
        ratio = results[name] / results["bare " + name]
        print(f"| {name} (issue 19) | {results[name]:.0f} | {ratio:.2f} of {label} ({results['bare ' + name]:.0f}/s) "
              f"| >= 0.70: {'met' if ratio >= 0.7 else 'MISSED'} |")
    print(f"\nUDP receive-buffer errors during the closed-loop UDP run: {udp_lost}")
    print(f"Paced UDP at 80% of that maximum ({paced_rate:.0f}/s): {sent} sent, {answered} answered, "
          f"{paced_lost} receive-buffer errors (goal 0: {'met' if paced_lost == 0 else 'MISSED'})")


if __name__ == "__main__":
    main()
