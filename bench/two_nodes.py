"""Two mizud nodes on one PostgreSQL against one node: `balance` throughput and the database's share.

Usage:
    python bench/two_nodes.py --postgres postgresql://USER:PASSWORD@127.0.0.1/DBNAME [--seconds 15]

The script makes a fresh schema in that database, starts two daemons
(`twistd -n mizud`, node-a and node-b) on it, creates a user, and measures:

1. one node: wrk with 2 x CONNECTIONS connections against node A alone;
2. two nodes: two wrk processes with CONNECTIONS connections each, one per node, at the same time.

Each run asks `balance` with the user's password for --seconds seconds (no
rate limits). Reported per run: requests/s, the CPU seconds of the mizud
processes and of every PostgreSQL server process (utime+stime from /proc over
the run), and the database's share of that CPU. Then the two-node/one-node
throughput ratio. On a machine with few cores the nodes, PostgreSQL and wrk
share them, which the ratio shows.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

from treerun import CLK_TCK, cpu_ticks

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def cpu_seconds(pids: list[int]) -> float:
    """utime+stime of the processes (all threads), in seconds."""
    return cpu_ticks(pids) / CLK_TCK


def postgres_pids() -> list[int]:
    """Every PostgreSQL server process on this machine."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() in ("postgres", "postmaster"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def start_node(folder: Path, name: str, database: str) -> tuple[subprocess.Popen[str], int]:
    """A daemon; returns it and its HTTP port once the API is ready."""
    port = free_port()
    twistd = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile="]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [*twistd, "mizud", "--set", f"database={database}", "--set", f"nodename={name}",
         "--set", "listenaddress=127.0.0.1", "--set", f"mainaport={port}", "--set", "mainaportudp=0",
         "--set", "httpserver=0", "--set", "sslportmain=0", "--set", "sipport=0", "--set", "localtsport=0",
         "--set", "bootstrapadmin=admin:admin-password", "--set", "ratelimitip=0", "--set", "ratelimituser=0",
         "--set", "ratelimitglobal=0"],
        cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        if "API ready" in line:
            # Drain the rest in the background so the daemon never blocks on its pipe.
            subprocess.Popen(["cat"], stdin=process.stdout, stdout=subprocess.DEVNULL)
            return process, port
    raise SystemExit(f"{name} did not start")


def wrk(port: int, connections: int, seconds: int) -> subprocess.Popen[str]:
    """wrk asking balance for the bench user."""
    url = f"http://127.0.0.1:{port}/mvapireq/?apientry=balance&authid=bench&authpwd=bench-pw"
    return subprocess.Popen([shutil.which("wrk") or "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", url],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def requests_of(output: str) -> int:
    """The request count wrk reports."""
    found = re.search(r"(\d+) requests in", output)
    return int(found.group(1)) if found else 0


def measure(ports: list[int], connections: int, seconds: int, nodes: list[int]) -> tuple[float, float, float]:
    """(requests/s, mizud CPU s, PostgreSQL CPU s) of one run."""
    pg = postgres_pids()
    mizud_before, pg_before = cpu_seconds(nodes), cpu_seconds(pg)
    runs = [wrk(port, connections, seconds) for port in ports]
    total = sum(requests_of(run.communicate()[0]) for run in runs)
    return total / seconds, cpu_seconds(nodes) - mizud_before, cpu_seconds(pg) - pg_before


def main() -> None:
    """Run both measurements and print them."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--postgres", required=True, help="a PostgreSQL DSN (a schema is created in it)")
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--connections", type=int, default=16, help="per node in the two-node run")
    args = parser.parse_args()
    import psycopg2

    schema = "bench_" + uuid.uuid4().hex[:8]
    admin = psycopg2.connect(args.postgres)
    admin.autocommit = True
    admin.cursor().execute(f"CREATE SCHEMA {schema}")
    joiner = "&" if "?" in args.postgres else "?"
    database = f"{args.postgres}{joiner}options={urllib.parse.quote(f'-csearch_path={schema}')}"
    folder = Path(tempfile.mkdtemp())
    nodes = []
    try:
        for name in ("node-a", "node-b"):
            (folder / name).mkdir()
            nodes.append(start_node(folder / name, name, database))
        (a, port_a), (b, port_b) = nodes
        query = urllib.parse.urlencode({"apientry": "newuseri", "u_username": "bench", "u_password": "bench-pw",
                                        "authid": "admin", "authpwd": "admin-password"})
        urllib.request.urlopen(f"http://127.0.0.1:{port_a}/mvapireq/?{query}", timeout=30).read()
        pids = [a.pid, b.pid]
        wrk(port_a, 4, 2).communicate()  # warm-up
        wrk(port_b, 4, 2).communicate()
        one = measure([port_a], 2 * args.connections, args.seconds, pids)
        two = measure([port_a, port_b], args.connections, args.seconds, pids)
        for label, (rate, mizud_cpu, pg_cpu) in (("one node ", one), ("two nodes", two)):
            share = pg_cpu / (pg_cpu + mizud_cpu) if pg_cpu + mizud_cpu else 0.0
            print(f"{label}: {rate:8.1f} balance/s  mizud CPU {mizud_cpu:5.1f} s  PostgreSQL CPU {pg_cpu:5.1f} s  "
                  f"database share {share:.0%}")
        print(f"ratio two nodes / one node: {two[0] / one[0]:.2f}")
    finally:
        for process, _ in nodes:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
        admin.cursor().execute(f"DROP SCHEMA {schema} CASCADE")
        admin.close()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
