"""The operations files in etc/: the systemd unit and the logrotate snippet are well formed and say
what the README promises (unprivileged, low ports through a capability, restart on failure)."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

ETC = Path(__file__).resolve().parent.parent / "etc"


def test_systemd_unit() -> None:
    """twistd in the foreground as an unprivileged user, CAP_NET_BIND_SERVICE, restart on failure."""
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(ETC / "systemd" / "mizud.service")
    service = unit["Service"]
    assert service["User"] == "mizud" and service["Restart"] == "always"
    assert service["AmbientCapabilities"] == "CAP_NET_BIND_SERVICE" == service["CapabilityBoundingSet"]
    assert "twistd --nodaemon" in service["ExecStart"] and " mizud " in service["ExecStart"]
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    analyze = shutil.which("systemd-analyze")
    if analyze:
        result = subprocess.run([analyze, "verify", "--man=no", str(ETC / "systemd" / "mizud.service")],
                                capture_output=True, text=True)
        assert "Unknown key" not in result.stderr and "Invalid" not in result.stderr, result.stderr


def test_logrotate_snippet(tmp_path: Path) -> None:
    """copytruncate (mizud keeps its file open); logrotate itself accepts it when installed."""
    text = (ETC / "logrotate.d" / "mizud").read_text()
    assert "/var/log/mizud/mizud.log {" in text and "copytruncate" in text
    logrotate = shutil.which("logrotate")
    if logrotate is None:
        pytest.skip("logrotate is not installed")
    log = tmp_path / "mizud.log"
    log.write_text("x\n")
    config = tmp_path / "rotate.conf"
    config.write_text(text.replace("/var/log/mizud/mizud.log", str(log)).replace("    su mizud mizud\n", ""))
    result = subprocess.run([logrotate, "-d", "-s", str(tmp_path / "state"), str(config)], capture_output=True,
                            text=True)
    assert result.returncode == 0 and "error" not in result.stderr.lower(), result.stderr
