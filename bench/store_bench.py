"""Billing store throughput: debits/s and transfers/s on each engine.

    python bench/store_bench.py [--seconds 10] [--postgres DSN] [--dir DIR]

SQLite: the same operations with group commit (the default batch) and with
one synced commit per operation (batch of 1), with the same number of
callers in flight; goal: group commit at least 10x.  Every caller is
answered only after its own commit in both modes.  Then the baseline of
issue 19: a plain Python sqlite3 loop on its own connection (WAL, synced
commits, the same settings) running the debit's own statements (imported
from mizud.store.billing) with the same commit grouping as mizud's
group-commit run had (its transactions per commit); goal: mizud's debits at
least 50% of it.

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
from datetime import datetime
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


class StoreRun:
    """A migrated database with seeded users, measured in rounds."""

    def __init__(self, reactor: Any, database: str, callers: int, pool: int, batch: int) -> None:
        self.grouping: list[float] = []
        self.reactor = reactor
        self.database = database
        self.callers = callers
        self.pool = pool
        self.batch = batch
        self.debited = 0

    async def open(self) -> None:
        """Migrate, open, and create the users."""
        migrate(self.database, "bench")
        self.db = open_database(self.database, self.reactor, pool_size=self.pool, max_batch=self.batch)
        await self.db.start()
        self.store = BillingStore(self.db, self.reactor)
        self.users = [
            await self.store.create_user(f"bench{uuid.uuid4().hex[:8]}", "pw", credit=START_CREDIT)
            for _ in range(USERS)
        ]
        self.total = sum([await self.store.balance(u) for u in self.users], Decimal(0))

    async def rate(self, operation: str, seconds: float) -> float:
        """Operations per second of debits or transfers for C{seconds}."""
        store, users = self.store, self.users

        async def debit(rng: random.Random) -> None:
            await store.debit(rng.choice(users), "0.01")

        async def transfer(rng: random.Random) -> None:
            a, b = rng.sample(users, 2)
            await store.transfer(a, b, "0.01")

        commits, transactions = getattr(self.db, "commits", 0), getattr(self.db, "transactions", 0)
        count, elapsed = await drive(self.reactor, seconds, self.callers, debit if operation == "debits" else transfer)
        if operation == "debits":
            self.debited += count
            made = getattr(self.db, "commits", 0) - commits
            if made:
                self.grouping.append((getattr(self.db, "transactions", 0) - transactions) / made)
        return count / elapsed

    async def close(self) -> None:
        """Audit the ledger and the total, then close."""
        problems = await self.store.audit()
        total = sum([await self.store.balance(u) for u in self.users], Decimal(0))
        expected = self.total - Decimal("0.01") * self.debited
        await self.db.close()
        if problems or total != expected:
            raise SystemExit(f"LEDGER CHECK FAILED: {problems[:5]} total {total} != {expected}")


def plain_sqlite_debits(path: str, users: list[int], seconds: float, grouping: int) -> float:
    """Debits per second of a plain sqlite3 loop: mizud's debit statements, C{grouping} per synced commit."""
    from mizud.store.billing import _CAN_PAY, _INSERT_LEDGER, _UPDATE_BALANCE
    from mizud.store.database import connect_sqlite
    from mizud.store.engines import SqliteEngine

    engine = SqliteEngine()
    connection = connect_sqlite(path)
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("PRAGMA synchronous = FULL")
    update = _UPDATE_BALANCE.format(check=f"AND {_CAN_PAY} ")
    amount = -Decimal("0.01")
    rng = random.Random(1)
    done = 0
    started = time.perf_counter()
    stop = started + seconds
    while time.perf_counter() < stop:
        connection.execute("BEGIN IMMEDIATE")
        for _ in range(grouping):
            userid = rng.choice(users)
            changed = connection.execute(update, engine.params((amount, userid, amount))).fetchone()
            connection.execute(_INSERT_LEDGER, engine.params(
                (userid, amount, changed[1], "debit", "", None, "", datetime.utcnow()))).fetchone()
        connection.execute("COMMIT")
        done += grouping
    elapsed = time.perf_counter() - started
    connection.close()
    return done / elapsed


def median(values: list[float]) -> float:
    """The median of a non-empty list."""
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def with_schema(dsn: str, schema: str) -> str:
    """The DSN with search_path set to C{schema}."""
    joiner = "&" if "?" in dsn else "?"
    return f"{dsn}{joiner}options={quote(f'-csearch_path={schema}')}"


def pgbench(dsn: str, script: Path, seconds: float, clients: int) -> tuple[float, int]:
    """Run pgbench with a custom script; return (transactions per second, transactions)."""
    binary = shutil.which("pgbench") or next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin/pgbench"))), None)
    if binary is None:
        raise SystemExit("pgbench not found (Debian package postgresql-client or postgresql)")
    result = subprocess.run(
        [str(binary), "-n", "-f", str(script), "-D", f"nusers={USERS}", "-c", str(clients),
         "-j", str(min(clients, 2)), "-T", str(int(seconds)), dsn],
        capture_output=True, text=True, check=True,
    )
    match = re.search(r"tps = ([\d.]+)", result.stdout)
    count = re.search(r"number of transactions actually processed: (\d+)", result.stdout)
    if not match or not count:
        raise SystemExit(f"cannot read pgbench output:\n{result.stdout}\n{result.stderr}")
    return float(match.group(1)), int(count.group(1))


OPERATIONS = ("debits", "transfers")


async def main(reactor: Any, args: argparse.Namespace) -> None:
    """Run every measurement in interleaved rounds and print a report of medians."""
    print(f"# store_bench {time.strftime('%Y-%m-%d %H:%M:%S')} on {platform.node()} "
          f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"# {args.rounds} interleaved rounds of {args.seconds:.0f}s per measurement, "
          f"{args.callers} callers in flight, {USERS} users; medians")
    folder = Path(tempfile.mkdtemp(prefix="mizud-bench-", dir=args.dir))
    group = StoreRun(reactor, str(folder / "group.sqlite"), args.callers, 1, 256)
    single = StoreRun(reactor, str(folder / "single.sqlite"), args.callers, 1, 1)
    plain = StoreRun(reactor, str(folder / "plain.sqlite"), args.callers, 1, 256)
    rates: dict[tuple[str, str], list[float]] = {}
    try:
        await group.open()
        await single.open()
        await plain.open()
        await plain.db.close()  # seeded; the plain loop has its own connection
        for _ in range(args.rounds):
            for op in OPERATIONS:
                for label, run in (("single", single), ("group", group)):
                    rates.setdefault((label, op), []).append(await run.rate(op, args.seconds))
            grouping = max(1, round(group.grouping[-1]))
            rates.setdefault(("plain", "debits"), []).append(
                plain_sqlite_debits(plain.database, plain.users, args.seconds, grouping))
        await group.close()
        await single.close()
    finally:
        shutil.rmtree(folder)
    print("\n## SQLite (WAL, synchronous=FULL)")
    print("| operation | one commit per op /s | group commit /s | ratio | goal >= 10x |")
    print("|---|---|---|---|---|")
    for op in OPERATIONS:
        one, many = median(rates["single", op]), median(rates["group", op])
        ratio = many / one
        print(f"| {op} | {one:.0f} | {many:.0f} | {ratio:.1f}x | {'met' if ratio >= 10 else 'MISSED'} |")
    ours, theirs = median(rates["group", "debits"]), median(rates["plain", "debits"])
    print(f"\n| debits, group commit | plain sqlite3 loop, same statements and grouping "
          f"({median(group.grouping):.1f} per commit) /s | mizud /s | ratio | goal >= 50% |")
    print("|---|---|---|---|---|")
    print(f"| SQLite | {theirs:.0f} | {ours:.0f} | {ours / theirs:.0%} | {'met' if ours / theirs >= 0.5 else 'MISSED'} |")

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
    ratios: dict[str, list[float]] = {}
    try:
        scoped = with_schema(dsn, schema)
        ours = StoreRun(reactor, scoped, args.callers, args.pool, 1)
        await ours.open()
        scripts = {"debits": HERE / "pgbench_debit.sql", "transfers": HERE / "pgbench_transfer.sql"}
        for _ in range(args.rounds):
            for op in OPERATIONS:
                mine = await ours.rate(op, args.seconds)
                theirs, transactions = pgbench(scoped, scripts[op], args.seconds, args.pool)
                if op == "debits":
                    ours.debited += transactions  # pgbench debits the same users
                rates.setdefault(("mizud", op), []).append(mine)
                rates.setdefault(("pgbench", op), []).append(theirs)
                ratios.setdefault(op, []).append(mine / theirs)
        await ours.close()
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
    print("| operation | pgbench, same SQL /s | mizud /s | ratio (median of rounds) | goal >= 70% |")
    print("|---|---|---|---|---|")
    for op in OPERATIONS:
        ratio = median(ratios[op])
        spread = ", ".join(f"{r:.0%}" for r in ratios[op])
        print(f"| {op} | {median(rates['pgbench', op]):.0f} | {median(rates['mizud', op]):.0f} | "
              f"{ratio:.0%} ({spread}) | {'met' if ratio >= 0.7 else 'MISSED'} |")
    print("\nLedger audit: every balance equals its ledger sum; totals conserved.")


def parse() -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    parser.add_argument("--callers", type=int, default=64, help="operations in flight at once")
    parser.add_argument("--pool", type=int, default=8, help="PostgreSQL connections (and pgbench clients)")
    parser.add_argument("--postgres", help="DSN of a PostgreSQL database to create a scratch schema in")
    parser.add_argument("--dir", default=None, help="directory for the SQLite files (on a real disk)")
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse()
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, arguments)))
