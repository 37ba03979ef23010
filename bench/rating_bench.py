"""Rating engine: lookup cost, rebuild stalls, memory, and `rating` over HTTP.

    python bench/rating_bench.py [--prefixes 1000000] [--numbers 1000000] [--seconds 10]

1. Builds a SQLite database with N random prefixes (1 to 10 digits, 2,000
   distinct prices, 200 destination names) in one plan.
2. Loads it with mizud's Rater (a worker thread) while a 1 ms LoopingCall on
   the reactor records the longest gap: goal <= 50 ms.  Reports the load
   time and the memory the table takes (RSS before and after).
3. Looks up M random 12-digit numbers with RatingTable.lookup, and with a
   ten-line longest-prefix-first probe of a plain dict of the same prefixes
   in the same run: goal <= 1.5 x the plain probe.
4. Starts `twistd -n mizud` on that database and measures `rating` requests
   per second with wrk (keep-alive, 32 connections), when wrk is installed.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import os
import platform
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from twisted.internet import defer, task  # noqa: E402

from mizud.billing.rating import Rater, RatingTable  # noqa: E402
from mizud.store.schema import migrate  # noqa: E402


def rss_kib() -> int:
    """Resident memory of this process in KiB."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def make_database(path: str, count: int, rng: random.Random) -> list[str]:
    """A migrated SQLite database with C{count} random prefixes in plan 1."""
    migrate(path, "bench")
    prefixes: set[str] = set()
    while len(prefixes) < count:
        length = rng.randint(1, 10)
        prefixes.add(str(rng.randrange(10 ** (length - 1), 10**length)))
    prices = [rng.randrange(100, 500_000) for _ in range(2000)]  # micro-units
    names = [f"Destination {i}" for i in range(200)]
    connection = sqlite3.connect(path)
    connection.executemany(
        "INSERT INTO tb_tariffs (tariffid, prefix, name, price, connectfee, mininterval, interval, currency) "
        "VALUES (1, ?, ?, ?, 0, 0, 1, 'USD')",
        ((p, rng.choice(names), rng.choice(prices)) for p in prefixes),
    )
    connection.commit()
    connection.close()
    return sorted(prefixes)


def plain_probe(table: dict[str, object], number: str) -> object:
    """The baseline: longest prefix first in a plain dict, ten lines."""
    for length in range(min(len(number), 10), 0, -1):
        found = table.get(number[:length])
        if found is not None:
            return found
    return None


async def measure_rebuild(reactor: object, path: str) -> tuple[RatingTable, float, float, int]:
    """Load the table in a thread while timing the reactor's longest gap."""
    gaps: list[float] = []
    last = [time.perf_counter()]

    def tick() -> None:
        now = time.perf_counter()
        gaps.append(now - last[0])
        last[0] = now

    loop = task.LoopingCall(tick)
    loop.start(0.001)
    before = rss_kib()
    started = time.perf_counter()
    rater = Rater(path, reactor)
    table = await rater.rebuild()
    elapsed = time.perf_counter() - started
    loop.stop()
    return table, max(gaps), elapsed, rss_kib() - before


def http_rating(path: str, seconds: float) -> float | None:
    """rating requests per second over HTTP (wrk), or None without wrk."""
    if not shutil.which("wrk"):
        return None
    from http_api import free_port, load_wrk, wait_for

    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    folder = tempfile.mkdtemp(prefix="mizud-ratingbench-")
    daemon = subprocess.Popen(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=", "mizud",
         "--set", f"database={path}", "--set", f"mainaport={port}", "--set", "httpserver=0", "--set", "sslportmain=0", "--set", "sipport=0", "--set", "localtsport=0",
         "--set", "listenaddress=127.0.0.1", "--set", "apiv2key=k", "--set", "apiv2md5salt=srv",
         "--set", "bootstrapadmin=bench:benchpassword", "--set", "defaulttariff=1", "--set", "ratelimitip=0",
         "--set", "ratelimituser=0", "--set", "ratelimitglobal=0", "--set", "allowtrustedip=0"],
        cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    digest = hashlib.md5(b"ck5Gpbenchbenchpasswordsrv1").hexdigest()
    url = f"/mvapireq/?apientry=rating&authkey=k&authid=bench&authmd5={digest}&authsalt=1&bnum=36301234567"
    try:
        wait_for(port, url, b"OK: ", timeout=300)
        return load_wrk(port, url, seconds, 32)
    finally:
        daemon.terminate()
        daemon.wait()
        shutil.rmtree(folder)


async def main(reactor: object, args: argparse.Namespace) -> None:
    """Run every measurement and print a report."""
    rng = random.Random(20261122)
    folder = Path(tempfile.mkdtemp(prefix="mizud-rating-", dir=args.dir))
    path = str(folder / "rating.sqlite")
    try:
        prefixes = make_database(path, args.prefixes, rng)
        # Collect the set-up's garbage first, so that a collection it would
        # trigger anyway is not charged to the rebuild.
        gc.collect()
        table, longest_gap, load_time, memory = await measure_rebuild(reactor, path)
        numbers = [str(rng.randrange(10**11, 10**12)) for _ in range(args.numbers)]
        plain = {p: (p,) for p in prefixes}
        started = time.perf_counter()
        hits_plain = sum(1 for n in numbers if plain_probe(plain, n) is not None)
        plain_time = time.perf_counter() - started
        lookup = table.lookup
        started = time.perf_counter()
        hits = sum(1 for n in numbers if lookup(1, n) is not None)
        ours_time = time.perf_counter() - started
        assert hits == hits_plain, (hits, hits_plain)
        per_second = http_rating(path, args.seconds)
    finally:
        shutil.rmtree(folder)
    ratio = ours_time / plain_time
    print(f"# rating_bench {time.strftime('%Y-%m-%d %H:%M:%S')} on {platform.node()} {platform.machine()} "
          f"{os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"# {args.prefixes} prefixes, {args.numbers} numbers ({hits} matched)")
    print("| measure | result | goal |")
    print("|---|---|---|")
    print(f"| lookup, plain ten-line dict probe | {plain_time / args.numbers * 1e9:.0f} ns | baseline |")
    print(f"| lookup, RatingTable.lookup | {ours_time / args.numbers * 1e9:.0f} ns ({ratio:.2f}x) | <= 1.5x: "
          f"{'met' if ratio <= 1.5 else 'MISSED'} |")
    print(f"| rebuild in a thread | {load_time:.1f} s | |")
    print(f"| longest reactor gap during the rebuild (1 ms loop) | {longest_gap * 1000:.1f} ms | <= 50 ms: "
          f"{'met' if longest_gap <= 0.05 else 'MISSED'} |")
    print(f"| memory of the table (RSS growth) | {memory / 1024:.0f} MiB | |")
    if per_second is not None:
        print(f"| rating over HTTP (wrk, 32 keep-alive connections) | {per_second:.0f} requests/s | |")


def parse() -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prefixes", type=int, default=1_000_000)
    parser.add_argument("--numbers", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--dir", default=None, help="directory for the scratch database")
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse()
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, arguments)))
