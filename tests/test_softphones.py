"""Real softphones from Debian against the real daemon: baresip, linphonec and twinkle.

The phones run headless (audio from a tone file or a paced FIFO, nothing
played), configured in a temporary folder (their HOME), on ephemeral ports:
loopback only, except twinkle-console, which has no setting for the address
it binds and listens on every interface (on ports chosen here, for seconds).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from test_twistd import free_port, free_udp_and_tcp_port, start_daemon

BARESIP = shutil.which("baresip")
LINPHONEC = shutil.which("linphonec")
TWINKLE = shutil.which("twinkle-console")
needs_baresip = pytest.mark.skipif(BARESIP is None, reason="baresip (Debian package) is not installed")


class Daemon:
    """mizud with SIP on an ephemeral port and two users, alice and bob."""

    def __init__(self, folder: Path, *sets: str) -> None:
        self.http = free_port()
        self.sip = free_udp_and_tcp_port()
        self.process, self.lines = start_daemon(
            folder, "listenaddress=127.0.0.1", f"mainaport={self.http}", "mainaportudp=0", "httpserver=0",
            "sslportmain=0", f"sipport={self.sip}", "localtsport=0", "siprealm=mizud.test",
            "bootstrapadmin=admin:admin-password", *sets)
        threading.Thread(target=self._drain, daemon=True).start()
        for name in ("alice", "bob"):
            assert self.api(apientry="newuseri", u_username=name, u_password=f"{name}-password")["status"] == "OK"

    def _drain(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    def api(self, **params: str) -> dict[str, Any]:
        """An admin request from this machine; the JSON answer."""
        query = urllib.parse.urlencode({**params, "format": "json"})
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/mvapireq/?{query}", timeout=30) as answer:
            return json.loads(answer.read())  # type: ignore[no-any-return]

    def stop(self) -> str:
        """Stop it; its output."""
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=30)
        time.sleep(0.1)
        return "".join(self.lines)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    """A running daemon."""
    (tmp_path / "mizud").mkdir()
    running = Daemon(tmp_path / "mizud")
    try:
        yield running
    finally:
        output = running.stop()
        assert "Traceback" not in output, output


class RtpCounter:
    """Counts UDP packets on the loopback interface sent to given port ranges (needs root: AF_PACKET)."""

    def __init__(self, *ranges: range) -> None:
        self.ranges = ranges
        self.counts = [0 for _ in ranges]
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(0x0003))
        self.sock.bind(("lo", 0))
        self.sock.settimeout(0.2)
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while self.running:
            try:
                frame = self.sock.recv(65535)
            except OSError:
                continue
            ip = frame[14:]  # the loopback's (zeroed) Ethernet header first
            if len(ip) < 28 or ip[0] >> 4 != 4 or ip[9] != 17:
                continue
            udp = ip[(ip[0] & 0x0F) * 4:]
            port = int.from_bytes(udp[2:4], "big")
            for index, ports in enumerate(self.ranges):
                if port in ports:
                    self.counts[index] += 1

    def stop(self) -> list[int]:
        """Stop counting; the packets seen per range."""
        self.running = False
        self.thread.join(timeout=5)
        self.sock.close()
        return self.counts


def tone(path: Path, seconds: int = 60) -> None:
    """A 440 Hz tone, 8 kHz mono 16-bit: what the phones send as their voice."""
    import math
    import wave

    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(b"".join(int(8000 * math.sin(i / 8000 * 2 * math.pi * 440)).to_bytes(2, "little", signed=True)
                                 for i in range(8000 * seconds)))


def sip_listen_port() -> int:
    """A port for baresip's sip_listen: free for UDP and TCP, and the next one free for TCP too (baresip
    binds SIP over TLS there; a port taken there stops it with "Address already in use")."""
    while True:
        port = free_udp_and_tcp_port()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port


class Baresip:
    """A baresip phone running in the background: registered, answering calls at once, RTP on its own ports;
    driven by commands over its TCP control socket (ctrl_tcp: netstrings of JSON)."""

    def __init__(self, folder: Path, daemon: Daemon, user: str, rtp: int, seconds: int = 40,
                 transport: str = "udp", answer: str = "auto", port: int = 0, cafile: str = "") -> None:
        folder.mkdir(parents=True, exist_ok=True)
        tone(folder / "tone.wav")
        self.rtp = range(rtp, rtp + 10)
        self.control = free_port()
        (folder / "config").write_text(
            "module_path /usr/lib/baresip/modules\nmodule g711.so\nmodule aufile.so\nmodule_app account.so\n"
            f"module_app menu.so\nmodule_app ctrl_tcp.so\nctrl_tcp_listen 127.0.0.1:{self.control}\n"
            f"net_interface 127.0.0.1\nsip_listen 127.0.0.1:{sip_listen_port()}\n"
            f"audio_player aufile,{folder}/heard.wav\naudio_source aufile,{folder}/tone.wav\n"
            f"rtp_ports {rtp}-{rtp + 9}\n" + (f"sip_cafile {cafile}\n" if cafile else ""))
        (folder / "accounts").write_text(
            f'<sip:{user}@mizud.test;transport={transport}>;outbound="sip:127.0.0.1:{port or daemon.sip};'
            f'transport={transport}";auth_pass={user}-password;regint=60;answermode={answer}\n')
        self.log = folder / "log"
        self.process = subprocess.Popen([BARESIP or "baresip", "-f", str(folder), "-t", str(seconds), "-s"],
                                        stdout=self.log.open("w"), stderr=subprocess.STDOUT)

    def command(self, command: str, params: str = "") -> None:
        """Run one command (dial, hangup, ...) through the control socket (retried while it starts)."""
        message = json.dumps({"command": command, "params": params, "token": command}).encode()
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.control), timeout=5) as connection:
                    connection.sendall(b"%d:%s," % (len(message), message))
                    time.sleep(0.3)
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def stop(self) -> str:
        """Stop it; its output."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=30)
        return self.log.read_text(errors="replace")


class _Console:
    """A phone driven by commands on its standard input, with its own HOME."""

    process: subprocess.Popen[str]

    def start(self, argv: list[str], folder: Path) -> None:
        """Run C{argv} in C{folder} as HOME, without a display, its output in C{folder}/out."""
        env = dict(os.environ, HOME=str(folder))
        env.pop("DISPLAY", None)
        self.out = folder / "out"
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=self.out.open("w"),
                                        stderr=subprocess.STDOUT, env=env, text=True, cwd=folder)

    def send(self, *commands: str) -> None:
        """Type command lines."""
        assert self.process.stdin is not None
        for command in commands:
            self.process.stdin.write(command + "\n")
            self.process.stdin.flush()

    def quit(self, wait: float = 15) -> None:
        """quit, and wait for the exit (killing after C{wait} seconds)."""
        if self.process.poll() is None:
            try:
                self.send("quit")
                self.process.wait(timeout=wait)
            except (subprocess.TimeoutExpired, BrokenPipeError):
                self.process.kill()
                self.process.wait(timeout=10)


class Linphone(_Console):
    """linphonec (linphone-cli): registered, auto-answering, playing a tone file, RTP on its own ports."""

    def __init__(self, folder: Path, daemon: Daemon, user: str, rtp: int) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        # Without its data folder linphone cannot open its database and never opens a SIP socket.
        (folder / ".local" / "share" / "linphone").mkdir(parents=True, exist_ok=True)
        tone(folder / "tone.wav")
        self.rtp = range(rtp, rtp + 10)
        self.log = folder / "log"
        (folder / "linphonerc").write_text(
            f"[sip]\nsip_port={free_udp_and_tcp_port()}\nsip_tcp_port=0\nsip_tls_port=0\nsip_dtls_port=0\n"
            "bind_address=127.0.0.1\nuse_ipv6=0\nregister_only_when_network_is_up=0\ninc_timeout=30\n\n"
            f"[rtp]\naudio_rtp_port={rtp}-{rtp + 9}\nvideo_rtp_port={rtp + 10}-{rtp + 19}\nbind_address=127.0.0.1\n\n"
            "[sound]\nechocancellation=0\n\n[video]\ncapture=0\ndisplay=0\n\n"
            f"[proxy_0]\nreg_proxy=<sip:127.0.0.1:{daemon.sip};transport=udp>\nreg_identity=sip:{user}@mizud.test\n"
            f"reg_route=<sip:127.0.0.1:{daemon.sip};transport=udp;lr>\n"
            "reg_expires=60\nreg_sendregister=1\npublish=0\n\n"
            f"[auth_info_0]\nusername={user}\npasswd={user}-password\nrealm=mizud.test\ndomain=mizud.test\n")
        # stdin stays a pipe: at its end linphonec exits before registering.
        self.start([LINPHONEC or "linphonec", "-c", str(folder / "linphonerc"), "-a", "-d", "6", "-l", str(self.log)],
                   folder)
        # The file sound card cannot be chosen in the configuration, only by command.
        self.send("soundcard use files", f"play {folder}/tone.wav", f"record {folder}/heard.wav", "autoanswer enable")

    def stop(self) -> str:
        """Quit (it unregisters); its log with the SIP trace."""
        self.quit()
        return self.out.read_text(errors="replace") + (self.log.read_text(errors="replace") if self.log.exists() else "")


class _PacedTone:
    """An 8 kHz 16-bit tone written into a FIFO in real time, 20 ms at a time (a microphone that blocks)."""

    def __init__(self, path: Path) -> None:
        os.mkfifo(path)
        self.path = path
        self.stopped = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        chunk = b"".join(int(8000 * math.sin(i / 8000 * 2 * math.pi * 440)).to_bytes(2, "little", signed=True)
                         for i in range(160))
        fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK)  # never blocks, never an end for the reader
        due = time.monotonic()
        try:
            while not self.stopped.is_set():
                try:
                    os.write(fd, chunk)
                except BlockingIOError:
                    pass  # nobody reads: the sample is dropped, as a microphone's would be
                due += 0.02
                time.sleep(max(0.0, due - time.monotonic()))
        finally:
            os.close(fd)


class Twinkle(_Console):
    """twinkle-console: registered, auto-answering, its microphone a paced tone (ALSA's null device never
    blocks, and twinkle's capture thread would spin on it), RTP on rtp and rtp + 1."""

    def __init__(self, folder: Path, daemon: Daemon, user: str, rtp: int) -> None:
        conf = folder / ".twinkle"
        conf.mkdir(parents=True, exist_ok=True)
        self.rtp = range(rtp, rtp + 10)
        self.mic = _PacedTone(folder / "mic.fifo")
        (folder / ".asoundrc").write_text(
            f'pcm.mic {{\n type file\n slave.pcm null\n file "/dev/null"\n infile "{folder}/mic.fifo"\n'
            " format raw\n}\n")
        (conf / "twinkle.sys").write_text(
            "dev_ringtone=alsa:null\ndev_speaker=alsa:null\ndev_mic=alsa:mic\nvalidate_audio_dev=no\n"
            f"sip_port={free_udp_and_tcp_port()}\nrtp_port={rtp}\nplay_ringtone=no\nplay_ringback=no\n"
            "log_show_sip=yes\n")
        # Servers without sip: (twinkle adds it); no voice detection, or a quiet microphone sends nothing.
        (conf / f"{user}.cfg").write_text(
            f"user_name={user}\nuser_domain=mizud.test\nuser_display={user}\nauth_realm=mizud.test\n"
            f"auth_name={user}\nauth_pass={user}-password\nregistrar=127.0.0.1:{daemon.sip}\n"
            f"register_at_startup=yes\nregistration_time=60\noutbound_proxy=127.0.0.1:{daemon.sip}\n"
            "all_requests_to_proxy=yes\ncodecs=g711u,g711a\nsip_transport=udp\nspeex_dsp_vad=no\n")
        self.start([TWINKLE or "twinkle-console", f"{user}.cfg"], folder)
        self.send("auto_answer -a on")

    def stop(self) -> str:
        """Quit (it unregisters; right after a call ends it may crash, so it is given a moment); its output."""
        time.sleep(1.5)
        self.quit()
        self.mic.stopped.set()
        return self.out.read_text(errors="replace")


def wait_registered(daemon: Daemon, *users: str) -> None:
    """Until every user has a binding (the phones register in the background)."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if all(daemon.api(apientry="reguser", usr=user)["status"] == "OK" for user in users):
            return
        time.sleep(0.2)
    raise AssertionError(f"{users} did not register")


def baresip(folder: Path, account: str, seconds: int) -> str:
    """Run baresip headless for C{seconds} with one account line; its output with the SIP trace."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config").write_text(
        "module_path /usr/lib/baresip/modules\nmodule g711.so\nmodule ausine.so\nmodule_app account.so\n"
        f"sip_listen 127.0.0.1:{sip_listen_port()}\naudio_player ausine,nil\naudio_source ausine,440\n")
    (folder / "accounts").write_text(account + "\n")
    done = subprocess.run([BARESIP or "baresip", "-f", str(folder), "-t", str(seconds), "-s"],
                          capture_output=True, text=True, timeout=seconds + 30)
    return done.stdout + done.stderr


@needs_baresip
def test_baresip_with_a_wrong_password_stops_and_locks_no_one_else_out(daemon: Daemon, tmp_path: Path) -> None:
    """baresip with a wrong password is challenged, then refused 403 for the same wrong credentials in its
    registration dialog, and stops (it used to spin until the address and user were banned); bob's
    baresip on the same address registers at once."""
    output = baresip(tmp_path / "wrong", f"<sip:alice@mizud.test;transport=udp>;outbound=\"sip:127.0.0.1:{daemon.sip}\""
                                          ";auth_pass=wrong;regint=60", 6)
    registers = output.count("REGISTER sip:")
    assert "403 Wrong credentials" in output and registers <= 3, output[-2000:]
    banned = daemon.api(apientry="bannedlist")
    assert banned["message"] == "0 banned", banned
    good = baresip(tmp_path / "bob", f"<sip:bob@mizud.test;transport=udp>;outbound=\"sip:127.0.0.1:{daemon.sip}\""
                                     ";auth_pass=bob-password;regint=60", 4)
    assert "200 OK" in good, good[-2000:]
    recent = {r["username"]: r["result"] for r in daemon.api(apientry="fastregusers", succ="all")["data"]}
    assert recent == {"alice": "failed", "bob": "ok"}, recent


@needs_baresip
@pytest.mark.parametrize("kind", ["p2p", "callback"])
def test_baresip_phones_talk_through_p2p_and_callback(daemon: Daemon, tmp_path: Path, kind: str) -> None:
    """p2p (and callback) between two baresip phones: leg A accepts the inactive hold offer, B's offer reaches
    A in the re-INVITE, and RTP flows between the phones both ways; discall ends it and bills it."""
    alice = Baresip(tmp_path / "alice", daemon, "alice", 31000)
    bob = Baresip(tmp_path / "bob", daemon, "bob", 32000)
    try:
        wait_registered(daemon, "alice", "bob")
        counter = RtpCounter(alice.rtp, bob.rtp)
        legs = {"anum": "alice", "bnum": "bob"} if kind == "p2p" else {"num": "alice", "bnum": "bob"}
        placed = daemon.api(apientry=kind, waitfor="2", authid="alice", **legs)
        assert placed["status"] == "OK" and "connected" in placed["message"], placed
        time.sleep(4)  # 50 packets each way take a second at 20 ms; slack for a loaded machine
        to_alice, to_bob = counter.stop()
        assert to_alice > 50 and to_bob > 50, (to_alice, to_bob)
        callid = placed["data"][0]["callid"]
        ended = daemon.api(apientry="discall", dbcallid=callid)
        assert ended["status"] == "OK", ended
    finally:
        logs = alice.stop() + bob.stop()
    assert "SIP/2.0 488" not in logs, logs[-3000:]  # the status line only: nonces and ports hold digits too


PHONES: dict[str, Any] = {"baresip": Baresip, "linphone": Linphone, "twinkle": Twinkle}
MISSING = {"baresip": BARESIP, "linphone": LINPHONEC, "twinkle": TWINKLE}


@pytest.mark.parametrize("a, b", [("linphone", "twinkle"), ("twinkle", "baresip"), ("baresip", "linphone")])
def test_each_debian_phone_as_leg_a_and_as_leg_b(daemon: Daemon, tmp_path: Path, a: str, b: str) -> None:
    """p2p between different phones, so that each of baresip, linphonec and twinkle is leg A (first called,
    offered the inactive hold stream) once and leg B once: both answer and RTP flows both ways."""
    for name in (a, b):
        if MISSING[name] is None:
            pytest.skip(f"{name} (Debian package) is not installed")
    alice = PHONES[a](tmp_path / "alice", daemon, "alice", 31000)
    bob = PHONES[b](tmp_path / "bob", daemon, "bob", 32000)
    logs = ""
    try:
        wait_registered(daemon, "alice", "bob")
        counter = RtpCounter(alice.rtp, bob.rtp)
        placed = daemon.api(apientry="p2p", anum="alice", bnum="bob", waitfor="2", authid="alice")
        assert placed["status"] == "OK" and "connected" in placed["message"], placed
        time.sleep(4)
        to_alice, to_bob = counter.stop()
        assert to_alice > 50 and to_bob > 50, (to_alice, to_bob)
        ended = daemon.api(apientry="discall", dbcallid=placed["data"][0]["callid"])
        assert ended["status"] == "OK", ended
    finally:
        logs = alice.stop() + bob.stop()
    assert "SIP/2.0 488" not in logs, logs[-3000:]


def wait_for_calls(daemon: Daemon, state: str | None, seconds: float = 15) -> list[dict[str, Any]]:
    """Until the live calls are one in C{state} (None: until there are none); the calls listed."""
    deadline = time.monotonic() + seconds
    while True:
        calls = daemon.api(apientry="calls").get("data") or []
        if (state is None and not calls) or (state is not None and calls and calls[0]["state"] == state):
            return calls
        if time.monotonic() > deadline:
            raise AssertionError(f"calls are {calls}, not {state}")
        time.sleep(0.2)


@needs_baresip
@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_baresip_calls_baresip_through_mizud(daemon: Daemon, tmp_path: Path, transport: str) -> None:
    """alice's baresip dials bob by username over UDP (and TCP): mizud challenges the INVITE, relays it to
    bob's baresip, which answers; RTP flows between the phones both ways (mizud carries none), status says 4
    for both and calls lists the call; bob's hang-up ends both dialogs and one CDR carries alice's Call-ID."""
    alice = Baresip(tmp_path / "alice", daemon, "alice", 31000, transport=transport)
    bob = Baresip(tmp_path / "bob", daemon, "bob", 32000, transport=transport)
    try:
        wait_registered(daemon, "alice", "bob")
        counter = RtpCounter(alice.rtp, bob.rtp)
        alice.command("dial", "bob")
        calls = wait_for_calls(daemon, "connected")
        assert calls[0]["username"] == "alice" and calls[0]["bnum"] == "bob", calls
        assert daemon.api(apientry="verifyuser", username="alice")["message"] == "4"
        assert daemon.api(apientry="verifyuser", username="bob")["message"] == "4"
        time.sleep(3)
        to_alice, to_bob = counter.stop()
        assert to_alice > 50 and to_bob > 50, (to_alice, to_bob)
        bob.command("hangup")
        wait_for_calls(daemon, None)
        assert daemon.api(apientry="verifyuser", username="alice")["message"] == "2"
    finally:
        logs = alice.stop() + bob.stop()
    records = daemon.api(apientry="cdr", fields="all", days="1")["data"]
    assert len(records) == 1, records
    record = records[0]
    assert (record["callerid"], record["callednumber"], record["disconnectreason"]) == ("alice", "bob", "B hung up")
    assert int(record["duration"]) >= 3, record
    assert f"Call-ID: {record['sipcallid']}" in logs or f"call-id: {record['sipcallid']}".lower() in logs.lower()
    assert "SIP/2.0 488" not in logs and "SIP/2.0 500" not in logs, logs[-3000:]
