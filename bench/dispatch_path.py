"""CPU per API request on the dispatcher's path, without a network: decode, every check, the handler, encode.

    python bench/dispatch_path.py [--requests 20000] [--rounds 5] [--tree DIR ...]
    python bench/dispatch_path.py --instructions [--tree DIR ...]
    python bench/dispatch_path.py --profile [--requests 20000]

Each tree (a checkout of mizud; default: this one) runs in its own
process, in turn, for several interleaved rounds: a fresh SQLite
database with one user, then C{--requests} times the same
C{balance} request with the simplified authmd5 (as bench/http_api.py
sends it) decoded, dispatched and encoded as text.  Reported per tree:
the median CPU microseconds per request (process time) over the rounds.
Running two trees in one run (the code before and after a change) gives
their ratio on the same machine at the same time; this is the part of
bench/http_api.py's cost that the API code decides, with twisted.web's
and the kernel's share (and most of the noise of a loaded machine) left
out.

On a virtual machine the process time of the same work varies by 20% or
more from round to round (other guests, frequency changes).  With
C{--instructions} the script counts instead the instructions the process
executes, with valgrind's callgrind, which are the same from run to run
whatever else the machine does: each tree runs once with 500 and once
with 2500 measured requests, and the difference divided by 2000 is the
instructions per request (start-up, migration and warm-up cancel out).
Slow (about a minute per run) but exact enough to compare two trees.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import treerun
from treerun import REACTOR_TAIL

ROOT = Path(__file__).resolve().parent.parent

RUN = r'''
import hashlib, sys, tempfile, time
from pathlib import Path
from twisted.internet import defer
from twisted.internet import reactor
from mizud.api.answer import encode
from mizud.api import dispatcher
from mizud.api.functions import build_registry
from mizud.api.request import decode
from mizud.billing.rating import Rater
from mizud.config import Settings
from mizud.store.billing import BillingStore
from mizud.store.database import open_database
from mizud.store.schema import migrate

KEY, SALT = "benchkey", "benchsalt"
requests = int(sys.argv[1])

async def main():
    path = str(Path(tempfile.mkdtemp()) / "bench.sqlite")
    migrate(path, "2026-01-01")
    db = open_database(path, reactor)
    await db.start()
    store = BillingStore(db, reactor)
    await store.create_user("alice", "alicepw", credit="12.34")
    settings = Settings(None, (f"apiv2key={KEY}", f"apiv2md5salt={SALT}", "ratelimitip=0", "ratelimituser=0",
                               "ratelimitglobal=0"))
    # Dispatcher since issue 17 (Api before it): the script measures either tree.
    Dispatcher = getattr(dispatcher, "Dispatcher", None) or getattr(dispatcher, "Api")
    api = Dispatcher(settings, build_registry(), store, reactor, Rater(path, reactor))
    await api.reload_access()
    salt = "s1"
    md5 = hashlib.md5(("ck5Gp" + "alice" + "alicepw" + SALT + salt).encode()).hexdigest()
    query = f"apientry=balance&authkey={KEY}&authid=alice&authmd5={md5}&authsalt={salt}"
    for _ in range(500):  # warm-up
        await api.dispatch(decode(query=query, source="127.0.0.1"))
    started = time.process_time()
    for _ in range(requests):
        answered = await api.dispatch(decode(query=query, source="127.0.0.1"))
        encode(answered, "text")
    spent = time.process_time() - started
    assert answered.ok, answered.text
    print(f"{spent / requests * 1e6:.2f}")
    await db.close()
'''
RUN += REACTOR_TAIL


def measure(tree: Path, requests: int) -> float:
    """CPU microseconds per request in one fresh process running C{tree}'s code."""
    return treerun.measure(tree, RUN, [str(requests)], timeout=600)


def instructions(tree: Path, requests: int) -> int:
    """Instructions callgrind counts for one process running C{tree}'s code with C{requests} requests."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    done = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, "-c",
                           RUN, str(requests)], env=env, cwd=tree, capture_output=True, text=True, timeout=1800)
    counted = [line for line in done.stderr.splitlines() if "Collected :" in line]
    if done.returncode != 0 or not counted:
        raise SystemExit(f"{tree}: failed\n{done.stdout}\n{done.stderr[-2000:]}")
    return int(counted[-1].split(":")[-1].strip())


def profile(tree: Path, requests: int, top: int = 25) -> None:
    """Where the time of C{requests} requests goes: cProfile's functions by own time (tottime), then the
    share of the whole that the API's own modules (mizud/), twisted, and the rest take."""
    rows = treerun.cprofile(tree, RUN, [str(requests)])
    total = sum(row[2] for row in rows.values())
    shares: dict[str, float] = {}
    for (filename, _, _), row in rows.items():
        part = ("mizud" if "/mizud/" in filename else "twisted" if "/twisted/" in filename
                else "sqlite3" if "sqlite3" in filename else "other")
        shares[part] = shares.get(part, 0.0) + row[2]
    print(f"# dispatch_path --profile {time.strftime('%Y-%m-%d %H:%M:%S')} on {platform.node()} "
          f"{platform.machine()}, Python {platform.python_version()}; {requests} requests, start-up included")
    print("| part | own time share |")
    print("|---|---|")
    for part, value in sorted(shares.items(), key=lambda item: -item[1]):
        print(f"| {part} | {100 * value / total:.1f}% |")
    print()
    treerun.print_functions(rows, tree, top)


def count_instructions(trees: list[Path]) -> None:
    """Instructions per request for each tree (the difference of two runs)."""
    few, many = 500, 2500
    per: dict[Path, float] = {}
    for tree in trees:
        per[tree] = (instructions(tree, many) - instructions(tree, few)) / (many - few)
    print(f"# dispatch_path --instructions {time.strftime('%Y-%m-%d %H:%M:%S')} on {platform.node()} "
          f"{platform.machine()}, Python {platform.python_version()}, valgrind callgrind")
    print("| tree | instructions/request |")
    print("|---|---|")
    for tree, value in per.items():
        print(f"| {tree.name} | {value:,.0f} |")
    if len(trees) == 2:
        print(f"\nratio {trees[1].name} / {trees[0].name}: {per[trees[1]] / per[trees[0]]:.3f}")


def main() -> None:
    """Run the rounds and print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tree", action="append", type=Path, help="a checkout to measure (repeatable)")
    parser.add_argument("--instructions", action="store_true", help="count instructions with callgrind instead")
    parser.add_argument("--profile", action="store_true", help="where the time goes (cProfile), first tree only")
    args = parser.parse_args()
    trees = [tree.resolve() for tree in (args.tree or [ROOT])]
    if args.profile:
        profile(trees[0], args.requests)
        return
    if args.instructions:
        count_instructions(trees)
        return
    results: dict[Path, list[float]] = {tree: [] for tree in trees}
    for _ in range(args.rounds):
        for tree in trees:
            results[tree].append(measure(tree, args.requests))
    print(f"# dispatch_path {time.strftime('%Y-%m-%d %H:%M:%S')} on {platform.node()} {platform.machine()} "
          f"{os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"# {args.rounds} interleaved rounds of {args.requests} balance requests (authmd5), SQLite")
    print("| tree | CPU us/request (median) | rounds |")
    print("|---|---|---|")
    for tree, values in results.items():
        print(f"| {tree.name} | {statistics.median(values):.1f} | {', '.join(f'{v:.1f}' for v in values)} |")
    if len(trees) == 2:
        first, second = (statistics.median(results[t]) for t in trees)
        print(f"\nratio {trees[1].name} / {trees[0].name}: {second / first:.3f}")


if __name__ == "__main__":
    main()
