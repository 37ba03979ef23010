"""What the bench scripts share: running a script against a checkout, its cProfile, processes' CPU.

Imported by the scripts beside it (bench/dispatch_path.py, bench/register_path.py,
bench/b2bua_calls.py, bench/two_nodes.py), which Python runs with this folder on
its path; not part of the mizud package.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")

#: The end of every embedded script: run C{main()} on the reactor, exit 1 if it failed.
REACTOR_TAIL = '''
def go():
    d = defer.ensureDeferred(main())
    d.addErrback(lambda f: (print(f.getTraceback(), file=sys.stderr), setattr(sys, "failed", True)))
    d.addBoth(lambda _: reactor.stop())

reactor.callWhenRunning(go)
reactor.run()
sys.exit(1 if getattr(sys, "failed", False) else 0)
'''


def measure(tree: Path, script: str, args: list[str], timeout: int) -> float:
    """The number C{script} prints last, run with C{args} in one fresh process on C{tree}'s code."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    done = subprocess.run([sys.executable, "-c", script, *args], env=env, cwd=tree, capture_output=True, text=True,
                          timeout=timeout)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{tree}: failed\n{done.stdout}\n{done.stderr[-3000:]}")
    return float(lines[-1])


def cprofile(tree: Path, script: str, args: list[str]) -> dict[Any, Any]:
    """cProfile's rows (pstats' C{stats}) for one run of C{script} with C{args} on C{tree}'s code."""
    import pstats

    folder = Path(tempfile.mkdtemp())
    path, output = folder / "run.py", folder / "run.prof"
    path.write_text(script)
    env = dict(os.environ, PYTHONPATH=str(tree))
    done = subprocess.run([sys.executable, "-m", "cProfile", "-o", str(output), str(path), *args], env=env,
                          cwd=tree, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"{tree}: failed\n{done.stdout}\n{done.stderr[-3000:]}")
    rows: dict[Any, Any] = pstats.Stats(str(output)).stats  # type: ignore[attr-defined]
    return rows


def print_functions(rows: dict[Any, Any], tree: Path, top: int) -> None:
    """The C{top} functions of cProfile's C{rows} by own time, as a markdown table."""
    total = sum(row[2] for row in rows.values())
    print("| function | calls | own time share |\n|---|---|---|")
    for (filename, line, name), row in sorted(rows.items(), key=lambda item: -item[1][2])[:top]:
        where = re.split(r"/site-packages/|/lib/python3\.\d+/", filename)[-1].split(str(tree) + "/")[-1]
        print(f"| {where}:{line} {name} | {row[1]} | {100 * row[2] / total:.1f}% |")


def cpu_ticks(pids: list[int]) -> int:
    """utime+stime of processes (all their threads), in clock ticks; a process gone counts nothing."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total
