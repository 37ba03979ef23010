"""Calls from phones through mizud's B2BUA, against sipp alone and Kamailio as a stateful proxy.

    python bench/b2bua_calls.py [--rate 300] [--duration 20] [--server-cpu 1] [--client-cpu 0]

Three runs at the same offered rate, each a sipp UAC placing calls (INVITE,
100/180, 200, ACK, two seconds of call, BYE, 200) to sipp's built-in UAS
playing a gateway on 127.0.0.3:

 1. straight to the UAS (what the SIP tools themselves sustain);
 2. through Kamailio 5.6 as a stateful proxy with dialog tracking
    (bench/kamailio/proxy.cfg: tm, rr, dialog; no authentication, no billing);
 3. through mizud (twistd, a fresh SQLite database): every INVITE challenged
    with 407 and answered with the user's credentials, the number rated, the
    longest affordable call held with its tb_calls row, the gateway dialled, the
    call relayed, and at the end its CDR and the settlement in one transaction.

The servers run pinned to --server-cpu, sipp to --client-cpu.  Reported per
run: successful and failed calls, retransmissions, the servers' CPU per call
(utime+stime of their processes over the run, from /proc); for mizud also the
CDRs written (one per call), live calls and open holds left (none), and the
money (spent = the sum of the CDR costs; checkcredits).  Then mizud's CPU per
call over Kamailio's, the goal being at most 5.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from datetime import datetime
from decimal import Decimal
from pathlib import Path

from treerun import CLK_TCK, cpu_ticks

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ROOT / "tests" / "sipp"
GATEWAY_IP = "127.0.0.3"


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for UDP and TCP on C{host}."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
            return int(port)


def pinned(cpu: int, argv: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
    """A process pinned to one core."""
    return subprocess.Popen(["taskset", "-c", str(cpu), *argv], **kwargs)  # type: ignore[call-overload]


def sipp_stats(path: Path) -> dict[str, int]:
    """Successful and failed calls and retransmissions from sipp's statistics file."""
    rows = list(csv.reader(path.open(), delimiter=";"))
    value = dict(zip(rows[0], rows[-1]))
    return {"ok": int(value["SuccessfulCall(C)"]), "failed": int(value["FailedCall(C)"]),
            "retransmissions": int(value["Retransmissions(C)"])}


class Run:
    """One measured run of sipp's UAC against a target, with a UAS as the gateway."""

    def __init__(self, folder: Path, args: argparse.Namespace) -> None:
        self.folder = folder
        self.args = args

    def uas(self) -> tuple[subprocess.Popen[bytes], int]:
        """sipp's built-in UAS on GATEWAY_IP (the gateway)."""
        port = free_port(GATEWAY_IP)
        process = pinned(self.args.client_cpu, [
            "sipp", "-sn", "uas", "-i", GATEWAY_IP, "-p", str(port), "-mp", str(free_port(GATEWAY_IP)), "-nd",
            "-nostdin", "-max_socket", "5000"], cwd=self.folder, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        return process, port

    def uac(self, scenario: str, target: str, name: str, *extra: str) -> dict[str, int]:
        """The UAC at the offered rate for the duration; its statistics."""
        stats = self.folder / f"{name}.csv"
        count = int(self.args.rate * self.args.duration)
        subprocess.run(["taskset", "-c", str(self.args.client_cpu), "sipp", "-sf", str(SCENARIOS / scenario),
                        "-i", "127.0.0.1", "-p", str(free_port()), "-mp", str(free_port()), "-s", "4930001",
                        "-r", str(self.args.rate), "-m", str(count), "-nd", "-nostdin",
                        "-timeout", f"{self.args.duration + 60}s", "-trace_stat", "-stf", str(stats),
                        "-fd", "1", *(["-trace_msg", "-trace_err"] if self.args.trace else []), *extra, target],
                       cwd=self.folder, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False)
        return sipp_stats(stats)


def direct(run: Run) -> dict[str, object]:
    """sipp UAC straight to the UAS."""
    uas, port = run.uas()
    try:
        return {"sipp": run.uac("uac_proxy_call.xml", f"{GATEWAY_IP}:{port}", "direct")}
    finally:
        uas.kill()


def kamailio(run: Run) -> dict[str, object]:
    """sipp UAC through Kamailio (tm + dialog) to the UAS; Kamailio's CPU."""
    uas, gateway = run.uas()
    port = free_port()
    folder = run.folder / "kamailio"
    folder.mkdir()
    server = pinned(run.args.server_cpu, [
        shutil.which("kamailio") or "/usr/sbin/kamailio", "-f", str(ROOT / "bench" / "kamailio" / "proxy.cfg"),
        "-DD", "-E", "-n", "2", "-m", "256", "-M", "32", "-l", f"udp:127.0.0.1:{port}", "-Y", str(folder),
        "-P", str(folder / "kamailio.pid"), "-A", f'GATEWAY="sip:{GATEWAY_IP}:{gateway}"'],
        cwd=folder, stdout=(folder / "log").open("w"), stderr=subprocess.STDOUT)
    time.sleep(1.5)
    try:
        pids = [server.pid, *children(server.pid)]
        before = cpu_ticks(pids)
        stats = run.uac("uac_proxy_call.xml", f"127.0.0.1:{port}", "kamailio")
        cpu = cpu_ticks(pids) - before
        return {"sipp": stats, "cpu_s": cpu / CLK_TCK}
    finally:
        server.terminate()
        server.wait(timeout=30)
        uas.kill()


def children(pid: int) -> list[int]:
    """Every descendant of a process."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids = [int(k) for k in (task / "children").read_text().split()]
        except OSError:
            continue
        for kid in kids:
            found += [kid, *children(kid)]
    return found


def mizud(run: Run) -> dict[str, object]:
    """sipp UAC through mizud (authenticated, rated, held, billed) to the UAS; mizud's CPU and the books."""
    uas, gateway = run.uas()
    http, sip = free_port(), free_port()
    folder = run.folder / "mizud"
    folder.mkdir()
    twistd = str(ROOT / ".venv" / "bin" / "twistd") if (ROOT / ".venv" / "bin" / "twistd").exists() else "twistd"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    options = ["listenaddress=127.0.0.1", f"mainaport={http}", "mainaportudp=0", "httpserver=0", "sslportmain=0",
               f"sipport={sip}", "localtsport=0", "bootstrapadmin=admin:admin-password", "sipratelimitip=0",
               "ratelimitip=0", "ratelimituser=0", "sipinviterate=0", "sipcallsperuser=1000", "defaulttariff=1",
               "maxcallduration=120", "siprealm=bench.test"]
    server = pinned(run.args.server_cpu, [twistd, "-n", "--pidfile", str(folder / "twistd.pid"), "mizud",
                                          *(part for option in options for part in ("--set", option))],
                    cwd=folder, env=env, stdout=(folder / "log").open("w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while "API ready" not in (folder / "log").read_text():
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("mizud did not start:\n" + (folder / "log").read_text()[-3000:])
            time.sleep(0.2)

        def api(**params: str) -> dict[str, object]:
            query = urllib.parse.urlencode({**params, "format": "json", "authid": "admin",
                                            "authpwd": "admin-password"})
            with urllib.request.urlopen(f"http://127.0.0.1:{http}/mvapireq/?{query}", timeout=60) as answer:
                return json.loads(answer.read())  # type: ignore[no-any-return]

        def sql(text: str) -> list[dict[str, str]]:
            return api(apientry="db", txt=text).get("data") or []  # type: ignore[return-value]

        api(apientry="importtariffs", tariffid="1", csv="prefix,name,price\n49,Germany,0.60\n")
        api(apientry="newuseri", u_username="bench", u_password="bench-pw")
        api(apientry="addcredit", pin="bench", credit="1000000")
        api(apientry="addserver", u_username="gw", u_ip=f"{GATEWAY_IP}:{gateway}", u_auth="0")
        before_money = Decimal(sql("SELECT credit FROM tb_users WHERE username = 'bench'")[0]["credit"])
        pids = [server.pid]
        before = cpu_ticks(pids)
        # The digest uri must be the Request-URI (sipp would use the server's address).
        stats = run.uac("uac_b2bua_call.xml", f"127.0.0.1:{sip}", "mizud", "-au", "bench", "-ap", "bench-pw",
                        "-auth_uri", f"4930001@127.0.0.1:{sip}")  # sipp puts sip: before it
        cpu = cpu_ticks(pids) - before
        for _ in range(240):
            if sql("SELECT count(*) AS n FROM tb_calls")[0]["n"] in ("0", 0):
                break
            time.sleep(0.5)
        after_money = Decimal(sql("SELECT credit FROM tb_users WHERE username = 'bench'")[0]["credit"])
        books = {
            "cdrs": int(sql("SELECT count(*) AS n FROM tb_cdrs")[0]["n"]),
            "answered": int(sql("SELECT count(*) AS n FROM tb_cdrs WHERE answered IS NOT NULL")[0]["n"]),
            "live": int(sql("SELECT count(*) AS n FROM tb_calls")[0]["n"]),
            "open_holds": int(sql("SELECT count(*) AS n FROM tb_holds WHERE status = 0")[0]["n"]),
            # SQLite keeps money in micro-units.
            "spent": str((before_money - after_money) / 1_000_000),
            "cdr_costs": str(Decimal(sql("SELECT coalesce(sum(cost), 0) AS s FROM tb_cdrs")[0]["s"]) / 1_000_000),
            "checkcredits": str(api(apientry="checkcredits").get("message")),
            "tracebacks": (folder / "log").read_text().count("Traceback"),
        }
        return {"sipp": stats, "cpu_s": cpu / CLK_TCK, "books": books}
    finally:
        server.terminate()
        server.wait(timeout=60)
        uas.kill()


def main() -> None:
    """Run the three runs and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=300.0, help="calls per second offered")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of offered load")
    parser.add_argument("--server-cpu", type=int, default=1)
    parser.add_argument("--client-cpu", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs)")
    parser.add_argument("--trace", action="store_true", help="sipp's message and error traces (with --keep)")
    args = parser.parse_args()
    for tool in ("sipp", "kamailio", "taskset"):
        if shutil.which(tool) is None and not Path("/usr/sbin/kamailio").exists():
            sys.exit(f"{tool} not found")
    folder = Path(tempfile.mkdtemp(prefix="b2bua-bench-"))
    print(f"# b2bua_calls {datetime.now():%Y-%m-%d %H:%M} on {platform.node()} {platform.machine()}, "
          f"{os.cpu_count()} cores; rate {args.rate:g}/s for {args.duration:g} s; server on core "
          f"{args.server_cpu}, sipp on core {args.client_cpu}")
    run = Run(folder, args)
    results = {"direct": direct(run), "kamailio": kamailio(run), "mizud": mizud(run)}
    calls = args.rate * args.duration
    print("| run | successful | failed | retransmissions | server CPU s | CPU ms per call |")
    print("|---|---|---|---|---|---|")
    per_call = {}
    for name, result in results.items():
        stats = result["sipp"]
        assert isinstance(stats, dict)
        cpu = result.get("cpu_s")
        per_call[name] = 1000 * float(cpu) / max(1, stats["ok"]) if isinstance(cpu, float) else None
        print(f"| {name} | {stats['ok']} of {calls:g} | {stats['failed']} | {stats['retransmissions']} | "
              f"{'' if cpu is None else f'{cpu:.1f}'} | "
              f"{'' if per_call[name] is None else f'{per_call[name]:.2f}'} |")
    print("mizud books:", json.dumps(results["mizud"]["books"]))
    if per_call.get("kamailio") and per_call.get("mizud"):
        print(f"mizud CPU per call / Kamailio's: {per_call['mizud'] / per_call['kamailio']:.2f} (goal <= 5)")
    if args.keep:
        print("kept:", folder)
    else:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
