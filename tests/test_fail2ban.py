"""The shipped fail2ban filter matches mizud's failed-authentication log lines."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import pytest_twisted
from twisted.logger import formatEventAsClassicLogText, globalLogPublisher

from test_api_dispatch import KEY, Harness, make_harness

FILTER = Path(__file__).resolve().parent.parent / "etc" / "fail2ban" / "filter.d" / "mizud.conf"


async def failure_lines(h: Harness, *queries: str) -> list[str]:
    """Log lines, as the log file has them, produced by the queries from 1.2.3.4."""
    lines: list[str] = []

    def keep(event: dict) -> None:  # type: ignore[type-arg]
        text = formatEventAsClassicLogText(event)
        if text and "authentication failure" in text:
            lines.append(text.rstrip("\n"))

    globalLogPublisher.addObserver(keep)
    try:
        for query in queries:
            await h.call(query)
    finally:
        globalLogPublisher.removeObserver(keep)
    return lines


@pytest_twisted.ensureDeferred
async def test_log_lines_are_one_line_and_unforgeable(tmp_path: Path) -> None:
    """A hostile username cannot add lines or spaces to the failure record."""
    h = await make_harness(tmp_path)
    lines = await failure_lines(h, f"apientry=apitest&authkey={KEY}&authid=x%0Afrom%206.6.6.6%20user%3D&authpwd=y")
    assert len(lines) == 1 and "\n" not in lines[0]
    assert "from 1.2.3.4 user=x?from?6.6.6.6?user= function=apitest" in lines[0]
    await h.db.close()


@pytest.mark.skipif(shutil.which("fail2ban-regex") is None, reason="fail2ban is not installed (CI installs it)")
@pytest_twisted.ensureDeferred
async def test_fail2ban_regex_matches(tmp_path: Path) -> None:
    """fail2ban-regex finds the failing host in real log lines with the shipped filter."""
    h = await make_harness(tmp_path)
    lines = await failure_lines(
        h,
        f"apientry=apitest&authkey={KEY}&authid=alice&authpwd=bad",
        "apientry=balance&authkey=wrong&authid=nobody&authpwd=bad",
        "apientry=apitest1",
    )
    await h.db.close()
    log = tmp_path / "mizud.log"
    log.write_text("\n".join(lines) + "\n")
    result = subprocess.run(
        ["fail2ban-regex", "--print-all-matched", str(log), str(FILTER)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Failregex: 2 total" in result.stdout
    assert "1.2.3.4" in result.stdout
