"""The real daemon: `twistd -n mizud` started and stopped as a process."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def free_udp_and_tcp_port() -> int:
    """A port free on 127.0.0.1 for both UDP and TCP right now."""
    for _ in range(50):
        port = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile="]


def environment() -> dict[str, str]:
    """The test environment, with the checkout importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def start_daemon(folder: Path, *sets: str, config: Path | None = None) -> tuple[subprocess.Popen[str], list[str]]:
    """twistd -n mizud with C{--set} for each of C{sets} (and C{--config}); returns once the API is ready
    (with its output so far)."""
    process = subprocess.Popen(
        [*TWISTD, "mizud", *(["--config", str(config)] if config else []),
         *(part for option in sets for part in ("--set", option))],
        cwd=folder, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        lines.append(line)
        if not line or "API ready" in line:
            break
    if "API ready" not in lines[-1]:
        process.kill()
        raise AssertionError("mizud did not start:\n" + "".join(lines))
    return process, lines


def run_to_end(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run twistd mizud expecting it to exit by itself."""
    return subprocess.run(
        [*TWISTD, "mizud", "--set", "listenaddress=127.0.0.1", "--set", f"mainaport={free_port()}", "--set", "httpserver=0", "--set", "sslportmain=0", "--set", "sipport=0", "--set", "localtsport=0", "--set", "mainaportudp=0", *args], cwd=cwd, env=environment(), capture_output=True, text=True, timeout=60
    )


def test_starts_on_sqlite_and_stops_cleanly(tmp_path: Path) -> None:
    """twistd -n mizud creates var/mizud.sqlite, answers the API, logs start and stop, shuts down cleanly."""
    # Every port ephemeral (none of 80, 443, 5060, 5061, which a phone or another server may hold).
    port, sip_port = free_udp_and_tcp_port(), free_udp_and_tcp_port()
    old_port, tls_port, sips_port = free_port(), free_port(), free_port()
    process = subprocess.Popen(
        [*TWISTD, "mizud", "--set", "bootstrapadmin=boss:correcthorse", "--set", "listenaddress=127.0.0.1",
         "--set", f"mainaport={port}", "--set", f"httpserver={old_port}", "--set", f"sslportmain={tls_port}",
         "--set", f"sipport={sip_port}", "--set", f"localtsport={sips_port}", "--set", "nodename=node-a"],
        cwd=tmp_path, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "API ready" in line:
            break
    answer = subprocess.run(
        ["curl", "-s", f"http://127.0.0.1:{port}/mvapireq/?apientry=apitest1"], capture_output=True, text=True, timeout=30
    ).stdout
    old = subprocess.run(
        ["curl", "-s", f"http://127.0.0.1:{old_port}/xmapi/balance?usr=boss&pwd=correcthorse&now"],
        capture_output=True, text=True, timeout=30,
    ).stdout
    # A handshake that fails (TLS 1.1 is refused) first: the ports keep serving.
    s_client = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{tls_port}", "-tls1_1"],
        input="", capture_output=True, text=True, timeout=30,
    )
    secure = [
        subprocess.run(["curl", "-s", "-k", f"https://127.0.0.1:{p}/mvapireq/?apientry=apitest1"],
                       capture_output=True, text=True, timeout=30).stdout
        for p in (tls_port, port)  # the TLS port, and TLS detected on the shared port
    ]
    process.send_signal(signal.SIGTERM)
    rest, _ = process.communicate(timeout=30)
    output = "".join(lines) + rest
    assert answer == "OK: API test passed", output
    assert secure == ["OK: API test passed"] * 2, output
    assert s_client.returncode != 0  # TLS 1.1 is refused
    assert (tmp_path / "var" / "mizud-tls.pem").stat().st_mode & 0o777 == 0o600
    assert "TLS certificate" in output and "SHA-256" in output
    assert old == "OK: 0.00 USD", output
    # twistd shuts down cleanly, then ends itself with the signal it got.
    assert process.returncode == -signal.SIGTERM, output
    assert "Server Shut Down." in output
    assert f"starting mizud 0.1.0 node=node-a engine=sqlite database=var/mizud.sqlite mainaport={port}" in output
    assert "stopped mizud 0.1.0" in output
    connection = sqlite3.connect(tmp_path / "var" / "mizud.sqlite")
    assert connection.execute("SELECT type FROM tb_users WHERE username = 'boss'").fetchall() == [(15,)]


def test_bad_config_value_exits_nonzero(tmp_path: Path) -> None:
    """A bad --set value stops the start with one line naming the key."""
    result = run_to_end(tmp_path, "--set", "mainaport=eighty")
    assert result.returncode != 0
    assert "mizud: config error: --set: mainaport: expected an integer, got 'eighty'" in result.stderr
    assert not (tmp_path / "var").exists()


def test_unknown_key_in_file_exits_nonzero(tmp_path: Path) -> None:
    """An unknown key in the config file names the key and the line."""
    ini = tmp_path / "m.ini"
    ini.write_text("[global]\nmainaport = 8080\nfoo = bar\n")
    result = run_to_end(tmp_path, "--config", str(ini))
    assert result.returncode != 0
    assert f"{ini}:3: foo: unknown option" in result.stderr


def failed_start(result: subprocess.CompletedProcess[str]) -> str:
    """The one critical line of a refused start; asserts the exit status."""
    assert result.returncode == 1, result.stdout + result.stderr
    lines = [l for l in result.stdout.splitlines() if "mizud: cannot start:" in l]
    assert len(lines) == 1, result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    return lines[0]


def test_newer_schema_refused(tmp_path: Path) -> None:
    """A database from a newer mizud stops the start, byte-identical afterwards."""
    db = tmp_path / "m.sqlite"
    connection = sqlite3.connect(db)
    connection.execute("CREATE TABLE tb_schema_version (version INTEGER PRIMARY KEY, name TEXT, applied TEXT)")
    connection.execute("INSERT INTO tb_schema_version VALUES (99, 'future', 'x')")
    connection.commit()
    connection.close()
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    line = failed_start(run_to_end(tmp_path, "--set", f"database={db}"))
    assert "schema version 99 is newer than this mizud" in line
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before


def test_unopenable_database_path(tmp_path: Path) -> None:
    """A database path in a missing directory is refused; nothing is created."""
    line = failed_start(run_to_end(tmp_path, "--set", f"database={tmp_path}/missing/m.sqlite"))
    assert "directory" in line and "does not exist" in line
    assert not (tmp_path / "missing").exists()


def test_unreachable_postgres(tmp_path: Path) -> None:
    """An unreachable PostgreSQL is one line and exit status 1."""
    line = failed_start(run_to_end(tmp_path, "--set", "database=postgresql://mizud:pw@127.0.0.1:1/mizud"))
    assert "cannot connect to PostgreSQL" in line
    assert "pw@" not in line


def test_postgres_start(tmp_path: Path, pg_database: str) -> None:
    """The daemon starts on PostgreSQL, migrates and creates the bootstrap admin."""
    import psycopg2

    process = subprocess.Popen(
        [*TWISTD, "mizud", "--set", f"database={pg_database}", "--set", "bootstrapadmin=boss:correcthorse",
         "--set", "mainaport=0", "--set", "httpserver=0", "--set", "sslportmain=0", "--set", "sipport=0", "--set", "localtsport=0"],
        cwd=tmp_path, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    assert process.stdout is not None
    output = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        output.append(line)
        if not line or "bootstrap admin boss created" in line:
            break
    process.send_signal(signal.SIGTERM)
    rest, _ = process.communicate(timeout=30)
    assert process.returncode == -signal.SIGTERM, "".join(output) + rest
    assert "engine=postgresql" in "".join(output)
    with psycopg2.connect(pg_database) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT type FROM tb_users WHERE username = 'boss'")
        assert cursor.fetchall() == [(15,)]


def _options_answer(port: int) -> str:
    """The status line mizud answers a SIP OPTIONS on UDP C{port} with."""
    request = (f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK{time.time_ns()}"
               f"\r\nMax-Forwards: 70\r\nFrom: <sip:probe@127.0.0.1>;tag=1\r\nTo: <sip:127.0.0.1>\r\n"
               f"Call-ID: {time.time_ns()}@probe\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.settimeout(5)
        probe.bind(("127.0.0.1", 0))
        probe.sendto(request.encode(), ("127.0.0.1", port))
        return probe.recvfrom(65535)[0].decode().split("\r\n")[0]


def test_daemon_operations_backup_resets_and_restart(tmp_path: Path) -> None:
    """A real daemon: dbbackup writes a SQLite copy into backupdir, sipreset binds the SIP port again (it
    answers OPTIONS before and after), dbreset and mantreset succeed, and restart what=service ends twistd
    with status 0 for the service manager to start it again."""
    port, sip_port = free_udp_and_tcp_port(), free_udp_and_tcp_port()
    (tmp_path / "backups").mkdir()
    process, lines = start_daemon(
        tmp_path, "listenaddress=127.0.0.1", f"mainaport={port}", "httpserver=0", "sslportmain=0",
        f"sipport={sip_port}", "localtsport=0", "mainaportudp=0", f"backupdir={tmp_path / 'backups'}")
    try:
        def api(query: str) -> str:
            return subprocess.run(["curl", "-s", f"http://127.0.0.1:{port}/mvapireq/?{query}"],
                                  capture_output=True, text=True, timeout=30).stdout

        assert _options_answer(sip_port) == "SIP/2.0 200 OK"
        backup = api("apientry=dbbackup")
        assert backup.startswith(f"OK: backup written to {tmp_path / 'backups'}/mizud-sqlite-"), backup
        copy = sqlite3.connect(backup.splitlines()[0].split(" to ", 1)[1])
        assert copy.execute("SELECT count(*) FROM tb_schema_version").fetchone()[0] > 0
        copy.close()
        assert api("apientry=sipreset") == \
            f"OK: bound again: sipportudp 127.0.0.1:{sip_port}, sipport 127.0.0.1:{sip_port}"
        assert _options_answer(sip_port) == "SIP/2.0 200 OK"
        assert api("apientry=dbreset") == "OK: 2 database connections replaced"
        assert api("apientry=mantreset") == "OK: 7 periodic chores restarted"
        assert api("apientry=restart&what=service") == "OK: stopping; the service manager starts mizud again"
        rest, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, "".join(lines) + rest
    assert "restart requested by trusted address 127.0.0.1" in rest
