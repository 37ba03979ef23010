"""HTTP API throughput: mizud's `balance` with authmd5 against a bare twisted.web resource.

    python bench/http_api.py [--seconds 10] [--connections 32] [--rounds 3]

Both servers run as their own processes on 127.0.0.1 and are loaded by the
same generator in the same run (mizud on SQLite, and with --postgres DSN
also on PostgreSQL, in a fresh schema): wrk (Debian package wrk) when installed,
else a small Python keep-alive client.  mizud runs `twistd -n mizud` on a
fresh SQLite database with one user; each request is
`/mvapireq/?apientry=balance&authkey=..&authid=..&authmd5=..&authsalt=..`
(the simplified authmd5, computed here from the spec's formula).  The bare
server answers `OK: 12.34` from a twisted.web Resource on the same reactor
type.  Goal: mizud at least 70% of the bare resource's requests per second.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

BARE = """
import sys
from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import Site

class Fixed(Resource):
    isLeaf = True
    def render_GET(self, request):
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"OK: 12.34"

class Quiet(Site):
    def log(self, request):
        pass

reactor.listenTCP(int(sys.argv[1]), Quiet(Fixed()), interface="127.0.0.1")
reactor.run()
"""


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for(port: int, path: str, expect: bytes, timeout: float = 30) -> None:
    """Poll until GET path answers with C{expect}."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as conn:
                conn.sendall(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
                data = b""
                while chunk := conn.recv(65536):
                    data += chunk
            if expect in data:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"server on port {port} did not answer {expect!r}")


def load_wrk(port: int, path: str, seconds: float, connections: int) -> float:
    """Requests per second measured by wrk."""
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{int(seconds)}s", f"http://127.0.0.1:{port}{path}"],
        capture_output=True, text=True, check=True,
    ).stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise SystemExit(f"wrk saw errors:\n{out}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]


def load_python(port: int, path: str, seconds: float, connections: int) -> float:
    """Requests per second from a simple keep-alive client (when wrk is missing)."""
    import selectors

    request = f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    selector = selectors.DefaultSelector()
    buffers = {}
    for _ in range(connections):
        conn = socket.create_connection(("127.0.0.1", port))
        conn.setblocking(False)
        conn.sendall(request)
        buffers[conn] = b""
        selector.register(conn, selectors.EVENT_READ)
    done = 0
    stop = time.perf_counter() + seconds
    started = time.perf_counter()
    while time.perf_counter() < stop:
        for key, _ in selector.select(timeout=1):
            conn = key.fileobj
            buffers[conn] += conn.recv(65536)  # type: ignore[union-attr]
            while b"\r\n\r\n" in buffers[conn]:
                head, _, rest = buffers[conn].partition(b"\r\n\r\n")
                length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
                if len(rest) < length:
                    break
                buffers[conn] = rest[length:]
                done += 1
                conn.sendall(request)  # type: ignore[union-attr]
    elapsed = time.perf_counter() - started
    for conn in buffers:
        conn.close()
    return done / elapsed


def median(values: list[float]) -> float:
    """Median of a non-empty list."""
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def start_mizud(database: str, folder: Path, port: int, key: str, user: str, password: str) -> subprocess.Popen[bytes]:
    """mizud (twistd) on C{database}, only the HTTP API listener, no rate limits."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=", "mizud",
         "--set", f"database={database}", "--set", f"mainaport={port}",
         "--set", "sslportmain=0", "--set", "sipport=0", "--set", "localtsport=0", "--set", "httpserver=0",
         "--set", "mainaportudp=0", "--set", "adminport=0",
         "--set", "listenaddress=127.0.0.1", "--set", f"apiv2key={key}", "--set", "apiv2md5salt=srv",
         "--set", f"bootstrapadmin={user}:{password}", "--set", "ratelimitip=0", "--set", "ratelimituser=0",
         "--set", "ratelimitglobal=0", "--set", "allowtrustedip=0"],
        cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def main() -> None:
    """Start the servers, load each in interleaved rounds, report medians."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--postgres", default=os.environ.get("MIZUD_BENCH_POSTGRES", ""),
                        help="also run mizud on this PostgreSQL DSN (in a fresh schema, dropped afterwards)")
    args = parser.parse_args()
    load = load_wrk if shutil.which("wrk") else load_python
    folder = Path(tempfile.mkdtemp(prefix="mizud-httpbench-"))
    salt, key, user, password = "4711", "benchkey", "bench", "benchpassword"
    engines = [("SQLite", str(folder / "bench.sqlite"))]
    schema = ""
    if args.postgres:
        import psycopg2
        from urllib.parse import quote

        schema = "bench_" + os.urandom(6).hex()
        admin = psycopg2.connect(args.postgres)
        admin.autocommit = True
        admin.cursor().execute(f"CREATE SCHEMA {schema}")
        joiner = "&" if "?" in args.postgres else "?"
        engines.append(("PostgreSQL", f"{args.postgres}{joiner}options={quote(f'-csearch_path={schema}')}"))
    bare_port = free_port()
    bare = subprocess.Popen([sys.executable, "-c", BARE, str(bare_port)], stdout=subprocess.DEVNULL)
    digest = hashlib.md5(("ck5Gp" + user + password + "srv" + salt).encode()).hexdigest()
    path = f"/mvapireq/?apientry=balance&authkey={key}&authid={user}&authmd5={digest}&authsalt={salt}"
    results: dict[str, tuple[list[float], list[float]]] = {}
    try:
        wait_for(bare_port, "/", b"OK: 12.34")
        for name, database in engines:
            port = free_port()
            mizud = start_mizud(database, folder, port, key, user, password)
            try:
                wait_for(port, path, b"OK: 0.00 USD")
                ours, theirs = results.setdefault(name, ([], []))
                for _ in range(args.rounds):
                    ours.append(load(port, path, args.seconds, args.connections))
                    theirs.append(load(bare_port, "/", args.seconds, args.connections))
            finally:
                mizud.terminate()
                mizud.wait()
    finally:
        bare.terminate()
        bare.wait()
        shutil.rmtree(folder)
        if schema:
            admin.cursor().execute(f"DROP SCHEMA {schema} CASCADE")
            admin.close()
    print(f"# http_api {time.strftime('%Y-%m-%d %H:%M:%S')} on {platform.node()} {platform.machine()} "
          f"{os.cpu_count()} cores, Python {platform.python_version()}, load by {load.__name__[5:]}")
    print(f"# {args.rounds} interleaved rounds of {args.seconds:.0f}s, {args.connections} keep-alive connections")
    print("| database | bare twisted.web requests/s | mizud balance with authmd5 requests/s | ratio (rounds) |")
    print("|---|---|---|---|")
    for name, (ours, theirs) in results.items():
        ratios = [o / t for o, t in zip(ours, theirs)]
        spread = ", ".join(f"{r:.0%}" for r in ratios)
        verdict = "met" if median(ratios) >= 0.7 else "MISSED"
        print(f"| {name} | {median(theirs):.0f} | {median(ours):.0f} | {median(ratios):.0%} ({spread}); "
              f"goal >= 70%: {verdict} |")


if __name__ == "__main__":
    main()
