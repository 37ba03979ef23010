"""CPU per REGISTER on the registrar's path, without a network: parse, checks, digest, bindings, response.

    python bench/register_path.py [--registrations 20000] [--users 2000] [--rounds 3] [--tree DIR ...]
    python bench/register_path.py --profile [--registrations 20000]

Each tree (a checkout of mizud; default: this one) runs in its own process,
in turn, for interleaved rounds: a fresh SQLite database with C{--users}
users, each registered once (warm-up), then C{--registrations} times the
exchange sipp's register_only scenario makes (REGISTER, 401, REGISTER with
digest credentials, 200), the users in turn, so almost every registration
is a refresh of an unchanged binding, as in bench/sip_register.sh.  The
datagrams go straight into the SIP core (no sockets), in batches of 100
answered before the next.  Reported: the median CPU microseconds per
registration (both requests; process time, the writer thread included).
With C{--profile}, cProfile's functions by own time instead.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import treerun
from treerun import REACTOR_TAIL

ROOT = Path(__file__).resolve().parent.parent

RUN = r'''
import hashlib, os, sys, tempfile, time
from pathlib import Path
from twisted.internet import defer, task
from twisted.internet import reactor
from mizud.api.dispatcher import Dispatcher
from mizud.api.functions import build_registry
from mizud.api.sipbridge import backend_for
from mizud.billing.rating import Rater
from mizud.config import Settings
from mizud.sip.core import SipCore
from mizud.sip.digest import parse_credentials
from mizud.sip.message import parse_datagram
from mizud.sip.transaction import Source
from mizud.store.billing import BillingStore
from mizud.store.database import open_database
from mizud.store.schema import migrate

registrations, users = int(sys.argv[1]), int(sys.argv[2])
BATCH = 100

def md5(text):
    return hashlib.md5(text.encode()).hexdigest()

class Phone:
    def __init__(self, n):
        self.user, self.password, self.cseq = f"u{n}", f"p{n}", 0
        self.port = 20000 + n
        self.call_id = f"{n}-{os.urandom(4).hex()}@bench"

    def register(self, authorization=""):
        self.cseq += 1
        lines = [
            "REGISTER sip:bench.example SIP/2.0",
            f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch=z9hG4bK{os.urandom(5).hex()};rport",
            "Max-Forwards: 70",
            f"From: <sip:{self.user}@bench.example>;tag={os.urandom(3).hex()}",
            f"To: <sip:{self.user}@bench.example>",
            f"Call-ID: {self.call_id}",
            f"CSeq: {self.cseq} REGISTER",
            f"Contact: <sip:{self.user}@127.0.0.1:{self.port}>",
            "Expires: 3600",
            "User-Agent: bench",
        ]
        if authorization:
            lines.append(f"Authorization: {authorization}")
        return ("\r\n".join(lines + ["Content-Length: 0", "", ""])).encode()

    def answer(self, challenge):
        params = parse_credentials(challenge)
        realm, nonce, uri = params["realm"], params["nonce"], "sip:bench.example"
        ha1, ha2 = md5(f"{self.user}:{realm}:{self.password}"), md5(f"REGISTER:{uri}")
        response = md5(f"{ha1}:{nonce}:00000001:0a4f113b:auth:{ha2}")
        return (f'Digest username="{self.user}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
                f'response="{response}", algorithm=MD5, qop=auth, nc=00000001, cnonce="0a4f113b"')

async def main():
    path = str(Path(tempfile.mkdtemp()) / "bench.sqlite")
    migrate(path, "2026-01-01")
    db = open_database(path, reactor)
    await db.start()
    store = BillingStore(db, reactor)
    for n in range(users):
        await store.create_user(f"u{n}", f"p{n}")
    settings = Settings(None, ("sipratelimitip=0", "sipinviterate=0", "ratelimitip=0"))
    holder = {}
    core = SipCore(settings, lambda: holder.get("backend"), reactor)
    api = Dispatcher(settings, build_registry(), store, reactor, Rater(path, reactor), sip=core)
    holder["backend"] = backend_for(api)
    answers = {}
    waiting = {}

    def sent(data, addr):
        answers[addr[1]] = data
        d = waiting.pop(addr[1], None)
        if d is not None:
            d.callback(None)

    core.add_udp_socket(sent, "127.0.0.1:5060")
    phones = [Phone(n) for n in range(users)]

    async def exchange(phone, data):
        source = Source("udp", "127.0.0.1", phone.port, lambda b: sent(b, ("127.0.0.1", phone.port)),
                        "127.0.0.1:5060", sent)
        answers.pop(phone.port, None)
        d = waiting[phone.port] = defer.Deferred()
        core.datagram(data, source)
        await d
        return parse_datagram(answers[phone.port])

    async def one(phone):
        first = await exchange(phone, phone.register())
        assert first.status == 401, first.status
        ok = await exchange(phone, phone.register(phone.answer(first.get("www-authenticate"))))
        assert ok.status == 200, (ok.status, ok.reason)

    async def run(count):
        done = 0
        while done < count:
            batch = [phones[(done + i) % users] for i in range(min(BATCH, count - done))]
            await defer.gatherResults([defer.ensureDeferred(one(p)) for p in batch])
            done += len(batch)

    await run(users)  # every user registers once
    started = time.process_time()
    await run(registrations)
    spent = time.process_time() - started
    print(f"{spent / registrations * 1e6:.2f}")
    await db.close()
'''
RUN += REACTOR_TAIL


def measure(tree: Path, registrations: int, users: int) -> float:
    """CPU microseconds per registration in one fresh process running C{tree}'s code."""
    return treerun.measure(tree, RUN, [str(registrations), str(users)], timeout=1800)


def profile(tree: Path, registrations: int, users: int, top: int = 30) -> None:
    """cProfile's functions by own time for one run of C{tree}'s code (start-up and warm-up included)."""
    rows = treerun.cprofile(tree, RUN, [str(registrations), str(users)])
    print(f"# register_path --profile {time.strftime('%Y-%m-%d %H:%M:%S')} on {platform.machine()}, "
          f"Python {platform.python_version()}; {registrations} registrations of {users} users")
    treerun.print_functions(rows, tree, top)


def main() -> None:
    """Run the rounds and print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--registrations", type=int, default=20000)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tree", action="append", type=Path, help="a checkout to measure (repeatable)")
    parser.add_argument("--profile", action="store_true", help="where the time goes (cProfile), first tree only")
    args = parser.parse_args()
    trees = [tree.resolve() for tree in (args.tree or [ROOT])]
    if args.profile:
        profile(trees[0], args.registrations, args.users)
        return
    results: dict[Path, list[float]] = {tree: [] for tree in trees}
    for _ in range(args.rounds):
        for tree in trees:
            results[tree].append(measure(tree, args.registrations, args.users))
    print(f"# register_path {time.strftime('%Y-%m-%d %H:%M:%S')} on {platform.machine()} {os.cpu_count()} cores, "
          f"Python {platform.python_version()}; {args.rounds} rounds of {args.registrations} registrations")
    print("| tree | CPU us/registration (median) | rounds |\n|---|---|---|")
    for tree, values in results.items():
        print(f"| {tree.name} | {statistics.median(values):.1f} | {', '.join(f'{v:.1f}' for v in values)} |")
    if len(trees) == 2:
        first, second = (statistics.median(results[t]) for t in trees)
        print(f"\nratio {trees[1].name} / {trees[0].name}: {second / first:.3f}")


if __name__ == "__main__":
    main()
