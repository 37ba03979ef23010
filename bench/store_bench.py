"""Billing store throughput: debits/s and transfers/s on each engine.

    python bench/store_bench.py [--seconds 10] [--postgres DSN] [--dir DIR]

SQLite: the same operations with group commit (the default batch) and with
one synced commit per operation (batch of 1), with the same number of
callers in flight; goal: group commit at least 10x.  Every caller is
answered only after its own commit in both modes.

PostgreSQL (with --postgres or MIZUD_BENCH_POSTGRES): mizud's debits and
transfers, then pgbench running the same SQL (bench/pgbench_debit.sql,
bench/pgbench_transfer.sql) against the same server with the same number of
connections; goal: mizud at least 70% of pgbench.  The schema is created in
a fresh PostgreSQL schema and dropped afterwards.

After each run the ledger is audited: every balance must equal the sum of
its ledger rows, and transfers must keep the total.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any, Awaitable, Callable
from urllib.parse import quote

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from twisted.internet import defer, task  # noqa: E402

from mizud.store.billing import BillingStore  # noqa: E402
from mizud.store.database import open_database  # noqa: E402
from mizud.store.schema import migrate  # noqa: E402

USERS = 100
START_CREDIT = Decimal("1000000000")


async def drive(
    reactor: Any, seconds: float, callers: int, operation: Callable[[random.Random], Awaitable[Any]]
) -> tuple[int, float]:
    """Run C{callers} loops of C{operation} for C{seconds}; return (count, elapsed)."""
    done = 0
    stop_at = time.perf_counter() + seconds

    async def caller(seed: int) -> None:
        nonlocal done
        rng = random.Random(seed)
        while time.perf_counter() < stop_at:
            await operation(rng)
            done += 1

    started = time.perf_counter()
    await defer.gatherResults([defer.ensureDeferred(caller(i)) for i in range(callers)])
    return done, time.perf_counter() - started


async def measure_store(
    reactor: Any, database: str, seconds: float, callers: int, pool: int, batch: int
) -> dict[str, float]:
    """Debits/s and transfers/s through BillingStore on one database."""
    migrate(database, "bench")
    db = open_database(database, reactor, pool_size=pool, max_batch=batch)
    await db.start()
    store = BillingStore(db, reactor)
    users = [await store.create_user(f"bench{uuid.uuid4().hex[:8]}", "pw", credit=START_CREDIT) for _ in range(USERS)]
    total_before = sum([await store.balance(u) for u in users], Decimal(0))

    async def debit(rng: random.Random) -> None:
        await store.debit(rng.choice(users), "0.01")

    async def transfer(rng: random.Random) -> None:
        a, b = rng.sample(users, 2)
        await store.transfer(a, b, "0.01")

    debits, debit_time = await drive(reactor, seconds, callers, debit)
    transfers, transfer_time = await drive(reactor, seconds, callers, transfer)
    problems = await store.audit()
    total_after = sum([await store.balance(u) for u in users], Decimal(0))
    expected = total_before - Decimal("0.01") * debits
    await db.close()
    if problems or total_after != expected:
        raise SystemExit(f"LEDGER CHECK FAILED: {problems[:5]} total {total_after} != {expected}")
    return {"debits": debits / debit_time, "transfers": transfers / transfer_time, "ops": debits + transfers}


def with_schema(dsn: str, schema: str) -> str:
    """The DSN with search_path set to C{schema}."""
    joiner = "&" if "?" in dsn else "?"
    return f"{dsn}{joiner}options={quote(f'-csearch_path={schema}')}"


def pgbench(dsn: str, script: Path, seconds: float, clients: int) -> float:
    """Run pgbench with a custom script; return its transactions per second."""
    binary = shutil.which("pgbench") or next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin/pgbench"))), None)
    if binary is None:
        raise SystemExit("pgbench not found (Debian package postgresql-client or postgresql)")
    result = subprocess.run(
        [str(binary), "-n", "-f", str(script), "-D", f"nusers={USERS}", "-c", str(clients),
         "-j", str(min(clients, 2)), "-T", str(int(seconds)), dsn],
        capture_output=True, text=True, check=True,
    )
    match = re.search(r"tps = ([\d.]+)", result.stdout)
    if not match:
        raise SystemExit(f"cannot read pgbench output:\n{result.stdout}\n{result.stderr}")
    return float(match.group(1))


async def main(reactor: Any, args: argparse.Namespace) -> None:
    """Run every measurement and print a report."""
    print(f"# store_bench {time.strftime('%Y-%m-%d %H:%M:%S')} on {platform.node()} "
          f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"# {args.seconds:.0f}s per measurement, {args.callers} callers in flight, {USERS} users")
    folder = Path(tempfile.mkdtemp(prefix="mizud-bench-", dir=args.dir))
    try:
        group = await measure_store(reactor, str(folder / "group.sqlite"), args.seconds, args.callers, 1, 256)
        single = await measure_store(reactor, str(folder / "single.sqlite"), args.seconds, args.callers, 1, 1)
    finally:
        shutil.rmtree(folder)
    print("\n## SQLite (WAL, synchronous=FULL)")
    print("| operation | one commit per op /s | group commit /s | ratio | goal >= 10x |")
    print("|---|---|---|---|---|")
    for op in ("debits", "transfers"):
        ratio = group[op] / single[op]
        print(f"| {op} | {single[op]:.0f} | {group[op]:.0f} | {ratio:.1f}x | {'met' if ratio >= 10 else 'MISSED'} |")

    dsn = args.postgres or os.environ.get("MIZUD_BENCH_POSTGRES")
    if not dsn:
        print("\n(PostgreSQL skipped: pass --postgres DSN)")
        return
    import psycopg2

    schema = "bench_" + uuid.uuid4().hex[:8]
    admin = psycopg2.connect(dsn)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f"CREATE SCHEMA {schema}")
    try:
        scoped = with_schema(dsn, schema)
        ours = await measure_store(reactor, scoped, args.seconds, args.callers, args.pool, 1)
        theirs = {
            "debits": pgbench(scoped, HERE / "pgbench_debit.sql", args.seconds, args.pool),
            "transfers": pgbench(scoped, HERE / "pgbench_transfer.sql", args.seconds, args.pool),
        }
        with admin.cursor() as cursor:
            cursor.execute(
                f"SELECT count(*) FROM {schema}.tb_users u WHERE credit <> "
                f"(SELECT coalesce(sum(amount), 0) FROM {schema}.tb_credits c WHERE c.userid = u.id)"
            )
            if cursor.fetchone()[0]:
                raise SystemExit("LEDGER CHECK FAILED after pgbench")
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f"DROP SCHEMA {schema} CASCADE")
        admin.close()
    print(f"\n## PostgreSQL ({args.pool} connections each)")
    print("| operation | pgbench, same SQL /s | mizud /s | ratio | goal >= 70% |")
    print("|---|---|---|---|---|")
    for op in ("debits", "transfers"):
        ratio = ours[op] / theirs[op]
        print(f"| {op} | {theirs[op]:.0f} | {ours[op]:.0f} | {ratio:.0%} | {'met' if ratio >= 0.7 else 'MISSED'} |")
    print("\nLedger audit: every balance equals its ledger sum; totals conserved.")


def parse() -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--callers", type=int, default=64, help="operations in flight at once")
    parser.add_argument("--pool", type=int, default=8, help="PostgreSQL connections (and pgbench clients)")
    parser.add_argument("--postgres", help="DSN of a PostgreSQL database to create a scratch schema in")
    parser.add_argument("--dir", default=None, help="directory for the SQLite files (on a real disk)")
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse()
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, arguments)))
